//! Pure part of the cgroup manager: a spec's `linux.resources` validated and turned into the
//! list of cgroupfs writes for v1 or v2 (which controller, which file, which value, which
//! spec field it came from). No I/O here: unit-tested without root.

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};

use super::CgroupError;

/// One write into a cgroup directory: `value` into `<dir of controller>/<file>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The controller whose directory holds `file` (v1: the hierarchy; v2: must be enabled).
    pub controller: &'static str,
    pub file: String,
    pub value: String,
    /// The spec field the value came from, for errors.
    pub field: String,
}

fn w(
    controller: &'static str,
    file: impl Into<String>,
    value: impl ToString,
    field: impl Into<String>,
) -> Write {
    Write {
        controller,
        file: file.into(),
        value: value.to_string(),
        field: field.into(),
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> CgroupError {
    CgroupError::InvalidResource {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Unlimited is `-1` in the OCI spec (and `0` for pids); every other negative is an error.
fn limit_or_max(field: &str, v: i64) -> Result<Option<i64>, CgroupError> {
    match v {
        -1 => Ok(None),
        v if v < 0 => Err(invalid(
            field,
            format!("{v} is negative (use -1 for unlimited)"),
        )),
        v => Ok(Some(v)),
    }
}

/// A cpuset list like `0-3,5`: digits, commas and ranges with lo <= hi.
fn check_cpu_list(field: &str, s: &str) -> Result<(), CgroupError> {
    if s.trim().is_empty() {
        return Err(invalid(field, "empty list"));
    }
    for part in s.trim().split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let lo: u32 = lo
            .trim()
            .parse()
            .map_err(|_| invalid(field, format!("{part:?} is not a number or range")))?;
        let hi: u32 = hi
            .trim()
            .parse()
            .map_err(|_| invalid(field, format!("{part:?} is not a number or range")))?;
        if lo > hi {
            return Err(invalid(field, format!("range {part:?} is reversed")));
        }
    }
    Ok(())
}

/// Hugepage size as the spec writes it (`2MB`, `1GB`, `64KB`): the cgroupfs file infix.
fn check_page_size(field: &str, s: &str) -> Result<(), CgroupError> {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    if digits.is_empty() || digits.parse::<u64>().is_err() || !["KB", "MB", "GB"].contains(&unit) {
        return Err(invalid(
            field,
            format!("{s:?} is not a page size like 2MB or 1GB"),
        ));
    }
    Ok(())
}

fn device_rule(field: &str, d: &LinuxDeviceCgroup) -> Result<(bool, String), CgroupError> {
    let typ = match d.typ().unwrap_or(LinuxDeviceType::A) {
        LinuxDeviceType::A => 'a',
        LinuxDeviceType::B => 'b',
        LinuxDeviceType::C | LinuxDeviceType::U => 'c',
        LinuxDeviceType::P => {
            return Err(invalid(
                format!("{field}.type"),
                "FIFO devices (p) cannot be in a device cgroup rule",
            ))
        }
    };
    let num = |name: &str, v: Option<i64>| -> Result<String, CgroupError> {
        match v {
            None | Some(-1) => Ok("*".to_string()),
            Some(n) if n >= 0 => Ok(n.to_string()),
            Some(n) => Err(invalid(
                format!("{field}.{name}"),
                format!("{n} is negative (use -1 or leave it out for any)"),
            )),
        }
    };
    let access = d.access().clone().unwrap_or_else(|| "rwm".to_string());
    if access.is_empty() || !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(invalid(
            format!("{field}.access"),
            format!("{access:?} must be made of r, w and m"),
        ));
    }
    let rule = if typ == 'a' {
        // The kernel only accepts "a" alone for the all-devices rule.
        "a".to_string()
    } else {
        format!(
            "{typ} {}:{} {access}",
            num("major", d.major())?,
            num("minor", d.minor())?
        )
    };
    Ok((d.allow(), rule))
}

/// The device nodes every container gets (the runtime creates them), allowed after the spec's
/// own device rules as runc does, so a spec that denies everything still has /dev/null.
pub const DEFAULT_DEVICE_ALLOWS: &[&str] = &[
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",   // null
    "c 1:5 rwm",   // zero
    "c 1:7 rwm",   // full
    "c 1:8 rwm",   // random
    "c 1:9 rwm",   // urandom
    "c 5:0 rwm",   // tty
    "c 5:2 rwm",   // ptmx
    "c 136:* rwm", // pts
];

/// Validates every field gantry applies, independent of the cgroup version.
pub fn validate(r: &LinuxResources) -> Result<(), CgroupError> {
    if let Some(m) = r.memory() {
        let f = "linux.resources.memory";
        let limit = match m.limit() {
            Some(v) => limit_or_max(&format!("{f}.limit"), v)?,
            None => None,
        };
        if let Some(l) = limit {
            // The kernel refuses limits below what is already charged; a few pages is a typo.
            if l < 4096 * 64 {
                return Err(invalid(
                    format!("{f}.limit"),
                    format!("{l} bytes is below the 256 KiB minimum"),
                ));
            }
        }
        if let Some(s) = m.swap() {
            let swap = limit_or_max(&format!("{f}.swap"), s)?;
            if let (Some(sw), Some(l)) = (swap, limit) {
                if sw < l {
                    return Err(invalid(
                        format!("{f}.swap"),
                        format!("memory+swap {sw} is below the memory limit {l}"),
                    ));
                }
            }
        }
        if let Some(v) = m.reservation() {
            limit_or_max(&format!("{f}.reservation"), v)?;
        }
        if let Some(s) = m.swappiness() {
            if s > 100 {
                return Err(invalid(
                    format!("{f}.swappiness"),
                    format!("{s} is above 100"),
                ));
            }
        }
    }
    if let Some(c) = r.cpu() {
        let f = "linux.resources.cpu";
        if let Some(s) = c.shares() {
            if !(2..=262144).contains(&s) {
                return Err(invalid(
                    format!("{f}.shares"),
                    format!("{s} is outside 2..=262144"),
                ));
            }
        }
        if let Some(q) = c.quota() {
            if q != -1 && q < 1000 {
                return Err(invalid(
                    format!("{f}.quota"),
                    format!("{q} µs is below 1000 µs (use -1 for unlimited)"),
                ));
            }
        }
        if let Some(p) = c.period() {
            if !(1000..=1_000_000).contains(&p) {
                return Err(invalid(
                    format!("{f}.period"),
                    format!("{p} µs is outside 1000..=1000000"),
                ));
            }
        }
        if let Some(s) = c.cpus() {
            check_cpu_list(&format!("{f}.cpus"), s)?;
        }
        if let Some(s) = c.mems() {
            check_cpu_list(&format!("{f}.mems"), s)?;
        }
    }
    if let Some(p) = r.pids() {
        if p.limit() < -1 {
            return Err(invalid(
                "linux.resources.pids.limit",
                format!("{} is negative (use -1 or 0 for unlimited)", p.limit()),
            ));
        }
    }
    if let Some(b) = r.block_io() {
        let f = "linux.resources.blockIO";
        for (name, v) in [("weight", b.weight()), ("leafWeight", b.leaf_weight())] {
            if let Some(v) = v {
                if !(10..=1000).contains(&v) {
                    return Err(invalid(
                        format!("{f}.{name}"),
                        format!("{v} is outside 10..=1000"),
                    ));
                }
            }
        }
    }
    for (i, h) in r.hugepage_limits().iter().flatten().enumerate() {
        check_page_size(
            &format!("linux.resources.hugepageLimits[{i}].pageSize"),
            h.page_size(),
        )?;
        limit_or_max(
            &format!("linux.resources.hugepageLimits[{i}].limit"),
            h.limit(),
        )?;
    }
    for (i, d) in r.devices().iter().flatten().enumerate() {
        device_rule(&format!("linux.resources.devices[{i}]"), d)?;
    }
    for key in r.unified().iter().flat_map(|u| u.keys()) {
        if key.is_empty() || key.contains('/') || key.starts_with('.') {
            return Err(invalid(
                format!("linux.resources.unified[{key:?}]"),
                "not a cgroup file name",
            ));
        }
    }
    Ok(())
}

/// cgroup v1 writes, in the order the kernel accepts them.
pub fn v1_writes(r: &LinuxResources) -> Result<Vec<Write>, CgroupError> {
    validate(r)?;
    let mut out = Vec::new();
    if let Some(m) = r.memory() {
        let f = "linux.resources.memory";
        // memory before memory+swap: memsw must stay >= memory at every step.
        if let Some(l) = m.limit() {
            out.push(w(
                "memory",
                "memory.limit_in_bytes",
                l,
                format!("{f}.limit"),
            ));
        }
        if let Some(s) = m.swap() {
            out.push(w(
                "memory",
                "memory.memsw.limit_in_bytes",
                s,
                format!("{f}.swap"),
            ));
        }
        if let Some(v) = m.reservation() {
            out.push(w(
                "memory",
                "memory.soft_limit_in_bytes",
                v,
                format!("{f}.reservation"),
            ));
        }
        if let Some(v) = m.swappiness() {
            out.push(w(
                "memory",
                "memory.swappiness",
                v,
                format!("{f}.swappiness"),
            ));
        }
        if m.disable_oom_killer() == Some(true) {
            out.push(w(
                "memory",
                "memory.oom_control",
                1,
                format!("{f}.disableOOMKiller"),
            ));
        }
    }
    if let Some(c) = r.cpu() {
        let f = "linux.resources.cpu";
        if let Some(v) = c.shares() {
            out.push(w("cpu", "cpu.shares", v, format!("{f}.shares")));
        }
        // period before quota: the kernel checks quota against the period.
        if let Some(v) = c.period() {
            out.push(w("cpu", "cpu.cfs_period_us", v, format!("{f}.period")));
        }
        if let Some(v) = c.quota() {
            out.push(w("cpu", "cpu.cfs_quota_us", v, format!("{f}.quota")));
        }
        if let Some(v) = c.burst() {
            out.push(w("cpu", "cpu.cfs_burst_us", v, format!("{f}.burst")));
        }
        if let Some(v) = c.realtime_period() {
            out.push(w(
                "cpu",
                "cpu.rt_period_us",
                v,
                format!("{f}.realtimePeriod"),
            ));
        }
        if let Some(v) = c.realtime_runtime() {
            out.push(w(
                "cpu",
                "cpu.rt_runtime_us",
                v,
                format!("{f}.realtimeRuntime"),
            ));
        }
        if let Some(v) = c.cpus() {
            out.push(w("cpuset", "cpuset.cpus", v, format!("{f}.cpus")));
        }
        if let Some(v) = c.mems() {
            out.push(w("cpuset", "cpuset.mems", v, format!("{f}.mems")));
        }
    }
    if let Some(p) = r.pids() {
        let v = if p.limit() > 0 {
            p.limit().to_string()
        } else {
            "max".to_string()
        };
        out.push(w("pids", "pids.max", v, "linux.resources.pids.limit"));
    }
    if let Some(b) = r.block_io() {
        out.extend(blkio_writes(b, false));
    }
    for (i, h) in r.hugepage_limits().iter().flatten().enumerate() {
        out.push(w(
            "hugetlb",
            format!("hugetlb.{}.limit_in_bytes", h.page_size()),
            h.limit(),
            format!("linux.resources.hugepageLimits[{i}].limit"),
        ));
    }
    if let Some(devices) = r.devices() {
        for (i, d) in devices.iter().enumerate() {
            let (allow, rule) = device_rule(&format!("linux.resources.devices[{i}]"), d)?;
            let file = if allow {
                "devices.allow"
            } else {
                "devices.deny"
            };
            out.push(w(
                "devices",
                file,
                rule,
                format!("linux.resources.devices[{i}]"),
            ));
        }
        for rule in DEFAULT_DEVICE_ALLOWS {
            out.push(w("devices", "devices.allow", rule, "default devices"));
        }
    }
    if r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return Err(invalid(
            "linux.resources.unified",
            "needs cgroup v2; this host runs cgroup v1",
        ));
    }
    Ok(out)
}

fn blkio_writes(b: &oci_spec::runtime::LinuxBlockIo, v2: bool) -> Vec<Write> {
    let f = "linux.resources.blockIO";
    let mut out = Vec::new();
    if v2 {
        if let Some(v) = b.weight() {
            out.push(w(
                "io",
                "io.weight",
                format!("default {}", blkio_weight_to_io(v)),
                format!("{f}.weight"),
            ));
        }
        for (i, d) in b.weight_device().iter().flatten().enumerate() {
            if let Some(v) = d.weight() {
                out.push(w(
                    "io",
                    "io.weight",
                    format!("{}:{} {}", d.major(), d.minor(), blkio_weight_to_io(v)),
                    format!("{f}.weightDevice[{i}]"),
                ));
            }
        }
    } else {
        if let Some(v) = b.weight() {
            out.push(w("blkio", "blkio.weight", v, format!("{f}.weight")));
        }
        if let Some(v) = b.leaf_weight() {
            out.push(w(
                "blkio",
                "blkio.leaf_weight",
                v,
                format!("{f}.leafWeight"),
            ));
        }
        for (i, d) in b.weight_device().iter().flatten().enumerate() {
            if let Some(v) = d.weight() {
                out.push(w(
                    "blkio",
                    "blkio.weight_device",
                    format!("{}:{} {v}", d.major(), d.minor()),
                    format!("{f}.weightDevice[{i}]"),
                ));
            }
        }
    }
    let throttles = [
        (
            "throttleReadBpsDevice",
            b.throttle_read_bps_device(),
            "blkio.throttle.read_bps_device",
            "rbps",
        ),
        (
            "throttleWriteBpsDevice",
            b.throttle_write_bps_device(),
            "blkio.throttle.write_bps_device",
            "wbps",
        ),
        (
            "throttleReadIOPSDevice",
            b.throttle_read_iops_device(),
            "blkio.throttle.read_iops_device",
            "riops",
        ),
        (
            "throttleWriteIOPSDevice",
            b.throttle_write_iops_device(),
            "blkio.throttle.write_iops_device",
            "wiops",
        ),
    ];
    for (name, list, v1_file, v2_key) in throttles {
        for (i, d) in list.iter().flatten().enumerate() {
            let field = format!("{f}.{name}[{i}]");
            if v2 {
                out.push(w(
                    "io",
                    "io.max",
                    format!("{}:{} {v2_key}={}", d.major(), d.minor(), d.rate()),
                    field,
                ));
            } else {
                out.push(w(
                    "blkio",
                    v1_file,
                    format!("{}:{} {}", d.major(), d.minor(), d.rate()),
                    field,
                ));
            }
        }
    }
    out
}

/// runc's conversion of cpu.shares (2..=262144) to cpu.weight (1..=10000).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + ((shares.clamp(2, 262144) - 2) * 9999) / 262142
}

