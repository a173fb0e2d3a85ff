//! The Raft peer network's AppendEntries stream (`raft::network`, `raft::service`): against
//! a fake peer on 127.0.0.1 that counts what it receives, and against a real member.
//!
//! - appends reuse one stream, one reply per request, in order;
//! - a peer without `AppendStream` (an older member) is sent unary AppendEntries;
//! - a call dropped before its reply (openraft's timeout) takes its stream with it: the
//!   late reply is never read as the next call's;
//! - after the peer restarts, appends go on over a new stream;
//! - a member that stops ends the append streams peers hold open to it, cleanly: its
//!   server's graceful shutdown waits for open streams, so one that lasted would hold the
//!   stop up (to its 5 s bound) and leave the server serving. With tonic 0.14 / h2 0.4 the
//!   peer's client ends its half of the stream once the server says GOAWAY, and the
//!   member's handler ends with it; this test keeps that true;
//! - a unary request leaves in one write, its DATA with its HEADERS (the patch in
//!   `vendor/hyper`, see its GANTRY.md): upstream hyper waits for send capacity that h2
//!   gives a new stream only once its connection task has opened it, so the DATA went a
//!   round later, in a second write.

use gantry_controller::member::{Member, MemberConfig, StartMode};
use gantry_controller::raft::network::Transport;
use gantry_controller::raft::{NetworkFactory, NodeId, TypeConfig};
use gantry_proto::raft::raft_client::RaftClient;
use gantry_proto::raft::raft_server::{Raft, RaftServer};
use gantry_proto::raft::{RaftReply, RaftRequest};
use openraft::error::{RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use openraft::{BasicNode, LogId, Vote};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status, Streaming};

const CLUSTER: &str = "test-cluster";

/// What the fake peer received.
#[derive(Default)]
struct Seen {
    streams: AtomicUsize,
    streamed: AtomicUsize,
    unary: AtomicUsize,
}

#[derive(Clone)]
struct FakePeer {
    seen: Arc<Seen>,
    /// Answer `AppendStream` with Unimplemented (a member from before it existed).
    no_stream: bool,
    /// Hold the reply to the first streamed request this long.
    first_delay: Duration,
}

type Replies = Pin<Box<dyn futures::Stream<Item = Result<RaftReply, Status>> + Send>>;

/// The reply a follower sends: `Conflict` for the request whose `prev_log_id` index is
/// 13, so a test can tell whose reply it got.
fn reply_to(req: &RaftRequest) -> RaftReply {
    let req: AppendEntriesRequest<TypeConfig> = serde_json::from_slice(&req.data).unwrap();
    let resp = if req.prev_log_id.map(|l| l.index) == Some(13) {
        AppendEntriesResponse::<NodeId>::Conflict
    } else {
        AppendEntriesResponse::Success
    };
    let r: Result<_, RaftError<NodeId>> = Ok(resp);
    RaftReply {
        data: serde_json::to_vec(&r).unwrap(),
    }
}

#[tonic::async_trait]
impl Raft for FakePeer {
    async fn append_entries(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        self.seen.unary.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(reply_to(req.get_ref())))
    }
    type AppendStreamStream = Replies;
    async fn append_stream(
        &self,
        req: Request<Streaming<RaftRequest>>,
    ) -> Result<Response<Replies>, Status> {
        if self.no_stream {
            return Err(Status::unimplemented("no AppendStream here"));
        }
        self.seen.streams.fetch_add(1, Ordering::SeqCst);
        let this = self.clone();
        let replies =
            futures::stream::unfold((req.into_inner(), true), move |(mut requests, first)| {
                let this = this.clone();
                async move {
                    let req = requests.message().await.ok()??;
                    this.seen.streamed.fetch_add(1, Ordering::SeqCst);
                    if first {
                        tokio::time::sleep(this.first_delay).await;
                    }
                    Some((Ok(reply_to(&req)), (requests, false)))
                }
            });
        Ok(Response::new(Box::pin(replies)))
    }
    async fn vote(&self, _: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        Err(Status::unimplemented("not in these tests"))
    }
    async fn install_snapshot(
        &self,
        _: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        Err(Status::unimplemented("not in these tests"))
    }
}

