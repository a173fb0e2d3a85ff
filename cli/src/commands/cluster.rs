//! `gantry node …`, `gantry service …`, `gantry migrate …`: the cluster's client verbs.
//! Every one talks to any controller member (`--controller` / GANTRY_CONTROLLER); writes
//! are committed through Raft, reads are linearizable.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use gantry_controller::api::ControllerClient;
use gantry_controller::state::{
    parse_constraints, Allocation, Command, Constraint, Desired, Node, NodeStatus, Reply,
    Resources, RestartPolicy, Service, ServiceSpec,
};
use gantry_proto::cluster::ReadKind;
use std::collections::BTreeMap;

#[derive(Args, Clone)]
pub struct Target {
    /// Controller member address(es), comma-separated (default: the context's, else
    /// 127.0.0.1:7700).
    #[arg(long, env = "GANTRY_CONTROLLER", value_delimiter = ',', global = true)]
    pub(crate) controller: Vec<String>,
    /// Credentials and controller addresses (a file written 0600 by `controller run
    /// --bootstrap` or `credential request --context`).
    #[arg(long, env = "GANTRY_CONTEXT", global = true)]
    pub(crate) context: Option<std::path::PathBuf>,
    /// Plain TCP without credentials, for a cluster run with --insecure.
    #[arg(long, env = "GANTRY_INSECURE", global = true,
          value_parser = clap::builder::BoolishValueParser::new(),
          action = clap::ArgAction::SetTrue)]
    pub(crate) insecure: bool,
}

impl Target {
    /// A client of the controllers: mutual TLS with the context's credential, or plain
    /// TCP with --insecure.
    pub(crate) fn client(&self) -> Result<ControllerClient> {
        use gantry_controller::raft::network::Transport;
        let fallback = || vec!["127.0.0.1:7700".to_string()];
        let Some((ca_pem, certs, ctx_controllers)) = self.credentials()? else {
            let addrs = if self.controller.is_empty() {
                fallback()
            } else {
                self.controller.clone()
            };
            return Ok(ControllerClient::new(addrs));
        };
        let transport = Transport::tls(&ca_pem, Some(certs))?;
        let addrs = match (self.controller.is_empty(), ctx_controllers.is_empty()) {
            (false, _) => self.controller.clone(),
            (true, false) => ctx_controllers,
            (true, true) => fallback(),
        };
        Ok(ControllerClient::with_transport(addrs, transport))
    }

    /// The context's CA, credential and controllers; None with --insecure.
    #[allow(clippy::type_complexity)]
    fn credentials(
        &self,
    ) -> Result<
        Option<(
            String,
            std::sync::Arc<gantry_security::tls::CertStore>,
            Vec<String>,
        )>,
    > {
        use gantry_security::context::{default_path, Context};
        if self.insecure {
            return Ok(None);
        }
        let path = self.context.clone().unwrap_or_else(default_path);
        if !path.exists() {
            bail!(
                "no context file at {} (give --context FILE or GANTRY_CONTEXT; \
                 --insecure for a cluster run with --insecure)",
                path.display()
            );
        }
        let ctx = Context::load(&path)?;
        let certs = gantry_security::tls::CertStore::new(&ctx.credential())
            .with_context(|| format!("context {}", path.display()))?;
        Ok(Some((ctx.ca_pem.clone(), certs, ctx.controllers.clone())))
    }

    /// How to dial the node API of node `node`: mutual TLS verifying that node's
    /// certificate (server name NODE.node.gantry), or plain TCP with --insecure.
    fn node_transport(&self, node: &str) -> Result<gantry_controller::raft::network::Transport> {
        use gantry_controller::raft::network::Transport;
        use gantry_security::tls::{client_config, TlsConnector};
        Ok(match self.credentials()? {
            None => Transport::Plain,
            Some((ca_pem, certs, _)) => Transport::Tls(TlsConnector::new(
                client_config(&ca_pem, Some(certs))?,
                &gantry_security::identity::node_server_name(node),
            )?),
        })
    }
}

#[derive(Args)]
pub struct NodeArgs {
    #[command(subcommand)]
    command: NodeCommand,
    #[command(flatten)]
    target: Target,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// List the nodes.
    Ls,
    /// A node as JSON.
    Inspect { name: String },
    /// Set labels (KEY=VALUE) or remove them (KEY-).
    Label {
        name: String,
        #[arg(required = true)]
        changes: Vec<String>,
    },
    /// Move every allocation off the node (make-before-break) and place nothing new.
    Drain { name: String },
    /// Make a drained node schedulable again.
    Activate { name: String },
}

#[derive(Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    command: ServiceCommand,
    #[command(flatten)]
    target: Target,
}

