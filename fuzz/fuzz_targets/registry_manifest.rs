//! Manifest validation on a pushed body; the first byte picks the Content-Type.
#![no_main]

use gantry_registry::manifest;
use libfuzzer_sys::fuzz_target;

const TYPES: [Option<&str>; 5] = [
    None,
    Some(manifest::OCI_MANIFEST),
    Some(manifest::OCI_INDEX),
    Some(manifest::DOCKER_MANIFEST),
    Some("application/json"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let ct = TYPES[first as usize % TYPES.len()];
    if let Ok(p) = manifest::parse(body, ct) {
        assert!(
            p.blobs.len() + p.manifests.len() <= gantry_registry::limits::MAX_MANIFEST_REFERENCES
        );
    }
});
