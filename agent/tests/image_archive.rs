//! Load/save against the real peer: skopeo writes OCI layouts and docker archives, gantry
//! loads them and saves them back with identical digests.
mod image_support;

use std::path::Path;
use std::process::Command;

use gantry_agent::image::archive::{self, Format};
use gantry_agent::image::{Digest, ImageStore, Reference};
use image_support::{put_image, require_root, Layer};

fn skopeo(args: &[&str]) {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("skopeo is required for this test (scripts/setup.sh installs it): {e}")
        });
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn layers() -> Vec<Vec<u8>> {
    let mut a = Layer::new();
    a.dir("etc/", 0o755, 1).file("etc/hosts", b"h", 0o644, 1);
    let mut b = Layer::new();
    b.file("etc/.wh.hosts", b"", 0o644, 1)
        .file("app", &vec![7u8; 100_000], 0o755, 1);
    vec![a.tar(), b.tar()]
}

/// The single manifest digest an OCI layout's index.json names.
fn layout_manifest(dir: &Path) -> Digest {
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let m = idx["manifests"].as_array().unwrap();
    assert_eq!(m.len(), 1, "{idx}");
    Digest::parse(m[0]["digest"].as_str().unwrap()).unwrap()
}

#[test]
fn skopeo_oci_layout_loads_and_saves_back_identical() {
    require_root("skopeo_oci_layout_loads_and_saves_back_identical");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // An image made here, then copied by skopeo into its own layout.
    let a = ImageStore::open(d.join("a")).unwrap();
    put_image(&a, "test/app:1", &layers());
    let img = a.resolve(&Reference::parse("test/app:1").unwrap()).unwrap();
    archive::save(
        &a,
        &[(Some(Reference::parse("test/app:1").unwrap()), img)],
        &d.join("ours/"),
        Format::Oci,
    )
    .unwrap();
    let ours = format!("oci:{}:1", d.join("ours").display());
    let theirs_dir = d.join("skopeo");
    skopeo(&[
        "copy",
        "--quiet",
        &ours,
        &format!("oci:{}:1", theirs_dir.display()),
    ]);
    let skopeo_digest = layout_manifest(&theirs_dir);

    // Load skopeo's layout (it names the image by tag only: --name gives the repository).
    let b = ImageStore::open(d.join("b")).unwrap();
    let repo = Reference::parse("local/app").unwrap();
    let loaded = archive::load(&b, &theirs_dir, Some(&repo)).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].name.as_deref(), Some("local/app:1"));
    assert_eq!(loaded[0].digest, skopeo_digest);
    let img = b
        .resolve(&Reference::parse("local/app:1").unwrap())
        .unwrap();
    b.unpack(&img).unwrap();

    // Save as an OCI tar and a docker archive; both load back with the same digest, and
    // skopeo reads both.
    for (format, file, transport) in [
        (Format::Oci, "out-oci.tar", "oci-archive"),
        (Format::Docker, "out-docker.tar", "docker-archive"),
    ] {
        let out = d.join(file);
        archive::save(
            &b,
            &[(Some(Reference::parse("local/app:1").unwrap()), img.clone())],
            &out,
            format,
        )
        .unwrap();
        let c = ImageStore::open(d.join(format!("c-{file}"))).unwrap();
        let back = archive::load(&c, &out, None).unwrap();
        assert_eq!(back[0].digest, skopeo_digest, "{file}");
        assert_eq!(back[0].name.as_deref(), Some("local/app:1"));
        let sk = d.join(format!("sk-{file}"));
        skopeo(&[
            "copy",
            "--quiet",
            &format!("{transport}:{}", out.display()),
            &format!("oci:{}:x", sk.display()),
        ]);
        if format == Format::Oci {
            assert_eq!(
                layout_manifest(&sk),
                skopeo_digest,
                "skopeo reads our OCI archive unchanged"
            );
        }
    }
}

#[test]
fn skopeo_docker_archive_loads_and_saves_back_identical() {
    require_root("skopeo_docker_archive_loads_and_saves_back_identical");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = ImageStore::open(d.join("a")).unwrap();
    put_image(&a, "test/app:1", &layers());
    let img_a = a.resolve(&Reference::parse("test/app:1").unwrap()).unwrap();
    archive::save(&a, &[(None, img_a.clone())], &d.join("ours/"), Format::Oci).unwrap();
    let da = d.join("docker.tar");
    skopeo(&[
        "copy",
        "--quiet",
        &format!("oci:{}", d.join("ours").display()),
        &format!("docker-archive:{}:example.com/team/app:v2", da.display()),
    ]);

    let b = ImageStore::open(d.join("b")).unwrap();
    let loaded = archive::load(&b, &da, None).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].name.as_deref(), Some("example.com/team/app:v2"));
    let img = b
        .resolve(&Reference::parse("example.com/team/app:v2").unwrap())
        .unwrap();
    assert_eq!(img.diff_ids, img_a.diff_ids, "same layers");
    b.unpack(&img).unwrap();
    let top = b.snapshotter().fs_dir(
        &gantry_agent::image::Snapshotter::stat(b.snapshotter(), &img.chain_ids[1].to_string())
            .unwrap(),
    );
    assert_eq!(std::fs::read(top.join("app")).unwrap(), vec![7u8; 100_000]);

    // Save back in docker format and load again: manifest, config and layers identical.
    let out = d.join("again.tar");
    archive::save(
        &b,
        &[(
            Some(Reference::parse("example.com/team/app:v2").unwrap()),
            img.clone(),
        )],
        &out,
        Format::Docker,
    )
    .unwrap();
    let c = ImageStore::open(d.join("c")).unwrap();
    let back = archive::load(&c, &out, None).unwrap();
    assert_eq!(back[0].digest, img.manifest_digest);
    let img_c = c
        .resolve(&Reference::parse("example.com/team/app:v2").unwrap())
        .unwrap();
    assert_eq!(img_c.config_digest, img.config_digest);
    assert_eq!(img_c.layers, img.layers);
    // skopeo reads what we saved.
    skopeo(&[
        "inspect",
        "--raw",
        &format!("docker-archive:{}", out.display()),
    ]);
}

#[test]
fn load_refuses_corrupt_blob_and_names_it() {
    require_root("load_refuses_corrupt_blob_and_names_it");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = ImageStore::open(d.join("a")).unwrap();
    put_image(&a, "test/app:1", &layers());
    let img = a.resolve(&Reference::parse("test/app:1").unwrap()).unwrap();
    archive::save(
        &a,
        &[(Some(Reference::parse("test/app:1").unwrap()), img.clone())],
        &d.join("ours/"),
        Format::Oci,
    )
    .unwrap();
    let layer = img.layers[1].digest().to_string();
    let hex = layer.strip_prefix("sha256:").unwrap();
    let p = d.join("ours/blobs/sha256").join(hex);
    let mut bytes = std::fs::read(&p).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&p, bytes).unwrap();
    let b = ImageStore::open(d.join("b")).unwrap();
    let e = archive::load(&b, &d.join("ours"), None).unwrap_err();
    assert!(e.to_string().contains(hex), "{e}");
    assert!(
        !b.content().exists(&Digest::parse(&layer).unwrap()),
        "corrupt blob not stored"
    );
    assert!(b.index().list().unwrap().is_empty(), "nothing named");
}
