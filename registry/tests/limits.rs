//! Oversized and malformed requests to every registry route are refused with the
//! distribution spec's error codes (never a 500, never a panic), change nothing, and the
//! registry keeps serving normal requests afterwards.

mod common;

use common::*;
use gantry_registry::limits::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Sends raw bytes on a fresh connection; returns what came back until EOF (or 10 s).
async fn raw(reg: &TestRegistry, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(reg.addr).await.unwrap();
    // The server may answer and close before it has read everything.
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The registry still answers: base endpoint, and a blob push + pull.
async fn still_serves(c: &reqwest::Client, reg: &TestRegistry) {
    let r = c.get(reg.u("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let d = push_blob(c, reg, "ok/after", b"still serving").await;
    let r = c
        .get(reg.u(&format!("/v2/ok/after/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"still serving");
}

#[tokio::test]
async fn oversized_request_heads_get_431_and_the_registry_keeps_serving() {
    let reg = start().await;
    let c = client();
    let big = format!(
        "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2 * HTTP1_MAX_HEAD_BYTES)
    );
    let answer = raw(&reg, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
    let mut many = String::from("GET /v2/ HTTP/1.1\r\nHost: x\r\n");
    for i in 0..=HTTP1_MAX_HEADERS {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let answer = raw(&reg, many.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
    // Not HTTP at all, and a request line with a 70 KB path (over the URI limit).
    let answer = raw(&reg, &[0x16, 0x03, 0x01, 0x00, 0xff, 0x00, 0x00]).await;
    assert!(!answer.contains(" 500 "), "{answer:.200}");
    let long = format!(
        "GET /v2/{}/tags/list HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70_000)
    );
    let answer = raw(&reg, long.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 414")
            || answer.starts_with("HTTP/1.1 400")
            || answer.is_empty(),
        "{answer:.200}"
    );
    still_serves(&c, &reg).await;
}

#[tokio::test]
async fn bad_names_references_and_digests_get_spec_codes_on_every_route() {
    let reg = start().await;
    let c = client();
    let good = push_blob(&c, &reg, "app", b"layer").await;
    let long_name = vec!["a"; MAX_NAME_LEN / 2 + 2].join("/"); // 257 bytes
                                                               // (`%2e%2e` would be `..` to the client's URL parser, which resolves it away.)
    for name in ["UPPER", "a..b", "a//b", "-a", "a_", "a%20b", &long_name] {
        for (method, path) in [
            ("GET", format!("/v2/{name}/tags/list")),
            ("GET", format!("/v2/{name}/manifests/latest")),
            ("PUT", format!("/v2/{name}/manifests/latest")),
            ("GET", format!("/v2/{name}/blobs/{good}")),
            ("POST", format!("/v2/{name}/blobs/uploads/")),
            ("PATCH", format!("/v2/{name}/blobs/uploads/some-session")),
        ] {
            let r = c
                .request(method.parse().unwrap(), reg.u(&path))
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{method} {path}");
            assert_eq!(code(r).await, "NAME_INVALID", "{method} {path}");
        }
    }
    for digest in [
        "sha256:xyz",
        "sha256:",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        ":",
        "sha256:ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789",
        &format!("{good}0"),
    ] {
        let r = c
            .get(reg.u(&format!("/v2/app/blobs/{digest}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{digest}");
        assert_eq!(code(r).await, "DIGEST_INVALID", "{digest}");
        let r = c
            .post(reg.u(&format!("/v2/app/blobs/uploads/?digest={digest}")))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(code(r).await, "DIGEST_INVALID", "monolithic {digest}");
        let r = c
            .post(reg.u(&format!("/v2/app/blobs/uploads/?mount={digest}&from=other")))
            .send()
            .await
            .unwrap();
        assert_eq!(code(r).await, "DIGEST_INVALID", "mount {digest}");
    }
    let long_tag = "t".repeat(MAX_TAG_LEN + 1);
    for reference in [long_tag.as_str(), ".hidden", "a%20b"] {
        let r = c
            .get(reg.u(&format!("/v2/app/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{reference}");
        assert_eq!(code(r).await, "MANIFEST_INVALID", "{reference}");
    }
    // Unknown or path-like upload sessions are unknown, not files.
    for session in ["..%2f..%2fetc", "a.b", "nope", &"s".repeat(5000)] {
        let r = c
            .patch(reg.u(&format!("/v2/app/blobs/uploads/{session}")))
            .body("data")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{session:.40}");
        assert_eq!(code(r).await, "BLOB_UPLOAD_UNKNOWN", "{session:.40}");
    }
    let r = c.get(reg.u("/v2/_catalog?n=lots")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .get(reg.u("/v2/_catalog?n=18446744073709551616"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .get(reg.u("/v2/_catalog?n=18446744073709551615&last=%ff"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    still_serves(&c, &reg).await;
}

#[tokio::test]
async fn bad_ranges_are_416_or_whole_and_bad_content_ranges_change_nothing() {
    let reg = start().await;
    let c = client();
    let data = b"0123456789";
    let d = push_blob(&c, &reg, "app", data).await;
    for (range, want) in [
        ("bytes=10-", 416),
        ("bytes=5-2", 416),
        ("bytes=-0", 416),
        ("bytes=abc", 416),
        ("bytes=-", 416),
        ("bytes=99999999999999999999-", 416),
        ("bytes=0-99999999999999999999", 416),
        ("bytes=18446744073709551615-", 416),
        ("bytes=0-1,3-4", 200),
        ("items=0-1", 200),
        ("bytes=-18446744073709551615", 206),
    ] {
        let r = c
            .get(reg.u(&format!("/v2/app/blobs/{d}")))
            .header("Range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{range}");
    }
    // A session with 3 bytes; bad Content-Range values leave it at 3.
    let r = c
        .post(reg.u("/v2/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = header(&r, "location");
    let r = c
        .patch(reg.u(&loc))
        .header("Content-Range", "0-2")
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    for (cr, status, want) in [
        ("garbage", 416, "BLOB_UPLOAD_INVALID"),
        ("5-2", 416, "BLOB_UPLOAD_INVALID"),
        ("3-", 416, "BLOB_UPLOAD_INVALID"),
        ("-", 416, "BLOB_UPLOAD_INVALID"),
        (
            "99999999999999999999-99999999999999999999",
            416,
            "BLOB_UPLOAD_INVALID",
        ),
        ("0-2", 416, "BLOB_UPLOAD_INVALID"),
        ("3-18446744073709551615", 400, "SIZE_INVALID"),
        ("3-3", 400, "SIZE_INVALID"),
    ] {
        let r = c
            .patch(reg.u(&loc))
            .header("Content-Range", cr)
            .body("def")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{cr}");
        assert_eq!(code(r).await, want, "{cr}");
        let r = c.get(reg.u(&loc)).send().await.unwrap();
        assert_eq!(header(&r, "range"), "0-2", "after {cr}");
    }
    still_serves(&c, &reg).await;
}

#[tokio::test]
async fn oversized_and_pathological_manifests_are_refused_and_nothing_is_stored() {
    let reg = start().await;
    let c = client();
    let put = |body: Vec<u8>| {
        let c = c.clone();
        let url = reg.u("/v2/app/manifests/v1");
        async move {
            c.put(url)
                .header("Content-Type", OCI_MANIFEST)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let r = put(vec![b' '; MAX_MANIFEST_BYTES + 1]).await;
    assert_eq!(r.status(), 413);
    assert_eq!(code(r).await, "SIZE_INVALID");
    let config = push_blob(&c, &reg, "app", b"{}").await;
    let layers: Vec<(&str, usize)> = vec![(config.as_str(), 2); MAX_MANIFEST_REFERENCES];
    let r = put(image_manifest(&config, 2, &layers)).await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_INVALID");
    let msg = body["errors"][0]["message"].as_str().unwrap();
    assert!(msg.contains("the limit is 1024"), "{msg}");
    // Nesting far deeper than serde_json's recursion limit: an error, not a stack overflow.
    let mut deep = br#"{"schemaVersion":2,"x":"#.to_vec();
    deep.extend("[".repeat(200_000).as_bytes());
    let r = put(deep).await;
    assert_eq!(r.status(), 400);
    assert_eq!(code(r).await, "MANIFEST_INVALID");
    let r = put(br#"{"schemaVersion":2,"config":{"digest":7},"layers":[]}"#.to_vec()).await;
    assert_eq!(code(r).await, "MANIFEST_INVALID");
    let r = put(b"\xff\xfe\x00".to_vec()).await;
    assert_eq!(code(r).await, "MANIFEST_INVALID");
    let r = c.get(reg.u("/v2/app/manifests/v1")).send().await.unwrap();
    assert_eq!(r.status(), 404, "nothing was stored");
    // At the limit is fine.
    let layers: Vec<(&str, usize)> = vec![(config.as_str(), 2); MAX_MANIFEST_REFERENCES - 1];
    let r = put(image_manifest(&config, 2, &layers)).await;
    assert_eq!(r.status(), 201);
    still_serves(&c, &reg).await;
}
