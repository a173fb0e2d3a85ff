//! The `gantry-sim` binary: `scale` and `chaos`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use gantry_sim::chaos::{self, ChaosConfig};
use gantry_sim::cluster::Store;
use gantry_sim::scale::{self, Phase, ScaleConfig};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "gantry-sim",
    about = "gantry's simulator: the real controller at scale and under faults"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Place services × replicas on simulated nodes through the real scheduler and Raft.
    Scale {
        #[arg(long, default_value_t = 10_000)]
        nodes: u64,
        #[arg(long, default_value_t = 1_000)]
        services: u64,
        #[arg(long, default_value_t = 1_000)]
        replicas: u32,
        /// Scenarios after the initial placement, in order (comma-separated).
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "node-fail,site-fail,rolling-update"
        )]
        phases: Vec<Phase>,
        /// Run only the initial placement.
        #[arg(long)]
        place_only: bool,
        /// Write placements over time to this CSV file.
        #[arg(long)]
        csv: Option<PathBuf>,
        /// Write CSV files and SVG plots (placements over time, utilisation per node) here.
        #[arg(long)]
        plots: Option<PathBuf>,
        /// Concurrent Raft writes (setup commands, agent acks).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Services per evaluation (one plan, one Raft entry each).
        #[arg(long, default_value_t = 25)]
        services_per_eval: usize,
        /// Give up on a phase after this many seconds.
        #[arg(long, default_value_t = 900)]
        phase_timeout: u64,
        /// Rounds of the `trace` phase (services arriving and ending).
        #[arg(long, default_value_t = 5)]
        trace_rounds: u32,
        /// Seed of the `trace` phase's arrivals, sizes and lifetimes.
        #[arg(long, default_value_t = 1)]
        trace_seed: u64,
        /// Where the members keep their Raft log and state: sled: the controller's own
        /// durable stores, one sled dir per member (fsync before an entry is acknowledged);
        /// memory: in-memory log and state with the same apply code (no disk).
        #[arg(long, value_enum, default_value_t = Store::Sled)]
        store: Store,
        /// Print the report as JSON (default: a summary).
        #[arg(long)]
        json: bool,
    },
    /// Seeded faults against 3 controllers and simulated agents; invariants checked.
    Chaos {
        /// First seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How many seeds to run (seed, seed+1, ...): a soak is a large number.
        #[arg(long, default_value_t = 1)]
        runs: u64,
        /// Replay one seed exactly (with `--store memory`), printing its faults as they are
        /// applied and its trace.
        #[arg(long, conflicts_with_all = ["seed", "runs"])]
        reproduce: Option<u64>,
        /// memory: in-memory stores, virtual time, deterministic (a seed replays exactly);
        /// sled: the controller's sled stores in real time (not deterministic).
        #[arg(long, value_enum, default_value_t = Store::Memory)]
        store: Store,
        /// Print each run's trace (faults, leaders, acknowledged writes, final states).
        #[arg(long)]
        trace: bool,
        /// Seconds of faults per run.
        #[arg(long, default_value_t = 6)]
        fault_seconds: u64,
        /// Seconds the cluster has to converge after the faults stop.
        #[arg(long, default_value_t = 20)]
        convergence_bound: u64,
        /// Print each run's report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn print_scale(r: &scale::ScaleReport) {
    println!(
        "{} nodes, {} services × {} replicas; Raft: {} members, {}; network: {}",
        r.nodes, r.services, r.replicas, r.raft_members, r.store, r.network
    );
    println!(
        "setup: register nodes {:.2}s, upsert services {:.2}s",
        r.register_nodes_seconds, r.upsert_services_seconds
    );
    println!(
        "{:<15} {:>9} {:>9} {:>9} {:>11} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "phase",
        "seconds",
        "placed",
        "stopped",
        "placed/s",
        "eval p50",
        "eval p99",
        "commit50",
        "commit99",
        "sched s",
        "commit s",
        "ack s"
    );
    for p in &r.phases {
        println!(
            "{:<15} {:>9.2} {:>9.2} {:>9} {:>9} {:>11.0} {:>8.2}ms {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>8.2} {:>8.2} {:>8.2}",
            p.phase, p.seconds, p.placed_seconds, p.placements, p.stops, p.placements_per_s, p.eval_p50_ms,
            p.eval_p99_ms, p.commit_p50_ms, p.commit_p99_ms, p.schedule_seconds,
            p.commit_seconds, p.ack_wait_seconds
        );
        if p.nodes_failed > 0 {
            println!(
                "{:<15} {} nodes down ({:.2}s to commit), {} allocations lost, all replaced and running in {:.2}s",
                "", p.nodes_failed, p.fault_seconds, p.allocations_lost, p.seconds
            );
        }
        if !p.unconverged_services.is_empty() {
            println!("{:<15} unconverged: {:?}", "", p.unconverged_services);
        }
    }
    let q = &r.quality;
    println!(
        "quality: {} running on {} of {} ready nodes (lower bound {}, fragmentation {:.2}); \
         utilisation of used nodes cpu {:.0}% mem {:.0}%, of all nodes cpu {:.0}% mem {:.0}%",
        q.allocations_running,
        q.nodes_used,
        q.nodes_ready,
        q.nodes_lower_bound,
        q.fragmentation,
        q.cpu_utilisation_used_nodes * 100.0,
        q.memory_utilisation_used_nodes * 100.0,
        q.cpu_utilisation_all_nodes * 100.0,
        q.memory_utilisation_all_nodes * 100.0
    );
    println!(
        "total {:.2}s; RSS {:.0} MiB (peak {:.0} MiB) for 3 members in one process",
        r.total_seconds, r.rss_mib, r.peak_rss_mib
    );
    for v in &r.violations {
        println!("VIOLATION {v}");
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Scale {
            nodes,
            services,
            replicas,
            phases,
            place_only,
            csv,
            plots,
            concurrency,
            services_per_eval,
            phase_timeout,
            trace_rounds,
            trace_seed,
            store,
            json,
        } => {
            let cfg = ScaleConfig {
                nodes,
                services,
                replicas,
                phases: if place_only { vec![] } else { phases },
                csv,
                plots,
                concurrency,
                services_per_eval,
                phase_timeout: Duration::from_secs(phase_timeout),
                trace_rounds,
                trace_seed,
                store,
                progress: !json,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            let report = rt.block_on(scale::run(cfg)).context("scale run")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_scale(&report);
            }
            if !report.violations.is_empty() {
                anyhow::bail!("{} invariant violation(s)", report.violations.len());
            }
        }
        Cmd::Chaos {
            seed,
            runs,
            reproduce,
            fault_seconds,
            convergence_bound,
            store,
            trace,
            json,
        } => {
            let seeds: Vec<u64> = match reproduce {
                Some(s) => vec![s],
                None => (seed..seed.saturating_add(runs)).collect(),
            };
            let mut failed = Vec::new();
            let wall = std::time::Instant::now();
            let (mut simulated, n) = (0.0, seeds.len());
            for s in seeds {
                let mut cfg = ChaosConfig::new(s);
                cfg.fault_time = Duration::from_secs(fault_seconds);
                cfg.convergence_bound = Duration::from_secs(convergence_bound);
                cfg.verbose = reproduce.is_some();
                cfg.store = store;
                let report = chaos::run_seed(cfg).context("chaos run")?;
                simulated += report.simulated_seconds;
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    println!(
                        "seed {}: {} faults, {} leader terms, {}/{} writes acknowledged, {}, {}, trace {}",
                        report.seed,
                        report.schedule.len(),
                        report.leader_terms,
                        report.writes_acknowledged,
                        report.writes_attempted,
                        match report.converged_after_seconds {
                            Some(t) => format!("converged {t:.2}s after healing"),
                            None => "NOT converged".into(),
                        },
                        if report.violations.is_empty() {
                            "ok".to_string()
                        } else {
                            format!("{} violation(s)", report.violations.len())
                        },
                        &report.trace_digest[..16]
                    );
                }
                if trace || reproduce.is_some() {
                    for e in &report.trace.events {
                        println!("  {}", serde_json::to_string(e)?);
                    }
                    println!("  trace sha256 {}", report.trace_digest);
                }
                for v in &report.violations {
                    eprintln!("seed {s}: VIOLATION {v}");
                }
                if !report.violations.is_empty() {
                    eprintln!("seed {s} failed: replay with `gantry-sim chaos --reproduce {s}`");
                    failed.push(s);
                }
            }
            let secs = wall.elapsed().as_secs_f64();
            eprintln!(
                "{n} seed(s) in {secs:.2}s of real time ({:.1} seeds/s), {simulated:.1}s simulated ({:.0}x real time), store {store:?}",
                n as f64 / secs,
                simulated / secs
            );
            if !failed.is_empty() {
                anyhow::bail!("failing seeds: {failed:?}");
            }
        }
    }
    Ok(())
}
