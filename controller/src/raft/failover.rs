//! Prompt failover: when its leader's process dies, a follower campaigns as soon as the
//! leader's lease has lapsed, instead of also waiting out its own election timeout.
//!
//! Vocabulary:
//! - **lease**: openraft 0.9 makes a voter refuse every vote request until
//!   `election_timeout_max` has passed since it last accepted its leader's AppendEntries
//!   (the leader lease); a campaign can only succeed after that;
//! - **heard**: the last AppendEntries or InstallSnapshot a follower received from its
//!   leader: leader id, term, time and the connection it came on, recorded by
//!   [`RaftService`](super::RaftService) when the request arrives and again when openraft
//!   accepted it (after it refreshed the lease);
//! - **hung up**: that connection has closed since. A process that dies, SIGKILL
//!   included, has its sockets closed by the kernel, so its followers see the end of the
//!   stream at once ([`Tracked`] wraps every accepted connection to report it). A live
//!   leader, however loaded, keeps its connection open;
//! - **rank**: this member's place among the voters other than the silent leader, by id.
//!   Rank r campaigns at `heard + lease + margin + r × stagger`, so two followers of a dead
//!   leader do not split the vote by campaigning at the same instant.
//!
//! Without this, openraft's own timer starts an election only after lease + a timeout it
//! draws once per process (between election min and max), checked on ticks: the follower
//! that goes first waits ≈ lease + ⅔ of the range. Elections stay openraft's: this only
//! calls `trigger().elect()`, which is what its timer does, and Raft's safety never rests
//! on when an election starts. What it changes is how soon a leader is given up, so it
//! acts only on positive evidence that the leader is gone:
//! - only once the leader hung up; silence alone (an overloaded leader, a partition, a
//!   host that lost power) is left to openraft's timer. A first version acted on silence
//!   alone: with 1,000-placement plans and a 50 ms heartbeat, followers deposed a live
//!   leader dozens of times a minute;
//! - never while a request from the leader is still being received or processed;
//! - only for the leader and term it last heard from, and once per term;
//! - never while elections are paused ([`LeaderWatch::pause`], leader transfer).

use super::{GantryRaft, NodeId};
use openraft::ServerState;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The last contact from a leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    pub leader: NodeId,
    pub term: u64,
    pub at: Instant,
    /// The connection (its remote address) the contact came on, when known.
    pub conn: Option<SocketAddr>,
    /// That connection has closed since.
    pub hung_up: bool,
}

/// What the follower knows of its leader, shared by the Raft service (writer) and the
/// watchdog (reader).
#[derive(Debug, Default)]
pub struct LeaderWatch {
    heard: Mutex<Option<Heard>>,
    in_flight: AtomicUsize,
    paused_until: Mutex<Option<Instant>>,
    /// Wakes the watchdog when the leader's connection closes.
    hang_up: tokio::sync::Notify,
}

/// Held while a request from a leader is received and processed.
pub struct InFlight<'a>(&'a LeaderWatch);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl LeaderWatch {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }
    /// A request from a leader has arrived.
    pub fn begin(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self)
    }
    /// A request of `leader` in `term` arrived on connection `conn`, or was accepted. A
    /// request accepted after its connection closed does not undo the hang-up: its sender
    /// may be gone (a stopped leader's last heartbeat, accepted under load after the close
    /// was seen, once left the followers to openraft's timer).
    pub fn heard(&self, leader: NodeId, term: u64, conn: Option<SocketAddr>) {
        let mut heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        let closed = heard
            .as_ref()
            .is_some_and(|h| h.hung_up && conn.is_some() && h.conn == conn);
        *heard = Some(Heard {
            leader,
            term,
            at: Instant::now(),
            conn,
            hung_up: closed,
        });
    }
    /// The connection from `remote` closed.
    pub fn closed(&self, remote: SocketAddr) {
        if let Some(h) = self
            .heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            if h.conn == Some(remote) {
                h.hung_up = true;
                self.hang_up.notify_one();
            }
        }
    }
    /// No campaign from this watchdog before `until` (openraft's own timer is paused
    /// separately, by `runtime_config().elect(false)`).
    pub fn pause(&self, until: Instant) {
        let mut p = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        *p = Some(p.map_or(until, |old| old.max(until)));
    }
    fn view(&self) -> (Option<Heard>, bool, Option<Instant>) {
        (
            *self.heard.lock().unwrap_or_else(|p| p.into_inner()),
            self.in_flight.load(Ordering::SeqCst) > 0,
            *self.paused_until.lock().unwrap_or_else(|p| p.into_inner()),
        )
    }
}

