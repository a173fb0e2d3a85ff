//! Every endpoint and every error code of the registry, over real HTTP on 127.0.0.1.

mod common;

use common::*;
use gantry_registry::auth::Users;
use gantry_registry::StorageConfig;
use std::collections::HashMap;

fn open() -> Users {
    Users::new(HashMap::new(), HashMap::new())
}

#[tokio::test]
async fn base_endpoint_announces_api_version() {
    let reg = start().await;
    let c = client();
    let r = c.get(reg.u("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "docker-distribution-api-version"),
        "registry/2.0"
    );
    let r = c.get(reg.u("/v2/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        header(&r, "docker-distribution-api-version"),
        "registry/2.0"
    );
    assert_eq!(code(r).await, "UNSUPPORTED");
    // A known route with a method it does not have.
    let r = c.put(reg.u("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(code(r).await, "UNSUPPORTED");
}

#[tokio::test]
async fn monolithic_upload_then_get_head_and_ranges() {
    let reg = start().await;
    let c = client();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let d = digest(&data);
    let r = c
        .post(reg.u(&format!("/v2/team/app/blobs/uploads/?digest={d}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "location"), format!("/v2/team/app/blobs/{d}"));
    assert_eq!(header(&r, "docker-content-digest"), d);

    let r = c
        .head(reg.u(&format!("/v2/team/app/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), "100000");
    assert_eq!(header(&r, "docker-content-digest"), d);

    let r = c
        .get(reg.u(&format!("/v2/team/app/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);

    let r = c
        .get(reg.u(&format!("/v2/team/app/blobs/{d}")))
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "content-range"), "bytes 10-19/100000");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[10..20]);

    let r = c
        .get(reg.u(&format!("/v2/team/app/blobs/{d}")))
        .header("Range", "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[99_995..]);

    let r = c
        .get(reg.u(&format!("/v2/team/app/blobs/{d}")))
        .header("Range", "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(header(&r, "content-range"), "bytes */100000");

    // Blobs are per repository: another repository does not see it.
    let r = c
        .get(reg.u(&format!("/v2/other/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(code(r).await, "BLOB_UNKNOWN");
    let r = c
        .head(reg.u(&format!("/v2/other/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Malformed digests and names.
    let r = c
        .get(reg.u("/v2/team/app/blobs/sha256:1234"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(code(r).await, "DIGEST_INVALID");
    let r = c
        .get(reg.u(&format!("/v2/Team/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(code(r).await, "NAME_INVALID");
}

#[tokio::test]
async fn chunked_upload_checks_content_range_and_reports_progress() {
    let reg = start().await;
    let c = client();
    let data = b"0123456789abcdefghij".to_vec();
    let d = digest(&data);
    let r = c.post(reg.u("/v2/a/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let loc = header(&r, "location");
    let uuid = header(&r, "docker-upload-uuid");
    assert!(loc.ends_with(&uuid), "{loc} {uuid}");
    assert_eq!(header(&r, "range"), "0-0");

    let r = c
        .patch(reg.u(&loc))
        .header("Content-Range", "0-4")
        .header("Content-Type", "application/octet-stream")
        .body(data[0..5].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "range"), "0-4");
    let loc = header(&r, "location");

    // Out of order: refused with 416 and the current range, nothing changes.
    let r = c
        .patch(reg.u(&loc))
        .header("Content-Range", "10-14")
        .body(data[10..15].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(header(&r, "range"), "0-4");
    assert_eq!(code(r).await, "BLOB_UPLOAD_INVALID");

    // Malformed Content-Range.
    let r = c
        .patch(reg.u(&loc))
        .header("Content-Range", "five-ten")
        .body(data[5..10].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(code(r).await, "BLOB_UPLOAD_INVALID");

    // A chunk whose length differs from its range is refused and rolled back.
    let r = c
        .patch(reg.u(&loc))
        .header("Content-Range", "5-14")
        .body(data[5..10].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(code(r).await, "SIZE_INVALID");

    let r = c.get(reg.u(&loc)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "range"), "0-4");

    // A streamed chunk without Content-Range (what skopeo sends).
    let r = c
        .patch(reg.u(&loc))
        .body(data[5..15].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "range"), "0-14");

    // The last chunk goes with the PUT.
    let r = c
        .put(reg.u(&format!("{loc}?digest={d}")))
        .body(data[15..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "docker-content-digest"), d);
    let r = c
        .get(reg.u(&format!("/v2/a/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);
    // The session is over.
    let r = c.get(reg.u(&loc)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(code(r).await, "BLOB_UPLOAD_UNKNOWN");
    assert!(reg.scratch_files().is_empty(), "{:?}", reg.scratch_files());
}

#[tokio::test]
async fn upload_sessions_are_per_repository_and_cancellable() {
    let reg = start().await;
    let c = client();
    let r = c.post(reg.u("/v2/a/blobs/uploads/")).send().await.unwrap();
    let uuid = header(&r, "docker-upload-uuid");
    let r = c
        .patch(reg.u(&format!("/v2/b/blobs/uploads/{uuid}")))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(code(r).await, "BLOB_UPLOAD_UNKNOWN");
    let r = c
        .put(reg.u(&format!("/v2/a/blobs/uploads/{uuid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(code(r).await, "DIGEST_INVALID");
    let r = c
        .delete(reg.u(&format!("/v2/a/blobs/uploads/{uuid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(reg.scratch_files().is_empty());
    let r = c
        .delete(reg.u(&format!("/v2/a/blobs/uploads/{uuid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(code(r).await, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn corrupted_blob_is_refused_and_nothing_is_stored() {
    let reg = start().await;
    let c = client();
    let data = vec![7u8; 3 << 20];
    let wrong = digest(b"something else");
    // Monolithic.
    let r = c
        .post(reg.u(&format!("/v2/a/blobs/uploads/?digest={wrong}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(code(r).await, "DIGEST_INVALID");
    // Chunked.
    let r = c.post(reg.u("/v2/a/blobs/uploads/")).send().await.unwrap();
    let loc = header(&r, "location");
    let r = c
        .patch(reg.u(&loc))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .put(reg.u(&format!("{loc}?digest={wrong}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(code(r).await, "DIGEST_INVALID");

    for d in [wrong, digest(&data)] {
        let r = c
            .head(reg.u(&format!("/v2/a/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    assert!(reg.blob_files().is_empty(), "{:?}", reg.blob_files());
    assert!(reg.scratch_files().is_empty(), "{:?}", reg.scratch_files());
    assert_eq!(reg.storage.open_uploads(), 0);
}

#[tokio::test]
async fn size_limit_refuses_big_blobs_and_keeps_nothing() {
    let cfg = StorageConfig {
        max_blob_size: 1000,
        ..StorageConfig::default()
    };
    let reg = start_with(cfg, open(), true).await;
    let c = client();
    let data = vec![1u8; 5000];
    let r = c
        .post(reg.u(&format!("/v2/a/blobs/uploads/?digest={}", digest(&data))))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(code(r).await, "SIZE_INVALID");
    assert!(reg.blob_files().is_empty());
    assert!(reg.scratch_files().is_empty(), "{:?}", reg.scratch_files());
    assert_eq!(reg.storage.open_uploads(), 0);
    // Under the limit it works.
    push_blob(&c, &reg, "a", &data[..1000]).await;
}

#[tokio::test]
async fn too_many_uploads_get_429() {
    let cfg = StorageConfig {
        max_uploads: 2,
        ..StorageConfig::default()
    };
    let reg = start_with(cfg, open(), true).await;
    let c = client();
    let a = c.post(reg.u("/v2/a/blobs/uploads/")).send().await.unwrap();
    assert_eq!(a.status(), 202);
    let b = c.post(reg.u("/v2/a/blobs/uploads/")).send().await.unwrap();
    assert_eq!(b.status(), 202);
    let r = c.post(reg.u("/v2/a/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(code(r).await, "TOO_MANY_REQUESTS");
    let r = c
        .delete(reg.u(&header(&a, "location")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c.post(reg.u("/v2/a/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn cross_repository_mount() {
    let reg = start().await;
    let c = client();
    let d = push_blob(&c, &reg, "src/repo", b"shared layer").await;
    let r = c
        .post(reg.u(&format!("/v2/dst/blobs/uploads/?mount={d}&from=src/repo")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "location"), format!("/v2/dst/blobs/{d}"));
    let r = c
        .get(reg.u(&format!("/v2/dst/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"shared layer");
    assert_eq!(reg.blob_files().len(), 1, "content is shared, not copied");
    // Not in `from`: falls back to an upload session.
    let missing = digest(b"missing");
    let r = c
        .post(reg.u(&format!(
            "/v2/dst2/blobs/uploads/?mount={missing}&from=src/repo"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(header(&r, "location").starts_with("/v2/dst2/blobs/uploads/"));
}

#[tokio::test]
async fn blob_delete() {
    let reg = start().await;
    let c = client();
    let d = push_blob(&c, &reg, "a", b"bye").await;
    let r = c
        .delete(reg.u(&format!("/v2/a/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .head(reg.u(&format!("/v2/a/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .delete(reg.u(&format!("/v2/a/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(code(r).await, "BLOB_UNKNOWN");

    let ro = start_with(StorageConfig::default(), open(), false).await;
    let d = push_blob(&c, &ro, "a", b"stays").await;
    let r = c
        .delete(ro.u(&format!("/v2/a/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(code(r).await, "UNSUPPORTED");
    let r = c
        .head(ro.u(&format!("/v2/a/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Pushes a config and a layer, returns (manifest bytes, its digest).
async fn push_image(
    c: &reqwest::Client,
    reg: &TestRegistry,
    repo: &str,
    seed: &str,
) -> (Vec<u8>, String) {
    let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":\"{seed}\"}}");
    let layer = format!("layer of {seed}").repeat(100);
    let cd = push_blob(c, reg, repo, config.as_bytes()).await;
    let ld = push_blob(c, reg, repo, layer.as_bytes()).await;
    let m = image_manifest(&cd, config.len(), &[(&ld, layer.len())]);
    let md = digest(&m);
    (m, md)
}

#[tokio::test]
async fn manifests_by_tag_and_digest() {
    let reg = start().await;
    let c = client();
    let (m, md) = push_image(&c, &reg, "team/app", "one").await;
    let r = c
        .put(reg.u("/v2/team/app/manifests/v1"))
        .header("Content-Type", OCI_MANIFEST)
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "docker-content-digest"), md);
    assert_eq!(
        header(&r, "location"),
        format!("/v2/team/app/manifests/{md}")
    );

    for reference in ["v1", md.as_str()] {
        let r = c
            .get(reg.u(&format!("/v2/team/app/manifests/{reference}")))
            .header("Accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-type"), OCI_MANIFEST);
        assert_eq!(header(&r, "docker-content-digest"), md);
        assert_eq!(r.bytes().await.unwrap().as_ref(), &m[..]);
        let r = c
            .head(reg.u(&format!("/v2/team/app/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-length"), m.len().to_string());
        assert_eq!(header(&r, "docker-content-digest"), md);
    }

    // Docker schema2 content type is kept as pushed.
    let docker_mt = "application/vnd.docker.distribution.manifest.v2+json";
    let dm = String::from_utf8(m.clone())
        .unwrap()
        .replace(OCI_MANIFEST, docker_mt);
    let r = c
        .put(reg.u("/v2/team/app/manifests/docker"))
        .header("Content-Type", docker_mt)
        .body(dm.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .get(reg.u("/v2/team/app/manifests/docker"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "content-type"), docker_mt);

    // PUT by digest must match the content.
    let r = c
        .put(reg.u(&format!("/v2/team/app/manifests/{}", digest(b"x"))))
        .header("Content-Type", OCI_MANIFEST)
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(code(r).await, "DIGEST_INVALID");
    let r = c
        .put(reg.u(&format!("/v2/team/app/manifests/{md}")))
        .header("Content-Type", OCI_MANIFEST)
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Unknown manifest, unknown repository.
    let r = c
        .get(reg.u("/v2/team/app/manifests/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(code(r).await, "MANIFEST_UNKNOWN");
    let r = c.get(reg.u("/v2/ghost/manifests/v1")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(code(r).await, "NAME_UNKNOWN");
    let r = c
        .get(reg.u("/v2/team/app/manifests/sha256:xyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(code(r).await, "DIGEST_INVALID");

    // Delete by tag removes the tag only; by digest removes the revision and its tags.
    let r = c
        .delete(reg.u("/v2/team/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .get(reg.u("/v2/team/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .get(reg.u(&format!("/v2/team/app/manifests/{md}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .put(reg.u("/v2/team/app/manifests/v2"))
        .header("Content-Type", OCI_MANIFEST)
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .delete(reg.u(&format!("/v2/team/app/manifests/{md}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .get(reg.u("/v2/team/app/manifests/v2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(code(r).await, "MANIFEST_UNKNOWN");
    let r = c
        .delete(reg.u(&format!("/v2/team/app/manifests/{md}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(code(r).await, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn invalid_manifests_are_refused_and_nothing_is_stored() {
    let reg = start().await;
    let c = client();
    let (m, md) = push_image(&c, &reg, "a", "x").await;
    let put = |body: Vec<u8>, ct: &'static str| {
        let c = c.clone();
        let url = reg.u("/v2/a/manifests/bad");
        async move {
            c.put(url)
                .header("Content-Type", ct)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let r = put(b"{not json".to_vec(), OCI_MANIFEST).await;
    assert_eq!(r.status(), 400);
    assert_eq!(code(r).await, "MANIFEST_INVALID");
    let r = put(br#"{"schemaVersion":1,"name":"a"}"#.to_vec(), OCI_MANIFEST).await;
    assert_eq!(code(r).await, "MANIFEST_INVALID");
    let r = put(
        m.clone(),
        "application/vnd.docker.distribution.manifest.v2+json",
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        code(r).await,
        "MANIFEST_INVALID",
        "Content-Type contradicts mediaType"
    );

    // A layer that was never pushed.
    let missing = digest(b"never pushed");
    let cfg = digest(br#"{"architecture":"amd64","os":"linux","seed":"x"}"#);
    let dangling = image_manifest(&cfg, 48, &[(&missing, 12)]);
    let r = put(dangling.clone(), OCI_MANIFEST).await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(body["errors"][0]["detail"]["digest"], missing);
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("layers[0]"));

    // An index whose child manifest is not in the repository.
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": md, "size": m.len(),
                       "platform": {"os": "linux", "architecture": "amd64"}}]
    }))
    .unwrap();
    let r = put(index.clone(), OCI_INDEX).await;
    assert_eq!(r.status(), 400);
    assert_eq!(code(r).await, "MANIFEST_BLOB_UNKNOWN");

    // Nothing of the refused manifests is visible.
    let r = c.get(reg.u("/v2/a/manifests/bad")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = c.get(reg.u("/v2/a/tags/list")).send().await.unwrap();
    let tags: serde_json::Value = r.json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!([]));
    for d in [digest(&dangling), digest(&index)] {
        let r = c
            .get(reg.u(&format!("/v2/a/manifests/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }

    // Once the child exists, the index is accepted.
    let r = c
        .put(reg.u(&format!("/v2/a/manifests/{md}")))
        .header("Content-Type", OCI_MANIFEST)
        .body(m)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = put(index.clone(), OCI_INDEX).await;
    assert_eq!(r.status(), 201);
    let r = c.get(reg.u("/v2/a/manifests/bad")).send().await.unwrap();
    assert_eq!(header(&r, "content-type"), OCI_INDEX);

    // Too large.
    let big = vec![b' '; 5 << 20];
    let r = put(big, OCI_MANIFEST).await;
    assert_eq!(r.status(), 413);
    assert_eq!(code(r).await, "SIZE_INVALID");
}

#[tokio::test]
async fn tags_and_catalog_paginate_with_link_headers() {
    let reg = start().await;
    let c = client();
    let (m, _) = push_image(&c, &reg, "p/q", "tags").await;
    for t in ["d", "a", "c", "b", "e"] {
        let r = c
            .put(reg.u(&format!("/v2/p/q/manifests/{t}")))
            .header("Content-Type", OCI_MANIFEST)
            .body(m.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let r = c.get(reg.u("/v2/p/q/tags/list")).send().await.unwrap();
    assert!(r.headers().get("link").is_none());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v,
        serde_json::json!({"name":"p/q","tags":["a","b","c","d","e"]})
    );

    let r = c.get(reg.u("/v2/p/q/tags/list?n=2")).send().await.unwrap();
    assert_eq!(
        header(&r, "link"),
        "</v2/p/q/tags/list?n=2&last=b>; rel=\"next\""
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["a", "b"]));
    let r = c
        .get(reg.u("/v2/p/q/tags/list?n=2&last=b"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "link"),
        "</v2/p/q/tags/list?n=2&last=d>; rel=\"next\""
    );
    let r = c
        .get(reg.u("/v2/p/q/tags/list?n=2&last=d"))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("link").is_none());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["e"]));

    let r = c.get(reg.u("/v2/unknown/tags/list")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(code(r).await, "NAME_UNKNOWN");

    for repo in ["z", "m/n", "b"] {
        push_blob(&c, &reg, repo, repo.as_bytes()).await;
    }
    let r = c.get(reg.u("/v2/_catalog")).send().await.unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["repositories"],
        serde_json::json!(["b", "m/n", "p/q", "z"])
    );
    let r = c.get(reg.u("/v2/_catalog?n=3")).send().await.unwrap();
    assert_eq!(
        header(&r, "link"),
        "</v2/_catalog?n=3&last=p/q>; rel=\"next\""
    );
    let r = c
        .get(reg.u("/v2/_catalog?n=3&last=p/q"))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["repositories"], serde_json::json!(["z"]));
}

#[tokio::test]
async fn basic_auth_separates_readers_and_writers() {
    let h = |p| bcrypt::hash(p, 4).unwrap();
    let users = Users::new(
        HashMap::from([("reader".to_string(), h("rpw"))]),
        HashMap::from([("writer".to_string(), h("wpw"))]),
    );
    let reg = start_with(StorageConfig::default(), users, true).await;
    let c = client();
    let r = c.get(reg.u("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        header(&r, "www-authenticate"),
        "Basic realm=\"gantry-registry\""
    );
    assert_eq!(code(r).await, "UNAUTHORIZED");
    let r = c
        .get(reg.u("/v2/"))
        .basic_auth("reader", Some("bad"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let data = b"auth blob";
    let d = digest(data);
    let url = reg.u(&format!("/v2/a/blobs/uploads/?digest={d}"));
    let r = c
        .post(&url)
        .basic_auth("reader", Some("rpw"))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(code(r).await, "DENIED");
    assert!(reg.blob_files().is_empty());
    let r = c
        .post(&url)
        .basic_auth("writer", Some("wpw"))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let blob = reg.u(&format!("/v2/a/blobs/{d}"));
    let r = c
        .get(&blob)
        .basic_auth("reader", Some("rpw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), data);
    let r = c.get(&blob).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .delete(&blob)
        .basic_auth("reader", Some("rpw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn concurrent_uploads_are_safe() {
    let reg = start().await;
    let c = client();
    let mut tasks = Vec::new();
    // Eight different blobs in chunks, and six uploads of one same blob, at once.
    for i in 0..14u8 {
        let c = c.clone();
        let base = reg.url.clone();
        tasks.push(tokio::spawn(async move {
            let data: Vec<u8> = if i < 8 {
                (0..(2 << 20))
                    .map(|j: u32| (j as u8).wrapping_mul(i + 1))
                    .collect()
            } else {
                vec![42u8; 3 << 20]
            };
            let d = digest(&data);
            let r = c
                .post(format!("{base}/v2/c/blobs/uploads/"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            let mut loc = header(&r, "location");
            let mut off = 0;
            for chunk in data.chunks(700_000) {
                let r = c
                    .patch(format!("{base}{loc}"))
                    .header(
                        "Content-Range",
                        format!("{}-{}", off, off + chunk.len() - 1),
                    )
                    .body(chunk.to_vec())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
                off += chunk.len();
                loc = header(&r, "location");
            }
            let r = c
                .put(format!("{base}{loc}?digest={d}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            (d, data)
        }));
    }
    for t in tasks {
        let (d, data) = t.await.unwrap();
        let r = c
            .get(reg.u(&format!("/v2/c/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);
    }
    assert_eq!(reg.blob_files().len(), 9);
    assert!(reg.scratch_files().is_empty());
}

#[tokio::test]
async fn gc_sweeps_unreferenced_blobs_only() {
    let reg = start().await;
    let c = client();
    let (m, md) = push_image(&c, &reg, "keep", "kept").await;
    let r = c
        .put(reg.u("/v2/keep/manifests/v1"))
        .header("Content-Type", OCI_MANIFEST)
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let orphan = push_blob(&c, &reg, "keep", b"orphan layer").await;
    let (m2, md2) = push_image(&c, &reg, "gone", "deleted").await;
    let r = c
        .put(reg.u("/v2/gone/manifests/v1"))
        .header("Content-Type", OCI_MANIFEST)
        .body(m2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .delete(reg.u(&format!("/v2/gone/manifests/{md2}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // 3 of image one (manifest, config, layer) + orphan + 3 of image two.
    assert_eq!(reg.blob_files().len(), 7);

    let dry = gantry_registry::gc::collect(reg.root(), true).unwrap();
    assert_eq!(dry.blobs_removed, 4);
    assert_eq!(reg.blob_files().len(), 7, "dry run removes nothing");
    let report = gantry_registry::gc::collect(reg.root(), false).unwrap();
    assert_eq!(report.manifests, 1);
    assert_eq!(report.blobs_kept, 3);
    assert_eq!(report.blobs_removed, 4);
    assert_eq!(
        report.links_removed, 3,
        "orphan link + two links of the deleted image"
    );
    assert_eq!(reg.blob_files().len(), 3);

    let r = c.get(reg.u("/v2/keep/manifests/v1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), md);
    let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
    for d in [&v["config"]["digest"], &v["layers"][0]["digest"]] {
        let r = c
            .head(reg.u(&format!("/v2/keep/blobs/{}", d.as_str().unwrap())))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = c
        .head(reg.u(&format!("/v2/keep/blobs/{orphan}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
