//! TODO(hardening merge): stand-ins for `runtime::cgroups`, `runtime::seccomp` and
//! `runtime::capabilities`, which the hardening work builds. They do nothing silently:
//! any spec that asks for resources, capabilities or seccomp is refused with a clear error
//! until the real modules are merged and this file is deleted.

use oci_spec::runtime::{LinuxCapabilities, LinuxResources, LinuxSeccomp};

#[derive(Debug, thiserror::Error)]
#[error(
    "{what} is not supported yet by gantry runtime (cgroups/seccomp/capabilities are being added)"
)]
pub struct NotYet {
    pub what: &'static str,
}

pub mod cgroups {
    use super::*;
    pub type CgroupError = NotYet;
    /// Without cgroup support no cgroup is created; asking for limits is refused.
    #[derive(Debug)]
    pub struct CgroupManager;
    impl CgroupManager {
        pub fn new(_cgroups_path: &str) -> Result<Self, CgroupError> {
            Ok(Self)
        }
        pub fn create(&self, resources: Option<&LinuxResources>) -> Result<(), CgroupError> {
            match resources {
                Some(_) => Err(NotYet {
                    what: "linux.resources (cgroups)",
                }),
                None => Ok(()),
            }
        }
        pub fn add_task(&self, _pid: nix::unistd::Pid) -> Result<(), CgroupError> {
            Ok(())
        }
        pub fn pids(&self) -> Result<Vec<nix::unistd::Pid>, CgroupError> {
            Err(NotYet {
                what: "listing a container's processes (cgroups)",
            })
        }
        pub fn destroy(&self) -> Result<(), CgroupError> {
            Ok(())
        }
    }
}

pub mod seccomp {
    use super::*;
    pub type SeccompError = NotYet;
    #[derive(Debug, Clone)]
    pub struct Program;
    pub fn compile(_s: &LinuxSeccomp) -> Result<Program, SeccompError> {
        Err(NotYet {
            what: "linux.seccomp",
        })
    }
    pub fn install(_p: &Program) -> Result<(), SeccompError> {
        Err(NotYet {
            what: "linux.seccomp",
        })
    }
}

pub mod capabilities {
    use super::*;
    pub type CapsError = NotYet;
    pub fn drop_bounding(_c: &LinuxCapabilities) -> Result<(), CapsError> {
        Err(NotYet {
            what: "process.capabilities",
        })
    }
    pub fn apply_sets(_c: &LinuxCapabilities) -> Result<(), CapsError> {
        Err(NotYet {
            what: "process.capabilities",
        })
    }
}

/// Parent-side check, so a refused spec fails before any process exists.
pub mod capabilities_check {
    pub fn check(_c: &oci_spec::runtime::LinuxCapabilities) -> Result<(), super::NotYet> {
        Err(super::NotYet {
            what: "process.capabilities",
        })
    }
}
