//! The policy benchmark: ingest throughput with 100 active policies over 1,000
//! learned images against the same server with none, measured in the same run.
//!
//! Each round starts two fresh servers in turn (order alternating, as these
//! machines are noisy), sets the learning period to the learning windows' span,
//! creates the policies on one of them, pushes the learning windows (not
//! measured), checks every image is `done_learning`, then measures pushing the
//! next windows — the same fleet, seeded, so both get identical fingerprints and
//! the fleet's rare new items become real anomalies on the server with policies.

use std::path::PathBuf;

use clap::Args;
use imprint_bench::{Fleet, FleetSpec};
use imprint_proto::admin_v1::admin_client::AdminClient;
use imprint_proto::admin_v1::{PutPolicyRequest, SetSettingRequest};
use imprint_proto::client::authed;

use crate::ingest::{CpuSeconds, Server, agent_batches, bin_dir_or_own, end_to_end, items};

#[derive(Debug, Args)]
pub struct PoliciesArgs {
    #[arg(long, default_value_t = 1000)]
    images: usize,
    #[arg(long, default_value_t = 3)]
    containers_per_image: usize,
    /// Active policies (every one covers every image).
    #[arg(long, default_value_t = 100)]
    policies: usize,
    /// 30 s windows pushed to learn; the learning period is their span.
    #[arg(long, default_value_t = 12)]
    learning_windows: i64,
    /// 30 s windows measured after learning.
    #[arg(long, default_value_t = 12)]
    windows: i64,
    #[arg(long, default_value_t = 4)]
    agents: usize,
    /// Rounds of (none, with policies); the ratio is their median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 64)]
    batch_fingerprints: usize,
    /// Directory with the imprintd binary [default: next to this binary].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where to put the benchmark's data [default: a temporary directory].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Accepted for `bench/run.sh`; this benchmark has no peers.
    #[arg(long, hide = true)]
    peers_python: Option<PathBuf>,
}

/// Policy `i` of `n`: every image, a mix of categories, confidences, throttles.
fn policy(i: usize) -> PutPolicyRequest {
    const CATEGORIES: [&[&str]; 4] = [
        &["network", "processes", "files", "syscalls"],
        &["processes"],
        &["network", "files"],
        &["syscalls", "files"],
    ];
    PutPolicyRequest {
        name: format!("bench-{i:03}"),
        scope: "*".into(),
        categories: CATEGORIES[i % 4].iter().map(|c| c.to_string()).collect(),
        min_confidence: ["low", "medium", "high"][i % 3].into(),
        severity: ["low", "medium", "high", "critical"][i % 4].into(),
        disabled: false,
        throttle_seconds: [60, 300, 3600][i % 3],
        replace: false,
    }
}

struct Measured {
    items_per_sec: f64,
    anomalies: i64,
    /// CPU the server used while the measured windows were pushed.
    cpu: CpuSeconds,
}

async fn scalar(server: &Server, sql: &str) -> Result<i64, Box<dyn std::error::Error>> {
    let channel = tonic::transport::Channel::from_shared(server.grpc.clone())?
        .connect()
        .await?;
    let batches = imprint_server::cli::run_sql(channel, &server.token, sql).await?;
    let col = batches
        .first()
        .ok_or("no rows")?
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .ok_or("not an Int64 count")?
        .value(0);
    Ok(col)
}

