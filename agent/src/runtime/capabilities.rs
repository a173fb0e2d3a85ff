//! Linux capabilities of the container process, from the spec's `process.capabilities`.
//!
//! Vocabulary (capabilities(7)):
//! - **bounding** set: the ceiling no exec can cross; dropped with `PR_CAPBSET_DROP` while the
//!   process still holds CAP_SETPCAP, i.e. before it changes uid ([`drop_bounding`]);
//! - **effective / permitted / inheritable / ambient** sets: set with `capset` and
//!   `PR_CAP_AMBIENT` after the uid change ([`apply_sets`]). The caller sets
//!   `PR_SET_KEEPCAPS` before `setuid` so the permitted set survives it.
//!
//! A set missing from a present `capabilities` object means the empty set (as in runc); a
//! missing `capabilities` object is the caller's business (it simply does not call us).
//! Everything here acts on the calling thread only: call it in the container's init, after
//! its last fork.

use std::collections::HashSet;

use caps::{CapSet, CapsHashSet};
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

/// Errors of [`drop_bounding`] and [`apply_sets`]; each names the set (and the capability).
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("process.capabilities.{set}: unknown capability {name:?}")]
    Unknown { set: &'static str, name: String },
    #[error(
        "process.capabilities.{set}: {cap} is not in the {of} set (the kernel would refuse it)"
    )]
    NotSubset {
        set: &'static str,
        cap: String,
        of: &'static str,
    },
    #[error("process.capabilities.{set}: {op} failed")]
    Syscall {
        set: &'static str,
        op: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
}

/// Parses a capability name as written in a spec or on a command line (`CAP_NET_ADMIN`,
/// `net_admin`). `set` names the list it came from, for the error.
pub fn parse_capability(set: &'static str, name: &str) -> Result<Capability, CapsError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    bare.parse::<Capability>().map_err(|_| CapsError::Unknown {
        set,
        name: name.to_string(),
    })
}

/// The capability sets a spec asks for, translated to the `caps` crate's type and checked
/// against the kernel's rules. Pure: no syscall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityPlan {
    pub bounding: Option<CapsHashSet>,
    pub effective: CapsHashSet,
    pub permitted: CapsHashSet,
    pub inheritable: CapsHashSet,
    /// The spec's ambient set without [`Self::dropped_ambient`].
    pub ambient: CapsHashSet,
    /// Ambient capabilities the kernel would refuse (not in permitted ∩ inheritable), sorted.
    /// They are left out with a warning, as runc does, rather than failing the container.
    pub dropped_ambient: Vec<String>,
}

impl CapabilityPlan {
    /// Translates and validates: effective ⊆ permitted is an error; ambient capabilities
    /// outside permitted ∩ inheritable are moved to `dropped_ambient`.
    pub fn from_spec(c: &LinuxCapabilities) -> Result<Self, CapsError> {
        let conv =
            |set: &'static str, caps: &Option<Capabilities>| -> Result<CapsHashSet, CapsError> {
                caps.iter()
                    .flatten()
                    .map(|cap| to_caps(set, *cap))
                    .collect::<Result<HashSet<_>, _>>()
            };
        let mut plan = CapabilityPlan {
            bounding: match c.bounding() {
                Some(_) => Some(conv("bounding", c.bounding())?),
                None => None,
            },
            effective: conv("effective", c.effective())?,
            permitted: conv("permitted", c.permitted())?,
            inheritable: conv("inheritable", c.inheritable())?,
            ambient: conv("ambient", c.ambient())?,
            dropped_ambient: Vec::new(),
        };
        subset("effective", &plan.effective, "permitted", &plan.permitted)?;
        let (keep, drop): (CapsHashSet, CapsHashSet) = plan
            .ambient
            .iter()
            .partition(|cap| plan.permitted.contains(cap) && plan.inheritable.contains(cap));
        plan.dropped_ambient = drop.iter().map(|c| c.to_string()).collect();
        plan.dropped_ambient.sort();
        plan.ambient = keep;
        Ok(plan)
    }
}

fn subset(
    set: &'static str,
    a: &CapsHashSet,
    of: &'static str,
    b: &CapsHashSet,
) -> Result<(), CapsError> {
    let mut extra: Vec<_> = a.difference(b).map(|c| c.to_string()).collect();
    extra.sort();
    match extra.into_iter().next() {
        Some(cap) => Err(CapsError::NotSubset { set, cap, of }),
        None => Ok(()),
    }
}

/// oci-spec prints `SYS_ADMIN`; the caps crate parses `CAP_SYS_ADMIN`.
fn to_caps(set: &'static str, cap: Capability) -> Result<caps::Capability, CapsError> {
    format!("CAP_{cap}")
        .parse::<caps::Capability>()
        .map_err(|_| CapsError::Unknown {
            set,
            name: format!("CAP_{cap}"),
        })
}

