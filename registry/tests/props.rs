//! Property tests of the registry's request decoders (pure): route, name, tag, digest,
//! `Range` and `Content-Range` parsers, pagination and manifest validation. Arbitrary
//! input never panics, and what is accepted satisfies the invariants the storage relies
//! on (names and digests are safe path components, ranges lie inside the blob). Bounded
//! (a few hundred cases each); `fuzz/` has the long campaign.

use gantry_registry::manifest;
use gantry_registry::reference::*;
use proptest::collection::vec;
use proptest::prelude::*;

fn cfg() -> ProptestConfig {
    ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Path-ish strings: the characters that matter to the parsers, plus anything.
fn pathish() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "(/v2/)?[a-z0-9._/:-]{0,40}(/(manifests|blobs|uploads|tags|list)){0,3}/?[a-z0-9:._-]{0,20}",
        1 => "\\PC{0,60}",
        1 => "[/.]{0,12}",
    ]
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn routes_parse_without_panic_and_names_are_safe_paths(path in pathish()) {
        if let Some(route) = parse_route(&path) {
            let name = match &route {
                Route::Base | Route::Catalog => None,
                Route::Tags { name }
                | Route::Manifest { name, .. }
                | Route::Blob { name, .. }
                | Route::UploadStart { name }
                | Route::Upload { name, .. } => Some(name.clone()),
            };
            if let Some(name) = name {
                if validate_name(&name).is_ok() {
                    prop_assert!(!name.contains(".."), "{name}");
                    prop_assert!(!name.starts_with('/'), "{name}");
                    prop_assert!(name.len() <= MAX_NAME_LEN);
                }
            }
        }
    }

    #[test]
    fn references_and_digests_parse_without_panic(s in "\\PC{0,80}|sha256:[0-9a-f]{60,68}") {
        if let Ok(Reference::Digest(d)) = Reference::parse(&s) {
            prop_assert_eq!(d.hex().len(), 64);
            prop_assert_eq!(d.to_string(), s.clone());
        }
        if let Ok(Reference::Tag(t)) = Reference::parse(&s) {
            prop_assert!(!t.is_empty() && t.len() <= 128 && !t.contains('/'));
            prop_assert!(!t.starts_with('.'));
        }
        let _ = validate_tag(&s);
        let _ = Digest::parse(&s);
    }

    #[test]
    fn ranges_are_inside_the_blob(
        header in proptest::option::of("(bytes=)?[0-9 -]{0,12}|bytes=\\PC{0,20}|bytes=[0-9]{15,25}-[0-9]{0,25}"),
        size in prop_oneof![Just(0u64), 1u64..100, Just(u64::MAX)],
    ) {
        match parse_range(header.as_deref(), size) {
            RangeRequest::Partial(r) => {
                prop_assert!(r.start <= r.end, "{r:?}");
                prop_assert!(r.end < size, "{r:?} of {size}");
                prop_assert!(r.len() <= size);
            }
            RangeRequest::Full | RangeRequest::Unsatisfiable => {}
        }
    }

    #[test]
    fn content_ranges_are_ordered(h in "(bytes )?[0-9]{0,22}-[0-9]{0,22}(/[0-9*]{0,5})?|\\PC{0,30}") {
        if let Some((a, b)) = parse_content_range(&h) {
            prop_assert!(a <= b);
        }
    }

    #[test]
    fn pagination_stays_in_bounds(
        mut items in vec("[a-z]{0,4}", 0..20),
        n in proptest::option::of(prop_oneof![0usize..25, Just(usize::MAX)]),
        last in proptest::option::of("[a-z]{0,4}|\\PC{0,4}"),
    ) {
        items.sort();
        items.dedup();
        let (page, more) = paginate(&items, n, last.as_deref());
        if let Some(n) = n {
            prop_assert!(page.len() <= n);
        }
        if let Some(l) = &last {
            prop_assert!(page.iter().all(|x| x.as_str() > l.as_str()));
        }
        prop_assert!(!more || n.is_some());
    }

    #[test]
    fn manifests_validate_without_panic(
        body in prop_oneof![
            vec(any::<u8>(), 0..300),
            manifest_json(),
        ],
        ct in proptest::option::of(prop_oneof![
            Just(manifest::OCI_MANIFEST.to_string()),
            Just(manifest::OCI_INDEX.to_string()),
            Just("application/json; charset=utf-8".to_string()),
            "\\PC{0,30}",
        ]),
    ) {
        if let Ok(p) = manifest::parse(&body, ct.as_deref()) {
            // Everything accepted references only well-formed digests, within the limit.
            prop_assert!(p.blobs.len() + p.manifests.len() <= gantry_registry::limits::MAX_MANIFEST_REFERENCES);
            for r in p.blobs.iter().chain(&p.manifests) {
                prop_assert_eq!(r.digest.hex().len(), 64);
            }
        }
    }
}

/// JSON shaped like manifests, with random holes and wrong types.
fn manifest_json() -> impl Strategy<Value = Vec<u8>> {
    let digest = prop_oneof!["sha256:[0-9a-f]{64}", "sha256:[0-9a-f]{0,70}", "\\PC{0,10}",];
    let descriptor = (
        proptest::option::of(digest),
        proptest::option::of(prop_oneof![
            any::<i64>().prop_map(|x| x.to_string()),
            Just("\"x\"".to_string())
        ]),
        proptest::option::of("[a-z./+-]{0,40}"),
    )
        .prop_map(|(d, size, mt)| {
            let mut fields = Vec::new();
            if let Some(d) = d {
                fields.push(format!("\"digest\":{}", serde_json::to_string(&d).unwrap()));
            }
            if let Some(s) = size {
                fields.push(format!("\"size\":{s}"));
            }
            if let Some(m) = mt {
                fields.push(format!(
                    "\"mediaType\":{}",
                    serde_json::to_string(&m).unwrap()
                ));
            }
            format!("{{{}}}", fields.join(","))
        });
    (
        proptest::option::of(prop_oneof![Just(2i64), any::<i64>()]),
        proptest::option::of(prop_oneof![
            Just(manifest::OCI_MANIFEST.to_string()),
            Just(manifest::OCI_INDEX.to_string()),
            Just(manifest::DOCKER_MANIFEST.to_string()),
            "[a-z./+-]{0,20}",
        ]),
        proptest::option::of(descriptor.clone()),
        proptest::option::of(vec(descriptor.clone(), 0..4)),
        proptest::option::of(vec(descriptor, 0..4)),
    )
        .prop_map(|(sv, mt, config, layers, manifests)| {
            let mut f = Vec::new();
            if let Some(v) = sv {
                f.push(format!("\"schemaVersion\":{v}"));
            }
            if let Some(m) = mt {
                f.push(format!(
                    "\"mediaType\":{}",
                    serde_json::to_string(&m).unwrap()
                ));
            }
            if let Some(c) = config {
                f.push(format!("\"config\":{c}"));
            }
            if let Some(l) = layers {
                f.push(format!("\"layers\":[{}]", l.join(",")));
            }
            if let Some(m) = manifests {
                f.push(format!("\"manifests\":[{}]", m.join(",")));
            }
            format!("{{{}}}", f.join(",")).into_bytes()
        })
}
