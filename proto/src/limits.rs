//! Message-size limits of the three gRPC protocols: the one place they are set. Every
//! tonic server and client gantry runs takes its limits from here (requests are checked
//! when decoded, before any handler runs; a bigger message never reaches an allocation of
//! its declared size).
//!
//! tonic refuses an oversized message with `OUT_OF_RANGE`; the gRPC specification (and
//! grpc-go, grpc-java, grpc-core) say `RESOURCE_EXHAUSTED`. [`resource_exhausted`] rewrites
//! that one answer on our servers, so clients of any implementation see the standard code.

/// Controller API (cluster.proto) requests: commands, membership, watches. A command's JSON
/// has its own, smaller cap (`gantry_controller::limits::MAX_COMMAND_JSON`), so the field
/// error names it before this transport limit is reached.
pub const CLUSTER_REQUEST_MAX: usize = 4 << 20;
/// Controller API replies: a full-state read or watch event grows with the cluster.
pub const CLUSTER_REPLY_MAX: usize = 256 << 20;
/// Raft peer RPCs (raft.proto), both ways: AppendEntries is budgeted to 512 KiB but one
/// entry is never split (a plan placing `MAX_REPLICAS` replicas is ~6 MB), and an
/// InstallSnapshot chunk of 1 MiB is ~4 MB as JSON.
pub const RAFT_MESSAGE_MAX: usize = 64 << 20;
/// Engine API (engine.proto, the agent's unix socket) requests: container specs, stdin
/// chunks, build context chunks (256 KiB each) and the Dockerfile.
pub const ENGINE_REQUEST_MAX: usize = 4 << 20;
/// Engine API replies: container lists, inspect, logs.
pub const ENGINE_REPLY_MAX: usize = 64 << 20;

/// Bytes of an error message in a status. The message travels in an HTTP/2 header
/// (`grpc-message`), and peers refuse header lists over 16 KiB: an error that echoed a
/// huge input (an unknown name, a serde error quoting a field) would reach the client as
/// a broken connection instead of the error.
pub const MAX_STATUS_MESSAGE: usize = 4096;

/// `msg` cut to at most [`MAX_STATUS_MESSAGE`] bytes (at a character boundary, marked `…`).
pub fn status_message(msg: String) -> String {
    if msg.len() <= MAX_STATUS_MESSAGE {
        return msg;
    }
    let mut end = MAX_STATUS_MESSAGE - '…'.len_utf8();
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &msg[..end])
}

const GRPC_STATUS: &str = "grpc-status";
const GRPC_MESSAGE: &str = "grpc-message";
/// tonic's `OUT_OF_RANGE` message for a message over the decoding limit, as it travels
/// (percent-encoded).
const TOO_LARGE: &str = "Error,%20decoded%20message%20length%20too%20large";

/// Rewrites tonic's answer to an oversized request (`OUT_OF_RANGE`, "decoded message length
/// too large") to `RESOURCE_EXHAUSTED`, keeping its message (which names the size and the
/// limit). Use as `Server::builder().layer(tower::util::MapResponseLayer::new(
/// resource_exhausted))`; every other response passes untouched.
pub fn resource_exhausted<B>(
    mut resp: tonic::codegen::http::Response<B>,
) -> tonic::codegen::http::Response<B> {
    use tonic::codegen::http;
    let out_of_range = resp
        .headers()
        .get(GRPC_STATUS)
        .is_some_and(|v| v.as_bytes() == b"11");
    let too_large = resp
        .headers()
        .get(GRPC_MESSAGE)
        .is_some_and(|m| m.as_bytes().starts_with(TOO_LARGE.as_bytes()));
    if out_of_range && too_large {
        resp.headers_mut()
            .insert(GRPC_STATUS, http::HeaderValue::from_static("8"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_status_messages_are_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_STATUS_MESSAGE);
        let cut = status_message(long);
        assert!(cut.len() <= MAX_STATUS_MESSAGE);
        assert!(cut.ends_with('…'));
        assert_eq!(status_message("short".into()), "short");
    }
}
