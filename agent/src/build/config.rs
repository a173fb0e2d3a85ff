//! The image config a build produces, and how each step changes it. Pure: no I/O.
//!
//! Vocabulary:
//! - **image config**: the OCI config blob ([`ImageConfig`]): platform, the run config
//!   (`Env`, `Cmd`, `Entrypoint`, `WorkingDir`, `User`, `Labels`, `ExposedPorts`,
//!   `Volumes`, `StopSignal`, and Docker's `Healthcheck`, `Shell`, `OnBuild`), the layers'
//!   diff ids and the history. Fields this module does not know are kept as they came
//!   from the base image;
//! - **config-only step**: an instruction that changes only the config
//!   ([`apply_config_step`]); `RUN`, `COPY`, `ADD` (and a `WORKDIR` that must create its
//!   directory) also add a layer;
//! - **created**: reproducible by default — the epoch (like `ko` and Bazel), or
//!   `SOURCE_DATE_EPOCH` when given — so equal inputs give equal image digests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::instruction::{Command, Healthcheck, Instruction};
use super::stages::{Platform, Step};

/// Docker's default `PATH` (what `RUN` gets when the image sets none).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Errors of reading a base image's config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("image config of {image}: {source}")]
    Parse {
        image: String,
        #[source]
        source: serde_json::Error,
    },
}

/// An OCI image config (with Docker's extensions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: RunConfig,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The `config` object: how a container of the image runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Docker's health check record (durations in nanoseconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub typ: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

impl ImageConfig {
    /// The config of `FROM scratch` on `platform`.
    pub fn scratch(platform: &Platform) -> ImageConfig {
        ImageConfig {
            created: None,
            author: None,
            architecture: platform.arch.clone(),
            os: platform.os.clone(),
            variant: platform.variant.clone(),
            config: RunConfig::default(),
            rootfs: RootFs {
                typ: "layers".into(),
                diff_ids: Vec::new(),
            },
            history: Vec::new(),
            extra: BTreeMap::new(),
        }
    }

    /// A base image's config blob.
    pub fn parse(bytes: &[u8], image: &str) -> Result<ImageConfig, ConfigError> {
        serde_json::from_slice(bytes).map_err(|source| ConfigError::Parse {
            image: image.to_string(),
            source,
        })
    }

    /// The canonical bytes of the config blob.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("image configs serialize")
    }

    /// `Env` as pairs, in order.
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.config
            .env
            .iter()
            .flatten()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.clone(), String::new()),
            })
            .collect()
    }

    pub fn working_dir(&self) -> String {
        self.config.working_dir.clone().unwrap_or_default()
    }

    /// The shell for shell-form commands (`SHELL`, default `/bin/sh -c`).
    pub fn shell(&self) -> Vec<String> {
        self.config
            .shell
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    /// The argv of a `RUN`/`CMD`/`ENTRYPOINT` command.
    pub fn argv(&self, command: &Command) -> Vec<String> {
        match command {
            Command::Exec(args) => args.clone(),
            Command::Shell(line) => {
                let mut v = self.shell();
                v.push(line.clone());
                v
            }
        }
    }

    /// Appends a history entry.
    pub fn record(&mut self, created_by: String, empty_layer: bool) {
        self.history.push(History {
            created: self.created.clone(),
            created_by: Some(created_by),
            comment: Some("gantry build".into()),
            empty_layer,
        });
    }
}

/// The environment a `RUN` sees: the image's `Env`, then the build args in scope that
/// `ENV` does not set, and a default `PATH` if none.
pub fn run_env(config: &ImageConfig, args: &BTreeMap<String, String>) -> Vec<String> {
    let pairs = config.env_pairs();
    let mut out: Vec<String> = config.config.env.clone().unwrap_or_default();
    for (k, v) in args {
        if !pairs.iter().any(|(pk, _)| pk == k) {
            out.push(format!("{k}={v}"));
        }
    }
    if !out.iter().any(|kv| kv.starts_with("PATH=")) {
        out.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    out
}

/// What a config-only step leaves for the builder to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Only the config changed.
    ConfigOnly,
    /// The builder must run this step (RUN, COPY, ADD) or make sure a directory exists
    /// (WORKDIR).
    NeedsFilesystem,
}

