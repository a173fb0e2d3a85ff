//! The in-process Raft network: a [`Router`] hands openraft one [`RouterNetwork`] per
//! target member, and each RPC calls the target's `Raft` handle directly (no sockets, no
//! serialization). [`Faults`] decide, per message, whether it is delivered and after which
//! delay: an *isolated* member neither sends nor receives; *loss* drops a request or its
//! reply with a probability; *delay* holds a message for a random time. The decisions draw
//! from one seeded generator, so a fault schedule is reproducible (and, on a paused
//! current-thread runtime with memory stores, the whole run: docs/architecture.md,
//! simulation).

use gantry_controller::raft::{BasicNode, GantryRaft, NodeId, TypeConfig};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Why a message did not arrive.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("member {from} → {to}: partitioned")]
    Partitioned { from: NodeId, to: NodeId },
    #[error("member {from} → {to}: message lost")]
    Lost { from: NodeId, to: NodeId },
    #[error("member {to} is down")]
    Down { to: NodeId },
    #[error("member {from} → {to}: no answer within {ttl:?}")]
    Timeout {
        from: NodeId,
        to: NodeId,
        ttl: Duration,
    },
}

/// What the network does to messages right now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultState {
    /// Members cut off from every other member.
    pub isolated: BTreeSet<NodeId>,
    /// Probability that a request (or, independently, its reply) is dropped.
    pub loss: f64,
    /// Each delivered message waits a uniform time in this range (ms); (0, 0): none.
    pub delay_ms: (u64, u64),
}

impl FaultState {
    pub fn healed() -> Self {
        FaultState::default()
    }
}

/// The fault state and the generator its random decisions draw from.
#[derive(Debug)]
pub struct Faults {
    pub state: FaultState,
    rng: StdRng,
}

/// One message's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Deliver(Duration),
    Partitioned,
    Lost,
}

impl Faults {
    pub fn new(seed: u64) -> Self {
        Faults {
            state: FaultState::healed(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Decide what happens to one message from `from` to `to`.
    pub fn decide(&mut self, from: NodeId, to: NodeId) -> Fate {
        let s = &self.state;
        if s.isolated.contains(&from) || s.isolated.contains(&to) {
            return Fate::Partitioned;
        }
        if s.loss > 0.0 && self.rng.random_bool(s.loss.min(1.0)) {
            return Fate::Lost;
        }
        let (lo, hi) = s.delay_ms;
        let ms = if hi > lo {
            self.rng.random_range(lo..=hi)
        } else {
            lo
        };
        Fate::Deliver(Duration::from_millis(ms))
    }
}

struct RouterInner {
    members: Mutex<HashMap<NodeId, GantryRaft>>,
    faults: Mutex<Faults>,
}

/// The switchboard between in-process Raft members.
#[derive(Clone)]
pub struct Router {
    inner: Arc<RouterInner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Router {
    pub fn new(seed: u64) -> Self {
        Router {
            inner: Arc::new(RouterInner {
                members: Mutex::new(HashMap::new()),
                faults: Mutex::new(Faults::new(seed)),
            }),
        }
    }

    /// Plug a member in (after it started) so that others can reach it.
    pub fn attach(&self, id: NodeId, raft: GantryRaft) {
        lock(&self.inner.members).insert(id, raft);
    }

    /// Unplug a member (it crashed): messages to it fail as unreachable.
    pub fn detach(&self, id: NodeId) {
        lock(&self.inner.members).remove(&id);
    }

    pub fn set_faults(&self, state: FaultState) {
        lock(&self.inner.faults).state = state;
    }

    pub fn faults(&self) -> FaultState {
        lock(&self.inner.faults).state.clone()
    }

    /// The network factory for member `from`.
    pub fn network_for(&self, from: NodeId) -> RouterNetwork {
        RouterNetwork {
            router: self.clone(),
            from,
            to: 0,
        }
    }

    fn decide(&self, from: NodeId, to: NodeId) -> Fate {
        lock(&self.inner.faults).decide(from, to)
    }

    /// Carry one RPC: the request's fate, the call on the target, the reply's fate.
    async fn carry<Resp, E, F, Fut>(
        &self,
        from: NodeId,
        to: NodeId,
        ttl: Duration,
        call: F,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        E: std::error::Error,
        F: FnOnce(GantryRaft) -> Fut,
        Fut: Future<Output = Result<Resp, RaftError<NodeId, E>>>,
    {
        let unreachable = |e: NetError| RPCError::Unreachable(Unreachable::new(&e));
        match self.decide(from, to) {
            Fate::Partitioned => return Err(unreachable(NetError::Partitioned { from, to })),
            Fate::Lost => return Err(unreachable(NetError::Lost { from, to })),
            Fate::Deliver(d) if !d.is_zero() => tokio::time::sleep(d).await,
            Fate::Deliver(_) => {}
        }
        let target = lock(&self.inner.members).get(&to).cloned();
        let Some(target) = target else {
            return Err(unreachable(NetError::Down { to }));
        };
        let reply = tokio::time::timeout(ttl, call(target))
            .await
            .map_err(|_| unreachable(NetError::Timeout { from, to, ttl }))?;
        match self.decide(to, from) {
            Fate::Partitioned => {
                return Err(unreachable(NetError::Partitioned { from: to, to: from }))
            }
            Fate::Lost => return Err(unreachable(NetError::Lost { from: to, to: from })),
            Fate::Deliver(d) if !d.is_zero() => tokio::time::sleep(d).await,
            Fate::Deliver(_) => {}
        }
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(to, e)))
    }
}

/// One member's view of the network: openraft asks it for a client per target.
pub struct RouterNetwork {
    router: Router,
    from: NodeId,
    to: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for RouterNetwork {
    type Network = RouterNetwork;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> RouterNetwork {
        RouterNetwork {
            router: self.router.clone(),
            from: self.from,
            to: target,
        }
    }
}

impl RaftNetwork<TypeConfig> for RouterNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.router
            .carry(self.from, self.to, option.hard_ttl(), |r| async move {
                r.append_entries(rpc).await
            })
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.router
            .carry(self.from, self.to, option.hard_ttl(), |r| async move {
                r.install_snapshot(rpc).await
            })
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.router
            .carry(self.from, self.to, option.hard_ttl(), |r| async move {
                r.vote(rpc).await
            })
            .await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new((0..).map(|i: u32| Duration::from_millis((20u64 << i.min(3)).min(160))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolated_member_neither_sends_nor_receives() {
        let mut f = Faults::new(1);
        f.state.isolated.insert(2);
        assert_eq!(f.decide(1, 2), Fate::Partitioned);
        assert_eq!(f.decide(2, 3), Fate::Partitioned);
        assert_eq!(f.decide(1, 3), Fate::Deliver(Duration::ZERO));
    }

    #[test]
    fn loss_and_delay_follow_the_seed() {
        let run = |seed| {
            let mut f = Faults::new(seed);
            f.state.loss = 0.3;
            f.state.delay_ms = (1, 20);
            (0..200).map(|_| f.decide(1, 2)).collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7), "same seed, same fates");
        assert_ne!(a, run(8), "another seed, other fates");
        let lost = a.iter().filter(|f| **f == Fate::Lost).count();
        assert!(
            (30..=90).contains(&lost),
            "about 30% of 200 lost, got {lost}"
        );
        assert!(a.iter().all(|f| match f {
            Fate::Deliver(d) => (1..=20).contains(&(d.as_millis() as u64)),
            _ => true,
        }));
    }
}
