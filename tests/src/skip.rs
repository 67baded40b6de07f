//! Tests that cannot run on this machine (no root, no BTF, no venv, a missing tool) say so and
//! are counted as skipped, never as passed.
//!
//! libtest has no run-time skip: a skipping test returns early and libtest counts it as passed.
//! So [`skipped`] records the test's name and reason in the file named by `IMPRINT_SKIP_LOG`
//! (`./test.sh` sets it), and the test command subtracts those from the passed count and prints
//! them, reason by reason. It also writes straight to the process's stderr, past libtest's
//! output capture, so a plain `cargo test` shows the skip too.

use std::io::Write;

/// The environment variable naming the file skips are recorded in.
pub const SKIP_LOG: &str = "IMPRINT_SKIP_LOG";

/// Records that the calling test is skipped for `reason`; the caller then returns.
pub fn skipped(reason: &str) {
    // libtest runs each test on a thread named after it.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test>");
    let line = format!("{test}: {reason}");
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {line} ***\n");
    if let Ok(path) = std::env::var(SKIP_LOG) {
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{}", line.replace('\n', " ")));
        if let Err(e) = written {
            // Not recorded means it would count as passed: fail instead.
            panic!("cannot record the skip of {test} in {path} ({SKIP_LOG}): {e}");
        }
    }
}
