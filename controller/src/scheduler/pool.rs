//! One evaluation's candidate nodes ([`Pool`]) and which nodes pass which label
//! constraint ([`LabelMemo`], kept by the [`super::Scheduler`] between evaluations).
//!
//! Vocabulary:
//! - **filter**: the label filter of one placement — a service's constraints and, with a
//!   failover order, one failover set;
//! - **slot**: one distinct constraint (`env==prod`) in the memo, with one byte per node:
//!   not matched yet, passes, fails;
//! - **labels epoch** ([`State::labels_epoch`]): names one configuration of every node's
//!   labels; the memo is valid while it stays the same, and is cleared when it changes.

use super::reconcile::NodeFit;
use crate::state::{Constraint, Node, NodeId, NodeStatus, Resources, Service, State};
use std::collections::HashMap;
use std::ops::Range;

/// The label filter of one placement: a service's constraints and, with a failover order,
/// one failover set.
pub(super) type Filter<'s> = (&'s [Constraint], Option<&'s [Constraint]>);

const UNKNOWN: u8 = 0;
const PASSES: u8 = 1;
const FAILS: u8 = 2;

/// Distinct constraints the memo holds before it starts over (each costs a byte per node).
const MAX_SLOTS: usize = 256;
/// Distinct spread labels the memo holds before it starts over (each costs 4 bytes per
/// node; a cluster spreads over a handful, such as `site` and `zone`).
pub(super) const MAX_SPREADS: usize = 16;

/// Which nodes pass which constraint, learnt as evaluations reach them and kept across
/// evaluations while the nodes' labels stay as they were: labels change rarely, while
/// every evaluation after a node failure reconciles a thousand replicas per service, each
/// on a node whose labels it must check.
#[derive(Default)]
pub struct LabelMemo {
    epoch: u64,
    /// Bytes per slot: one past the highest node id of the state it was last used with.
    nodes: usize,
    /// Per slot: the constraint, and per node id `UNKNOWN`, `PASSES` or `FAILS`.
    slots: Vec<(Constraint, Vec<u8>)>,
    slot_of: HashMap<Constraint, usize>,
    /// Per spread label (`site`): each node's value of it, as a small number.
    spreads: Vec<SpreadMemo>,
    spread_of: HashMap<String, usize>,
}

/// A node without the spread label.
pub(super) const NO_VALUE: u32 = u32::MAX;
/// Not looked up yet.
const UNSEEN: u32 = u32::MAX - 1;

/// One spread label's values: each distinct value gets a number, and per node id the
/// number of its value, [`NO_VALUE`] or [`UNSEEN`].
#[derive(Default)]
struct SpreadMemo {
    key: String,
    values: HashMap<String, u32>,
    of_node: Vec<u32>,
}

impl std::fmt::Debug for LabelMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabelMemo")
            .field("epoch", &self.epoch)
            .field("constraints", &self.slots.len())
            .field("spread_labels", &self.spreads.len())
            .finish()
    }
}

impl LabelMemo {
    /// The memo, valid for `state`: emptied if the labels changed since it was filled,
    /// with room for node ids up to `max_id`.
    fn for_state(mut self, state: &State, max_id: NodeId) -> Self {
        if self.epoch != state.labels_epoch()
            || self.slots.len() > MAX_SLOTS
            || self.spreads.len() > MAX_SPREADS
        {
            self = LabelMemo {
                epoch: state.labels_epoch(),
                ..Default::default()
            };
        }
        self.nodes = self.nodes.max(max_id as usize + 1);
        for (_, fits) in &mut self.slots {
            fits.resize(self.nodes, UNKNOWN);
        }
        for s in &mut self.spreads {
            s.of_node.resize(self.nodes, UNSEEN);
        }
        self
    }
}

#[cfg(test)]
impl LabelMemo {
    /// How many spread labels the memo holds.
    pub(super) fn spread_labels(&self) -> usize {
        self.spreads.len()
    }
}

