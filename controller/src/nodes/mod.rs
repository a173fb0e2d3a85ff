//! Node liveness, on the leader only. Heartbeats never go through Raft: the leader keeps
//! the time it last heard from each node in memory, and only a transition (ready or
//! draining → down) becomes a command. A member that just became leader has no heartbeat
//! history, so it grants every node a grace period before judging it.
//!
//! Pure: time is passed in (`now`), so tests and the simulator drive it without sleeping.

use crate::state::{Command, NodeId, NodeStatus, State};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a node may stay silent, and the grace a new leader grants.
#[derive(Debug, Clone, Copy)]
pub struct LivenessConfig {
    /// A node silent for longer than this is down (e.g. 1 s heartbeats × 3 missed).
    pub ttl: Duration,
    /// After becoming leader, nobody is judged before this has passed.
    pub grace: Duration,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            ttl: Duration::from_secs(3),
            grace: Duration::from_secs(3),
        }
    }
}

/// The leader's in-memory heartbeat table.
#[derive(Debug)]
pub struct Liveness {
    config: LivenessConfig,
    leader_since: Instant,
    last_seen: HashMap<NodeId, Instant>,
    /// Per node, the state index its routing mesh reflects (nodes with a mesh only).
    mesh: HashMap<NodeId, u64>,
}

impl Liveness {
    /// Start tracking at the moment this member became leader.
    pub fn new(config: LivenessConfig, leader_since: Instant) -> Self {
        Liveness {
            config,
            leader_since,
            last_seen: HashMap::new(),
            mesh: HashMap::new(),
        }
    }

    pub fn heartbeat(&mut self, node: NodeId, now: Instant) {
        let t = self.last_seen.entry(node).or_insert(now);
        if now > *t {
            *t = now;
        }
    }

    /// Drop a node that left the cluster.
    pub fn forget(&mut self, node: NodeId) {
        self.last_seen.remove(&node);
        self.mesh.remove(&node);
    }

    /// Record the state index a node's routing mesh reflects (from its heartbeat; 0: the
    /// node runs no mesh). Never goes back (a delayed heartbeat).
    pub fn mesh_applied(&mut self, node: NodeId, index: u64) {
        if index > 0 {
            let i = self.mesh.entry(node).or_insert(index);
            *i = (*i).max(index);
        }
    }

    /// The index every live node's mesh has reached: the lowest over the nodes that are
    /// not down and run a mesh; 0 (unknown) during the grace period after the takeover,
    /// when not every node has been heard from yet; `u64::MAX` when no live node runs a
    /// mesh (no rule anywhere can send traffic to a stopped allocation).
    pub fn mesh_synced(&self, state: &State, now: Instant) -> u64 {
        if now.saturating_duration_since(self.leader_since) < self.config.grace {
            return 0;
        }
        state
            .nodes()
            .filter(|n| n.status != NodeStatus::Down)
            .filter_map(|n| self.mesh.get(&n.id).copied())
            .min()
            .unwrap_or(u64::MAX)
    }

    /// When the node was last heard from, as far as this leader knows.
    pub fn last_seen(&self, node: NodeId) -> Option<Instant> {
        self.last_seen.get(&node).copied()
    }