/// A fake peer serving on its own runtime in its own thread, as if in its own process:
/// dropping it drops the runtime, which closes the listener and every connection.
struct PeerProcess {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeerProcess {
    fn start(listener: std::net::TcpListener, peer: FakePeer) -> PeerProcess {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.spawn(async move {
                listener.set_nonblocking(true).unwrap();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tonic::transport::Server::builder()
                    .add_service(RaftServer::new(peer))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                    .await
                    .unwrap();
            });
            let _ = stopped.recv();
            rt.shutdown_timeout(Duration::from_secs(2));
        });
        PeerProcess {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A fake peer on `listener` (what it saw, and its process).
fn fake_peer_on(
    listener: std::net::TcpListener,
    no_stream: bool,
    first_delay: Duration,
) -> (Arc<Seen>, PeerProcess) {
    let seen = Arc::new(Seen::default());
    let peer = FakePeer {
        seen: seen.clone(),
        no_stream,
        first_delay,
    };
    (seen, PeerProcess::start(listener, peer))
}

/// A fake peer on a free port of 127.0.0.1.
fn fake_peer(no_stream: bool, first_delay: Duration) -> (Arc<Seen>, PeerProcess, SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (seen, peer) = fake_peer_on(l, no_stream, first_delay);
    (seen, peer, addr)
}

fn append(prev: Option<u64>) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(1, 1),
        prev_log_id: prev.map(|i| LogId::new(openraft::CommittedLeaderId::new(1, 1), i)),
        entries: vec![],
        leader_commit: None,
    }
}

async fn client(addr: SocketAddr) -> gantry_controller::raft::PeerNetwork {
    NetworkFactory::new(CLUSTER.into(), Transport::Plain)
        .new_client(2, &BasicNode::new(addr.to_string()))
        .await
}

