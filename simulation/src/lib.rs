//! gantry-sim: runs the real controller code (state machine, scheduler, plan apply, Raft)
//! against simulated nodes, at scale and under seeded faults.
