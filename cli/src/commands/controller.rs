//! `gantry controller …`: run a controller member, administer membership, inspect Raft
//! status, and disaster recovery (snapshot save/restore, recover).

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use gantry_controller::api::ControllerClient;
use gantry_controller::dr::{self, SnapshotFile};
use gantry_controller::member::{Member, MemberConfig, StartMode};
use gantry_controller::raft::RaftTimings;
use gantry_controller::state::ClusterNetwork;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct ControllerArgs {
    #[command(subcommand)]
    command: ControllerCommand,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum Format {
    Table,
    Json,
}

#[derive(Args, Clone)]
struct MemberTarget {
    #[command(flatten)]
    conn: super::cluster::Target,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Subcommand)]
enum ControllerCommand {
    /// Run a controller member (daemon).
    Run(RunArgs),
    /// List the members of the cluster.
    Members(MemberTarget),
    /// Add a member (it must be running, started with --join or without a cluster).
    Add {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        address: String,
        #[command(flatten)]
        target: MemberTarget,
    },
    /// Remove a member from the cluster.
    Remove {
        #[arg(long)]
        id: u64,
        #[command(flatten)]
        target: MemberTarget,
    },
    /// Make another voter the leader (e.g. before maintenance of the leader's host).
    TransferLeader {
        /// The voter to become leader.
        #[arg(long)]
        id: u64,
        #[command(flatten)]
        target: MemberTarget,
    },
    /// Raft status: term, leader, log/applied index and lag of every member.
    Status(MemberTarget),
    /// Snapshots of the cluster state.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Force a one-member cluster from a survivor's data dir (quorum lost for good).
    Recover {
        #[arg(long)]
        data_dir: PathBuf,
        /// The member id the survivor will run as.
        #[arg(long)]
        id: u64,
        /// The address the survivor will listen on.
        #[arg(long)]
        listen: String,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Save a consistent snapshot of a running cluster to FILE.
    Save {
        file: PathBuf,
        #[command(flatten)]
        target: MemberTarget,
    },
    /// Seed an empty data dir with a snapshot: a new one-member cluster.
    Restore {
        file: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        id: u64,
        /// The address the new member will listen on.
        #[arg(long)]
        listen: String,
    },
}

#[derive(Args)]
struct RunArgs {
    /// This member's id (unique in the cluster, never reused).
    #[arg(long)]
    id: u64,
    /// Address to listen on for peers and clients.
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Address peers and clients reach this member at (default: --listen).
    #[arg(long)]
    advertise: Option<String>,
    #[arg(long, default_value = "/var/lib/gantry/controller")]
    data_dir: PathBuf,
    /// Initialize a new cluster with this member (no-op when the data dir has one).
    #[arg(long, conflicts_with = "join")]
    bootstrap: bool,
    /// Join the cluster of the member at ADDR.
    #[arg(long)]
    join: Option<String>,
    /// The cluster network's CIDR, where each node's subnet comes from (default
    /// 10.210.0.0/16). Recorded when this member bootstraps a new cluster; it cannot
    /// change afterwards (a different value on an existing cluster is refused).
    #[arg(long, conflicts_with = "join")]
    cluster_cidr: Option<ipnet::Ipv4Net>,
    /// The prefix length of each node's subnet (16-24; default 24: 253 containers per
    /// node). Recorded and fixed like --cluster-cidr.
    #[arg(long, conflicts_with = "join")]
    node_subnet_prefix: Option<u8>,
    /// A controller join token (`gantry token create --role controller`), needed the
    /// first time a member joins; afterwards its certificate is in DATA_DIR/pki.
    #[arg(long, env = "GANTRY_TOKEN", requires = "join")]
    token: Option<String>,
    /// Plain TCP without TLS or credentials: for local experiments only.
    #[arg(long, env = "GANTRY_INSECURE",
          value_parser = clap::builder::BoolishValueParser::new(),
          action = clap::ArgAction::SetTrue)]
    insecure: bool,
    /// Lifetime of the certificates this member issues (and of its own); holders renew
    /// at about 2/3 of it.
    #[arg(long, default_value = "24h", value_parser = super::security::parse_duration)]
    cert_ttl: Duration,
    #[arg(long, default_value_t = 50)]
    heartbeat_ms: u64,
    /// Minimum election timeout; the maximum is twice it.
    #[arg(long, default_value_t = 150)]
    election_timeout_ms: u64,
    /// Snapshot (and purge the log) every N applied entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    /// How long a write waits for a quorum before failing.
    #[arg(long, default_value_t = 5000)]
    write_timeout_ms: u64,
    /// Exit (status 1, without a clean stop) when a flush of the Raft log has not returned
    /// for this long, or at once when Raft stops on a storage error: a full or failing disk,
    /// or the data dir removed while running. The other members elect a leader; a
    /// supervisor (systemd) restarts this one.
    #[arg(long, default_value_t = 60_000)]
    storage_stall_ms: u64,
    /// A node silent for this long is down (agents beat every second).
    #[arg(long, default_value_t = 3000)]
    node_ttl_ms: u64,
    /// After becoming leader, no node is judged before this has passed.
    #[arg(long, default_value_t = 3000)]
    node_grace_ms: u64,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

