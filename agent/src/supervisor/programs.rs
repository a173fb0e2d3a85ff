//! Which program the agent starts for a container's shim and OCI runtime.
//!
//! Vocabulary: the **per-container binary** is `gantry-runtime`, a small binary holding
//! only gantry's runtime and shim (see `cli/src/runtime_main.rs` for why it exists); when
//! it is installed beside `gantry` the agent (and `gantry build --store`) run shims and
//! runtime commands from it, else from `gantry` itself (`gantry shim`, `gantry runtime`),
//! which behaves the same.

use std::path::{Path, PathBuf};

/// The per-container binary's file name.
pub const PER_CONTAINER_BINARY: &str = "gantry-runtime";

/// The agent-only binary's file name (`gantry agent` executes it when it is installed
/// beside `gantry`; see `cli/src/agent_main.rs`). It has no runtime or shim of its own.
pub const AGENT_BINARY: &str = "gantry-agent";

/// How to start a shim and the OCI runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Programs {
    pub program: PathBuf,
    /// Arguments before the runtime's own (`["runtime"]` for `gantry runtime …`).
    pub runtime_args: Vec<String>,
    /// Arguments before the shim's own.
    pub shim_args: Vec<String>,
}

/// The choice, given the running gantry binary and whether the per-container binary sits
/// beside it. Pure.
pub fn choose(gantry_exe: &Path, per_container_exists: bool) -> Programs {
    if per_container_exists {
        Programs {
            program: gantry_exe.with_file_name(PER_CONTAINER_BINARY),
            runtime_args: Vec::new(),
            shim_args: vec!["shim".into()],
        }
    } else {
        Programs {
            program: gantry_exe.to_path_buf(),
            runtime_args: vec!["runtime".into()],
            shim_args: vec!["shim".into()],
        }
    }
}

/// [`choose`] for this process (the running `gantry`).
pub fn for_current_exe() -> std::io::Result<Programs> {
    let exe = std::env::current_exe()?;
    let small = exe.with_file_name(PER_CONTAINER_BINARY);
    // `gantry-agent` holds neither runtime nor shim: without the per-container binary the
    // `gantry` beside it serves them.
    let full = if exe.file_name().is_some_and(|n| n == AGENT_BINARY) {
        exe.with_file_name("gantry")
    } else {
        exe
    };
    Ok(choose(&full, small.is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_the_per_container_binary_beside_gantry() {
        let p = choose(Path::new("/usr/bin/gantry"), true);
        assert_eq!(p.program, Path::new("/usr/bin/gantry-runtime"));
        assert!(p.runtime_args.is_empty());
        assert_eq!(p.shim_args, ["shim"]);
        let p = choose(Path::new("/usr/bin/gantry"), false);
        assert_eq!(p.program, Path::new("/usr/bin/gantry"));
        assert_eq!(p.runtime_args, ["runtime"]);
        assert_eq!(p.shim_args, ["shim"]);
    }
}
