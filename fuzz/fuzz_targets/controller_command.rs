//! A Write's `command_json` as the controller handles it: decode, then `State::apply` on a
//! small seeded state. A refused command must leave the state unchanged.
#![no_main]

use gantry_controller::state::*;
use libfuzzer_sys::fuzz_target;

fn seeded() -> State {
    let mut s = State::new();
    let res = Resources {
        cpu_millis: 4000,
        memory_bytes: 8 << 30,
        pids: 1000,
    };
    let cmds = [
        Command::RegisterNode {
            name: "n1".into(),
            address: "n1:7000".into(),
            labels: [("site".to_string(), "a".to_string())].into(),
            capacity: res,
            allocatable: res,
            api: None,
        },
        Command::UpsertService {
            name: "web".into(),
            spec: ServiceSpec {
                image: "busybox".into(),
                replicas: 2,
                ..Default::default()
            },
            expected_index: None,
        },
        Command::ApplyPlan {
            placements: vec![Placement {
                service: "web".into(),
                version: 1,
                node: 1,
                ports: vec![],
            }],
            stops: vec![],
        },
    ];
    for (i, c) in cmds.iter().enumerate() {
        s.apply(i as u64 + 1, c).0.expect("seed");
    }
    s
}

fuzz_target!(|data: &[u8]| {
    if data.len() > gantry_controller::limits::MAX_COMMAND_JSON {
        return; // the API refuses these before decoding
    }
    let Ok(cmd) = serde_json::from_slice::<Command>(data) else {
        return;
    };
    let mut s = seeded();
    let before = s.to_image();
    let (r, changes) = s.apply(10, &cmd);
    if r.is_err() {
        assert!(changes.is_empty());
        assert_eq!(s.to_image(), before);
    }
});
