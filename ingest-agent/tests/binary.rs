//! The agent binary starts and describes itself. (Being here, as the package's integration
//! test, is also what makes `cargo test --workspace` build `imprint-agent`, which the
//! end-to-end agent tests in `tests/` run: see tests/src/binaries.rs.)

use std::process::Command;

#[test]
fn imprint_agent_help_lists_its_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_imprint-agent"))
        .arg("--help")
        .output()
        .expect("run imprint-agent");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--server", "--node"] {
        assert!(
            text.contains(flag),
            "imprint-agent --help lacks {flag}:\n{text}"
        );
    }
}