#[derive(Args)]
struct CreateArgs {
    name: String,
    /// Image reference, or rootfs:DIR for a root filesystem present on every node.
    #[arg(long)]
    image: String,
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Placement constraint (repeatable): env==qa, site!=cloud, region in (a,b), gpu.
    #[arg(long = "constraint")]
    constraints: Vec<String>,
    /// KEY=VALUE (repeatable).
    #[arg(long = "env")]
    env: Vec<String>,
    #[arg(long, default_value_t = 0)]
    cpu_millis: u64,
    #[arg(long, default_value_t = 0)]
    memory_bytes: u64,
    #[arg(long, default_value_t = 0)]
    pids: u64,
    /// always | on-failure | never
    #[arg(long, default_value = "always")]
    restart: String,
    /// Replacements in flight at once during updates and migrations.
    #[arg(long, default_value_t = 1)]
    max_parallel: u32,
    /// A cluster network to join (repeatable): the service's containers get addresses on
    /// the overlay, are found by name from services sharing a network, and cannot reach
    /// those sharing none.
    #[arg(long = "network")]
    networks: Vec<String>,
    /// A published endpoint NODEPORT:CONTAINERPORT[/tcp|udp] (repeatable): opened on every
    /// overlay node and balanced over the running replicas (needs --network).
    #[arg(long = "endpoint")]
    endpoints: Vec<String>,
    /// The entrypoint (overrides the image's); the rest after `--` is its arguments.
    #[arg(long = "entrypoint")]
    entrypoint: Vec<String>,
    /// Ordered failover: constraint sets tried in turn, comma-separated, e.g.
    /// site=onprem,site=cloud (k=v is read as k==v). Replicas go to the first set with
    /// feasible nodes; when its nodes are lost, replacements go to the next.
    #[arg(long)]
    failover: Option<String>,
    /// With --failover: when an earlier set has ready nodes with room again, replicas in
    /// a later set move back to it (make-before-break).
    #[arg(long, requires = "failover")]
    failback: bool,
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(Args)]
struct UpdateArgs {
    name: String,
    /// A new image: every allocation is replaced, rolling (max_parallel at a time, each
    /// new one running before an old one stops).
    #[arg(long)]
    image: Option<String>,
    /// Set KEY=VALUE in the environment (repeatable).
    #[arg(long = "env")]
    env: Vec<String>,
    /// Remove KEY from the environment (repeatable).
    #[arg(long = "env-rm")]
    env_rm: Vec<String>,
    /// A new entrypoint (the arguments after `--` replace the old ones when given).
    #[arg(long = "entrypoint")]
    entrypoint: Vec<String>,
    #[arg(long)]
    replicas: Option<u32>,
    #[arg(long)]
    max_parallel: Option<u32>,
    /// Turn fail-back on or off (the service needs a failover order).
    #[arg(long)]
    failback: Option<bool>,
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Create a service.
    Create(CreateArgs),
    /// List the services with running / desired replicas.
    Ls,
    /// The allocations of a service, and why replicas are unplaced.
    Ps { name: String },
    /// A service as JSON.
    Inspect { name: String },
    /// Change the replica count.
    Scale { name: String, replicas: u32 },
    /// Change what runs (image, environment, command): a rolling replacement.
    Update(UpdateArgs),
    /// Replace every allocation of the service, rolling, without changing it.
    Restart { name: String },
    /// Remove a service (its containers are stopped).
    Rm { name: String },
    /// The logs of the service's allocations, wherever they run, each line prefixed with
    /// SERVICE.ALLOC@NODE (read from each node's API).
    Logs {
        name: String,
        /// Keep streaming new lines.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines of each allocation (default: all).
        #[arg(long, short = 'n')]
        tail: Option<u64>,
    },
}

#[derive(Args)]
pub struct MigrateArgs {
    service: String,
    /// The constraints the service moves to (repeatable), e.g. --to env==qa (k=v is
    /// read as k==v); they replace the service's constraints.
    #[arg(long = "to", required = true)]
    to: Vec<String>,
    /// Carry the container's state (a single-instance service): the agent running it
    /// commits its writable layer, pushes it to the registry, and the service continues
    /// from that image on the target.
    #[arg(long)]
    with_state: bool,
    /// With --with-state: the image (REGISTRY/REPO:TAG) to push the state as (default:
    /// the service image's repository, tag state-SERVICE-ALLOC).
    #[arg(long, requires = "with_state")]
    state_image: Option<String>,
    #[command(flatten)]
    target: Target,
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub(crate) fn exit(what: &str, r: Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("gantry {what}: {e:#}");
            1
        }
    }
}

