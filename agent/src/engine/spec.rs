//! The container's OCI runtime spec (`config.json`): a hardened base spec with the
//! container's process, mounts, namespaces, cgroup path and limits written in. Pure: the
//! same record gives the same spec, tested without root.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::record::ContainerRecord;

/// Which network namespace the container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetNs {
    /// The host's (`--network host`).
    Host,
    /// A new, empty one (`--network none`).
    New,
    /// One prepared by the network module (`--network bridge`).
    Path(PathBuf),
}

/// docker's default capability set.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The cgroup path of a container under the agent's cgroup parent (relative to each
/// hierarchy's root on v1, to the unified root on v2).
pub fn cgroup_path(parent: &str, id: &str) -> String {
    format!("/{}/{id}", parent.trim_matches('/'))
}

/// Checks a `--cgroup-parent`: a relative path of one or more plain names (letters,
/// digits, `_ . -`; not `.` or `..`), at most 128 bytes.
pub fn check_cgroup_parent(parent: &str) -> Result<(), String> {
    let p = parent.trim_matches('/');
    if p.is_empty() {
        return Err("is empty".into());
    }
    if p.len() > 128 {
        return Err(format!("is {} bytes long (at most 128)", p.len()));
    }
    for part in p.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(format!("has an empty, `.` or `..` component in {parent:?}"));
        }
        if let Some(c) = part
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(format!(
                "has {c:?} in {part:?} (allowed: letters, digits, `_`, `.`, `-`)"
            ));
        }
    }
    Ok(())
}

/// The base spec: the OCI defaults (namespaces, /proc /dev /sys mounts, masked and
/// read-only paths, no_new_privileges) with docker's capabilities and a deny-all device
/// rule.
pub fn base_spec() -> Value {
    let mut v = serde_json::to_value(oci_spec::runtime::Spec::default()).expect("spec serializes");
    let caps: Vec<&str> = DEFAULT_CAPS.to_vec();
    v["process"]["capabilities"] = json!({
        "bounding": caps, "effective": caps, "permitted": caps
    });
    v["linux"]["resources"]["devices"] = json!([{ "allow": false, "access": "rwm" }]);
    v
}

