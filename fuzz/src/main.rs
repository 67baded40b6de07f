//! `imprint-fuzz`: mutation fuzzing of every parser a client, an agent or a file from the
//! internet reaches — ingest batches, the WAL reader, SBOM, scanner and OSV imports, the ZIP
//! reader, the SQL entry point — each for a fixed time.
//!
//! Mutation-based, not coverage-guided (cargo-fuzz would need every dependency, DataFusion
//! included, rebuilt with sanitizers on nightly: more than these machines' build budget). A
//! proxy for coverage grows the corpus: an input whose outcome falls in a class not seen
//! before (another error, another format) is kept in `fuzz/corpus/<target>/`. A panic, or an
//! oracle a target checks (a damaged WAL record handed out, a write statement planned, a bad
//! item accepted), is a finding: the input is saved in `fuzz/crashes/<target>/` and the run
//! exits non-zero. `--replay` runs every corpus and crash file once (what the tests do).

mod mutate;
mod targets;

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Most inputs kept in one target's corpus.
const MAX_CORPUS: usize = 256;
/// A run longer than this is a finding (a hang): the input is saved and the process exits,
/// since a stuck parser cannot be interrupted.
const HANG_AFTER: Duration = Duration::from_secs(20);

/// The input now running, for the hang watchdog.
struct Running {
    target: &'static str,
    input: Vec<u8>,
    since: Instant,
}

static RUNNING: std::sync::Mutex<Option<Running>> = std::sync::Mutex::new(None);

/// Watches the input now running; saves it as `hang-<hash>` and exits when it runs too long.
fn start_watchdog(crashes: PathBuf) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let guard = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(r) = guard.as_ref()
                && r.since.elapsed() > HANG_AFTER
            {
                let dir = crashes.join(r.target);
                let _ = std::fs::create_dir_all(&dir);
                let path = dir.join(format!("hang-{:016x}", hash(&r.input)));
                let _ = std::fs::write(&path, &r.input);
                println!(
                    "{}: FINDING one input ran over {} s (a hang); saved as {}",
                    r.target,
                    HANG_AFTER.as_secs(),
                    path.display()
                );
                std::process::exit(1);
            }
        }
    });
}

#[derive(Debug, Parser)]
#[command(about = "Mutation fuzzing of Imprint's parsers, each target for a fixed time")]
struct Args {
    /// Targets to run (repeatable); all when none: batch, wal, sbom, report, osv, zip, sql.
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Time per target, e.g. 60s or 5m.
    #[arg(long, default_value = "60s", value_parser = imprint_proto::duration::parse_duration)]
    time: Duration,
    /// The corpus directory (one subdirectory per target; seeds are written there first).
    #[arg(long, default_value = "fuzz/corpus")]
    corpus: PathBuf,
    /// Where findings are saved.
    #[arg(long, default_value = "fuzz/crashes")]
    crashes: PathBuf,
    /// Random seed (runs are reproducible for a seed and corpus).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run each corpus and crash file once instead of fuzzing.
    #[arg(long)]
    replay: bool,
}

struct Report {
    target: &'static str,
    execs: u64,
    secs: f64,
    classes: usize,
    added: usize,
    findings: Vec<String>,
}

fn load(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
        .collect()
}

fn hash(bytes: &[u8]) -> u64 {
    // FNV-1a: a stable file name for an input.
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Runs one input; `Err` is a finding (panic message or oracle).
fn run_one(target: &mut dyn targets::Target, input: &[u8]) -> Result<String, String> {
    *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) = Some(Running {
        target: target.name(),
        input: input.to_vec(),
        since: Instant::now(),
    });
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| target.run(input)));
    *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) = None;
    match outcome {
        Ok(outcome) => outcome,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(format!("panic: {message}"))
        }
    }
}

fn fuzz(target: &mut dyn targets::Target, args: &Args, rng: &mut StdRng) -> Report {
    let name = target.name();
    let corpus_dir = args.corpus.join(name);
    let crash_dir = args.crashes.join(name);
    let _ = std::fs::create_dir_all(&corpus_dir);
    let mut corpus: Vec<Vec<u8>> = load(&corpus_dir).into_iter().map(|(_, b)| b).collect();
    if corpus.is_empty() {
        for seed in target.seeds() {
            let _ = std::fs::write(corpus_dir.join(format!("seed-{:016x}", hash(&seed))), &seed);
            corpus.push(seed);
        }
    }
    let mut classes = HashSet::new();
    let mut findings = Vec::new();
    for input in &corpus {
        match run_one(target, input) {
            Ok(c) => {
                classes.insert(c);
            }
            Err(f) => findings.push(format!("corpus input: {f}")),
        }
    }
    let (start, mut last_progress) = (Instant::now(), Instant::now());
    let (mut execs, mut added) = (0u64, 0usize);
    while start.elapsed() < args.time && findings.len() < 20 {
        let base = &corpus[rng.random_range(0..corpus.len())];
        let other = &corpus[rng.random_range(0..corpus.len())];
        let input = mutate::mutate(rng, base, other, target.dictionary());
        execs += 1;
        match run_one(target, &input) {
            Ok(c) => {
                if classes.insert(c) && corpus.len() < MAX_CORPUS {
                    let _ =
                        std::fs::write(corpus_dir.join(format!("{:016x}", hash(&input))), &input);
                    corpus.push(input);
                    added += 1;
                }
            }
            Err(f) => {
                let _ = std::fs::create_dir_all(&crash_dir);
                let path = crash_dir.join(format!("{:016x}", hash(&input)));
                let _ = std::fs::write(&path, &input);
                eprintln!("{name}: FINDING {f} (input saved as {})", path.display());
                findings.push(f);
            }
        }
        if last_progress.elapsed() > Duration::from_secs(10) {
            last_progress = Instant::now();
            eprintln!(
                "{name}: {:.0}s, {execs} runs, {} outcome classes, corpus {}",
                start.elapsed().as_secs_f64(),
                classes.len(),
                corpus.len()
            );
        }
    }
    Report {
        target: name,
        execs,
        secs: start.elapsed().as_secs_f64(),
        classes: classes.len(),
        added,
        findings,
    }
}

