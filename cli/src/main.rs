//! `gantry`: one binary, several roles (like `nomad` or `k3s`).
//!
//! Daemons: `gantry controller …`, `gantry agent …`, `gantry registry …`;
//! `gantry runtime …` is a runc-compatible OCI runtime; `gantry shim` is the per-container
//! supervisor (internal). Every other verb is a client.
//!
//! `main` is synchronous on purpose: the runtime path must start no async runtime and no
//! thread pool (that is where its speed comes from). Commands that need tokio build one.
//!
//! The two per-container entry points, `gantry runtime …` and `gantry shim …`, are
//! dispatched before the full command tree is built: they parse only their own arguments
//! (a clap tree of ~60 subcommands costs heap and pages in code that neither needs; both
//! run once per container, so their start-up time and peak RSS are what the benchmarks of
//! issues 2 and 4 count).
//!
//! `gantry agent …` becomes `gantry-agent …` (same PID, same arguments) when that binary
//! and `gantry-runtime` sit beside this one: the long-lived agent then maps only the code
//! it runs (see `cli/src/agent_main.rs`). `GANTRY_AGENT_IN_PROCESS=1` keeps it here.

mod commands;
mod output;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gantry",
    version,
    about = "A container cluster platform",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// runc-compatible OCI runtime: runs bundles as containers.
    Runtime(commands::runtime::RuntimeArgs),
    /// Controller members: run, membership, Raft status, snapshots and recovery.
    Controller(commands::controller::ControllerArgs),
    /// List images in the local image store.
    Images(commands::image::ImagesArgs),
    /// Manage images: ls, inspect, load, save, tag, rm, prune, unpack.
    Image(commands::image::ImageArgs),
    /// Point a new name at an image.
    Tag(commands::image::TagArgs),
    /// OCI distribution registry server (`gantry registry gc` collects garbage).
    Registry(commands::registry::RegistryArgs),
    /// Builds an image from a Dockerfile into the local image store.
    Build(commands::build::BuildArgs),
    /// Pulls an image from a registry into the local image store.
    Pull(commands::distribution::PullArgs),
    /// Pushes a local image to its registry.
    Push(commands::distribution::PushArgs),
    /// The engine daemon: serves the container verbs on a unix socket.
    Agent(commands::agent::AgentArgs),
    /// Cluster nodes: ls, inspect, label, drain, activate.
    Node(commands::cluster::NodeArgs),
    /// Cluster services: create, ls, ps, inspect, scale, rm.
    Service(commands::cluster::ServiceArgs),
    /// Move a service to nodes matching new constraints (make-before-break).
    Migrate(commands::cluster::MigrateArgs),
    /// Create or update the services of a Docker Compose file.
    Deploy(commands::deploy::DeployArgs),
    /// Join tokens: create (role, ttl), ls, revoke.
    Token(commands::security::TokenArgs),
    /// Credentials: request a certificate with a join token.
    Credential(commands::security::CredentialArgs),
    /// Per-container supervisor (internal: started by the agent).
    #[command(hide = true)]
    Shim(commands::shim::ShimArgs),
    #[command(flatten)]
    Container(commands::container::ContainerCommand),
}

/// `gantry runtime …` parsed on its own (see the module doc).
#[derive(Parser)]
#[command(name = "gantry runtime", version)]
struct RuntimeOnly {
    #[command(flatten)]
    args: commands::runtime::RuntimeArgs,
}

/// `gantry shim …` parsed on its own (see the module doc).
#[derive(Parser)]
#[command(name = "gantry shim", version)]
struct ShimOnly {
    #[command(flatten)]
    args: commands::shim::ShimArgs,
}

fn main() {
    // argv[1] names the role: the top level has no options of its own besides
    // --help/--version, which take the full path below.
    match std::env::args_os()
        .nth(1)
        .as_deref()
        .and_then(|a| a.to_str())
    {
        Some("runtime") => {
            let only = RuntimeOnly::parse_from(std::env::args_os().skip(1));
            std::process::exit(commands::runtime::main(only.args));
        }
        Some("shim") => {
            let only = ShimOnly::parse_from(std::env::args_os().skip(1));
            std::process::exit(commands::shim::main(only.args));
        }
        Some("agent") => exec_slim_agent(),
        _ => {}
    }
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Runtime(args) => commands::runtime::main(args),
        Command::Controller(args) => commands::controller::main(args),
        Command::Images(args) => commands::image::images(args),
        Command::Image(args) => commands::image::main(args),
        Command::Tag(args) => commands::image::tag(args),
        Command::Registry(args) => commands::registry::main(args),
        Command::Build(args) => commands::build::main(args),
        Command::Pull(args) => commands::distribution::pull(args),
        Command::Push(args) => commands::distribution::push(args),
        Command::Agent(args) => commands::agent::main(args),
        Command::Shim(args) => commands::shim::main(args),
        Command::Node(args) => commands::cluster::node(args),
        Command::Service(args) => commands::cluster::service(args),
        Command::Migrate(args) => commands::cluster::migrate(args),
        Command::Deploy(args) => commands::deploy::main(args),
        Command::Token(args) => commands::security::token(args),
        Command::Credential(args) => commands::security::credential(args),
        Command::Container(cmd) => commands::container::main(cmd),
    };
    std::process::exit(code);
}

/// Replaces this process with `gantry-agent` (the agent alone) when it and the
/// per-container binary sit beside this one; returns when it does not (or the exec fails,
/// which is said), and `gantry agent` runs here.
fn exec_slim_agent() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("GANTRY_AGENT_IN_PROCESS").is_some_and(|v| v == "1") {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let slim = exe.with_file_name(gantry_agent::supervisor::programs::AGENT_BINARY);
    let per_container =
        exe.with_file_name(gantry_agent::supervisor::programs::PER_CONTAINER_BINARY);
    if !slim.is_file() || !per_container.is_file() {
        return;
    }
    let err = std::process::Command::new(&slim)
        .args(std::env::args_os().skip(2))
        .exec();
    eprintln!(
        "gantry: could not execute {} ({err}); running the agent in this binary",
        slim.display()
    );
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks (duplicate names, groups, conflicts) over every
    /// subcommand: they otherwise fire only when that subcommand is first used.
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
