//! `gantry-agent`: `gantry agent` in a binary that links only what the agent runs.
//!
//! `gantry agent …` executes this binary when it and `gantry-runtime` sit beside `gantry`
//! (see `exec_slim_agent` in `main.rs`), so the command users type does not change. Why: the
//! agent lives on every machine for as long as the machine runs, and most of its resident
//! memory is not heap but the pages of the executable it has touched — in the one big
//! binary (controller, registry, simulator, CLI …) those pages are interleaved with code the
//! agent never runs, and the kernel maps them in whole folios. The same source files serve
//! both binaries (the `commands` module tree below); code the agent never reaches is left
//! out by the linker, hence the `dead_code` allowance. Measured (release, 30 containers
//! started and removed, 7 s idle, default bridge): 16.9 MiB resident against 22.9 MiB for
//! the same agent run from `gantry`; just started, 14.5 against 19.3 MiB.
#![allow(dead_code)]

mod commands;
mod output;

use clap::Parser;

/// `gantry-agent …` (= `gantry agent …`).
#[derive(Parser)]
#[command(
    name = "gantry agent",
    bin_name = "gantry agent",
    version,
    about = "The engine daemon: serves the container verbs on a unix socket."
)]
struct AgentOnly {
    #[command(flatten)]
    args: commands::agent::AgentArgs,
}

fn main() {
    let only = AgentOnly::parse();
    std::process::exit(commands::agent::main(only.args));
}