pub fn main(args: ControllerArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gantry controller: starting the async runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("gantry controller: {e:#}");
            1
        }
    }
}

async fn run(args: ControllerArgs) -> Result<()> {
    match args.command {
        ControllerCommand::Run(a) => daemon(a).await,
        ControllerCommand::Members(t) => members(t).await,
        ControllerCommand::Add {
            id,
            address,
            target,
        } => {
            let r = client(&target)?.add_member(id, &address).await?;
            println!(
                "member {id} added: voters {:?}, learners {:?}",
                r.voters, r.learners
            );
            Ok(())
        }
        ControllerCommand::Remove { id, target } => {
            let r = client(&target)?.remove_member(id).await?;
            println!(
                "member {id} removed: voters {:?}, learners {:?}",
                r.voters, r.learners
            );
            Ok(())
        }
        ControllerCommand::TransferLeader { id, target } => {
            let r = client(&target)?.transfer_leader(id).await?;
            println!("member {} is the leader (term {})", r.leader, r.term);
            Ok(())
        }
        ControllerCommand::Status(t) => status(t).await,
        ControllerCommand::Snapshot(SnapshotCommand::Save { file, target }) => {
            let bytes = client(&target)?.snapshot_save().await?;
            let tmp = file.with_extension("tmp");
            std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
            // Check what we got before it replaces anything.
            let f = SnapshotFile::read(&tmp)?;
            std::fs::rename(&tmp, &file).with_context(|| format!("writing {}", file.display()))?;
            println!(
                "snapshot of cluster {} at index {} saved to {} ({} nodes, {} services, {} allocations)",
                f.cluster_id,
                f.meta.last_log_id.map_or(0, |l| l.index),
                file.display(),
                f.state.nodes.len(),
                f.state.services.len(),
                f.state.allocations.len()
            );
            Ok(())
        }
        ControllerCommand::Snapshot(SnapshotCommand::Restore {
            file,
            data_dir,
            id,
            listen,
        }) => {
            let f = SnapshotFile::read(&file)?;
            let cluster = dr::restore(&f, &data_dir, id, &listen)?;
            println!(
                "restored {} into {} as member {id} of new cluster {cluster}; start it with: \
                 gantry controller run --id {id} --listen {listen} --data-dir {}",
                file.display(),
                data_dir.display(),
                data_dir.display()
            );
            Ok(())
        }
        ControllerCommand::Recover {
            data_dir,
            id,
            listen,
        } => {
            eprintln!(
                "WARNING: forcing a NEW ONE-MEMBER cluster from {}.\n\
                 WARNING: every entry in this member's log is kept, committed or not; writes the\n\
                 WARNING: lost members committed but this one never received are gone. Never start\n\
                 WARNING: the old members again with their data dirs: wipe them and --join this one.",
                data_dir.display()
            );
            let last = dr::recover(&data_dir, id, &listen)?;
            println!(
                "recovered {} as member {id} at {listen}, state up to index {}; start it with: \
                 gantry controller run --id {id} --listen {listen} --data-dir {}",
                data_dir.display(),
                last.map_or(0, |l| l.index),
                data_dir.display()
            );
            Ok(())
        }
    }
}

fn client(t: &MemberTarget) -> Result<ControllerClient> {
    t.conn.client()
}

