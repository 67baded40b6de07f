//! Imprint's node agent as a library: the parts `imprint-agent` (main.rs) wires together, public
//! so the end-to-end tests can use the same normalisation rules. Module map: ingest-agent/README.md;
//! what is captured and how: docs/agent.md.

pub mod attribution;
pub mod capture;
pub mod guard;
pub mod inventory;
pub mod metrics;
pub mod paths;
pub mod probes;
pub mod procfs;
pub mod rootfs;
pub mod scanner;
pub mod settings_watch;
pub mod shipper;
pub mod spool;
pub mod syscalls;
pub mod window;