async fn one_server(
    args: &PoliciesArgs,
    data: &std::path::Path,
    with_policies: bool,
    learning: &[imprint_proto::ingest_v1::FingerprintBatch],
    measured: &[imprint_proto::ingest_v1::FingerprintBatch],
    round: usize,
) -> Result<Measured, Box<dyn std::error::Error>> {
    let _ = std::fs::remove_dir_all(data);
    let server = Server::start(&bin_dir_or_own(args.bin_dir.as_deref()), data);
    let channel = tonic::transport::Channel::from_shared(server.grpc.clone())?
        .connect()
        .await?;
    let mut admin = AdminClient::new(authed(channel, &server.token)?);
    admin
        .set_setting(SetSettingRequest {
            key: "profiling.learning_period".into(),
            value: format!("{}s", args.learning_windows * 30),
        })
        .await?;
    if with_policies {
        for i in 0..args.policies {
            admin.put_policy(policy(i)).await?;
        }
    }
    let tag = format!("{round}-{with_policies}");
    end_to_end(
        &server.grpc,
        &server.token,
        learning,
        args.agents,
        &format!("learn-{tag}"),
    )
    .await;
    let learned = scalar(
        &server,
        "SELECT count(*) FROM profile_status WHERE state = 'done_learning'",
    )
    .await?;
    if learned != args.images as i64 {
        return Err(format!("only {learned} of {} images done learning", args.images).into());
    }
    let cpu_before = server.cpu_seconds();
    let r = end_to_end(
        &server.grpc,
        &server.token,
        measured,
        args.agents,
        &format!("run-{tag}"),
    )
    .await;
    let cpu = server.cpu_seconds() - cpu_before;
    let anomalies = scalar(&server, "SELECT count(*) FROM anomalies").await?;
    server.stop();
    Ok(Measured {
        items_per_sec: r.items_per_sec,
        anomalies,
        cpu,
    })
}

/// One round's with / without figures.
struct Ratios {
    throughput: f64,
    process_cpu: f64,
    writer_cpu: f64,
}

pub async fn run(args: PoliciesArgs) -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let total_windows = args.learning_windows + args.windows;
    let spec = FleetSpec {
        images: args.images,
        containers_per_image: args.containers_per_image,
        nodes: 16,
        start_micros: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_micros() as i64
            - (total_windows + 2) * 30_000_000,
        ..Default::default()
    };
    eprintln!(
        "generating {} images × {} containers × {} windows ...",
        spec.images, spec.containers_per_image, total_windows
    );
    let mut fleet = Fleet::new(spec);
    let learning = agent_batches(
        &mut fleet,
        0..args.learning_windows,
        args.batch_fingerprints,
    );
    let measured = agent_batches(
        &mut fleet,
        args.learning_windows..total_windows,
        args.batch_fingerprints,
    );
    eprintln!(
        "{} learning items, {} measured items",
        items(&learning),
        items(&measured)
    );
    let mut ratios = Vec::new();
    let mut rows = Vec::new();
    for round in 0..args.rounds {
        // Alternate which goes first.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let mut got = [None, None];
        for with in order {
            let data = work.join(format!("round-{round}-{with}"));
            let m = one_server(&args, &data, with, &learning, &measured, round).await?;
            eprintln!(
                "round {round}, {} policies: {:.0} items/s, {} anomalies",
                if with { args.policies } else { 0 },
                m.items_per_sec,
                m.anomalies
            );
            got[usize::from(with)] = Some(m);
        }
        let [Some(none), Some(with)] = got else {
            unreachable!("both ran")
        };
        ratios.push(Ratios {
            throughput: with.items_per_sec / none.items_per_sec,
            process_cpu: with.cpu.process / none.cpu.process,
            writer_cpu: with.cpu.writer / none.cpu.writer,
        });
        rows.push((none, with));
    }
    let median = |of: fn(&Ratios) -> f64| {
        let mut v: Vec<f64> = ratios.iter().map(of).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "\n## Ingest with policies: {} images learned, {} measured items per run, {} agents\n",
        args.images,
        items(&measured),
        args.agents
    );
    println!(
        "| round | no policies, items/s | {} policies, items/s | throughput ratio | server CPU s (none / with) | writer CPU s (none / with) | anomalies found |",
        args.policies
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (i, ((none, with), r)) in rows.iter().zip(&ratios).enumerate() {
        println!(
            "| {i} | {:.0} | {:.0} | {:.3} | {:.2} / {:.2} | {:.2} / {:.2} | {} |",
            none.items_per_sec,
            with.items_per_sec,
            r.throughput,
            none.cpu.process,
            with.cpu.process,
            none.cpu.writer,
            with.cpu.writer,
            with.anomalies
        );
    }
    println!(
        "\nmedian throughput ratio (with / without): **{:.3}** (target ≥ 0.9)",
        median(|r| r.throughput)
    );
    // CPU is less sensitive than wall-clock throughput to what else the host runs.
    println!(
        "median CPU ratio (with / without): server {:.3}, WAL writer thread {:.3} (the writer applies \
         fingerprints to the profiles and evaluates the policies)",
        median(|r| r.process_cpu),
        median(|r| r.writer_cpu)
    );
    Ok(())
}
