//! Interop with the real peer client: skopeo copies an OCI layout (busybox layer, built
//! here) into the gantry registry and back, with identical digests.

mod common;

use common::*;
use sha2::{Digest as _, Sha256};
use std::path::Path;
use std::time::Duration;

/// Writes `blob` into the layout's blob dir; returns its digest.
fn put_blob(layout: &Path, data: &[u8]) -> String {
    let hex = hex::encode(Sha256::digest(data));
    std::fs::write(layout.join("blobs/sha256").join(&hex), data).unwrap();
    format!("sha256:{hex}")
}

/// An OCI image layout with one gzip layer holding /bin/busybox and a /bin/sh symlink,
/// plus a second small layer (both gzip: skopeo would compress a plain tar for a
/// docker:// destination, changing digests); tagged `tag`. Returns the manifest digest.
fn build_layout(dir: &Path, tag: &str) -> String {
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox is missing: install busybox-static (scripts/setup.sh)");
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();

    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    tar.append_data(&mut h, "bin/", std::io::empty()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    tar.append_data(&mut h, "bin/busybox", &busybox[..])
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    tar.append_link(&mut h, "bin/sh", "busybox").unwrap();
    let raw = tar.into_inner().unwrap();
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&raw)));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    let gz = gz.finish().unwrap();
    let layer = put_blob(dir, &gz);

    let mut tar2 = tar::Builder::new(Vec::new());
    let note = format!("built for {tag}\n");
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(note.len() as u64);
    tar2.append_data(&mut h, "etc/note", note.as_bytes())
        .unwrap();
    let raw2 = tar2.into_inner().unwrap();
    let diff2 = format!("sha256:{}", hex::encode(Sha256::digest(&raw2)));
    let mut gz2 = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz2, &raw2).unwrap();
    let gz2 = gz2.finish().unwrap();
    let layer2 = put_blob(dir, &gz2);

    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id, diff2]},
    }))
    .unwrap();
    let config_d = put_blob(dir, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config.len()},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": gz.len()},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer2, "size": gz2.len()},
        ],
    }))
    .unwrap();
    let md = put_blob(dir, &manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": md, "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    md
}

async fn skopeo(args: &[&str]) {
    let mut cmd = tokio::process::Command::new("skopeo");
    cmd.args(args).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("skopeo took more than 120 s")
        .unwrap_or_else(|e| panic!("cannot run skopeo ({e}): install it (scripts/setup.sh)"));
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tagged_digest(layout: &Path, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .expect("tag in index.json")["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_round_trip_keeps_digests() {
    let reg = start().await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let md = build_layout(&src, "v1");
    let dest = format!("docker://127.0.0.1:{}/interop/busybox:v1", reg.addr.port());
    skopeo(&[
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", src.display()),
        &dest,
    ])
    .await;

    // The registry serves exactly what was pushed.
    let c = client();
    let r = c
        .get(reg.u("/v2/interop/busybox/manifests/v1"))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), md);
    let manifest: serde_json::Value = r.json().await.unwrap();
    let mut blobs = vec![manifest["config"]["digest"].as_str().unwrap().to_string()];
    for l in manifest["layers"].as_array().unwrap() {
        blobs.push(l["digest"].as_str().unwrap().to_string());
    }
    for d in &blobs {
        let r = c
            .get(reg.u(&format!("/v2/interop/busybox/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(&digest(&r.bytes().await.unwrap()), d);
    }

    // And back, into an empty layout: same manifest digest, same blobs byte for byte.
    let back = work.path().join("back");
    skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &dest,
        &format!("oci:{}:v1", back.display()),
    ])
    .await;
    assert_eq!(tagged_digest(&back, "v1"), md);
    for d in blobs.iter().chain([&md]) {
        let hex = d.strip_prefix("sha256:").unwrap();
        let a = std::fs::read(src.join("blobs/sha256").join(hex)).unwrap();
        let b = std::fs::read(back.join("blobs/sha256").join(hex)).unwrap();
        assert!(a == b, "blob {d} differs after the round trip");
    }

    // A second push of the same image to another repository mounts or skips blobs and
    // still yields the same digest.
    let dest2 = format!("docker://127.0.0.1:{}/interop/copy:v1", reg.addr.port());
    skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &dest,
        &dest2,
    ])
    .await;
    let r = c
        .head(reg.u("/v2/interop/copy/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "docker-content-digest"), md);
    assert_eq!(reg.blob_files().len(), 4, "blobs are stored once");
}
