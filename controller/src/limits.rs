//! The controller's input limits: the one list of how much a request may carry. Each
//! limit is checked where the input is validated (the API before decoding, `State::apply`
//! for every command, whoever sent it), and a refusal names the field and the limit. gRPC
//! message sizes live in `gantry_proto::limits`; docs/architecture.md ("Input limits")
//! has the table of all of them.
//!
//! Commands are validated in `State::apply`, so these limits are part of the replicated
//! transition function: raising one is always safe, lowering one can refuse, on replay, a
//! command an older member accepted.

/// Bytes of a Write request's `command_json` (checked before it is decoded).
pub const MAX_COMMAND_JSON: usize = 1 << 20;
/// Commands in one `Batch` (the proposer batches at most this many).
pub const MAX_BATCH_COMMANDS: usize = 1024;
/// Replicas of one service (a typo guard).
pub const MAX_REPLICAS: u32 = 100_000;
/// Service, node and network names: a DNS label (`[a-z0-9-.]`, starting alphanumeric).
pub const MAX_NAME_LEN: usize = 63;
/// A node's or member's address (`host:port`).
pub const MAX_ADDRESS_LEN: usize = 255;
/// Labels of one node.
pub const MAX_LABELS: usize = 64;
/// A label key (`[A-Za-z0-9-_./]`): also constraint and spread keys.
pub const MAX_LABEL_KEY_LEN: usize = 128;
/// A label value (no whitespace, commas or control characters): also constraint values.
pub const MAX_LABEL_VALUE_LEN: usize = 256;
/// A service's image reference.
pub const MAX_IMAGE_LEN: usize = 1024;
/// Entries of a service's `command` plus `args`.
pub const MAX_ARGS: usize = 1024;
/// Environment variables of a service.
pub const MAX_ENV: usize = 1024;
/// Bytes of a service's command, args and environment together (Linux's own limit for
/// argv + envp is 2 MiB; a spec travels in every allocation's Raft entries and watches).
pub const MAX_PROCESS_BYTES: usize = 256 << 10;
/// Published ports of a service.
pub const MAX_PORTS: usize = 256;
/// Routing-mesh endpoints of a service.
pub const MAX_ENDPOINTS: usize = 256;
/// Cluster networks a service joins.
pub const MAX_NETWORKS: usize = 16;
/// Constraints in one set (the service's constraints, or one failover set).
pub const MAX_CONSTRAINTS: usize = 64;
/// Values in one `in (…)` / `not in (…)` constraint.
pub const MAX_CONSTRAINT_VALUES: usize = 64;
/// Failover sets of a service.
pub const MAX_FAILOVER_SETS: usize = 16;
/// Reports in one `ReportAllocStatus`, addresses in one `SetAllocAddresses` (agents split
/// bigger batches).
pub const MAX_REPORTS: usize = 4096;
/// Bytes of a failed allocation's reason (agents shorten longer ones).
pub const MAX_REASON_LEN: usize = 4096;
/// Bytes of a container id in a report.
pub const MAX_CONTAINER_ID_LEN: usize = 128;
/// Longest election pause a member accepts (`ElectionControl.pause_ms`); a leader
/// transfer needs a few seconds.
pub const MAX_ELECTION_PAUSE_MS: u32 = 60_000;