/// runc's conversion of blkio.weight (10..=1000) to io.weight (1..=10000).
pub fn blkio_weight_to_io(weight: u16) -> u64 {
    1 + (u64::from(weight.clamp(10, 1000)) - 10) * 9999 / 990
}

/// cgroup v2 writes. Device rules are not written: v2 enforces them with an eBPF program
/// gantry does not load (see docs/architecture.md); the runtime still creates only the
/// allowed device nodes.
pub fn v2_writes(r: &LinuxResources) -> Result<Vec<Write>, CgroupError> {
    validate(r)?;
    let mut out = Vec::new();
    if let Some(m) = r.memory() {
        let f = "linux.resources.memory";
        let max = |v: i64| {
            if v == -1 {
                "max".to_string()
            } else {
                v.to_string()
            }
        };
        if let Some(l) = m.limit() {
            out.push(w("memory", "memory.max", max(l), format!("{f}.limit")));
        }
        // OCI swap is memory+swap; v2's memory.swap.max is swap alone (runc's conversion).
        if let Some(s) = m.swap() {
            let value = match (s, m.limit()) {
                (-1, _) => "max".to_string(),
                (0, _) => "0".to_string(),
                (_, None) | (_, Some(-1)) => {
                    return Err(invalid(
                        format!("{f}.swap"),
                        "a swap limit needs a memory limit on cgroup v2",
                    ))
                }
                (s, Some(l)) => (s - l).to_string(),
            };
            out.push(w("memory", "memory.swap.max", value, format!("{f}.swap")));
        }
        if let Some(v) = m.reservation() {
            out.push(w(
                "memory",
                "memory.low",
                max(v),
                format!("{f}.reservation"),
            ));
        }
    }
    if let Some(c) = r.cpu() {
        let f = "linux.resources.cpu";
        if let Some(v) = c.shares() {
            out.push(w(
                "cpu",
                "cpu.weight",
                shares_to_weight(v),
                format!("{f}.shares"),
            ));
        }
        if c.quota().is_some() || c.period().is_some() {
            let quota = match c.quota() {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".to_string(),
            };
            let period = c.period().unwrap_or(100_000);
            out.push(w(
                "cpu",
                "cpu.max",
                format!("{quota} {period}"),
                format!("{f}.quota"),
            ));
        }
        if let Some(v) = c.burst() {
            out.push(w("cpu", "cpu.max.burst", v, format!("{f}.burst")));
        }
        if let Some(v) = c.idle() {
            out.push(w("cpu", "cpu.idle", v, format!("{f}.idle")));
        }
        if let Some(v) = c.cpus() {
            out.push(w("cpuset", "cpuset.cpus", v, format!("{f}.cpus")));
        }
        if let Some(v) = c.mems() {
            out.push(w("cpuset", "cpuset.mems", v, format!("{f}.mems")));
        }
    }
    if let Some(p) = r.pids() {
        let v = if p.limit() > 0 {
            p.limit().to_string()
        } else {
            "max".to_string()
        };
        out.push(w("pids", "pids.max", v, "linux.resources.pids.limit"));
    }
    if let Some(b) = r.block_io() {
        out.extend(blkio_writes(b, true));
    }
    for (i, h) in r.hugepage_limits().iter().flatten().enumerate() {
        let v = if h.limit() == -1 {
            "max".to_string()
        } else {
            h.limit().to_string()
        };
        out.push(w(
            "hugetlb",
            format!("hugetlb.{}.max", h.page_size()),
            v,
            format!("linux.resources.hugepageLimits[{i}].limit"),
        ));
    }
    let mut unified: Vec<_> = r.unified().iter().flatten().collect();
    unified.sort();
    for (key, value) in unified {
        // The controller is the file's prefix ("memory.high" → memory); core files have none.
        let controller = match key.split_once('.').map(|(c, _)| c) {
            Some("memory") => "memory",
            Some("cpu") => "cpu",
            Some("cpuset") => "cpuset",
            Some("io") => "io",
            Some("pids") => "pids",
            Some("hugetlb") => "hugetlb",
            Some("misc") => "misc",
            Some("rdma") => "rdma",
            _ => "",
        };
        out.push(w(
            controller,
            key.clone(),
            value,
            format!("linux.resources.unified[{key:?}]"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxHugepageLimitBuilder,
        LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };

    fn files(ws: &[Write]) -> Vec<(&str, &str)> {
        ws.iter()
            .map(|w| (w.file.as_str(), w.value.as_str()))
            .collect()
    }

    fn full() -> LinuxResources {
        LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64 << 20)
                    .swap(128i64 << 20)
                    .reservation(32i64 << 20)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(512u64)
                    .quota(50_000i64)
                    .period(100_000u64)
                    .cpus("0")
                    .mems("0")
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(32).build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn v1_plan_writes_limits_in_kernel_order() {
        let ws = v1_writes(&full()).unwrap();
        assert_eq!(
            files(&ws),
            vec![
                ("memory.limit_in_bytes", "67108864"),
                ("memory.memsw.limit_in_bytes", "134217728"),
                ("memory.soft_limit_in_bytes", "33554432"),
                ("cpu.shares", "512"),
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "50000"),
                ("cpuset.cpus", "0"),
                ("cpuset.mems", "0"),
                ("pids.max", "32"),
            ]
        );
        assert_eq!(ws[0].field, "linux.resources.memory.limit");
    }

    #[test]
    fn v2_plan_converts_swap_shares_and_quota() {
        let ws = v2_writes(&full()).unwrap();
        assert_eq!(
            files(&ws),
            vec![
                ("memory.max", "67108864"),
                ("memory.swap.max", "67108864"),
                ("memory.low", "33554432"),
                ("cpu.weight", "20"),
                ("cpu.max", "50000 100000"),
                ("cpuset.cpus", "0"),
                ("cpuset.mems", "0"),
                ("pids.max", "32"),
            ]
        );
    }

    #[test]
    fn shares_to_weight_matches_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262144), 10000);
        assert_eq!(blkio_weight_to_io(10), 1);
        assert_eq!(blkio_weight_to_io(1000), 10000);
    }

    #[test]
    fn unlimited_values_become_max() {
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(-1)
                    .swap(-1)
                    .build()
                    .unwrap(),
            )
            .cpu(LinuxCpuBuilder::default().quota(-1i64).build().unwrap())
            .pids(LinuxPidsBuilder::default().limit(0).build().unwrap())
            .build()
            .unwrap();
        let v2 = v2_writes(&r).unwrap();
        assert_eq!(
            files(&v2),
            vec![
                ("memory.max", "max"),
                ("memory.swap.max", "max"),
                ("cpu.max", "max 100000"),
                ("pids.max", "max")
            ]
        );
        let v1 = v1_writes(&r).unwrap();
        assert!(files(&v1).contains(&("pids.max", "max")));
        assert!(files(&v1).contains(&("memory.limit_in_bytes", "-1")));
    }

    #[test]
    fn device_rules_keep_order_and_append_defaults() {
        let r = LinuxResourcesBuilder::default()
            .devices(vec![
                LinuxDeviceCgroupBuilder::default()
                    .allow(false)
                    .access("rwm")
                    .build()
                    .unwrap(),
                LinuxDeviceCgroupBuilder::default()
                    .allow(true)
                    .typ(LinuxDeviceType::C)
                    .major(10i64)
                    .minor(200i64)
                    .access("rw")
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap();
        let ws = v1_writes(&r).unwrap();
        assert_eq!(files(&ws)[0], ("devices.deny", "a"));
        assert_eq!(files(&ws)[1], ("devices.allow", "c 10:200 rw"));
        assert_eq!(ws.len(), 2 + DEFAULT_DEVICE_ALLOWS.len());
        assert!(files(&ws).contains(&("devices.allow", "c 1:3 rwm")));
        // v2 does not write device rules (no eBPF device program).
        assert!(v2_writes(&r).unwrap().is_empty());
    }

    #[test]
    fn blkio_and_hugepages_are_planned() {
        let r = LinuxResourcesBuilder::default()
            .block_io(
                LinuxBlockIoBuilder::default()
                    .weight(500u16)
                    .build()
                    .unwrap(),
            )
            .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
                .page_size("2MB")
                .limit(4i64 << 21)
                .build()
                .unwrap()])
            .build()
            .unwrap();
        assert_eq!(
            files(&v1_writes(&r).unwrap()),
            vec![
                ("blkio.weight", "500"),
                ("hugetlb.2MB.limit_in_bytes", "8388608")
            ]
        );
        assert_eq!(
            files(&v2_writes(&r).unwrap()),
            vec![
                ("io.weight", "default 4950"),
                ("hugetlb.2MB.max", "8388608")
            ]
        );
    }

    fn err_of(r: LinuxResources) -> String {
        v1_writes(&r).unwrap_err().to_string()
    }

    #[test]
    fn invalid_values_name_their_field() {
        let cases: Vec<(LinuxResources, &str)> = vec![
            (
                LinuxResourcesBuilder::default()
                    .memory(LinuxMemoryBuilder::default().limit(-5).build().unwrap())
                    .build()
                    .unwrap(),
                "memory.limit",
            ),
            (
                LinuxResourcesBuilder::default()
                    .memory(LinuxMemoryBuilder::default().limit(100).build().unwrap())
                    .build()
                    .unwrap(),
                "memory.limit",
            ),
            (
                LinuxResourcesBuilder::default()
                    .memory(
                        LinuxMemoryBuilder::default()
                            .limit(64 << 20)
                            .swap(1i64 << 20)
                            .build()
                            .unwrap(),
                    )
                    .build()
                    .unwrap(),
                "memory.swap",
            ),
            (
                LinuxResourcesBuilder::default()
                    .memory(
                        LinuxMemoryBuilder::default()
                            .swappiness(101u64)
                            .build()
                            .unwrap(),
                    )
                    .build()
                    .unwrap(),
                "memory.swappiness",
            ),
            (
                LinuxResourcesBuilder::default()
                    .cpu(LinuxCpuBuilder::default().shares(1u64).build().unwrap())
                    .build()
                    .unwrap(),
                "cpu.shares",
            ),
            (
                LinuxResourcesBuilder::default()
                    .cpu(LinuxCpuBuilder::default().quota(10i64).build().unwrap())
                    .build()
                    .unwrap(),
                "cpu.quota",
            ),
            (
                LinuxResourcesBuilder::default()
                    .cpu(LinuxCpuBuilder::default().period(10u64).build().unwrap())
                    .build()
                    .unwrap(),
                "cpu.period",
            ),
            (
                LinuxResourcesBuilder::default()
                    .cpu(LinuxCpuBuilder::default().cpus("3-1").build().unwrap())
                    .build()
                    .unwrap(),
                "cpu.cpus",
            ),
            (
                LinuxResourcesBuilder::default()
                    .cpu(LinuxCpuBuilder::default().mems("x").build().unwrap())
                    .build()
                    .unwrap(),
                "cpu.mems",
            ),
            (
                LinuxResourcesBuilder::default()
                    .pids(LinuxPidsBuilder::default().limit(-7).build().unwrap())
                    .build()
                    .unwrap(),
                "pids.limit",
            ),
            (
                LinuxResourcesBuilder::default()
                    .block_io(LinuxBlockIoBuilder::default().weight(5u16).build().unwrap())
                    .build()
                    .unwrap(),
                "blockIO.weight",
            ),
            (
                LinuxResourcesBuilder::default()
                    .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
                        .page_size("2XB")
                        .limit(1i64)
                        .build()
                        .unwrap()])
                    .build()
                    .unwrap(),
                "hugepageLimits[0].pageSize",
            ),
            (
                LinuxResourcesBuilder::default()
                    .devices(vec![LinuxDeviceCgroupBuilder::default()
                        .allow(true)
                        .typ(LinuxDeviceType::C)
                        .access("rwx")
                        .build()
                        .unwrap()])
                    .build()
                    .unwrap(),
                "devices[0].access",
            ),
            (
                LinuxResourcesBuilder::default()
                    .devices(vec![LinuxDeviceCgroupBuilder::default()
                        .allow(true)
                        .typ(LinuxDeviceType::C)
                        .major(-3i64)
                        .build()
                        .unwrap()])
                    .build()
                    .unwrap(),
                "devices[0].major",
            ),
        ];
        for (r, field) in cases {
            let e = err_of(r);
            assert!(
                e.contains(&format!("linux.resources.{field}")),
                "{field}: {e}"
            );
        }
    }

    #[test]
    fn unified_is_v2_only_and_checked() {
        let mut map = std::collections::HashMap::new();
        map.insert("memory.high".to_string(), "1000000".to_string());
        let r = LinuxResourcesBuilder::default()
            .unified(map)
            .build()
            .unwrap();
        assert!(err_of(r.clone()).contains("linux.resources.unified"));
        let ws = v2_writes(&r).unwrap();
        assert_eq!(files(&ws), vec![("memory.high", "1000000")]);
        assert_eq!(ws[0].controller, "memory");
        let mut bad = std::collections::HashMap::new();
        bad.insert("../escape".to_string(), "1".to_string());
        let r = LinuxResourcesBuilder::default()
            .unified(bad)
            .build()
            .unwrap();
        assert!(v2_writes(&r).unwrap_err().to_string().contains("unified"));
    }
}
