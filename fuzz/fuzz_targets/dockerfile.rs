//! The Dockerfile front end: parse, plan, expand every needed stage.
#![no_main]

use gantry_agent::build::instruction::Dockerfile;
use gantry_agent::build::stages::{BuildOptions, Plan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Dockerfile::parse(source) {
        assert!(!e.message.is_empty());
    }
    if let Ok(plan) = Plan::from_source(source, &BuildOptions::default()) {
        for &i in &plan.order {
            let _ = plan.expand_stage(i, &[], "/");
        }
    }
});
