//! `gantry deploy -f compose.yaml`: the services of a Docker Compose file become gantry
//! services (created, or updated in place — a rolling update when what runs changes).
//!
//! Understood per service: `image`, `command`, `entrypoint`, `environment` (map or
//! list), `ports` (short `[HOST:]CONTAINER[/PROTO]` or long form), `restart`, and under
//! `deploy`: `replicas`, `placement.constraints` (Swarm's `node.labels.KEY == VALUE` /
//! `!=`), `resources.limits` (`cpus`, `memory`, `pids`), `restart_policy.condition`,
//! `update_config.parallelism`. Every other key is reported by its path (a key gantry
//! would silently drop changes what runs); a malformed file is refused with its line.
//! Parsing ([`parse`]) is pure; [`main`] writes the result through the controller.
//!
//! Networks, as under `docker compose`: the top-level `networks:` (keys `name`, `driver`
//! `overlay`/`bridge`, `external`) and each service's `networks:` (a list of names, or a
//! map whose values are empty) become gantry cluster networks (`ServiceSpec.networks`);
//! a service without `networks:` is on the deployment's `default` network, one with
//! `network_mode: host` on none (host networking). A network is named
//! `PROJECT-KEY` (compose's `PROJECT_KEY`; gantry names have no `_`) unless it has a
//! `name:` or is `external` (then its name as written), so two deployments' networks are
//! apart. PROJECT is `--project-name`, else the file's `name:`, else its directory's name.
//! Any other key under a network, or under a service's network entry, is refused with
//! its line (not listed as unknown: a dropped network setting changes who reaches whom).

use super::cluster::{exit, migrate_constraint, runtime, services, Target};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use gantry_controller::state::valid_network_name;
use gantry_controller::state::{
    parse_constraints, Command, PortSpec, Protocol, Reply, Resources, RestartPolicy, ServiceSpec,
    UpdatePolicy,
};
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct DeployArgs {
    /// The Compose file.
    #[arg(short = 'f', long = "file", default_value = "compose.yaml")]
    file: PathBuf,
    /// Deploy even when the file has keys gantry does not understand (they are listed).
    #[arg(long)]
    allow_unknown: bool,
    /// The deployment's name, prefixed to its networks' names (default: the file's
    /// `name:`, else the name of the directory holding the file).
    #[arg(short = 'p', long)]
    project_name: Option<String>,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Deserialize)]
struct ComposeFile {
    #[allow(dead_code)]
    version: Option<serde_yaml_ng::Value>,
    name: Option<String>,
    #[serde(default)]
    services: BTreeMap<String, ComposeService>,
    #[serde(default)]
    networks: BTreeMap<String, Option<ComposeNetwork>>,
}

/// A top-level network. Unknown keys are an error at their line (`deny_unknown_fields`).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ComposeNetwork {
    name: Option<String>,
    driver: Option<String>,
    #[serde(default)]
    external: bool,
}

/// A service's `networks:`: a list of network keys, or a map from key to its (empty)
/// settings. Written by hand rather than as an untagged enum, so that an error inside
/// keeps its line.
#[derive(Debug)]
struct ServiceNetworks(Vec<String>);

impl<'de> Deserialize<'de> for ServiceNetworks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ServiceNetworks;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of network names, or a map of network name to settings")
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(n) = seq.next_element::<String>()? {
                    v.push(n);
                }
                Ok(ServiceNetworks(v))
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(n) = map.next_key::<String>()? {
                    map.next_value::<Option<ServiceNetwork>>()?;
                    v.push(n);
                }
                Ok(ServiceNetworks(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// A service's settings on one network: gantry takes none (`aliases`, fixed addresses,
/// priorities are refused at their line rather than dropped).
#[derive(Debug)]
struct ServiceNetwork;

impl<'de> Deserialize<'de> for ServiceNetwork {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ServiceNetwork;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an empty map")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                match map.next_key::<String>()? {
                    None => Ok(ServiceNetwork),
                    Some(k) => Err(serde::de::Error::custom(format!(
                        "unknown key `{k}`: gantry takes no per-service network settings (no aliases or fixed addresses)"
                    ))),
                }
            }
        }
        d.deserialize_map(V)
    }
}