/// Run `f` on a fresh runtime; its exit code (errors printed as `gantry WHAT: …`).
pub(crate) fn block_on(what: &str, f: impl std::future::Future<Output = Result<()>>) -> i32 {
    exit(what, runtime().and_then(|rt| rt.block_on(f)))
}

pub fn node(args: NodeArgs) -> i32 {
    exit(
        "node",
        runtime().and_then(|rt| rt.block_on(node_main(args))),
    )
}

pub fn service(args: ServiceArgs) -> i32 {
    exit(
        "service",
        runtime().and_then(|rt| rt.block_on(service_main(args))),
    )
}

pub fn migrate(args: MigrateArgs) -> i32 {
    exit(
        "migrate",
        runtime().and_then(|rt| rt.block_on(migrate_main(args))),
    )
}

async fn write(c: &mut ControllerClient, cmd: &Command) -> Result<Reply> {
    let (_, resp) = c.write(cmd).await?;
    resp.map_err(|e| anyhow!("{}: {e}", cmd.verb()))
}

async fn nodes(c: &mut ControllerClient) -> Result<Vec<Node>> {
    Ok(c.read::<Vec<Node>>(ReadKind::Nodes, false).await?.1)
}

pub(crate) async fn services(c: &mut ControllerClient) -> Result<Vec<Service>> {
    Ok(c.read::<Vec<Service>>(ReadKind::Services, false).await?.1)
}

async fn allocations(c: &mut ControllerClient) -> Result<Vec<Allocation>> {
    Ok(c.read::<Vec<Allocation>>(ReadKind::Allocations, false)
        .await?
        .1)
}

async fn find_node(c: &mut ControllerClient, name: &str) -> Result<Node> {
    nodes(c)
        .await?
        .into_iter()
        .find(|n| n.name == name)
        .ok_or_else(|| anyhow!("no node named {name:?}"))
}

async fn find_service(c: &mut ControllerClient, name: &str) -> Result<Service> {
    services(c)
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| anyhow!("no service named {name:?}"))
}

fn labels_text(l: &BTreeMap<String, String>) -> String {
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Apply `KEY=VALUE` (set) and `KEY-` (remove) to a label map, naming a bad entry.
pub fn edit_labels(labels: &mut BTreeMap<String, String>, changes: &[String]) -> Result<()> {
    for ch in changes {
        if let Some((k, v)) = ch.split_once('=') {
            if k.is_empty() || v.is_empty() {
                bail!("label {ch:?}: expected KEY=VALUE or KEY-");
            }
            labels.insert(k.to_string(), v.to_string());
        } else if let Some(k) = ch.strip_suffix('-') {
            if labels.remove(k).is_none() {
                bail!("label {ch:?}: the node has no label {k:?}");
            }
        } else {
            bail!("label {ch:?}: expected KEY=VALUE or KEY-");
        }
    }
    Ok(())
}

async fn node_main(args: NodeArgs) -> Result<()> {
    let mut c = args.target.client()?;
    match args.command {
        NodeCommand::Ls => {
            let ns = nodes(&mut c).await?;
            let allocs = allocations(&mut c).await?;
            let rows: Vec<Vec<String>> = ns
                .iter()
                .map(|n| {
                    let running = allocs
                        .iter()
                        .filter(|a| a.node == n.id && a.desired == Desired::Run)
                        .count();
                    vec![
                        n.id.to_string(),
                        n.name.clone(),
                        format!("{:?}", n.status),
                        n.address.clone(),
                        labels_text(&n.labels),
                        format!(
                            "{}m/{}Mi",
                            n.allocatable.cpu_millis,
                            n.allocatable.memory_bytes >> 20
                        ),
                        running.to_string(),
                    ]
                })
                .collect();
            crate::output::table(
                &[
                    "ID",
                    "NAME",
                    "STATUS",
                    "ADDRESS",
                    "LABELS",
                    "ALLOCATABLE",
                    "ALLOCS",
                ],
                &rows,
            );
        }
        NodeCommand::Inspect { name } => {
            let n = find_node(&mut c, &name).await?;
            println!("{}", serde_json::to_string_pretty(&n)?);
        }
        NodeCommand::Label { name, changes } => {
            let n = find_node(&mut c, &name).await?;
            let mut labels = n.labels.clone();
            edit_labels(&mut labels, &changes)?;
            write(&mut c, &Command::SetNodeLabels { node: n.id, labels }).await?;
        }
        NodeCommand::Drain { name } => {
            let n = find_node(&mut c, &name).await?;
            let cmd = Command::SetNodeStatus {
                node: n.id,
                status: NodeStatus::Draining,
            };
            write(&mut c, &cmd).await?;
        }
        NodeCommand::Activate { name } => {
            let n = find_node(&mut c, &name).await?;
            let cmd = Command::SetNodeStatus {
                node: n.id,
                status: NodeStatus::Ready,
            };
            write(&mut c, &cmd).await?;
        }
    }
    Ok(())
}

fn parse_restart(s: &str) -> Result<RestartPolicy> {
    Ok(match s {
        "always" => RestartPolicy::Always,
        "on-failure" => RestartPolicy::OnFailure,
        "never" | "no" => RestartPolicy::Never,
        _ => bail!("--restart {s:?}: expected always, on-failure or never"),
    })
}

fn spec_of(a: &CreateArgs) -> Result<ServiceSpec> {
    let env = parse_env(&a.env)?;
    Ok(ServiceSpec {
        image: a.image.clone(),
        command: a.entrypoint.clone(),
        args: a.args.clone(),
        env,
        resources: Resources {
            cpu_millis: a.cpu_millis,
            memory_bytes: a.memory_bytes,
            pids: a.pids,
        },
        replicas: a.replicas,
        constraints: parse_constraints("--constraint", &a.constraints)?,
        restart: parse_restart(&a.restart)?,
        update: gantry_controller::state::UpdatePolicy {
            max_parallel: a.max_parallel,
        },
        failover: match &a.failover {
            Some(f) => parse_failover(f)?,
            None => Vec::new(),
        },
        failback: a.failback,
        networks: a.networks.clone(),
        endpoints: a
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| parse_endpoint(e).with_context(|| format!("--endpoint[{i}] {e:?}")))
            .collect::<Result<_>>()?,
        ..Default::default()
    })
}