/// One label filter's walk over the ready nodes: a cursor that keeps moving, so that
/// successive placements look at new candidates instead of re-checking the ones the last
/// placement rejected, and the filter's constraints as slots of the memo.
struct Candidates {
    slots: Range<usize>,
    cursor: usize,
}

/// One evaluation's candidates: the ready nodes in node order, and through the
/// [`LabelMemo`] which of them pass which constraint. A node is matched against a
/// constraint at most once while the labels stay the same — shared by every service with
/// that constraint — and only when a placement or a reconciliation reaches it.
pub(super) struct Pool<'s> {
    pub(super) ready: Vec<&'s Node>,
    /// The ready nodes' ids, for finding a node's place by binary search.
    pub(super) ready_ids: Vec<NodeId>,
    /// Per ready node: its allocatable resources and what the state's allocations hold on
    /// it — read in order while a placement walks the nodes, so that a node rejected for
    /// room costs no look-up of the node or of its allocations.
    pub(super) room: Vec<(Resources, Resources)>,
    /// Where every cursor starts: depends on the state, not always node 1, so that
    /// successive evaluations do not pile onto the same nodes.
    start: usize,
    memo: LabelMemo,
    /// The slots of each filter's constraints, back to back ([`Candidates::slots`]).
    filter_slots: Vec<usize>,
    by_filter: HashMap<Filter<'s>, Candidates>,
}

/// A service's slots, for checking where its allocations are ([`Pool::node_fit`]).
pub(super) struct FitSlots {
    constraints: Vec<usize>,
    failover: Vec<Vec<usize>>,
}

impl<'s> Pool<'s> {
    /// `offset`: how far past the state-derived start the cursors begin (the placements
    /// of a prior plan still in flight, whose evaluation started there). `memo`: what the
    /// last evaluation learnt (it is checked against the state's labels epoch).
    pub(super) fn new(state: &'s State, offset: usize, memo: LabelMemo) -> Self {
        let ready: Vec<&Node> = state
            .nodes()
            .filter(|n| n.status == NodeStatus::Ready)
            .collect();
        let start = match ready.len() {
            0 => 0,
            n => (state.allocation_count().wrapping_mul(2654435761) % n).wrapping_add(offset) % n,
        };
        let ready_ids: Vec<NodeId> = ready.iter().map(|n| n.id).collect();
        let room = ready
            .iter()
            .map(|n| (n.allocatable, state.used(n.id)))
            .collect();
        // Node ids are dense and never reused (the last one given is the highest); the
        // ready nodes' too, should a restored state say otherwise.
        let max_id = state
            .counters()
            .0
            .max(ready_ids.last().copied().unwrap_or(0));
        Pool {
            ready_ids,
            ready,
            room,
            start,
            memo: memo.for_state(state, max_id),
            filter_slots: Vec::new(),
            by_filter: HashMap::new(),
        }
    }

    /// The memo, for the next evaluation.
    pub(super) fn into_memo(self) -> LabelMemo {
        self.memo
    }

    /// `filter`'s walk: its constraints' slots and where its cursor is.
    pub(super) fn candidates(&mut self, filter: Filter<'s>) -> (Range<usize>, usize) {
        if let Some(c) = self.by_filter.get(&filter) {
            return (c.slots.clone(), c.cursor);
        }
        let begin = self.filter_slots.len();
        let (constraints, set) = filter;
        for c in constraints.iter().chain(set.into_iter().flatten()) {
            let slot = self.slot(c);
            self.filter_slots.push(slot);
        }
        let slots = begin..self.filter_slots.len();
        self.by_filter.insert(
            filter,
            Candidates {
                slots: slots.clone(),
                cursor: self.start,
            },
        );
        (slots, self.start)
    }

    pub(super) fn move_cursor(&mut self, filter: Filter<'s>, cursor: usize) {
        if let Some(c) = self.by_filter.get_mut(&filter) {
            c.cursor = cursor;
        }
    }