    /// The commands that mark silent nodes down: nodes that are ready or draining and whose
    /// last heartbeat (or, if none since this leader took over, the takeover itself) is
    /// older than the TTL — never before the grace period has passed.
    pub fn expired(&self, state: &State, now: Instant) -> Vec<Command> {
        if now.saturating_duration_since(self.leader_since) < self.config.grace {
            return Vec::new();
        }
        state
            .nodes()
            .filter(|n| n.status != NodeStatus::Down)
            .filter(|n| {
                let seen = self.last_seen(n.id).unwrap_or(self.leader_since);
                now.saturating_duration_since(seen) > self.config.ttl
            })
            .map(|n| Command::SetNodeStatus {
                node: n.id,
                status: NodeStatus::Down,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Resources;

    fn state_with(names: &[&str]) -> (State, Vec<NodeId>) {
        let mut s = State::new();
        let mut ids = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let r = Resources {
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
                pids: 100,
            };
            let (resp, _) = s.apply(
                i as u64 + 1,
                &Command::RegisterNode {
                    name: name.to_string(),
                    address: format!("{name}:1"),
                    labels: Default::default(),
                    capacity: r,
                    allocatable: r,
                    api: None,
                },
            );
            match resp.unwrap() {
                crate::state::Reply::NodeRegistered { id } => ids.push(id),
                r => panic!("{r:?}"),
            }
        }
        (s, ids)
    }

    fn downs(cmds: &[Command]) -> Vec<NodeId> {
        cmds.iter()
            .map(|c| match c {
                Command::SetNodeStatus {
                    node,
                    status: NodeStatus::Down,
                } => *node,
                c => panic!("unexpected {c:?}"),
            })
            .collect()
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn mesh_synced_is_the_lowest_live_mesh_and_unknown_during_the_grace() {
        let (mut state, ids) = state_with(&["a", "b", "c"]);
        let t0 = Instant::now();
        let mut l = Liveness::new(
            LivenessConfig {
                ttl: 3 * S,
                grace: 2 * S,
            },
            t0,
        );
        l.mesh_applied(ids[0], 40);
        l.mesh_applied(ids[1], 35);
        l.mesh_applied(ids[2], 0); // c runs no mesh
        assert_eq!(l.mesh_synced(&state, t0 + S), 0, "in the grace period");
        assert_eq!(l.mesh_synced(&state, t0 + 3 * S), 35);
        l.mesh_applied(ids[1], 30); // delayed, older heartbeat
        assert_eq!(l.mesh_synced(&state, t0 + 3 * S), 35);
        l.mesh_applied(ids[1], 50);
        assert_eq!(l.mesh_synced(&state, t0 + 3 * S), 40);
        // a down node does not hold the others back
        state
            .apply(
                10,
                &Command::SetNodeStatus {
                    node: ids[0],
                    status: NodeStatus::Down,
                },
            )
            .0
            .unwrap();
        assert_eq!(l.mesh_synced(&state, t0 + 3 * S), 50);
        l.forget(ids[1]);
        assert_eq!(l.mesh_synced(&state, t0 + 3 * S), u64::MAX, "no live mesh");
    }

    #[test]
    fn silent_node_goes_down_after_ttl_heartbeating_node_stays() {
        let (state, ids) = state_with(&["a", "b"]);
        let t0 = Instant::now();
        let mut l = Liveness::new(
            LivenessConfig {
                ttl: 3 * S,
                grace: 2 * S,
            },
            t0,
        );
        for i in 0..10 {
            l.heartbeat(ids[0], t0 + i * S);
            if i >= 1 {
                l.heartbeat(ids[1], t0 + S); // b goes silent after 1 s
            }
        }
        assert!(downs(&l.expired(&state, t0 + 4 * S)).is_empty());
        assert_eq!(downs(&l.expired(&state, t0 + 4 * S + S / 2)), vec![ids[1]]);
    }

    #[test]
    fn new_leader_grants_a_grace_period_and_counts_from_takeover() {
        let (state, ids) = state_with(&["a"]);
        let t0 = Instant::now();
        let l = Liveness::new(
            LivenessConfig {
                ttl: 3 * S,
                grace: 5 * S,
            },
            t0,
        );
        // Never heard from since takeover: not judged within the grace period …
        assert!(l.expired(&state, t0 + 4 * S).is_empty());
        // … and down once both grace and TTL have passed.
        assert_eq!(downs(&l.expired(&state, t0 + 6 * S)), vec![ids[0]]);
    }

    #[test]
    fn down_nodes_are_not_marked_again_and_stale_heartbeats_do_not_go_back() {
        let (mut state, ids) = state_with(&["a"]);
        let t0 = Instant::now();
        let mut l = Liveness::new(
            LivenessConfig {
                ttl: S,
                grace: Duration::ZERO,
            },
            t0,
        );
        l.heartbeat(ids[0], t0 + 5 * S);
        l.heartbeat(ids[0], t0 + 2 * S); // delayed, older message
        assert_eq!(l.last_seen(ids[0]), Some(t0 + 5 * S));
        let cmds = l.expired(&state, t0 + 7 * S);
        assert_eq!(downs(&cmds), vec![ids[0]]);
        state.apply(10, &cmds[0]).0.unwrap();
        assert!(l.expired(&state, t0 + 8 * S).is_empty());
        l.forget(ids[0]);
        assert_eq!(l.last_seen(ids[0]), None);
    }
}