/// Drops from the bounding set every capability the spec's `bounding` list does not name.
/// Needs CAP_SETPCAP: call it before the uid change. No `bounding` list: nothing changes.
pub fn drop_bounding(c: &LinuxCapabilities) -> Result<(), CapsError> {
    let plan = CapabilityPlan::from_spec(c)?;
    let Some(keep) = plan.bounding else {
        return Ok(());
    };
    for cap in caps::all() {
        if keep.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAPBSET_DROP,
                libc::c_ulong::from(cap.index()),
                0,
                0,
                0,
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            // EINVAL: a capability this kernel does not know; it cannot be held anyway.
            if err.raw_os_error() == Some(libc::EINVAL) {
                continue;
            }
            return Err(CapsError::Syscall {
                set: "bounding",
                op: "PR_CAPBSET_DROP",
                source: caps::errors::CapsError::from(format!("{cap}: {err}")),
            });
        }
    }
    Ok(())
}

/// Sets the inheritable, effective, permitted and ambient sets of the calling thread, in the
/// order the kernel accepts: inheritable while permitted is still full, then effective
/// (⊆ permitted), then permitted, then ambient (⊆ permitted ∩ inheritable).
pub fn apply_sets(c: &LinuxCapabilities) -> Result<(), CapsError> {
    let plan = CapabilityPlan::from_spec(c)?;
    let set = |name: &'static str, which: CapSet, value: &CapsHashSet| {
        caps::set(None, which, value).map_err(|source| CapsError::Syscall {
            set: name,
            op: "capset",
            source,
        })
    };
    set("inheritable", CapSet::Inheritable, &plan.inheritable)?;
    set("effective", CapSet::Effective, &plan.effective)?;
    set("permitted", CapSet::Permitted, &plan.permitted)?;
    if plan.ambient.is_empty() {
        // Clearing is one prctl; kernels without ambient support (< 4.3) have nothing to clear.
        let _ = caps::clear(None, CapSet::Ambient);
    } else {
        set("ambient", CapSet::Ambient, &plan.ambient)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxCapabilitiesBuilder;

    fn set(caps: &[Capability]) -> Capabilities {
        caps.iter().copied().collect()
    }

    #[test]
    fn plan_translates_every_set() {
        let c = LinuxCapabilitiesBuilder::default()
            .bounding(set(&[Capability::Chown, Capability::NetBindService]))
            .effective(set(&[Capability::Chown]))
            .permitted(set(&[Capability::Chown, Capability::NetBindService]))
            .inheritable(set(&[Capability::NetBindService]))
            .ambient(set(&[Capability::NetBindService]))
            .build()
            .unwrap();
        let p = CapabilityPlan::from_spec(&c).unwrap();
        assert_eq!(
            p.bounding.unwrap(),
            [
                caps::Capability::CAP_CHOWN,
                caps::Capability::CAP_NET_BIND_SERVICE
            ]
            .into_iter()
            .collect()
        );
        assert_eq!(
            p.effective,
            [caps::Capability::CAP_CHOWN].into_iter().collect()
        );
        assert_eq!(
            p.ambient,
            [caps::Capability::CAP_NET_BIND_SERVICE]
                .into_iter()
                .collect()
        );
    }

    #[test]
    fn every_oci_capability_maps_to_the_caps_crate() {
        for cap in crate::runtime::defaults::default_capabilities()
            .into_iter()
            .chain([
                Capability::SysAdmin,
                Capability::Bpf,
                Capability::CheckpointRestore,
            ])
        {
            to_caps("bounding", cap).unwrap();
        }
    }

    #[test]
    fn missing_sets_are_empty_and_missing_bounding_is_untouched() {
        // Not the builder: its default fills every set with oci-spec's three defaults.
        let c: LinuxCapabilities = serde_json::from_str("{}").unwrap();
        let p = CapabilityPlan::from_spec(&c).unwrap();
        assert!(p.bounding.is_none());
        assert!(p.effective.is_empty() && p.permitted.is_empty() && p.ambient.is_empty());
    }

    #[test]
    fn effective_outside_permitted_is_an_error_naming_the_set() {
        let c = LinuxCapabilitiesBuilder::default()
            .effective(set(&[Capability::Kill]))
            .permitted(set(&[Capability::Chown]))
            .build()
            .unwrap();
        let err = CapabilityPlan::from_spec(&c).unwrap_err().to_string();
        assert!(err.contains("process.capabilities.effective"), "{err}");
        assert!(err.contains("CAP_KILL"), "{err}");
    }

    #[test]
    fn ambient_outside_permitted_and_inheritable_is_dropped_and_named() {
        let c = LinuxCapabilitiesBuilder::default()
            .effective(set(&[]))
            .inheritable(set(&[Capability::Chown, Capability::Kill]))
            .permitted(set(&[Capability::Chown, Capability::NetRaw]))
            .ambient(set(&[
                Capability::Chown,
                Capability::Kill,
                Capability::NetRaw,
            ]))
            .build()
            .unwrap();
        let p = CapabilityPlan::from_spec(&c).unwrap();
        assert_eq!(
            p.ambient,
            [caps::Capability::CAP_CHOWN].into_iter().collect()
        );
        assert_eq!(p.dropped_ambient, vec!["CAP_KILL", "CAP_NET_RAW"]);
    }

    #[test]
    fn parse_capability_accepts_both_spellings_and_names_the_bad_entry() {
        assert_eq!(
            parse_capability("bounding", "CAP_NET_ADMIN").unwrap(),
            Capability::NetAdmin
        );
        assert_eq!(
            parse_capability("bounding", "sys_admin").unwrap(),
            Capability::SysAdmin
        );
        let err = parse_capability("effective", "CAP_FLY")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("effective") && err.contains("CAP_FLY"),
            "{err}"
        );
    }

    #[test]
    fn unknown_name_in_spec_json_is_rejected_with_its_name() {
        let json = r#"{"bounding":["CAP_CHOWN","CAP_FLY"]}"#;
        let err = serde_json::from_str::<LinuxCapabilities>(json)
            .unwrap_err()
            .to_string();
        assert!(err.contains("FLY"), "{err}");
    }

    /// In a forked child (root): bounding dropped, uid changed to 1000 with KEEPCAPS, the
    /// four sets applied; the child checks them with capget, then execs busybox to show the
    /// kernel's view after exec (ambient → effective for a non-root program).
    #[test]
    fn sets_are_applied_in_a_forked_child_and_survive_exec() {
        use crate::runtime::seccomp::tests::{in_child, require_root};
        use std::ffi::CString;
        require_root();
        assert!(
            std::path::Path::new("/bin/busybox").exists(),
            "this test runs /bin/busybox (busybox-static, installed by scripts/setup.sh)"
        );
        let c = LinuxCapabilitiesBuilder::default()
            .bounding(set(&[
                Capability::Chown,
                Capability::Setgid,
                Capability::Setuid,
                Capability::Setpcap,
                Capability::NetBindService,
            ]))
            .effective(set(&[Capability::Chown]))
            .permitted(set(&[Capability::Chown, Capability::NetBindService]))
            .inheritable(set(&[Capability::NetBindService]))
            .ambient(set(&[Capability::NetBindService]))
            .build()
            .unwrap();
        let prog = CString::new("/bin/busybox").unwrap();
        let args = [
            c"/bin/busybox".as_ptr(),
            c"cat".as_ptr(),
            c"/proc/self/status".as_ptr(),
            std::ptr::null(),
        ];
        let env = [std::ptr::null::<libc::c_char>()];
        let r = in_child(|| {
            if let Err(e) = drop_bounding(&c) {
                crate::runtime::seccomp::tests::say(&format!("drop_bounding: {e}\n"));
                return 2;
            }
            unsafe {
                libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
                if libc::setresgid(1000, 1000, 1000) != 0 || libc::setresuid(1000, 1000, 1000) != 0
                {
                    return 3;
                }
            }
            if let Err(e) = apply_sets(&c) {
                crate::runtime::seccomp::tests::say(&format!("apply_sets: {e:?}\n"));
                return 4;
            }
            let want = CapabilityPlan::from_spec(&c).unwrap();
            let read = |s| caps::read(None, s).unwrap();
            if read(CapSet::Effective) != want.effective
                || read(CapSet::Permitted) != want.permitted
                || read(CapSet::Inheritable) != want.inheritable
                || read(CapSet::Ambient) != want.ambient
                || read(CapSet::Bounding) != want.bounding.clone().unwrap()
            {
                crate::runtime::seccomp::tests::say("sets differ from the plan\n");
                return 5;
            }
            unsafe { libc::execve(prog.as_ptr(), args.as_ptr(), env.as_ptr()) };
            6
        });
        assert_eq!(r.code, Some(0), "{r:?}");
        let field = |name: &str| {
            r.output
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:\t")))
                .unwrap_or_else(|| panic!("{name} missing in {}", r.output))
                .to_string()
        };
        // CAP_NET_BIND_SERVICE is bit 10; the bounding set is bits 0, 6, 7, 8, 10.
        assert_eq!(field("CapAmb"), "0000000000000400");
        assert_eq!(field("CapEff"), "0000000000000400");
        assert_eq!(field("CapPrm"), "0000000000000400");
        assert_eq!(field("CapBnd"), "00000000000005c1");
        assert_eq!(field("Uid").split_whitespace().next(), Some("1000"));
    }
}