/// `NODEPORT:CONTAINERPORT[/tcp|udp]`.
fn parse_endpoint(s: &str) -> Result<gantry_controller::state::PortMapping> {
    let (ports, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let protocol = match proto {
        "tcp" => gantry_controller::state::Protocol::Tcp,
        "udp" => gantry_controller::state::Protocol::Udp,
        _ => bail!("protocol must be tcp or udp"),
    };
    let (host, container) = ports
        .split_once(':')
        .ok_or_else(|| anyhow!("expected NODEPORT:CONTAINERPORT"))?;
    Ok(gantry_controller::state::PortMapping {
        host: host.parse().context("node port")?,
        container: container.parse().context("container port")?,
        protocol,
    })
}

/// Split at commas outside parentheses (`region in (a,b)` stays one item).
fn split_top_level(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for ch in s.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    out.push(cur);
    out.into_iter().map(|x| x.trim().to_string()).collect()
}

/// `--failover site=onprem,site=cloud`: one constraint set per comma-separated item, in
/// order; a bad item is named by its position.
pub fn parse_failover(s: &str) -> Result<Vec<Vec<Constraint>>> {
    let items = split_top_level(s);
    if items.iter().any(String::is_empty) {
        bail!("--failover {s:?}: empty entry (expected C1,C2,… e.g. site=onprem,site=cloud)");
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            parse_constraints("--failover", &[migrate_constraint(item)])
                .map_err(|e| anyhow!("--failover[{i}] {item:?}: {e}"))
        })
        .collect()
}

fn parse_env(items: &[String]) -> Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|e| {
            e.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("--env {e:?}: expected KEY=VALUE"))
        })
        .collect()
}

/// The spec after `service update`; an update that changes nothing is refused.
fn updated_spec(old: &ServiceSpec, a: &UpdateArgs) -> Result<ServiceSpec> {
    let mut spec = old.clone();
    if let Some(image) = &a.image {
        if image.is_empty() {
            bail!("--image: must not be empty");
        }
        spec.image = image.clone();
    }
    spec.env.extend(parse_env(&a.env)?);
    for k in &a.env_rm {
        if spec.env.remove(k).is_none() {
            bail!("--env-rm {k:?}: the service has no such variable");
        }
    }
    if !a.entrypoint.is_empty() {
        spec.command = a.entrypoint.clone();
    }
    if !a.args.is_empty() {
        spec.args = a.args.clone();
    }
    if let Some(r) = a.replicas {
        spec.replicas = r;
    }
    if let Some(p) = a.max_parallel {
        if p == 0 {
            bail!("--max-parallel: must be at least 1");
        }
        spec.update.max_parallel = p;
    }
    if let Some(f) = a.failback {
        if f && spec.failover.is_empty() {
            bail!("--failback: the service has no failover order to fall back along");
        }
        spec.failback = f;
    }
    if &spec == old {
        bail!("nothing to update (give --image, --env, --env-rm, --entrypoint, args, --replicas, --max-parallel or --failback)");
    }
    Ok(spec)
}

