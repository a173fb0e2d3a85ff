//! The OCI runtime: takes a bundle (`config.json` + root filesystem) and runs it as a
//! container — namespaces, mounts and `pivot_root`, devices, cgroups, capabilities,
//! seccomp, the process — with the OCI lifecycle (create, start, state, kill, delete).
//!
//! Where things are:
//! - [`spec`]: load and check a bundle (errors name the field and the line);
//! - [`plan`]: the pure planner, spec → [`plan::SetupPlan`] (namespaces, mounts, devices,
//!   links, masked and read-only paths);
//! - [`syscall`]: the OS boundary ([`syscall::Syscall`], real and fake);
//! - [`rootfs`]: carries a plan's filesystem part out through a `Syscall`;
//! - [`init`]: the cloned child, from `clone` to `execve`;
//! - [`state`]: state dirs under the runtime root, status derived from the process;
//! - [`container`]: the verbs (create, start, run, state, kill, delete, exec, list);
//! - [`console`]: `process.terminal` (a pty, its master sent over the console socket);
//! - [`cgroups`], [`capabilities`], [`seccomp`]: limits and hardening applied to it;
//!   [`defaults`]: the hardened default spec of `gantry runtime spec`.
//!
//! Vocabulary: **init** is the container's first process (PID 1 in its pid namespace); the
//! **barrier** holds a created container's init before `execve` until `start`; the
//! **runtime root** (default `/run/gantry/runtime`) holds one state dir per container.

pub mod capabilities;
pub mod cgroups;
pub mod console;
pub mod container;
pub mod defaults;
pub mod init;
pub mod plan;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod state;
pub mod syscall;
