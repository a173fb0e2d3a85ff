//! `gantry-runtime`: gantry's per-container roles in a small binary.
//!
//! - `gantry-runtime CMD …` is exactly `gantry runtime CMD …` (the runc-compatible OCI
//!   runtime; usable as `podman --runtime`);
//! - `gantry-runtime shim --config PATH` is exactly `gantry shim --config PATH`.
//!
//! Why a second binary beside the one `gantry`: these two run once (runtime) or live on
//! (shim) per container, so their start-up time and their memory are per-container costs,
//! and both targets of issues 2 and 4 are about them. Executed from the ~180 MB `gantry`
//! (controller, agent, registry, CLI: tokio, tonic, openraft, axum, reqwest …) the runtime
//! process mapped ~7 MiB of that binary's text and 1.2 MiB of relocations at every start
//! (peak RSS above runc's); this one links only the runtime and supervisor code. The same
//! source files serve both binaries (`#[path]` modules below), so there is one
//! implementation. The agent runs its shims and runtime from this binary when it sits
//! next to `gantry` (see `cli/src/commands/agent.rs`), else from `gantry` itself.

mod output;
#[path = "commands/runtime.rs"]
mod runtime;
#[path = "commands/shim.rs"]
mod shim;

use clap::Parser;

/// `gantry-runtime …` (= `gantry runtime …`).
#[derive(Parser)]
#[command(name = "gantry-runtime", version)]
struct RuntimeOnly {
    #[command(flatten)]
    args: runtime::RuntimeArgs,
}

/// `gantry-runtime shim …` (= `gantry shim …`).
#[derive(Parser)]
#[command(name = "gantry-runtime shim", version)]
struct ShimOnly {
    #[command(flatten)]
    args: shim::ShimArgs,
}

fn main() {
    let code = if std::env::args_os().nth(1).is_some_and(|a| a == "shim") {
        shim::main(ShimOnly::parse_from(std::env::args_os().skip(1)).args)
    } else {
        runtime::main(RuntimeOnly::parse_from(std::env::args_os()).args)
    };
    std::process::exit(code);
}
