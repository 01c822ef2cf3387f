//! `courier-bench`: Courier's end-to-end benchmark on one machine (`make bench`).
//!
//! - [`config`]: flags, the scenarios and the durations and counts of a run.
//! - [`services`]: the release gateway and worker as child processes: ports, env,
//!   readiness, crash detection, peak memory and CPU time from `/proc`.
//! - [`receiver`]: the in-process subscriber that counts, timestamps and verifies.
//! - [`api`]: tenant and webhook creation.
//! - [`load`]: HTTP load on the ingest endpoint, as fast as possible or paced.
//! - [`ceiling`]: the raw broker figure every other one is compared with.
//! - [`scenarios`]: the scenarios, each from start to clean-up.
//! - [`stats`]: the run clock, rates and percentiles.
//! - [`report`]: the targets, the table and the JSON.
//!
//! Everything runs under a fresh `bench-<random>.` prefix that is deleted at the end
//! (queues, exchanges, Redis keys); children are killed on every exit path. A missed
//! target exits 0; a service that dies, a scenario that delivers nothing, or a bad
//! signature exits 1.

mod api;
mod ceiling;
mod config;
mod load;
mod receiver;
mod report;
mod scenarios;
mod services;
mod stats;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser as _;
use courier_broker::lapin::options::QueueDeleteOptions;
use courier_broker::Topology;
use courier_store::Store;
use serde_json::json;

use config::{Args, Plan, Scenario};
use scenarios::Bench;
use services::Launcher;
use stats::Clock;

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("courier-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("bench-{}.", &run_id[..8]);
    let scenarios: Vec<Scenario> = if args.only.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        let mut s = args.only.clone();
        s.sort();
        s.dedup();
        s
    };
    let plan = Plan::new(&args);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| config::repo_root().join("bench-results.json"));
    let log_dir = std::env::temp_dir().join(format!("courier-bench-{}", &run_id[..8]));
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;

    let amqp = courier_broker::connect(&args.amqp_url, "courier-bench", Duration::from_secs(10))
        .await
        .context("RabbitMQ must be reachable at COURIER_AMQP_URL (make services)")?;
    let store = Store::new(&args.redis_url, &prefix)?;
    store
        .ping()
        .await
        .context("Redis must be reachable at COURIER_REDIS_URL (make services)")?;
    let redis = redis::Client::open(args.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    let launcher = Launcher {
        bin_dir: config::from_root(&args.bin_dir),
        amqp_url: args.amqp_url.clone(),
        redis_url: args.redis_url.clone(),
        prefix: prefix.clone(),
        admin_token: format!("bench-{}", uuid::Uuid::new_v4().simple()),
        delivery_concurrency: args.delivery_concurrency,
        webhook_concurrency: args.webhook_concurrency(),
        prefetch: args.prefetch,
        log_dir: log_dir.clone(),
        http: reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()?,
    };
    if scenarios.iter().any(|s| *s != Scenario::Ceiling) {
        launcher.check_binaries()?;
    }
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    eprintln!(
        "courier-bench: {} scenario(s){}, prefix {prefix}, binaries in {}, {cpus} CPU(s), logs in {}",
        scenarios.len(),
        if args.quick { " (quick)" } else { "" },
        launcher.bin_dir.display(),
        log_dir.display()
    );

    let mut bench = Bench {
        args: args.clone(),
        plan: plan.clone(),
        clock: Clock::start(),
        topology: Topology::new(prefix.clone()),
        launcher,
        amqp,
        results: Vec::new(),
        infra: scenarios::infra_processes(),
        deadline: started + plan.budget,
        skipped: Vec::new(),
        redis,
    };
    let outcome = tokio::select! {
        r = bench.run(&scenarios) => r,
        s = shutdown_signal() => Err(anyhow::anyhow!("interrupted by {s}")),
    };
    // Every child process was owned by the scenario future, now finished or
    // dropped, and so killed; what is left is the broker's and Redis's state.
    let cleaned = cleanup(&bench, &store).await;

    let mut results = std::mem::take(&mut bench.results);
    if !bench.skipped.is_empty() {
        eprintln!(
            "courier-bench: skipped for lack of time: {}",
            bench.skipped.join(", ")
        );
    }
    let targets = report::judge_all(&mut results, args.delivery_concurrency);
    if !results.is_empty() {
        println!();
        print!("{}", report::table(&results, &targets));
    }
    let total = started.elapsed().as_secs_f64();
    let document = json!({
        "run": {
            "startedAt": started_at,
            "seconds": total,
            "prefix": prefix,
            "quick": args.quick,
            "cpus": cpus,
            "binDir": bench.launcher.bin_dir,
            "deliveryConcurrency": args.delivery_concurrency,
            "webhookConcurrency": args.webhook_concurrency(),
            "prefetch": args.prefetch,
            "connections": args.connections,
            "plan": plan,
            "error": outcome.as_ref().err().map(|e| format!("{e:#}")),
        },
        "scenarios": results,
        "skipped": bench.skipped,
        "targets": targets,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&document)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    println!("\nresults written to {} ({total:.0} s)", out.display());
    outcome?;
    cleaned?;
    // Logs are kept only when something went wrong.
    let _ = std::fs::remove_dir_all(&log_dir);
    Ok(())
}

/// Deletes the run's queues, exchanges and Redis keys.
async fn cleanup(bench: &Bench, store: &Store) -> anyhow::Result<()> {
    let broker = async {
        bench.topology.delete(&bench.amqp).await?;
        let ch = bench.amqp.create_channel().await?;
        ch.queue_delete(
            &ceiling::queue_name(&bench.launcher.prefix),
            QueueDeleteOptions::default(),
        )
        .await?;
        let _ = ch.close(200, "cleaned").await;
        let _ = bench.amqp.close(200, "done").await;
        anyhow::Ok(())
    };
    let broker = broker.await.context("deleting the run's queues");
    let redis = store
        .delete_all()
        .await
        .context("deleting the run's Redis keys");
    broker?;
    redis?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM, naming it.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}