/// Applies `step` to the config. `cmd_set_in_stage` tracks whether this stage set `CMD`
/// (an `ENTRYPOINT` resets an inherited `CMD`, as Docker does).
pub fn apply_config_step(
    config: &mut ImageConfig,
    step: &Step,
    cmd_set_in_stage: &mut bool,
) -> Effect {
    let c = &mut config.config;
    match &step.instruction {
        Instruction::Run(_) | Instruction::Copy(_) | Instruction::Add(_) => {
            return Effect::NeedsFilesystem
        }
        Instruction::Workdir(dir) => {
            c.working_dir = Some(dir.clone());
            return Effect::NeedsFilesystem;
        }
        Instruction::Env(pairs) => {
            let env = c.env.get_or_insert_with(Vec::new);
            for kv in pairs {
                let entry = format!("{}={}", kv.key, kv.value);
                match env
                    .iter_mut()
                    .find(|e| e.split_once('=').map(|(k, _)| k).unwrap_or(e) == kv.key)
                {
                    Some(slot) => *slot = entry,
                    None => env.push(entry),
                }
            }
        }
        Instruction::Label(pairs) => {
            let labels = c.labels.get_or_insert_with(BTreeMap::new);
            for kv in pairs {
                labels.insert(kv.key.clone(), kv.value.clone());
            }
        }
        Instruction::Maintainer(m) => config.author = Some(m.clone()),
        Instruction::User(u) => c.user = Some(u.clone()),
        Instruction::Expose(ports) => {
            let map = c.exposed_ports.get_or_insert_with(BTreeMap::new);
            for p in ports {
                let key = if p.contains('/') {
                    p.to_ascii_lowercase()
                } else {
                    format!("{p}/tcp")
                };
                map.insert(key, Value::Object(Default::default()));
            }
        }
        Instruction::Volume(vols) => {
            let map = c.volumes.get_or_insert_with(BTreeMap::new);
            for v in vols {
                map.insert(v.clone(), Value::Object(Default::default()));
            }
        }
        Instruction::StopSignal(s) => c.stop_signal = Some(s.clone()),
        Instruction::Shell(sh) => c.shell = Some(sh.clone()),
        Instruction::Cmd(cmd) => {
            let argv = config.argv(cmd);
            config.config.cmd = Some(argv);
            *cmd_set_in_stage = true;
        }
        Instruction::Entrypoint(cmd) => {
            let argv = config.argv(cmd);
            config.config.entrypoint = Some(argv);
            if !*cmd_set_in_stage {
                config.config.cmd = None;
            }
        }
        Instruction::Healthcheck(h) => {
            let ns = |d: &Option<std::time::Duration>| d.map(|d| d.as_nanos() as u64);
            c.healthcheck = Some(match h {
                Healthcheck::None => HealthConfig {
                    test: vec!["NONE".into()],
                    ..HealthConfig::default()
                },
                Healthcheck::Check {
                    command,
                    interval,
                    timeout,
                    start_period,
                    start_interval,
                    retries,
                } => HealthConfig {
                    test: match command {
                        Command::Exec(args) => {
                            let mut t = vec!["CMD".to_string()];
                            t.extend(args.iter().cloned());
                            t
                        }
                        Command::Shell(line) => vec!["CMD-SHELL".into(), line.clone()],
                    },
                    interval: ns(interval),
                    timeout: ns(timeout),
                    start_period: ns(start_period),
                    start_interval: ns(start_interval),
                    retries: *retries,
                },
            });
        }
        Instruction::OnBuild { text, .. } => {
            c.on_build.get_or_insert_with(Vec::new).push(text.clone());
        }
        // ARG changes no config; FROM is not a step.
        Instruction::Arg(_) | Instruction::From(_) => {}
    }
    Effect::ConfigOnly
}

/// The history line of a step (what `docker history` shows).
pub fn created_by(config: &ImageConfig, step: &Step) -> String {
    match &step.instruction {
        Instruction::Run(cmd) => format!("RUN {}", config.argv(cmd).join(" ")),
        _ => step.text.clone(),
    }
}

