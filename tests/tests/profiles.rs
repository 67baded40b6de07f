//! Profile behaviour as sqllogictest files (`tests/slt/profiles/*.slt`), each run
//! against its own real `imprintd`, scenarios pushed through gRPC ingest.

#![allow(clippy::unwrap_used)] // tests fail loudly on any error

use imprint_e2e::slt::ImprintSlt;
use imprint_e2e::workspace_root;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_slt_files() {
    let dir = workspace_root().join("tests/slt/profiles");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    let mut failed = Vec::new();
    for file in &files {
        let mut runner = sqllogictest::Runner::new(|| async { Ok(ImprintSlt::start()) });
        for n in 1..10 {
            runner.set_var(format!("image{n}"), imprint_bench::digest_of(n));
        }
        match runner.run_file_async(file).await {
            Ok(()) => println!("ok   {}", file.display()),
            Err(e) => {
                println!("FAIL {}\n{e}", file.display());
                failed.push(file.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}