/// When to suspect a silent leader.
#[derive(Debug, Clone, Copy)]
pub struct FailoverTiming {
    /// openraft's leader lease: `election_timeout_max`.
    pub lease: Duration,
    /// Past the lease, for the other voters' leases (refreshed a little after ours).
    pub margin: Duration,
    /// Between ranks.
    pub stagger: Duration,
    /// How often the watchdog looks while the leader has hung up (otherwise it sleeps
    /// until it does, waking every [`IDLE_CHECK`] to notice a shutdown).
    pub poll: Duration,
}

impl FailoverTiming {
    /// From a member's Raft timings: margin = heartbeat, stagger = heartbeat,
    /// poll = heartbeat / 10 (at least 1 ms).
    pub fn from_timings(t: &super::RaftTimings) -> Self {
        let hb = Duration::from_millis(t.heartbeat_ms.max(1));
        FailoverTiming {
            lease: Duration::from_millis(t.election_max_ms),
            margin: hb,
            stagger: hb,
            poll: (hb / 10).max(Duration::from_millis(1)),
        }
    }
}

/// What the watchdog sees of this member at one instant.
#[derive(Debug, Clone)]
pub struct Situation {
    pub me: NodeId,
    pub state: ServerState,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub voters: Vec<NodeId>,
    pub heard: Option<Heard>,
    pub in_flight: bool,
    pub paused_until: Option<Instant>,
    /// The term this watchdog last campaigned in.
    pub campaigned_in: Option<u64>,
}

/// Whether to campaign now. Pure: the tests drive it with made-up situations.
pub fn should_campaign(s: &Situation, t: &FailoverTiming, now: Instant) -> bool {
    let Some(h) = s.heard else { return false };
    if !h.hung_up
        || s.state != ServerState::Follower
        || s.leader != Some(h.leader)
        || h.leader == s.me
        || s.term != h.term
        || s.campaigned_in == Some(s.term)
        || s.in_flight
        || s.paused_until.is_some_and(|p| now < p)
        || !s.voters.contains(&s.me)
    {
        return false;
    }
    let mut others: Vec<NodeId> = s
        .voters
        .iter()
        .copied()
        .filter(|v| *v != h.leader)
        .collect();
    others.sort_unstable();
    let rank = others.iter().position(|v| *v == s.me).unwrap_or(0) as u32;
    now >= h.at + t.lease + t.margin + t.stagger * rank
}

/// How often an idle watchdog (no hang-up pending) checks whether Raft has shut down.
pub const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Runs until `raft` shuts down: campaigns when [`should_campaign`] says so. Idle until
/// the leader hangs up; from then until that is dealt with (a campaign, or contact from a
/// leader again) it looks every `timing.poll`.
pub async fn run(raft: GantryRaft, watch: Arc<LeaderWatch>, timing: FailoverTiming) {
    let mut campaigned_in = None;
    loop {
        let pending = watch
            .view()
            .0
            .is_some_and(|h| h.hung_up && campaigned_in != Some(h.term));
        if pending {
            tokio::time::sleep(timing.poll).await;
        } else {
            tokio::select! {
                _ = watch.hang_up.notified() => {}
                _ = tokio::time::sleep(IDLE_CHECK) => {}
            }
        }
        let (me, state, term, leader, voters) = {
            let m = raft.metrics();
            let m = m.borrow();
            (
                m.id,
                m.state,
                m.current_term,
                m.current_leader,
                m.membership_config.membership().voter_ids().collect(),
            )
        };
        if state == ServerState::Shutdown {
            return;
        }
        let (heard, in_flight, paused_until) = watch.view();
        let s = Situation {
            me,
            state,
            term,
            leader,
            voters,
            heard,
            in_flight,
            paused_until,
            campaigned_in,
        };
        if should_campaign(&s, &timing, Instant::now()) {
            campaigned_in = Some(term);
            let silent = heard.map(|h| h.at.elapsed().as_millis() as u64);
            tracing::info!(term, leader = ?leader, silent_ms = ?silent, "leader hung up and its lease has lapsed: campaigning");
            if raft.trigger().elect().await.is_err() {
                return;
            }
        }
    }
}

