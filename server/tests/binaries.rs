//! The server's two binaries start and describe themselves. (Being here, as the package's
//! integration test, is also what makes `cargo test --workspace` build `imprintd` and
//! `imprint`, which the end-to-end tests in `tests/` run: see tests/src/binaries.rs.)

use std::process::Command;

fn help(exe: &str, args: &[&str]) -> String {
    let out = Command::new(exe).args(args).output().expect("run binary");
    assert!(out.status.success(), "{exe} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn imprintd_help_lists_serve_and_its_flags() {
    let exe = env!("CARGO_BIN_EXE_imprintd");
    assert!(help(exe, &["--help"]).contains("serve"));
    let serve = help(exe, &["serve", "--help"]);
    for flag in ["--data-dir", "--grpc-addr", "--http-addr", "--object-store"] {
        assert!(
            serve.contains(flag),
            "imprintd serve --help lacks {flag}:\n{serve}"
        );
    }
}

#[test]
fn imprint_help_lists_its_commands() {
    let text = help(env!("CARGO_BIN_EXE_imprint"), &["--help"]);
    for command in ["sql", "token", "settings", "profile", "import"] {
        assert!(
            text.contains(command),
            "imprint --help lacks {command}:\n{text}"
        );
    }
}

#[test]
fn imprint_without_a_server_says_where_it_tried() {
    let out = Command::new(env!("CARGO_BIN_EXE_imprint"))
        .args([
            "--server",
            "http://127.0.0.1:1",
            "--token",
            "x",
            "sql",
            "SELECT 1",
        ])
        .output()
        .expect("run imprint");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("127.0.0.1:1"), "{err}");
}