/// RFC 3339 of seconds since the epoch (UTC), for `created`.
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::stages::{BuildOptions, Plan};

    fn steps(src: &str) -> Vec<Step> {
        let plan = Plan::from_source(src, &BuildOptions::default()).unwrap();
        plan.expand_stage(plan.target, &[], "").unwrap().steps
    }

    fn apply_all(src: &str) -> (ImageConfig, Vec<Effect>) {
        let mut c = ImageConfig::scratch(&Platform::host());
        let mut cmd_set = false;
        let effects = steps(src)
            .iter()
            .map(|s| apply_config_step(&mut c, s, &mut cmd_set))
            .collect();
        (c, effects)
    }

    #[test]
    fn config_instructions_fill_the_run_config() {
        let (c, effects) = apply_all(
            "FROM scratch\nENV A=1 B=\"two words\"\nENV A=3\nLABEL k=v\nEXPOSE 80 53/UDP\n\
             USER app:app\nWORKDIR /srv\nWORKDIR sub\nVOLUME /data\nSTOPSIGNAL SIGINT\n\
             SHELL [\"/bin/ash\", \"-c\"]\nCMD echo hi\nHEALTHCHECK --interval=5s --retries=2 CMD [\"true\"]\n\
             ONBUILD RUN make\nMAINTAINER me\n",
        );
        let r = &c.config;
        assert_eq!(
            r.env.as_deref().unwrap(),
            ["A=3".to_string(), "B=two words".to_string()]
        );
        assert_eq!(r.labels.as_ref().unwrap()["k"], "v");
        let ports: Vec<&String> = r.exposed_ports.as_ref().unwrap().keys().collect();
        assert_eq!(ports, ["53/udp", "80/tcp"]);
        assert_eq!(r.user.as_deref(), Some("app:app"));
        assert_eq!(r.working_dir.as_deref(), Some("/srv/sub"));
        assert!(r.volumes.as_ref().unwrap().contains_key("/data"));
        assert_eq!(r.stop_signal.as_deref(), Some("SIGINT"));
        // CMD's shell form uses the SHELL set before it.
        assert_eq!(r.cmd.as_deref().unwrap(), ["/bin/ash", "-c", "echo hi"]);
        let h = r.healthcheck.as_ref().unwrap();
        assert_eq!(h.test, ["CMD", "true"]);
        assert_eq!(h.interval, Some(5_000_000_000));
        assert_eq!(h.retries, Some(2));
        assert_eq!(r.on_build.as_deref().unwrap(), ["RUN make"]);
        assert_eq!(c.author.as_deref(), Some("me"));
        // Only the two WORKDIRs need the filesystem.
        let fs = effects
            .iter()
            .filter(|e| **e == Effect::NeedsFilesystem)
            .count();
        assert_eq!(fs, 2);
    }

    #[test]
    fn entrypoint_resets_an_inherited_cmd_but_not_one_set_in_the_stage() {
        let mut base = ImageConfig::scratch(&Platform::host());
        base.config.cmd = Some(vec!["sh".into()]);
        let mut c = base.clone();
        let mut set = false;
        for s in steps("FROM scratch\nENTRYPOINT [\"/app\"]\n") {
            apply_config_step(&mut c, &s, &mut set);
        }
        assert_eq!(c.config.cmd, None);
        assert_eq!(c.config.entrypoint.as_deref().unwrap(), ["/app"]);
        let mut c = base.clone();
        let mut set = false;
        for s in steps("FROM scratch\nCMD [\"x\"]\nENTRYPOINT [\"/app\"]\n") {
            apply_config_step(&mut c, &s, &mut set);
        }
        assert_eq!(c.config.cmd.as_deref().unwrap(), ["x"]);
    }

    #[test]
    fn run_env_has_env_then_args_and_a_default_path() {
        let mut c = ImageConfig::scratch(&Platform::host());
        c.config.env = Some(vec!["A=env".into()]);
        let args: BTreeMap<String, String> = [("A", "arg"), ("B", "b")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = run_env(&c, &args);
        assert_eq!(env[0], format!("PATH={DEFAULT_PATH}"));
        assert!(env.contains(&"A=env".to_string()));
        assert!(!env.contains(&"A=arg".to_string()), "ENV wins over ARG");
        assert!(env.contains(&"B=b".to_string()));
    }

    #[test]
    fn unknown_fields_of_a_base_config_survive_a_round_trip() {
        let raw =
            br#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"ArgsEscaped":true},
            "rootfs":{"type":"layers","diff_ids":["sha256:aa"]},"docker_version":"20.10"}"#;
        let c = ImageConfig::parse(raw, "base").unwrap();
        let v: Value = serde_json::from_slice(&c.to_bytes()).unwrap();
        assert_eq!(v["docker_version"], "20.10");
        assert_eq!(v["config"]["ArgsEscaped"], true);
        assert_eq!(v["rootfs"]["diff_ids"][0], "sha256:aa");
        assert!(ImageConfig::parse(b"{}", "bad")
            .unwrap_err()
            .to_string()
            .contains("bad"));
    }

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