/// An accepted connection that tells a [`LeaderWatch`] when it ends: when a read sees the
/// end of the stream or fails, or when the server drops it. Everything else is passed
/// through, the connect info (remote address, TLS identity) included.
pub struct Tracked<IO> {
    inner: IO,
    remote: Option<SocketAddr>,
    watch: Arc<LeaderWatch>,
    reported: bool,
}

impl<IO> Tracked<IO> {
    pub fn new(inner: IO, remote: Option<SocketAddr>, watch: Arc<LeaderWatch>) -> Self {
        Tracked {
            inner,
            remote,
            watch,
            reported: false,
        }
    }
    fn report(&mut self) {
        if !self.reported {
            self.reported = true;
            if let Some(r) = self.remote {
                self.watch.closed(r);
            }
        }
    }
}

impl<IO> Drop for Tracked<IO> {
    fn drop(&mut self) {
        self.report();
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Tracked<IO> {
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &r {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                self.report()
            }
            Poll::Ready(Err(_)) => self.report(),
            _ => {}
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> FailoverTiming {
        FailoverTiming {
            lease: Duration::from_millis(150),
            margin: Duration::from_millis(10),
            stagger: Duration::from_millis(25),
            poll: Duration::from_millis(2),
        }
    }

    fn conn() -> SocketAddr {
        "127.0.0.2:40000".parse().unwrap()
    }

    /// Member 2 follows leader 1 in term 5, last heard at `at` on [`conn`], which has
    /// closed since; voters 1, 2, 3.
    fn follower(at: Instant) -> Situation {
        Situation {
            me: 2,
            state: ServerState::Follower,
            term: 5,
            leader: Some(1),
            voters: vec![1, 2, 3],
            heard: Some(Heard {
                leader: 1,
                term: 5,
                at,
                conn: Some(conn()),
                hung_up: true,
            }),
            in_flight: false,
            paused_until: None,
            campaigned_in: None,
        }
    }

    #[test]
    fn the_first_ranked_follower_campaigns_once_the_lease_and_margin_have_passed() {
        let t0 = Instant::now();
        let s = follower(t0);
        assert!(!should_campaign(
            &s,
            &timing(),
            t0 + Duration::from_millis(159)
        ));
        assert!(should_campaign(
            &s,
            &timing(),
            t0 + Duration::from_millis(160)
        ));
    }

    #[test]
    fn the_next_ranked_follower_waits_one_stagger_more() {
        let t0 = Instant::now();
        let s = Situation {
            me: 3,
            ..follower(t0)
        };
        assert!(!should_campaign(
            &s,
            &timing(),
            t0 + Duration::from_millis(184)
        ));
        assert!(should_campaign(
            &s,
            &timing(),
            t0 + Duration::from_millis(185)
        ));
        // ranks skip the silent leader: with leader 2, member 1 goes first and 3 second
        let s = Situation {
            me: 3,
            leader: Some(2),
            heard: Some(Heard {
                leader: 2,
                term: 5,
                at: t0,
                conn: Some(conn()),
                hung_up: true,
            }),
            ..follower(t0)
        };
        assert!(!should_campaign(
            &s,
            &timing(),
            t0 + Duration::from_millis(184)
        ));
        let s = Situation { me: 1, ..s };
        assert!(should_campaign(
            &s,
            &timing(),
            t0 + Duration::from_millis(160)
        ));
    }

    #[test]
    fn a_live_or_unknown_leader_is_never_suspected() {
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(10);
        let cases: Vec<(&str, Situation)> = vec![
            (
                "never heard",
                Situation {
                    heard: None,
                    ..follower(t0)
                },
            ),
            ("silent, but its connection is open", {
                let mut s = follower(t0);
                s.heard.as_mut().unwrap().hung_up = false;
                s
            }),
            (
                "a request in flight",
                Situation {
                    in_flight: true,
                    ..follower(t0)
                },
            ),
            (
                "already a candidate",
                Situation {
                    state: ServerState::Candidate,
                    ..follower(t0)
                },
            ),
            (
                "leader itself",
                Situation {
                    state: ServerState::Leader,
                    me: 1,
                    ..follower(t0)
                },
            ),
            (
                "a learner",
                Situation {
                    state: ServerState::Learner,
                    ..follower(t0)
                },
            ),
            (
                "not a voter",
                Situation {
                    voters: vec![1, 3, 4],
                    ..follower(t0)
                },
            ),
            (
                "another leader now",
                Situation {
                    leader: Some(3),
                    ..follower(t0)
                },
            ),
            (
                "no leader known",
                Situation {
                    leader: None,
                    ..follower(t0)
                },
            ),
            (
                "a newer term",
                Situation {
                    term: 6,
                    ..follower(t0)
                },
            ),
            (
                "already campaigned this term",
                Situation {
                    campaigned_in: Some(5),
                    ..follower(t0)
                },
            ),
            (
                "elections paused",
                Situation {
                    paused_until: Some(late + Duration::from_millis(1)),
                    ..follower(t0)
                },
            ),
        ];
        for (what, s) in cases {
            assert!(!should_campaign(&s, &timing(), late), "{what}: campaigned");
        }
        // and each guard, once lifted, lets the same situation campaign
        let s = Situation {
            paused_until: Some(late),
            campaigned_in: Some(4),
            ..follower(t0)
        };
        assert!(should_campaign(&s, &timing(), late));
    }

    #[tokio::test]
    async fn a_tracked_connection_reports_its_end_once_on_eof_or_drop() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let w = LeaderWatch::new();
        let (a, mut b) = tokio::io::duplex(64);
        w.heard(1, 7, Some(conn()));
        let mut t = Tracked::new(a, Some(conn()), w.clone());
        b.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        t.read_exact(&mut buf).await.unwrap();
        assert!(!w.view().0.unwrap().hung_up, "data is not an end");
        drop(b);
        assert_eq!(t.read(&mut buf).await.unwrap(), 0);
        assert!(
            w.view().0.unwrap().hung_up,
            "the end of the stream was reported"
        );
        // a connection dropped by the server without reading to the end
        let other: SocketAddr = "127.0.0.2:40001".parse().unwrap();
        w.heard(1, 7, Some(other));
        assert!(!w.view().0.unwrap().hung_up, "a new connection");
        let (a, _b) = tokio::io::duplex(64);
        drop(Tracked::new(a, Some(other), w.clone()));
        assert!(w.view().0.unwrap().hung_up, "the drop was reported");
    }

    /// The watchdog sleeps until the leader's connection closes: that close wakes it,
    /// another connection's does not.
    #[tokio::test]
    async fn only_the_leaders_hang_up_wakes_the_watchdog() {
        let w = LeaderWatch::new();
        w.heard(1, 7, Some(conn()));
        w.closed("127.0.0.3:40000".parse().unwrap());
        let woken = tokio::time::timeout(Duration::from_millis(50), w.hang_up.notified()).await;
        assert!(woken.is_err(), "another connection closed");
        let waiter = {
            let w = w.clone();
            tokio::spawn(async move { w.hang_up.notified().await })
        };
        tokio::task::yield_now().await;
        w.closed(conn());
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the leader's hang-up wakes the watchdog")
            .unwrap();
    }

    #[test]
    fn the_watch_records_contact_requests_in_flight_and_the_longest_pause() {
        let w = LeaderWatch::new();
        assert_eq!(w.view(), (None, false, None));
        {
            let _a = w.begin();
            let _b = w.begin();
            assert!(w.view().1);
        }
        assert!(!w.view().1, "both requests finished");
        w.heard(1, 7, Some(conn()));
        let h = w.view().0.expect("heard");
        assert_eq!((h.leader, h.term, h.hung_up), (1, 7, false));
        w.closed("127.0.0.3:40000".parse().unwrap());
        assert!(!w.view().0.unwrap().hung_up, "another connection closed");
        w.closed(conn());
        assert!(
            w.view().0.unwrap().hung_up,
            "the leader's connection closed"
        );
        w.heard(1, 7, Some(conn()));
        assert!(
            w.view().0.unwrap().hung_up,
            "a request accepted after its connection closed does not undo the hang-up"
        );
        w.heard(1, 7, Some("127.0.0.2:40001".parse().unwrap()));
        assert!(
            !w.view().0.unwrap().hung_up,
            "heard again on a new connection"
        );
        let t = Instant::now();
        w.pause(t + Duration::from_secs(2));
        w.pause(t + Duration::from_secs(1));
        assert_eq!(
            w.view().2,
            Some(t + Duration::from_secs(2)),
            "a shorter pause does not shorten"
        );
    }
}