/// A string (split at whitespace) or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Words {
    One(String),
    Many(Vec<String>),
}

impl Words {
    fn into_vec(self) -> Vec<String> {
        match self {
            Words::One(s) => s.split_whitespace().map(str::to_string).collect(),
            Words::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Environment {
    Map(BTreeMap<String, Option<serde_yaml_ng::Value>>),
    List(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Port {
    Long {
        target: u16,
        published: Option<serde_yaml_ng::Value>,
        protocol: Option<String>,
    },
    Short(serde_yaml_ng::Value),
}

#[derive(Debug, Deserialize)]
struct ComposeService {
    image: Option<String>,
    command: Option<Words>,
    entrypoint: Option<Words>,
    environment: Option<Environment>,
    #[serde(default)]
    ports: Vec<Port>,
    restart: Option<String>,
    deploy: Option<Deploy>,
    networks: Option<ServiceNetworks>,
    network_mode: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct Deploy {
    replicas: Option<u32>,
    placement: Option<Placement>,
    resources: Option<DeployResources>,
    restart_policy: Option<RestartPolicyKeys>,
    update_config: Option<UpdateConfig>,
}

#[derive(Debug, Deserialize)]
struct Placement {
    #[serde(default)]
    constraints: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct DeployResources {
    limits: Option<Limits>,
}

#[derive(Debug, Deserialize)]
struct Limits {
    cpus: Option<serde_yaml_ng::Value>,
    memory: Option<serde_yaml_ng::Value>,
    pids: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct RestartPolicyKeys {
    condition: Option<String>,
}

#[derive(Debug, Deserialize)]
struct UpdateConfig {
    parallelism: Option<u32>,
}

/// The parsed file: gantry service specs by name, and the keys it did not understand.
#[derive(Debug)]
pub struct Parsed {
    /// The deployment's name (its networks' prefix).
    pub project: String,
    pub services: BTreeMap<String, ServiceSpec>,
    pub unknown: Vec<String>,
}

fn scalar(v: &serde_yaml_ng::Value) -> Option<String> {
    match v {
        serde_yaml_ng::Value::String(s) => Some(s.clone()),
        serde_yaml_ng::Value::Number(n) => Some(n.to_string()),
        serde_yaml_ng::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `512m`, `1g`, `1.5G`, `1048576` (bytes; b/k/m/g suffixes, binary units as Compose).
fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v >= 0.0).then_some((v * mult as f64) as u64)
}

fn parse_protocol(field: &str, p: &str) -> Result<Protocol> {
    match p {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => bail!("{field}: protocol {p:?}: expected tcp or udp"),
    }
}

fn parse_port(field: &str, p: &Port) -> Result<PortSpec> {
    let num = |what: &str, s: &str| -> Result<u16> {
        s.parse()
            .map_err(|_| anyhow!("{field}: {what} {s:?} is not a port number"))
    };
    match p {
        Port::Short(v) => {
            let s = scalar(v)
                .ok_or_else(|| anyhow!("{field}: expected \"[HOST:]CONTAINER[/PROTO]\""))?;
            let (ports, proto) = match s.split_once('/') {
                Some((a, b)) => (a, parse_protocol(field, b)?),
                None => (s.as_str(), Protocol::Tcp),
            };
            let parts: Vec<&str> = ports.split(':').collect();
            let (host, container) = match parts.as_slice() {
                [c] => (None, num("container port", c)?),
                [h, c] => (Some(num("host port", h)?), num("container port", c)?),
                _ => bail!("{field}: {s:?}: host IPs and ranges are not supported (use [HOST:]CONTAINER[/PROTO])"),
            };
            Ok(PortSpec {
                container,
                host,
                protocol: proto,
            })
        }
        Port::Long {
            target,
            published,
            protocol,
        } => Ok(PortSpec {
            container: *target,
            host: match published.as_ref().and_then(scalar) {
                Some(h) => Some(num("published", &h)?),
                None => None,
            },
            protocol: parse_protocol(field, protocol.as_deref().unwrap_or("tcp"))?,
        }),
    }
}

/// Swarm's `node.labels.KEY == VALUE` (or `!=`) as a gantry constraint on label KEY.
fn swarm_constraint(field: &str, c: &str) -> Result<String> {
    let c = c.trim();
    match c.strip_prefix("node.labels.") {
        Some(rest) => Ok(migrate_constraint(rest)),
        None => bail!(
            "{field}: {c:?}: only node.labels.KEY == VALUE and != are supported (gantry places by node labels)"
        ),
    }
}

fn restart_of(field: &str, s: &str) -> Result<RestartPolicy> {
    Ok(match s {
        "always" | "any" | "unless-stopped" => RestartPolicy::Always,
        "on-failure" => RestartPolicy::OnFailure,
        "no" | "none" => RestartPolicy::Never,
        _ => bail!("{field}: {s:?}: expected no, always, on-failure or unless-stopped"),
    })
}

/// The deployment's name: `--project-name`, else the file's `name:` (both as written: a
/// gantry network name's characters), else the directory's name made one (lowercase,
/// `_` → `-`, other characters dropped), as compose derives its project name.
fn project_name(flag: Option<&str>, in_file: Option<&str>, dir: Option<&str>) -> Result<String> {
    let explicit = |field: &str, p: &str| -> Result<String> {
        if valid_network_name(p) {
            Ok(p.to_string())
        } else {
            bail!("{field}: {p:?}: a project name is 1-63 of [a-z0-9-], starting alphanumeric (it prefixes network names)")
        }
    };
    if let Some(p) = flag {
        return explicit("--project-name", p);
    }
    if let Some(p) = in_file {
        return explicit("name", p);
    }
    let d: String = dir
        .unwrap_or("")
        .chars()
        .filter_map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => Some(c),
            '_' => Some('-'),
            _ => None,
        })
        .collect();
    let d = d.trim_start_matches('-');
    if d.is_empty() {
        bail!("no project name: the directory's name has no usable characters (give --project-name or a top-level name:)");
    }
    Ok(d.chars().take(MAX_PROJECT_LEN).collect())
}

/// A derived project name is cut to this length, leaving room for `-` + a network key.
const MAX_PROJECT_LEN: usize = 40;

/// The deployment's networks: compose key → gantry network name (`default` always there).
fn resolve_networks(
    project: &str,
    declared: BTreeMap<String, Option<ComposeNetwork>>,
) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (key, n) in declared {
        let n = n.unwrap_or_default();
        let field = format!("networks.{key}");
        if let Some(d) = &n.driver {
            if !matches!(d.as_str(), "overlay" | "bridge") {
                bail!("{field}.driver: {d:?}: gantry networks are its cluster overlay (driver overlay or bridge, or none)");
            }
        }
        let name = match (n.name, n.external) {
            (Some(x), _) => x,
            (None, true) => key.clone(),
            (None, false) => format!("{project}-{key}"),
        };
        if !valid_network_name(&name) {
            bail!(
                "{field}: network name {name:?}: must be 1-63 of [a-z0-9-], starting alphanumeric"
            );
        }
        out.insert(key, name);
    }
    if !out.contains_key("default") {
        let name = format!("{project}-default");
        if !valid_network_name(&name) {
            bail!("the default network's name {name:?}: must be 1-63 of [a-z0-9-] (shorten the project name)");
        }
        out.insert("default".into(), name);
    }
    Ok(out)
}

/// A service's gantry networks (see the module doc).
fn networks_of(
    field: &dyn Fn(&str) -> String,
    nets: &BTreeMap<String, String>,
    mode: Option<&str>,
    list: Option<ServiceNetworks>,
) -> Result<Vec<String>> {
    match (mode, list) {
        (Some("host"), None) => Ok(Vec::new()),
        (Some("host"), Some(_)) => bail!(
            "{}: not with network_mode: host (a host-network service joins no network)",
            field("networks")
        ),
        (Some(m), _) => bail!(
            "{}: {m:?}: gantry supports host, or networks: (no bridge, none, service: or container: modes)",
            field("network_mode")
        ),
        (None, None) => Ok(vec![nets["default"].clone()]),
        (None, Some(ServiceNetworks(keys))) => {
            if keys.is_empty() {
                bail!(
                    "{}: empty (leave it out for the default network, or network_mode: host)",
                    field("networks")
                );
            }
            let mut out: Vec<String> = Vec::new();
            for k in keys {
                let name = nets.get(&k).ok_or_else(|| {
                    anyhow!(
                        "{}: network {k:?} is not declared under the top-level networks:",
                        field("networks")
                    )
                })?;
                if !out.contains(name) {
                    out.push(name.clone());
                }
            }
            Ok(out)
        }
    }
}

fn spec_of(name: &str, s: ComposeService, nets: &BTreeMap<String, String>) -> Result<ServiceSpec> {
    let f = |k: &str| format!("services.{name}.{k}");
    let networks = networks_of(&f, nets, s.network_mode.as_deref(), s.networks)?;
    let image = s
        .image
        .filter(|i| !i.is_empty())
        .ok_or_else(|| anyhow!("{}: required (gantry does not build)", f("image")))?;
    let env = match s.environment {
        None => BTreeMap::new(),
        Some(Environment::Map(m)) => m
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    None => String::new(),
                    Some(v) => scalar(&v).ok_or_else(|| {
                        anyhow!("{}: not a scalar", f(&format!("environment.{k}")))
                    })?,
                };
                Ok((k, v))
            })
            .collect::<Result<_>>()?,
        Some(Environment::List(l)) => l
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                e.split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| {
                        anyhow!(
                            "{}: {e:?}: expected KEY=VALUE",
                            f(&format!("environment[{i}]"))
                        )
                    })
            })
            .collect::<Result<_>>()?,
    };
    let ports = s
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| parse_port(&f(&format!("ports[{i}]")), p))
        .collect::<Result<Vec<_>>>()?;
    let deploy = s.deploy.unwrap_or_default();
    let constraints: Vec<String> = deploy
        .placement
        .map(|p| p.constraints)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, c)| swarm_constraint(&f(&format!("deploy.placement.constraints[{i}]")), c))
        .collect::<Result<_>>()?;
    let constraints = parse_constraints(&f("deploy.placement.constraints"), &constraints)?;
    let mut resources = Resources::default();
    if let Some(l) = deploy.resources.and_then(|r| r.limits) {
        if let Some(c) = &l.cpus {
            let field = f("deploy.resources.limits.cpus");
            let v: f64 = scalar(c)
                .and_then(|s| s.parse().ok())
                .filter(|v: &f64| *v >= 0.0)
                .ok_or_else(|| anyhow!("{field}: expected a number of CPUs, e.g. \"0.5\""))?;
            resources.cpu_millis = (v * 1000.0).round() as u64;
        }
        if let Some(m) = &l.memory {
            let field = f("deploy.resources.limits.memory");
            resources.memory_bytes = scalar(m)
                .and_then(|s| parse_bytes(&s))
                .ok_or_else(|| anyhow!("{field}: expected bytes, e.g. 512M"))?;
        }
        resources.pids = l.pids.unwrap_or(0);
    }
    // deploy.restart_policy wins over the service-level restart, as in Swarm.
    let restart = match (deploy.restart_policy.and_then(|r| r.condition), s.restart) {
        (Some(c), _) => restart_of(&f("deploy.restart_policy.condition"), &c)?,
        (None, Some(r)) => restart_of(&f("restart"), &r)?,
        (None, None) => RestartPolicy::Always,
    };
    let max_parallel = deploy
        .update_config
        .and_then(|u| u.parallelism)
        .unwrap_or(1);
    if max_parallel == 0 {
        bail!(
            "{}: must be at least 1",
            f("deploy.update_config.parallelism")
        );
    }
    Ok(ServiceSpec {
        image,
        command: s.entrypoint.map(Words::into_vec).unwrap_or_default(),
        args: s.command.map(Words::into_vec).unwrap_or_default(),
        env,
        resources,
        replicas: deploy.replicas.unwrap_or(1),
        constraints,
        ports,
        restart,
        update: UpdatePolicy { max_parallel },
        networks,
        ..Default::default()
    })
}