/// Writes the container into a base spec.
pub fn build(
    base: Value,
    rec: &ContainerRecord,
    uid: u32,
    gid: u32,
    netns: &NetNs,
    resolv: Option<&PathBuf>,
) -> Value {
    let mut v = base;
    let c = &rec.config;
    v["process"]["args"] = json!(c.process.args);
    v["process"]["env"] = json!(c.process.env);
    v["process"]["cwd"] = json!(c.process.cwd);
    v["process"]["user"] = json!({ "uid": uid, "gid": gid });
    v["process"]["terminal"] = json!(false);
    v["root"] = json!({ "path": "rootfs", "readonly": c.read_only });
    v["hostname"] = json!(c.hostname);
    let mut mounts = v["mounts"].as_array().cloned().unwrap_or_default();
    for m in &c.mounts {
        let entry = if m.kind == "tmpfs" {
            json!({ "destination": m.destination, "type": "tmpfs", "source": "tmpfs", "options": m.options })
        } else {
            let mut opts = vec!["rbind".to_string(), "rprivate".to_string()];
            opts.push(if m.read_only { "ro" } else { "rw" }.to_string());
            json!({ "destination": m.destination, "type": "bind", "source": m.source, "options": opts })
        };
        mounts.retain(|x| x["destination"] != entry["destination"]);
        mounts.push(entry);
    }
    if let Some(r) = resolv {
        mounts.push(json!({ "destination": "/etc/resolv.conf", "type": "bind", "source": r, "options": ["rbind", "ro"] }));
    }
    v["mounts"] = Value::Array(mounts);
    let mut ns = vec![
        json!({ "type": "pid" }),
        json!({ "type": "ipc" }),
        json!({ "type": "uts" }),
        json!({ "type": "mount" }),
    ];
    match netns {
        NetNs::Host => {}
        NetNs::New => ns.push(json!({ "type": "network" })),
        NetNs::Path(p) => ns.push(json!({ "type": "network", "path": p })),
    }
    v["linux"]["namespaces"] = Value::Array(ns);
    v["linux"]["cgroupsPath"] = json!(rec.cgroup_path());
    let r = &c.resources;
    let res = &mut v["linux"]["resources"];
    if r.memory_bytes > 0 {
        // swap limited to the same value: no swap beyond the memory limit (docker's default).
        res["memory"] = json!({ "limit": r.memory_bytes, "swap": r.memory_bytes });
    }
    if r.cpus > 0.0 {
        let period: u64 = 100_000;
        res["cpu"] = json!({ "quota": (r.cpus * period as f64) as i64, "period": period });
    }
    if r.pids_limit > 0 {
        res["pids"] = json!({ "limit": r.pids_limit });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::super::config::{MountSpec, ProcessConfig, Resources};
    use super::super::record::*;
    use super::*;

    fn rec() -> ContainerRecord {
        ContainerRecord {
            id: "abc".into(),
            name: "n".into(),
            image: "img".into(),
            image_id: String::new(),
            rootfs: vec![],
            snapshot: None,
            created_nanos: 0,
            config: ContainerConfig {
                process: ProcessConfig {
                    args: vec!["sh".into(), "-c".into(), "echo hi".into()],
                    env: vec!["A=1".into()],
                    cwd: "/w".into(),
                    user: String::new(),
                },
                hostname: "abc".into(),
                mounts: vec![MountSpec {
                    kind: "bind".into(),
                    source: "/tmp".into(),
                    destination: "/data".into(),
                    read_only: true,
                    options: vec![],
                }],
                network: "none".into(),
                publish: vec![],
                resources: Resources {
                    memory_bytes: 64 << 20,
                    cpus: 0.5,
                    pids_limit: 20,
                },
                read_only: true,
                interactive: false,
                auto_remove: false,
                restart: RestartPolicy::No,
                stop_signal: 15,
                labels: Default::default(),
            },
            state: RunState::default(),
            network: None,
            cgroups_path: String::new(),
        }
    }

    #[test]
    fn cgroup_parents_are_plain_relative_names() {
        let mut r = rec();
        assert_eq!(
            r.cgroup_path(),
            "/gantry/abc",
            "records from before the parent"
        );
        r.cgroups_path = cgroup_path("/test-1/a.b_c/", &r.id);
        assert_eq!(r.cgroups_path, "/test-1/a.b_c/abc");
        let v = build(base_spec(), &r, 0, 0, &NetNs::Host, None);
        assert_eq!(v["linux"]["cgroupsPath"], "/test-1/a.b_c/abc");
        for ok in ["gantry", "/kubepods/burstable", "gantry-test-42.x_y"] {
            assert!(check_cgroup_parent(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("", "is empty"),
            ("/", "is empty"),
            ("a/../b", "`..`"),
            ("a//b", "empty"),
            ("a b", "' '"),
            ("x\ny", "'\\n'"),
        ] {
            let e = check_cgroup_parent(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(check_cgroup_parent(&"a".repeat(129))
            .unwrap_err()
            .contains("129 bytes"));
    }

    #[test]
    fn spec_carries_process_limits_mounts_and_namespaces() {
        let v = build(base_spec(), &rec(), 1000, 100, &NetNs::New, None);
        assert_eq!(v["process"]["args"], json!(["sh", "-c", "echo hi"]));
        assert_eq!(v["process"]["user"], json!({"uid": 1000, "gid": 100}));
        assert_eq!(v["process"]["cwd"], "/w");
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["linux"]["cgroupsPath"], "/gantry/abc");
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 20);
        let data = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/data")
            .unwrap();
        assert_eq!(data["options"], json!(["rbind", "rprivate", "ro"]));
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(ns.contains(&"network") && ns.contains(&"pid") && ns.contains(&"mount"));
        // It parses back as a valid OCI spec.
        let _: oci_spec::runtime::Spec = serde_json::from_value(v).unwrap();
    }

    #[test]
    fn host_network_has_no_netns_and_bridge_joins_a_path() {
        let v = build(base_spec(), &rec(), 0, 0, &NetNs::Host, None);
        assert!(!v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network"));
        let v = build(
            base_spec(),
            &rec(),
            0,
            0,
            &NetNs::Path("/run/x/netns".into()),
            None,
        );
        assert!(v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["path"] == "/run/x/netns"));
    }
}