async fn upsert(
    c: &mut ControllerClient,
    name: &str,
    spec: ServiceSpec,
    expected: u64,
) -> Result<()> {
    let cmd = Command::UpsertService {
        name: name.to_string(),
        spec,
        expected_index: Some(expected),
    };
    write(c, &cmd).await.map(|_| ())
}

async fn service_main(args: ServiceArgs) -> Result<()> {
    let mut c = args.target.client()?;
    match args.command {
        ServiceCommand::Logs { name, follow, tail } => {
            return service_logs(&args.target, &mut c, &name, follow, tail).await;
        }
        ServiceCommand::Create(a) => {
            let spec = spec_of(&a)?;
            upsert(&mut c, &a.name, spec, 0).await?;
            println!("{}", a.name);
        }
        ServiceCommand::Ls => {
            let svcs = services(&mut c).await?;
            let allocs = allocations(&mut c).await?;
            let rows: Vec<Vec<String>> = svcs
                .iter()
                .map(|s| {
                    let running = allocs
                        .iter()
                        .filter(|a| {
                            a.service == s.name
                                && a.desired == Desired::Run
                                && a.observed == gantry_controller::state::Observed::Running
                        })
                        .count();
                    vec![
                        s.name.clone(),
                        s.spec.image.clone(),
                        format!("{running}/{}", s.spec.replicas),
                        s.version.to_string(),
                        s.spec
                            .constraints
                            .iter()
                            .map(|c| c.to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                    ]
                })
                .collect();
            crate::output::table(
                &["NAME", "IMAGE", "REPLICAS", "VERSION", "CONSTRAINTS"],
                &rows,
            );
        }
        ServiceCommand::Ps { name } => {
            let s = find_service(&mut c, &name).await?;
            let ns: BTreeMap<u64, String> = nodes(&mut c)
                .await?
                .into_iter()
                .map(|n| (n.id, n.name))
                .collect();
            let rows: Vec<Vec<String>> = allocations(&mut c)
                .await?
                .into_iter()
                .filter(|a| a.service == s.name)
                .map(|a| {
                    vec![
                        a.id.to_string(),
                        ns.get(&a.node)
                            .cloned()
                            .unwrap_or_else(|| a.node.to_string()),
                        a.version.to_string(),
                        format!("{:?}", a.desired),
                        format!("{:?}", a.observed),
                        a.container.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            crate::output::table(
                &[
                    "ALLOC",
                    "NODE",
                    "VERSION",
                    "DESIRED",
                    "OBSERVED",
                    "CONTAINER",
                ],
                &rows,
            );
            if let Some(reason) = c.unplaced().await?.get(&s.name) {
                println!("unplaced: {reason}");
            }
        }
        ServiceCommand::Inspect { name } => {
            let s = find_service(&mut c, &name).await?;
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
        ServiceCommand::Scale { name, replicas } => {
            let s = find_service(&mut c, &name).await?;
            let mut spec = s.spec.clone();
            spec.replicas = replicas;
            upsert(&mut c, &name, spec, s.modify_index).await?;
        }
        ServiceCommand::Update(a) => {
            let s = find_service(&mut c, &a.name).await?;
            let spec = updated_spec(&s.spec, &a)?;
            upsert(&mut c, &s.name, spec, s.modify_index).await?;
            println!("{}", s.name);
        }
        ServiceCommand::Restart { name } => {
            let s = find_service(&mut c, &name).await?;
            let mut spec = s.spec.clone();
            spec.restart_token = spec.restart_token.wrapping_add(1);
            upsert(&mut c, &s.name, spec, s.modify_index).await?;
            println!("{}", s.name);
        }
        ServiceCommand::Rm { name } => {
            write(&mut c, &Command::RemoveService { name }).await?;
        }
    }
    Ok(())
}

/// One line (or chunk) of an allocation's log, as `service logs` prints it.
struct LogLine {
    prefix: String,
    record: gantry_proto::engine::LogRecord,
}

/// `gantry service logs`: ask the node API of every node that holds an allocation of the
/// service for that allocation's log; print every record with its allocation's prefix
/// (merged by time, or as they arrive with --follow). An allocation whose container is
/// gone (stopped and removed) has no log; a node that cannot be asked is reported on
/// stderr, and the command fails if no allocation could be read.
async fn service_logs(
    target: &Target,
    c: &mut ControllerClient,
    name: &str,
    follow: bool,
    tail: Option<u64>,
) -> Result<()> {
    use gantry_proto::engine::{node_client::NodeClient, AllocationLogsRequest};
    use std::io::Write;
    let svc = find_service(c, name).await?;
    let ns: BTreeMap<u64, Node> = nodes(c).await?.into_iter().map(|n| (n.id, n)).collect();
    let mut allocs: Vec<Allocation> = allocations(c)
        .await?
        .into_iter()
        .filter(|a| a.service == svc.name)
        .collect();
    allocs.sort_by_key(|a| a.id);
    if allocs.is_empty() {
        bail!("service {name:?} has no allocations (yet): nothing has logs");
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<LogLine>(1024);
    let mut tasks = tokio::task::JoinSet::new();
    for a in &allocs {
        let Some(node) = ns.get(&a.node) else {
            continue;
        };
        let prefix = format!("{}.{}@{}", a.service, a.id, node.name);
        let Some(api) = node.api.clone() else {
            eprintln!("{prefix}: node {} serves no node API (its agent runs --api-listen none or is older)", node.name);
            continue;
        };
        let transport = target.node_transport(&node.name)?;
        let req = AllocationLogsRequest {
            service: a.service.clone(),
            allocation: a.id,
            follow,
            tail: tail.map_or(-1, |t| t as i64),
        };
        let running = a.desired == Desired::Run;
        let tx = tx.clone();
        tasks.spawn(async move {
            let fail = |e: String| Err(format!("{prefix}: {e}"));
            let channel = match gantry_controller::raft::network::channel(&api, &transport) {
                Ok(ch) => ch,
                Err(e) => return fail(format!("node API {api}: {e}")),
            };
            let mut client = NodeClient::new(channel)
                .max_decoding_message_size(gantry_proto::limits::ENGINE_REPLY_MAX);
            let mut stream = match client.allocation_logs(req).await {
                Ok(r) => r.into_inner(),
                // a finished allocation's container is removed: it has no log to show
                Err(s) if s.code() == tonic::Code::NotFound && !running => return Ok(false),
                Err(s) => return fail(format!("node API {api}: {}", s.message())),
            };
            loop {
                match stream.message().await {
                    Ok(Some(record)) => {
                        let line = LogLine {
                            prefix: prefix.clone(),
                            record,
                        };
                        if tx.send(line).await.is_err() {
                            return Ok(true);
                        }
                    }
                    Ok(None) => return Ok(true),
                    Err(s) => return fail(format!("node API {api}: {}", s.message())),
                }
            }
        });
    }
    drop(tx);
    let print = |l: &LogLine| {
        let mut data = l.record.data.clone();
        if !data.ends_with(b"\n") {
            data.push(b'\n');
        }
        let mut out = Vec::with_capacity(l.prefix.len() + 3 + data.len());
        out.extend_from_slice(l.prefix.as_bytes());
        out.extend_from_slice(b" | ");
        out.extend_from_slice(&data);
        let _ = if l.record.stream == "stderr" {
            std::io::stderr().lock().write_all(&out)
        } else {
            std::io::stdout().lock().write_all(&out)
        };
    };
    let mut collected = Vec::new();
    while let Some(l) = rx.recv().await {
        if follow {
            print(&l);
        } else {
            collected.push(l);
        }
    }
    collected.sort_by_key(|l| l.record.time_unix_nanos);
    collected.iter().for_each(print);
    let mut read = 0;
    let mut errors = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(true)) => read += 1,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(e.to_string()),
        }
    }
    for e in &errors {
        eprintln!("gantry service logs: {e}");
    }
    if read == 0 {
        bail!(
            "no log of service {name:?} could be read ({} allocations, {} unreachable)",
            allocs.len(),
            errors.len()
        );
    }
    Ok(())
}

/// `k=v` as `k==v`; other constraint forms as given.
pub(crate) fn migrate_constraint(s: &str) -> String {
    if !s.contains("==") && !s.contains("!=") && !s.contains(" in ") {
        if let Some((k, v)) = s.split_once('=') {
            return format!("{k}=={v}");
        }
    }
    s.to_string()
}

async fn migrate_main(args: MigrateArgs) -> Result<()> {
    let mut c = args.target.client()?;
    let s = find_service(&mut c, &args.service).await?;
    let to: Vec<String> = args.to.iter().map(|t| migrate_constraint(t)).collect();
    let mut spec = s.spec.clone();
    // Make-before-break is the scheduler's: allocations on nodes that no longer match
    // keep running until their replacements run (at most max_parallel at once).
    spec.constraints = parse_constraints("--to", &to)?;
    if args.with_state {
        // the state first: nothing changes if it cannot be carried
        spec.image = commit_state(&args, &mut c, &s).await?;
    }
    upsert(&mut c, &s.name, spec, s.modify_index).await?;
    println!("{}: moving to {}", s.name, to.join(","));
    Ok(())
}

/// The repository of an image reference that names a registry (`HOST[:PORT]/REPO`,
/// without tag or digest); None for a reference without a registry or a `rootfs:` image.
fn registry_repository(image: &str) -> Option<String> {
    if image.starts_with("rootfs:") {
        return None;
    }
    let name = image.split('@').next()?;
    let name = match name.rsplit_once(':') {
        Some((n, tag)) if !tag.contains('/') => n,
        _ => name,
    };
    let (host, _) = name.split_once('/')?;
    (host.contains('.') || host.contains(':') || host == "localhost").then(|| name.to_string())
}

/// `migrate --with-state`: the agent running the service's only allocation commits its
/// container and pushes it; the image reference the service continues from.
async fn commit_state(args: &MigrateArgs, c: &mut ControllerClient, s: &Service) -> Result<String> {
    use gantry_proto::engine::{node_client::NodeClient, CommitAllocationRequest};
    if s.spec.replicas != 1 {
        bail!(
            "--with-state: service {:?} has {} replicas; the state of one container can \
             only be carried for a single-instance service (replicas 1)",
            s.name,
            s.spec.replicas
        );
    }
    let running: Vec<Allocation> = allocations(c)
        .await?
        .into_iter()
        .filter(|a| {
            a.service == s.name
                && a.desired == Desired::Run
                && a.observed == gantry_controller::state::Observed::Running
        })
        .collect();
    let [a] = running.as_slice() else {
        bail!(
            "--with-state: service {:?} has {} running allocations, not one: its state \
             can be carried only from a running container",
            s.name,
            running.len()
        );
    };
    let image = match &args.state_image {
        Some(i) => i.clone(),
        None => match registry_repository(&s.spec.image) {
            Some(repo) => format!("{repo}:state-{}-{}", s.name, a.id),
            None => bail!(
                "--with-state: the service's image {:?} names no registry to push the \
                 state to; give --state-image REGISTRY/REPO:TAG",
                s.spec.image
            ),
        },
    };
    let node = nodes(c)
        .await?
        .into_iter()
        .find(|n| n.id == a.node)
        .ok_or_else(|| anyhow!("allocation {}: node {} is gone", a.id, a.node))?;
    let api = node.api.clone().ok_or_else(|| {
        anyhow!(
            "--with-state: node {} serves no node API (its agent runs --api-listen none)",
            node.name
        )
    })?;
    let channel =
        gantry_controller::raft::network::channel(&api, &args.target.node_transport(&node.name)?)?;
    let reply = NodeClient::new(channel)
        .commit_allocation(CommitAllocationRequest {
            service: s.name.clone(),
            allocation: a.id,
            image: image.clone(),
        })
        .await
        .map_err(|st| anyhow!("--with-state: node {} ({api}): {}", node.name, st.message()))?
        .into_inner();
    println!(
        "{}: state of allocation {} on {} pushed as {image} ({})",
        s.name, a.id, node.name, reply.digest
    );
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_image_goes_to_the_service_image_registry() {
        let r = |i| registry_repository(i);
        assert_eq!(
            r("127.0.0.1:5000/app/web:1").as_deref(),
            Some("127.0.0.1:5000/app/web")
        );
        assert_eq!(r("reg.example/web").as_deref(), Some("reg.example/web"));
        assert_eq!(
            r("localhost/web@sha256:00").as_deref(),
            Some("localhost/web")
        );
        assert_eq!(r("busybox:1"), None);
        assert_eq!(r("library/busybox"), None);
        assert_eq!(r("rootfs:/srv/root"), None);
    }

    #[test]
    fn labels_are_set_and_removed_and_bad_entries_named() {
        let mut l: BTreeMap<String, String> = [("env".to_string(), "dev".to_string())].into();
        edit_labels(&mut l, &["env=qa".into(), "site=onprem".into()]).unwrap();
        assert_eq!(labels_text(&l), "env=qa,site=onprem");
        edit_labels(&mut l, &["site-".into()]).unwrap();
        assert_eq!(labels_text(&l), "env=qa");
        let e = edit_labels(&mut l, &["nope-".into()]).unwrap_err();
        assert!(e.to_string().contains("\"nope-\""), "{e}");
        assert!(edit_labels(&mut l, &["=x".into()]).is_err());
    }

    #[test]
    fn bad_service_input_names_the_flag_and_entry() {
        let mut a = CreateArgs {
            name: "web".into(),
            image: "busybox".into(),
            replicas: 1,
            constraints: vec!["env==qa".into(), "env=~qa".into()],
            env: vec![],
            cpu_millis: 0,
            memory_bytes: 0,
            pids: 0,
            restart: "always".into(),
            max_parallel: 1,
            networks: vec![],
            endpoints: vec![],
            entrypoint: vec![],
            failover: None,
            failback: false,
            args: vec![],
        };
        let e = spec_of(&a).unwrap_err().to_string();
        assert!(e.contains("--constraint[1]"), "{e}");
        a.constraints = vec!["env==qa".into()];
        a.env = vec!["NOEQUALS".into()];
        let e = spec_of(&a).unwrap_err().to_string();
        assert!(e.contains("--env \"NOEQUALS\""), "{e}");
        a.env = vec!["A=1".into()];
        a.restart = "sometimes".into();
        let e = spec_of(&a).unwrap_err().to_string();
        assert!(e.contains("--restart \"sometimes\""), "{e}");
        a.restart = "on-failure".into();
        let spec = spec_of(&a).unwrap();
        assert_eq!(spec.env["A"], "1");
        assert_eq!(spec.restart, RestartPolicy::OnFailure);
        assert_eq!(spec.constraints.len(), 1);
    }

    #[test]
    fn failover_sets_parse_in_order_and_bad_entries_are_named() {
        let f = parse_failover("site=onprem, site=cloud,region in (a,b)").unwrap();
        let shown: Vec<Vec<String>> = f
            .iter()
            .map(|set| set.iter().map(|c| c.to_string()).collect())
            .collect();
        assert_eq!(shown.len(), 3);
        assert_eq!(shown[0], vec!["site==onprem"]);
        assert_eq!(shown[1], vec!["site==cloud"]);
        assert!(shown[2][0].starts_with("region in"), "{shown:?}");
        let e = parse_failover("site=onprem,,site=cloud").unwrap_err();
        assert!(e.to_string().contains("empty entry"), "{e}");
        let e = parse_failover("site=onprem,=~x").unwrap_err();
        assert!(e.to_string().contains("--failover[1]"), "{e}");
    }

    fn update_args(name: &str) -> UpdateArgs {
        UpdateArgs {
            name: name.into(),
            image: None,
            env: vec![],
            env_rm: vec![],
            entrypoint: vec![],
            replicas: None,
            max_parallel: None,
            failback: None,
            args: vec![],
        }
    }

    #[test]
    fn failback_is_switched_by_update_and_needs_a_failover_order() {
        let mut old = ServiceSpec {
            image: "a:1".into(),
            replicas: 1,
            ..Default::default()
        };
        let mut a = update_args("db");
        a.failback = Some(true);
        let e = updated_spec(&old, &a).unwrap_err();
        assert!(e.to_string().contains("no failover order"), "{e}");
        old.failover = vec![parse_constraints("--failover", &["site==a".to_string()]).unwrap()];
        assert!(updated_spec(&old, &a).unwrap().failback);
        old.failback = true;
        a.failback = Some(false);
        assert!(!updated_spec(&old, &a).unwrap().failback);
    }

    #[test]
    fn update_changes_only_what_is_given_and_refuses_no_change() {
        let old = ServiceSpec {
            image: "a:1".into(),
            command: vec!["/bin/sleep".into()],
            args: vec!["100".into()],
            env: [
                ("KEEP".to_string(), "1".to_string()),
                ("DROP".to_string(), "x".to_string()),
            ]
            .into(),
            replicas: 2,
            ..Default::default()
        };
        let mut a = update_args("web");
        assert!(updated_spec(&old, &a)
            .unwrap_err()
            .to_string()
            .contains("nothing to update"));
        a.image = Some("a:2".into());
        a.env = vec!["NEW=2".into()];
        a.env_rm = vec!["DROP".into()];
        let s = updated_spec(&old, &a).unwrap();
        assert_eq!(s.image, "a:2");
        assert_eq!(s.command, old.command);
        assert_eq!(s.args, old.args);
        assert_eq!(s.replicas, 2);
        assert_eq!(
            s.env.keys().map(String::as_str).collect::<Vec<_>>(),
            vec!["KEEP", "NEW"]
        );
        a.env_rm = vec!["NOPE".into()];
        assert!(updated_spec(&old, &a)
            .unwrap_err()
            .to_string()
            .contains("--env-rm \"NOPE\""));
        a.env_rm = vec![];
        a.max_parallel = Some(0);
        assert!(updated_spec(&old, &a).is_err());
    }

    #[test]
    fn migrate_reads_k_eq_v_as_equality() {
        assert_eq!(migrate_constraint("env=qa"), "env==qa");
        assert_eq!(migrate_constraint("env!=qa"), "env!=qa");
        assert_eq!(migrate_constraint("region in (a,b)"), "region in (a,b)");
    }
}
