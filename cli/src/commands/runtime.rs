//! `gantry runtime …`: the runc-compatible face of the OCI runtime library.
use clap::Args;

#[derive(Args)]
pub struct RuntimeArgs {
    /// Root directory for container state.
    #[arg(long, default_value = "/run/gantry/runtime")]
    pub root: std::path::PathBuf,
}

pub fn main(_args: RuntimeArgs) -> i32 {
    eprintln!("gantry runtime: not built yet");
    1
}
