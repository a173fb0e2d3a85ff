//! gantry's wire protocols. Each `.proto` under `proto/` becomes one module here:
//! - [`engine`]: the local engine API (CLI ↔ agent, on a unix socket);
//! - [`cluster`]: the controller's public API (CLI and agents ↔ controller);
//! - [`raft`]: peer Raft RPCs between controller members (openraft's types as bytes).

pub mod engine {
    tonic::include_proto!("gantry.engine.v1");
}

pub mod cluster {
    tonic::include_proto!("gantry.cluster.v1");
}

pub mod raft {
    tonic::include_proto!("gantry.raft.v1");
}

pub mod limits;