fn replay(target: &mut dyn targets::Target, args: &Args) -> Report {
    let name = target.name();
    let start = Instant::now();
    let mut files = load(&args.corpus.join(name));
    files.extend(load(&args.crashes.join(name)));
    let mut classes = HashSet::new();
    let mut findings = Vec::new();
    for seed in target.seeds() {
        files.push((PathBuf::from("(built-in seed)"), seed));
    }
    for (path, input) in &files {
        match run_one(target, input) {
            Ok(c) => {
                classes.insert(c);
            }
            Err(f) => findings.push(format!("{}: {f}", path.display())),
        }
    }
    Report {
        target: name,
        execs: files.len() as u64,
        secs: start.elapsed().as_secs_f64(),
        classes: classes.len(),
        added: 0,
        findings,
    }
}

fn main() {
    let args = Args::parse();
    // Panics are caught and reported per input; the default hook would print each one.
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = StdRng::seed_from_u64(args.seed);
    start_watchdog(args.crashes.clone());
    let mut all = targets::all();
    let known: Vec<&str> = all.iter().map(|t| t.name()).collect();
    for t in &args.targets {
        if !known.contains(&t.as_str()) {
            eprintln!(
                "imprint-fuzz: unknown target {t:?}; targets: {}",
                known.join(", ")
            );
            std::process::exit(2);
        }
    }
    let mut failed = false;
    println!(
        "{:<8} {:>9} {:>8} {:>10} {:>8} {:>6} findings",
        "target", "runs", "secs", "runs/s", "classes", "added"
    );
    for target in all.iter_mut() {
        if !args.targets.is_empty() && !args.targets.iter().any(|t| t == target.name()) {
            continue;
        }
        let r = if args.replay {
            replay(target.as_mut(), &args)
        } else {
            eprintln!("{}: fuzzing for {} s", target.name(), args.time.as_secs());
            fuzz(target.as_mut(), &args, &mut rng)
        };
        println!(
            "{:<8} {:>9} {:>8.1} {:>10.0} {:>8} {:>6} {}",
            r.target,
            r.execs,
            r.secs,
            r.execs as f64 / r.secs.max(1e-9),
            r.classes,
            r.added,
            r.findings.len()
        );
        for f in &r.findings {
            println!("  {f}");
        }
        failed |= !r.findings.is_empty();
    }
    if failed {
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kept input (seeds, corpus, and past findings, which must stay fixed) runs clean.
    #[test]
    fn the_corpus_and_past_findings_replay_clean() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let args = Args {
            targets: vec![],
            time: Duration::ZERO,
            corpus: dir.join("corpus"),
            crashes: dir.join("crashes"),
            seed: 1,
            replay: true,
        };
        for mut target in targets::all() {
            let r = replay(target.as_mut(), &args);
            println!("{}: {} inputs, {} classes", r.target, r.execs, r.classes);
            assert!(r.execs > 0, "{}: nothing to replay", r.target);
            assert!(r.findings.is_empty(), "{}: {:?}", r.target, r.findings);
        }
    }

    /// A short real run per target finds inputs of new classes (the fuzzer moves).
    #[test]
    fn a_short_run_explores() {
        let tmp = tempfile::tempdir().unwrap();
        let args = Args {
            targets: vec![],
            time: Duration::from_millis(300),
            corpus: tmp.path().join("corpus"),
            crashes: tmp.path().join("crashes"),
            seed: 7,
            replay: false,
        };
        let mut rng = StdRng::seed_from_u64(7);
        let mut target = targets::all().into_iter().next().unwrap();
        let r = fuzz(target.as_mut(), &args, &mut rng);
        assert!(
            r.execs > 10 && r.classes > 1,
            "{} runs, {} classes",
            r.execs,
            r.classes
        );
        assert!(r.findings.is_empty(), "{:?}", r.findings);
    }
}