/// Parse a Compose file's text; `file` names it in errors. `project` is the
/// `--project-name` given, `dir` the name of the file's directory (see [`project_name`]).
pub fn parse(file: &Path, text: &str, project: Option<&str>, dir: Option<&str>) -> Result<Parsed> {
    let mut unknown = Vec::new();
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let doc: ComposeFile = serde_ignored::deserialize(de, |path| {
        // serde_ignored shows an Option's content as a `?` segment.
        unknown.push(path.to_string().replace(".?", ""))
    })
    .map_err(|e| match e.location() {
        Some(l) => {
            // the message ends with the location again; say it once
            let msg = e.to_string();
            let at = format!(" at line {} column {}", l.line(), l.column());
            anyhow!(
                "{}: line {}, column {}: {}",
                file.display(),
                l.line(),
                l.column(),
                msg.strip_suffix(&at).unwrap_or(&msg)
            )
        }
        None => anyhow!("{}: {e}", file.display()),
    })?;
    if doc.services.is_empty() {
        bail!("{}: no services", file.display());
    }
    let ctx = || file.display().to_string();
    let project = project_name(project, doc.name.as_deref(), dir).with_context(ctx)?;
    let nets = resolve_networks(&project, doc.networks).with_context(ctx)?;
    let services = doc
        .services
        .into_iter()
        .map(|(name, s)| {
            let spec = spec_of(&name, s, &nets).with_context(ctx)?;
            Ok((name, spec))
        })
        .collect::<Result<_>>()?;
    Ok(Parsed {
        project,
        services,
        unknown,
    })
}

