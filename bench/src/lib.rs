//! Synthetic fingerprints and the benchmarks of Imprint (see README.md).

pub mod fleet;
pub mod vocab;

pub use fleet::{Fleet, FleetSpec, digest_of};
