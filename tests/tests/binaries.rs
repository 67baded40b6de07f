//! The binaries every end-to-end test runs are the ones this source tree builds: the harness
//! (`imprint_e2e::binaries`) has cargo build them in the test run itself, and each is newer
//! than every source file it was built from and was built from this checkout, not another one
//! sharing the target directory.

use imprint_e2e::binaries::{bin, check_built_here, check_fresh};

#[test]
fn each_binary_the_tests_run_is_built_from_this_tree_and_newer_than_its_sources() {
    for name in ["imprintd", "imprint", "imprint-agent"] {
        // `bin` builds and checks; checked again here so the assertion is visible.
        let path = bin(name);
        assert_eq!(check_fresh(&path), Ok(()), "{name}");
        assert_eq!(check_built_here(&path), Ok(()), "{name}");
        let out = std::process::Command::new(&path)
            .arg("--version")
            .output()
            .expect("run --version");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")),
            "{name} --version: {out:?}"
        );
    }
}