pub fn main(args: DeployArgs) -> i32 {
    exit(
        "deploy",
        runtime().and_then(|rt| rt.block_on(deploy_main(args))),
    )
}

async fn deploy_main(args: DeployArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let dir = std::fs::canonicalize(&args.file)
        .ok()
        .and_then(|p| Some(p.parent()?.file_name()?.to_string_lossy().into_owned()));
    let parsed = parse(
        &args.file,
        &text,
        args.project_name.as_deref(),
        dir.as_deref(),
    )?;
    if !parsed.unknown.is_empty() {
        let list = parsed.unknown.join(", ");
        if !args.allow_unknown {
            bail!(
                "{}: keys gantry does not understand: {list} (remove them, or --allow-unknown to deploy without them)",
                args.file.display()
            );
        }
        eprintln!(
            "gantry deploy: {}: ignoring keys gantry does not understand: {list}",
            args.file.display()
        );
    }
    let mut c = args.target.client()?;
    println!(
        "deployment {}: {} services",
        parsed.project,
        parsed.services.len()
    );
    let existing: BTreeMap<String, u64> = services(&mut c)
        .await?
        .into_iter()
        .map(|s| (s.name, s.modify_index))
        .collect();
    for (name, spec) in parsed.services {
        let expected = existing.get(&name).copied().unwrap_or(0);
        let nets = match spec.networks.is_empty() {
            true => "host network".to_string(),
            false => format!("networks {}", spec.networks.join(", ")),
        };
        let cmd = Command::UpsertService {
            name: name.clone(),
            spec,
            expected_index: Some(expected),
        };
        let (_, r) = c.write(&cmd).await?;
        match r {
            Ok(Reply::ServiceUpserted { version }) => {
                let what = if expected == 0 { "created" } else { "updated" };
                println!("{name}: {what} (version {version}; {nets})");
            }
            Ok(other) => bail!("service {name}: unexpected reply {other:?}"),
            Err(e) => bail!("service {name}: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text` as `c.yaml` in a directory named `shop`.
    fn parse_shop(text: &str) -> Result<Parsed> {
        parse(Path::new("c.yaml"), text, None, Some("shop"))
    }

    const FILE: &str = r#"
version: "3.8"
services:
  web:
    image: registry.local/web:2
    entrypoint: ["/bin/sh", "-c"]
    command: "echo hi"
    environment:
      MODE: prod
      PORT: 8080
    ports:
      - "8080:80"
      - "53/udp"
      - target: 443
        published: "8443"
    restart: on-failure
    deploy:
      replicas: 3
      placement:
        constraints:
          - node.labels.env == qa
          - node.labels.site != cloud
      resources:
        limits:
          cpus: "0.5"
          memory: 256M
          pids: 100
      update_config:
        parallelism: 2
  worker:
    image: worker:1
    environment: ["A=1", "B="]
    deploy:
      restart_policy:
        condition: none
"#;

    #[test]
    fn compose_services_become_specs() {
        let p = parse_shop(FILE).unwrap();
        assert!(p.unknown.is_empty(), "{:?}", p.unknown);
        let web = &p.services["web"];
        assert_eq!(web.image, "registry.local/web:2");
        assert_eq!(web.command, vec!["/bin/sh", "-c"]);
        assert_eq!(web.args, vec!["echo", "hi"]);
        assert_eq!(web.env["MODE"], "prod");
        assert_eq!(web.env["PORT"], "8080");
        assert_eq!(web.replicas, 3);
        assert_eq!(
            web.constraints
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>(),
            vec!["env==qa", "site!=cloud"]
        );
        assert_eq!(
            web.resources,
            Resources {
                cpu_millis: 500,
                memory_bytes: 256 << 20,
                pids: 100
            }
        );
        assert_eq!(web.restart, RestartPolicy::OnFailure);
        assert_eq!(web.update.max_parallel, 2);
        assert_eq!(
            web.ports,
            vec![
                PortSpec {
                    container: 80,
                    host: Some(8080),
                    protocol: Protocol::Tcp
                },
                PortSpec {
                    container: 53,
                    host: None,
                    protocol: Protocol::Udp
                },
                PortSpec {
                    container: 443,
                    host: Some(8443),
                    protocol: Protocol::Tcp
                },
            ]
        );
        let worker = &p.services["worker"];
        assert_eq!(worker.replicas, 1);
        assert_eq!(worker.restart, RestartPolicy::Never);
        assert_eq!(worker.env["B"], "");
        assert!(worker.command.is_empty() && worker.args.is_empty());
    }

    #[test]
    fn unknown_keys_are_reported_by_path() {
        let text = "services:\n  web:\n    image: a\n    healthcheck:\n      test: x\n    deploy:\n      placment: {}\nvolumes: {}\n";
        let p = parse_shop(text).unwrap();
        assert_eq!(
            p.unknown,
            vec![
                "services.web.healthcheck",
                "services.web.deploy.placment",
                "volumes"
            ]
        );
    }

    #[test]
    fn malformed_files_name_the_line_and_bad_values_the_field() {
        let e = parse_shop("services:\n  web:\n    image: a\n   bad: [\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.yaml: line 4"), "{e}");
        let e = parse_shop("services:\n  web:\n    image: a\n    deploy:\n      replicas: many\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 5"), "{e}");
        let e = format!(
            "{:#}",
            parse_shop("services:\n  web:\n    image: a\n    deploy:\n      placement:\n        constraints: [\"node.role == manager\"]\n",
            )
            .unwrap_err()
        );
        assert!(
            e.contains("services.web.deploy.placement.constraints[0]"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            parse_shop("services:\n  web:\n    ports: [\"x:80\"]\n    image: a\n").unwrap_err()
        );
        assert!(e.contains("services.web.ports[0]: host port \"x\""), "{e}");
        let e = format!(
            "{:#}",
            parse_shop("services:\n  web:\n    command: x\n").unwrap_err()
        );
        assert!(e.contains("services.web.image: required"), "{e}");
        assert!(parse_shop("services: {}\n").is_err());
    }

    const NETWORKS: &str = r#"
services:
  front:
    image: web:1
    networks: [frontend]
  api:
    image: api:1
    networks:
      frontend:
      backend: {}
  db:
    image: db:1
    networks: [backend]
  tool:
    image: tool:1
  probe:
    image: probe:1
    network_mode: host
  shared:
    image: s:1
    networks: [ops, frontend, ops]
networks:
  frontend:
    driver: overlay
  backend: {}
  ops:
    external: true
  logs:
    name: central-logs
"#;

    #[test]
    fn compose_networks_become_gantry_networks() {
        let p = parse_shop(NETWORKS).unwrap();
        assert!(p.unknown.is_empty(), "{:?}", p.unknown);
        assert_eq!(p.project, "shop");
        let nets = |s: &str| p.services[s].networks.clone();
        assert_eq!(nets("front"), vec!["shop-frontend"]);
        assert_eq!(nets("api"), vec!["shop-frontend", "shop-backend"]);
        assert_eq!(nets("db"), vec!["shop-backend"]);
        // no networks: the deployment's default network; host mode: none
        assert_eq!(nets("tool"), vec!["shop-default"]);
        assert!(nets("probe").is_empty());
        // external: its own name, unprefixed; a repeat is joined once
        assert_eq!(nets("shared"), vec!["ops", "shop-frontend"]);
        // the project: --project-name, then name:, then the directory
        let named = format!("name: market\n{NETWORKS}");
        let p = parse(Path::new("c.yaml"), &named, None, Some("shop")).unwrap();
        assert_eq!(p.services["db"].networks, vec!["market-backend"]);
        let p = parse(Path::new("c.yaml"), &named, Some("qa1"), Some("shop")).unwrap();
        assert_eq!(p.services["db"].networks, vec!["qa1-backend"]);
        let p = parse(Path::new("c.yaml"), NETWORKS, None, Some("My_Shop.v2")).unwrap();
        assert_eq!(p.project, "my-shopv2");
        assert_eq!(p.services["tool"].networks, vec!["my-shopv2-default"]);
        // a customised default network
        let text = "services:\n  a:\n    image: a\nnetworks:\n  default:\n    name: lan\n";
        assert_eq!(
            parse_shop(text).unwrap().services["a"].networks,
            vec!["lan"]
        );
    }

    /// The error of parsing `text`, with its context chain.
    fn err(text: &str) -> String {
        format!("{:#}", parse_shop(text).unwrap_err())
    }

    #[test]
    fn bad_networks_are_refused_naming_the_line_or_the_field() {
        // unknown keys under a top-level network: refused at their line, not ignored
        let e = err("services:\n  a:\n    image: a\nnetworks:\n  back:\n    driver: overlay\n    ipam: {}\n");
        assert!(e.contains("line 7") && e.contains("ipam"), "{e}");
        let e = err("services:\n  a:\n    image: a\nnetworks:\n  back:\n    internal: true\n");
        assert!(e.contains("line 6") && e.contains("internal"), "{e}");
        // ... and under a service's network entry
        let e = err("services:\n  a:\n    image: a\n    networks:\n      back:\n        aliases: [db]\nnetworks:\n  back: {}\n");
        assert!(e.contains("line 6") && e.contains("aliases"), "{e}");
        // a networks value of the wrong shape
        let e = err("services:\n  a:\n    image: a\n    networks: back\n");
        assert!(e.contains("line 4"), "{e}");
        // values gantry cannot honour name the field
        let e = err("services:\n  a:\n    image: a\nnetworks:\n  back:\n    driver: macvlan\n");
        assert!(e.contains("networks.back.driver: \"macvlan\""), "{e}");
        let e = err("services:\n  a:\n    image: a\n    networks: [back]\n");
        assert!(
            e.contains("services.a.networks: network \"back\" is not declared"),
            "{e}"
        );
        let e = err("services:\n  a:\n    image: a\n    networks: []\n");
        assert!(e.contains("services.a.networks: empty"), "{e}");
        let e = err("services:\n  a:\n    image: a\n    network_mode: bridge\n");
        assert!(e.contains("services.a.network_mode: \"bridge\""), "{e}");
        let e =
            err("services:\n  a:\n    image: a\n    network_mode: host\n    networks: [default]\n");
        assert!(
            e.contains("services.a.networks: not with network_mode: host"),
            "{e}"
        );
        let e = err("services:\n  a:\n    image: a\nnetworks:\n  back_end: {}\n");
        assert!(
            e.contains("networks.back_end: network name \"shop-back_end\""),
            "{e}"
        );
        let e = err("name: Shop\nservices:\n  a:\n    image: a\n");
        assert!(e.contains("name: \"Shop\""), "{e}");
        let e = format!(
            "{:#}",
            parse(
                Path::new("c.yaml"),
                "services:\n  a:\n    image: a\n",
                None,
                Some("__")
            )
            .unwrap_err()
        );
        assert!(e.contains("no project name"), "{e}");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes("1g"), Some(1 << 30));
        assert_eq!(parse_bytes("1.5gb"), Some(3 << 29));
        assert_eq!(parse_bytes("100"), Some(100));
        assert_eq!(parse_bytes("lots"), None);
    }
}