    /// The memo slot of a constraint, made on first use.
    fn slot(&mut self, c: &Constraint) -> usize {
        if let Some(&slot) = self.memo.slot_of.get(c) {
            return slot;
        }
        self.memo
            .slots
            .push((c.clone(), vec![UNKNOWN; self.memo.nodes]));
        self.memo
            .slot_of
            .insert(c.clone(), self.memo.slots.len() - 1);
        self.memo.slots.len() - 1
    }

    /// Does the `i`th ready node pass the constraint of memo slot `slot`?
    fn passes_slot(&mut self, slot: usize, i: usize) -> bool {
        let id = self.ready_ids[i] as usize;
        let (c, fits) = &mut self.memo.slots[slot];
        if fits[id] == UNKNOWN {
            fits[id] = if c.matches(&self.ready[i].labels) {
                PASSES
            } else {
                FAILS
            };
        }
        fits[id] == PASSES
    }

    /// Does the `i`th ready node pass every constraint of `slots`?
    pub(super) fn passes(&mut self, slots: Range<usize>, i: usize) -> bool {
        for k in slots {
            if !self.passes_slot(self.filter_slots[k], i) {
                return false;
            }
        }
        true
    }

    /// The memo of spread label `key`, made on first use.
    pub(super) fn spread_slot(&mut self, key: &str) -> usize {
        if let Some(&slot) = self.memo.spread_of.get(key) {
            return slot;
        }
        self.memo.spreads.push(SpreadMemo {
            key: key.to_string(),
            values: HashMap::new(),
            of_node: vec![UNSEEN; self.memo.nodes],
        });
        self.memo
            .spread_of
            .insert(key.to_string(), self.memo.spreads.len() - 1);
        self.memo.spreads.len() - 1
    }

    /// The number of node `id`'s value of the spread label of `slot` (from
    /// [`Self::spread_slot`]), or [`NO_VALUE`] when it has none or is unknown. Equal
    /// values get equal numbers while the labels epoch lasts.
    pub(super) fn spread_value(&mut self, slot: usize, state: &State, id: NodeId) -> u32 {
        let memo = &mut self.memo.spreads[slot];
        if let Some(&v) = memo.of_node.get(id as usize) {
            if v != UNSEEN {
                return v;
            }
        }
        let v = match state.node(id).and_then(|n| n.labels.get(&memo.key)) {
            None => NO_VALUE,
            Some(value) => match memo.values.get(value) {
                Some(&v) => v,
                None => {
                    // Fewer distinct values than u32::MAX - 1: each needs a node.
                    let v = memo.values.len() as u32;
                    memo.values.insert(value.clone(), v);
                    v
                }
            },
        };
        if let Some(slot) = memo.of_node.get_mut(id as usize) {
            *slot = v;
        }
        v
    }

    /// The slots of `svc`'s constraints and failover sets.
    pub(super) fn fit_slots(&mut self, svc: &Service) -> FitSlots {
        FitSlots {
            constraints: svc.spec.constraints.iter().map(|c| self.slot(c)).collect(),
            failover: svc
                .spec
                .failover
                .iter()
                .map(|set| set.iter().map(|c| self.slot(c)).collect())
                .collect(),
        }
    }

    /// Does an allocation on node `id` still belong there: on a ready node, does the node
    /// pass the service's constraints and one of its failover sets (`fit`, from
    /// [`Self::fit_slots`]), through the memo; a draining node's must move, a down or
    /// unknown node's are gone.
    pub(super) fn node_fit(&mut self, state: &State, fit: &FitSlots, id: NodeId) -> NodeFit {
        let Some(i) = self.ready_ids.binary_search(&id).ok() else {
            // Every ready node is in the pool: this one is draining, down or unknown.
            return match state.node(id).map(|n| n.status) {
                Some(NodeStatus::Down) | None => NodeFit::Gone,
                Some(_) => NodeFit::Move,
            };
        };
        let all = |pool: &mut Self, slots: &[usize]| slots.iter().all(|&s| pool.passes_slot(s, i));
        let in_some_set = fit.failover.is_empty() || fit.failover.iter().any(|set| all(self, set));
        if in_some_set && all(self, &fit.constraints) {
            NodeFit::Fits
        } else {
            NodeFit::Move
        }
    }
}