async fn daemon(a: RunArgs) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if a.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    let mut cfg = MemberConfig::new(a.id, a.listen, a.data_dir.clone());
    cfg.advertise = a.advertise.clone();
    if a.cluster_cidr.is_some() || a.node_subnet_prefix.is_some() {
        let default = ClusterNetwork::default();
        let network = ClusterNetwork {
            cidr: a.cluster_cidr.unwrap_or(default.cidr),
            node_prefix: a.node_subnet_prefix.unwrap_or(default.node_prefix),
        };
        if let Some((field, reason)) = network.check() {
            let flag = match field {
                "node_prefix" => "--node-subnet-prefix",
                _ => "--cluster-cidr",
            };
            bail!("{flag}: {reason}");
        }
        cfg.cluster_network = Some(network);
    }
    cfg.timings = RaftTimings {
        heartbeat_ms: a.heartbeat_ms,
        election_min_ms: a.election_timeout_ms,
        election_max_ms: a.election_timeout_ms * 2,
        snapshot_every: a.snapshot_every,
    };
    cfg.write_timeout = Duration::from_millis(a.write_timeout_ms);
    cfg.leader.liveness.ttl = Duration::from_millis(a.node_ttl_ms);
    cfg.leader.liveness.grace = Duration::from_millis(a.node_grace_ms);
    let advertise = a.advertise.clone().unwrap_or_else(|| a.listen.to_string());
    let pki = super::security::MemberPki::new(&a.data_dir);
    if a.insecure {
        tracing::warn!(
            "--insecure: plain TCP, no credentials; anyone who reaches the port owns the cluster"
        );
    } else {
        let tls = pki
            .prepare(
                a.id,
                a.bootstrap,
                a.join.as_deref(),
                a.token.as_deref(),
                &advertise,
                a.cert_ttl,
            )
            .await?;
        cfg.tls = Some(tls);
    }
    let mode = match (a.bootstrap, a.join) {
        (true, _) => StartMode::Bootstrap,
        (false, Some(addr)) => StartMode::Join(addr),
        (false, None) => StartMode::Resume,
    };
    let renew = cfg
        .tls
        .clone()
        .map(|t| tokio::spawn(super::security::renew_member_forever(t, pki.dir.clone())));
    let member = Member::start(cfg, mode).await?;
    tracing::info!(id = member.id, addr = %member.addr, cluster = %member.cluster_id, "controller member running");
    let trimmer = tokio::spawn(gantry_controller::memory::trim_periodically(
        gantry_controller::memory::CONTROLLER_TRIM_EVERY,
    ));
    // A thread, not a task: a hung flush can hold one of the runtime's threads.
    let watch = member.failure_watch();
    let (id, stall) = (member.id, Duration::from_millis(a.storage_stall_ms));
    std::thread::Builder::new()
        .name("gantry-watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(250));
            if let Some(failure) = watch.check(stall) {
                // No stop and no destructors: with sled wedged, dropping the database
                // would wait for a flush that never returns.
                tracing::error!(id, "{failure}; exiting");
                eprintln!("gantry controller run: member {id}: {failure}; exiting");
                std::process::exit(1);
            }
        })?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    trimmer.abort();
    if let Some(r) = renew {
        r.abort();
    }
    member.stop().await;
    Ok(())
}

async fn members(t: MemberTarget) -> Result<()> {
    let st = client(&t)?.status().await?;
    if t.format == Format::Json {
        let v: Vec<_> = st
            .members
            .iter()
            .map(|m| {
                serde_json::json!({"id": m.id, "address": m.address, "voter": m.voter,
                                    "leader": Some(m.id) == st.leader})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = st
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.address.clone(),
                if m.voter { "voter" } else { "learner" }.into(),
                if Some(m.id) == st.leader { "*" } else { "" }.into(),
            ]
        })
        .collect();
    crate::output::table(&["ID", "ADDRESS", "ROLE", "LEADER"], &rows);
    Ok(())
}

async fn status(t: MemberTarget) -> Result<()> {
    let mut c = client(&t)?;
    let first = c.status().await?;
    // Lag is known by the leader: ask it when we can.
    let st = match &first.leader_address {
        Some(addr) if first.leader != Some(first.id) => c.status_of(addr).await.unwrap_or(first),
        _ => first,
    };
    let mut rows = Vec::new();
    let mut json = Vec::new();
    for m in &st.members {
        let own = c.status_of(&m.address).await.ok();
        let state = own
            .as_ref()
            .map_or("unreachable".to_string(), |o| o.state.clone());
        let applied = own.as_ref().and_then(|o| o.last_applied);
        let last_log = own.as_ref().and_then(|o| o.last_log_index);
        let committed = own.as_ref().and_then(|o| o.committed);
        let term = own.as_ref().map(|o| o.current_term);
        let opt = |v: Option<u64>| v.map_or("-".into(), |x| x.to_string());
        rows.push(vec![
            m.id.to_string(),
            m.address.clone(),
            if m.voter { "voter" } else { "learner" }.into(),
            state.clone(),
            opt(term),
            opt(last_log),
            opt(committed),
            opt(applied),
            opt(m.lag),
        ]);
        json.push(
            serde_json::json!({"id": m.id, "address": m.address, "voter": m.voter,
            "state": state, "term": term, "last_log_index": last_log, "committed": committed, "last_applied": applied,
            "matched_index": m.matched_index, "lag": m.lag}),
        );
    }
    if t.format == Format::Json {
        let v = serde_json::json!({"cluster_id": st.cluster_id, "term": st.current_term,
            "leader": st.leader, "members": json});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "cluster {}  term {}  leader {}",
        st.cluster_id,
        st.current_term,
        st.leader.map_or("none".into(), |l| l.to_string())
    );
    crate::output::table(
        &[
            "ID",
            "ADDRESS",
            "ROLE",
            "STATE",
            "TERM",
            "LAST LOG",
            "COMMITTED",
            "APPLIED",
            "LAG",
        ],
        &rows,
    );
    if st.leader.is_none() {
        bail!("no leader: the cluster has no quorum");
    }
    Ok(())
}
