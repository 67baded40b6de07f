//! Synthetic fingerprints and the benchmarks of Imprint (see README.md).

pub mod fleet;
pub mod ports;
pub mod vocab;

pub use fleet::{Fleet, FleetSpec, digest_of};
pub use ports::free_loopback_port;
