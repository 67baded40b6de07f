//! Imprint as a library: the layout of the stored tables, the catalog, and a
//! DataFusion session over a store — usable embedded, without a server.
//!
//! ```no_run
//! # async fn f() -> imprint_query::Result<()> {
//! let store = imprint_query::Store::open("./imprint-data").await?;
//! let batches = store.sql("SELECT kind, count(*) FROM fingerprints GROUP BY kind").await?;
//! # Ok(()) }
//! ```

pub mod bounded;
pub mod catalog;
pub mod error;
pub mod file_scan;
pub mod inuse;
pub mod layout;
pub mod policy;
pub mod profile;
pub mod prune;
pub mod schema;
pub mod settings;
pub mod store;
pub mod table;

pub use error::{Error, Result};
pub use store::{Store, StoreLocation};