fn option() -> RPCOption {
    RPCOption::new(Duration::from_secs(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_reuse_one_stream_and_get_their_own_replies_in_order() {
    let (seen, _peer, addr) = fake_peer(false, Duration::ZERO);
    let mut net = client(addr).await;
    for i in 10..20 {
        let r = net.append_entries(append(Some(i)), option()).await.unwrap();
        let want = if i == 13 {
            AppendEntriesResponse::Conflict
        } else {
            AppendEntriesResponse::Success
        };
        assert_eq!(r, want, "the reply to request {i}");
    }
    assert_eq!(seen.streams.load(Ordering::SeqCst), 1, "one stream for all");
    assert_eq!(seen.streamed.load(Ordering::SeqCst), 10);
    assert_eq!(seen.unary.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_append_stream_is_sent_unary_append_entries() {
    let (seen, _peer, addr) = fake_peer(true, Duration::ZERO);
    let mut net = client(addr).await;
    // The first call learns that the peer has no stream; openraft retries it.
    match net.append_entries(append(Some(1)), option()).await {
        Err(RPCError::Network(e)) => {
            assert!(e.to_string().contains("Unimplemented"), "{e}")
        }
        other => panic!("the first append to an older peer: {other:?}"),
    }
    for i in 2..5 {
        let r = net.append_entries(append(Some(i)), option()).await.unwrap();
        assert_eq!(r, AppendEntriesResponse::Success);
    }
    assert_eq!(seen.unary.load(Ordering::SeqCst), 3);
    assert_eq!(seen.streams.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_before_its_reply_takes_its_stream_with_it() {
    let (seen, _peer, addr) = fake_peer(false, Duration::from_millis(300));
    let mut net = client(addr).await;
    // Request 13 is answered `Conflict`, late: the caller gives up first, as openraft
    // does when an RPC outlives its TTL.
    let dropped = tokio::time::timeout(
        Duration::from_millis(50),
        net.append_entries(append(Some(13)), option()),
    )
    .await;
    assert!(dropped.is_err(), "the first reply is held 300 ms");
    // The next request must get its own reply (Success), not the late Conflict, even
    // once that has arrived.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = net
        .append_entries(append(Some(14)), option())
        .await
        .unwrap();
    assert_eq!(r, AppendEntriesResponse::Success);
    assert_eq!(
        seen.streams.load(Ordering::SeqCst),
        2,
        "a new stream after the drop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_go_on_over_a_new_stream_after_the_peer_restarts() {
    let (first, peer, addr) = fake_peer(false, Duration::ZERO);
    let mut net = client(addr).await;
    net.append_entries(append(Some(1)), option()).await.unwrap();
    // The peer's process ends (its runtime and sockets with it) and starts again on the
    // same address while the stream is idle.
    drop(peer);
    let l = std::net::TcpListener::bind(addr).expect("the peer's address again");
    let (second, _peer) = fake_peer_on(l, false, Duration::ZERO);
    // The client notices the closed connection on its own; give it a moment, as the
    // next heartbeat would.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 2..5 {
        let r = net.append_entries(append(Some(i)), option()).await;
        assert_eq!(
            r.unwrap(),
            AppendEntriesResponse::Success,
            "append {i} after the restart"
        );
    }
    assert_eq!(first.streamed.load(Ordering::SeqCst), 1);
    assert_eq!(second.streams.load(Ordering::SeqCst), 1);
    assert_eq!(second.streamed.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_member_ends_the_append_streams_held_open_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = Member::start(
        MemberConfig::new(1, "127.0.0.1:0".parse().unwrap(), dir.path().join("m1")),
        StartMode::Bootstrap,
    )
    .await
    .unwrap();
    let cluster_id = m.cluster_id.clone();
    let mut raw = RaftClient::connect(format!("http://{}", m.addr))
        .await
        .unwrap();
    // A peer's stream, open and idle (a request from a stale term is refused by Raft but
    // still answered, which shows the stream is up).
    let (requests, queue) = tokio::sync::mpsc::channel(1);
    let stale = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(0, 2),
        ..append(None)
    };
    requests
        .send(RaftRequest {
            data: serde_json::to_vec(&stale).unwrap(),
            cluster_id,
        })
        .await
        .unwrap();
    let mut replies = raw
        .append_stream(tokio_stream::wrappers::ReceiverStream::new(queue))
        .await
        .expect("the member serves AppendStream")
        .into_inner();
    let first = replies.message().await.unwrap().expect("a reply");
    let r: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
        serde_json::from_slice(&first.data).unwrap();
    assert!(
        matches!(r, Ok(AppendEntriesResponse::HigherVote(_))),
        "{r:?}"
    );
    // Bounded: were the stream to last, the stop would wait out its server bound and the
    // server would go on serving this stream.
    tokio::time::timeout(Duration::from_secs(20), async {
        m.stop().await;
        let end = replies.message().await;
        assert!(matches!(end, Ok(None)), "the stream ends cleanly: {end:?}");
    })
    .await
    .expect("the member stopped and its peer's stream ended");
    drop(requests);
}

/// A connection that records what each write call put on the wire.
struct Recording {
    inner: tokio::net::TcpStream,
    writes: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl tokio::io::AsyncRead for Recording {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Recording {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = polled {
            self.writes.lock().unwrap().push(buf[..n].to_vec());
        }
        polled
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let std::task::Poll::Ready(Ok(n)) = polled {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            self.writes.lock().unwrap().push(all[..n].to_vec());
        }
        polled
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The HTTP/2 frames of a client's recorded writes: (write number, type, stream id).
fn h2_frames(writes: &[Vec<u8>]) -> Vec<(usize, u8, u32)> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut bytes = Vec::new();
    let mut starts = Vec::new(); // (offset, write number)
    for (i, w) in writes.iter().enumerate() {
        starts.push((bytes.len(), i));
        bytes.extend_from_slice(w);
    }
    assert!(
        bytes.starts_with(PREFACE),
        "the connection starts with the h2 preface"
    );
    let mut frames = Vec::new();
    let mut at = PREFACE.len();
    while at + 9 <= bytes.len() {
        let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        let stream = u32::from_be_bytes(bytes[at + 5..at + 9].try_into().unwrap()) & 0x7fff_ffff;
        let write = starts.iter().rev().find(|(o, _)| *o <= at).unwrap().1;
        frames.push((write, bytes[at + 3], stream));
        at += 9 + len;
    }
    assert_eq!(at, bytes.len(), "the writes end on a frame boundary");
    frames
}

// One thread: with two, h2's connection task could run on the other one between hyper's
// queueing the HEADERS and its handing over the DATA, and flush the HEADERS alone (which
// the patch makes rare, not impossible; all it costs then is the second write).
#[tokio::test(flavor = "current_thread")]
async fn a_unary_request_leaves_in_one_write_with_its_headers() {
    const DATA: u8 = 0x0;
    const HEADERS: u8 = 0x1;
    let (seen, _peer, addr) = fake_peer(true, Duration::ZERO);
    let writes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = writes.clone();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let writes = recorded.clone();
            async move {
                let inner = tokio::net::TcpStream::connect(addr).await?;
                inner.set_nodelay(true)?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(Recording { inner, writes }))
            }
        }))
        .await
        .unwrap();
    let mut raft = RaftClient::new(channel);
    for _ in 0..3 {
        let data = serde_json::to_vec(&append(Some(1))).unwrap();
        raft.append_entries(RaftRequest {
            cluster_id: CLUSTER.into(),
            data,
        })
        .await
        .unwrap();
    }
    assert_eq!(seen.unary.load(Ordering::SeqCst), 3);
    let frames = h2_frames(&writes.lock().unwrap());
    // Client streams are 1, 3, 5: each one's HEADERS and its (first) DATA in one write.
    for stream in [1, 3, 5] {
        let of = |kind| {
            frames
                .iter()
                .find(|(_, t, s)| *t == kind && *s == stream)
                .unwrap_or_else(|| panic!("no frame of type {kind} on stream {stream}: {frames:?}"))
                .0
        };
        assert_eq!(
            of(HEADERS),
            of(DATA),
            "stream {stream}: HEADERS and DATA in different writes (write numbers); frames \
             (write, type, stream): {frames:?}"
        );
    }
}
