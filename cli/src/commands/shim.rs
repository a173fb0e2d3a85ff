//! `gantry shim --config RUN_DIR/shim.json`: the per-container supervisor (internal; the
//! agent starts it). No async runtime here: see `gantry_agent::supervisor`.
use clap::Args;

#[derive(Args)]
pub struct ShimArgs {
    /// The shim config the agent wrote in the container's run dir.
    #[arg(long)]
    pub config: std::path::PathBuf,
}

pub fn main(args: ShimArgs) -> i32 {
    gantry_agent::supervisor::shim::main(&args.config)
}
