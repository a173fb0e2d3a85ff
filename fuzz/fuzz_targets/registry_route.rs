//! The registry's request-line and header decoders: route, name, reference, digest,
//! `Range`, `Content-Range`. Input: one line per decoder (the first line is the path).
#![no_main]

use gantry_registry::reference::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let path = lines.next().unwrap_or("");
    if let Some(route) = parse_route(path) {
        if let Route::Manifest { name, reference } = &route {
            if validate_name(name).is_ok() {
                assert!(!name.contains("..") && !name.starts_with('/'));
            }
            let _ = Reference::parse(reference);
        }
        if let Route::Blob { digest, .. } = &route {
            if let Ok(d) = Digest::parse(digest) {
                assert_eq!(d.hex().len(), 64);
            }
        }
    }
    let range = lines.next();
    let size = lines
        .next()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1000);
    if let RangeRequest::Partial(r) = parse_range(range, size) {
        assert!(r.start <= r.end && r.end < size);
    }
    if let Some((a, b)) = lines.next().and_then(parse_content_range) {
        assert!(a <= b);
    }
});
