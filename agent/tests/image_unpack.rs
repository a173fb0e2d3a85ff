//! Layer unpack on real temp dirs: exact trees, overlay whiteouts, and refused layers
//! (each refused with the entry named, nothing written outside, nothing left in snapshots).
mod image_support;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use gantry_agent::image::unpack::{
    unpack_layer, DevicePolicy, UnpackError, UnpackOptions, WhiteoutMode,
};
use gantry_agent::image::{ApplyError, Digest, ImageStore, Snapshotter};
use image_support::{require_root, tree, Layer};

fn opts() -> UnpackOptions {
    UnpackOptions {
        sync: false,
        ..UnpackOptions::default()
    }
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        None
    } else {
        buf.truncate(r as usize);
        Some(buf)
    }
}

fn rich_layer() -> Layer {
    let long_gnu = format!("deep/{}/gnu-long-name-file", "d".repeat(120));
    let long_pax = format!("deep/{}", "p".repeat(240));
    let mut l = Layer::new();
    l.dir("etc/", 0o750, 1_400_000_000)
        .file_owned(
            "etc/passwd",
            b"root:x:0:0\n",
            0o640,
            1000,
            1001,
            1_400_000_100,
        )
        .file("bin/tool", b"#!/bin/sh\n", 0o4755, 1_400_000_200)
        .symlink("bin/link", "tool")
        .hardlink("bin/hard", "bin/tool")
        .pax(&[
            ("SCHILY.xattr.user.gantry", b"hello"),
            ("mtime", b"1400000300.5"),
        ])
        .file("etc/xattr-file", b"x", 0o600, 1)
        .gnu_long_file(&long_gnu, b"gnu")
        .pax(&[("path", long_pax.as_bytes())])
        .file("placeholder", b"pax", 0o644, 1_400_000_400)
        .fifo("run/fifo")
        .dir("deep/", 0o755, 1_300_000_000);
    l
}

#[test]
fn unpack_rich_layer_is_exact() {
    require_root("unpack_rich_layer_is_exact");
    let tar = rich_layer().tar();
    for (label, blob) in [
        ("tar", tar.clone()),
        ("gzip", image_support::gzip(&tar)),
        ("zstd", zstd::encode_all(&tar[..], 3).unwrap()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let stats =
            unpack_layer(&blob[..], root, &opts()).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(stats.diff_id, Digest::of(&tar), "{label}");
        assert_eq!(stats.digest, Digest::of(&blob), "{label}");
        assert_eq!(stats.compressed_size, blob.len() as u64);
        assert_eq!(stats.uncompressed_size, tar.len() as u64);

        let etc = fs::metadata(root.join("etc")).unwrap();
        assert_eq!(etc.mode() & 0o7777, 0o750);
        assert_eq!(
            etc.mtime(),
            1_400_000_000,
            "dir mtime set after its contents"
        );
        let passwd = fs::metadata(root.join("etc/passwd")).unwrap();
        assert_eq!((passwd.uid(), passwd.gid()), (1000, 1001));
        assert_eq!(passwd.mode() & 0o7777, 0o640);
        assert_eq!(passwd.mtime(), 1_400_000_100);
        assert_eq!(fs::read(root.join("etc/passwd")).unwrap(), b"root:x:0:0\n");
        let tool = fs::metadata(root.join("bin/tool")).unwrap();
        assert_eq!(tool.mode() & 0o7777, 0o4755, "setuid kept");
        assert_eq!(
            fs::read_link(root.join("bin/link")).unwrap(),
            Path::new("tool")
        );
        assert_eq!(
            fs::symlink_metadata(root.join("bin/link")).unwrap().mtime(),
            1_500_000_000
        );
        assert_eq!(
            fs::metadata(root.join("bin/hard")).unwrap().ino(),
            tool.ino()
        );
        assert_eq!(
            xattr(&root.join("etc/xattr-file"), "user.gantry").as_deref(),
            Some(&b"hello"[..])
        );
        let xf = fs::metadata(root.join("etc/xattr-file")).unwrap();
        assert_eq!((xf.mtime(), xf.mtime_nsec()), (1_400_000_300, 500_000_000));
        let long_gnu = format!("deep/{}/gnu-long-name-file", "d".repeat(120));
        assert_eq!(fs::read(root.join(long_gnu)).unwrap(), b"gnu");
        let long_pax = format!("deep/{}", "p".repeat(240));
        assert_eq!(fs::read(root.join(long_pax)).unwrap(), b"pax");
        assert!(!root.join("placeholder").exists());
        assert!(fs::metadata(root.join("run/fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        assert_eq!(
            fs::metadata(root.join("deep")).unwrap().mtime(),
            1_300_000_000
        );
    }
}

#[test]
fn overlay_whiteouts_and_opaque_dirs_are_written() {
    require_root("overlay_whiteouts_and_opaque_dirs_are_written");
    let dir = tempfile::tempdir().unwrap();
    let mut l = Layer::new();
    l.dir("etc/", 0o755, 1)
        .file("etc/.wh.passwd", b"", 0o644, 1)
        .dir("var/", 0o755, 1)
        .file("var/.wh..wh..opq", b"", 0o644, 1)
        .file("var/new", b"n", 0o644, 1);
    unpack_layer(&l.tar()[..], dir.path(), &opts()).unwrap();
    let wh = fs::symlink_metadata(dir.path().join("etc/passwd")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert_eq!(
        xattr(&dir.path().join("var"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!dir.path().join("var/.wh..wh..opq").exists());
    assert_eq!(fs::read(dir.path().join("var/new")).unwrap(), b"n");
}

#[test]
fn apply_mode_deletes_whited_out_paths() {
    require_root("apply_mode_deletes_whited_out_paths");
    let dir = tempfile::tempdir().unwrap();
    let mut base = Layer::new();
    base.file("a/keep", b"k", 0o644, 1)
        .file("a/gone", b"g", 0o644, 1)
        .file("b/old1", b"1", 0o644, 1)
        .file("b/sub/old2", b"2", 0o644, 1);
    unpack_layer(&base.tar()[..], dir.path(), &opts()).unwrap();
    let mut top = Layer::new();
    top.file("a/.wh.gone", b"", 0o644, 1)
        .dir("b/", 0o755, 1)
        .file("b/.wh..wh..opq", b"", 0o644, 1)
        .file("b/fresh", b"f", 0o644, 1);
    let o = UnpackOptions {
        whiteouts: WhiteoutMode::Apply,
        ..opts()
    };
    unpack_layer(&top.tar()[..], dir.path(), &o).unwrap();
    assert_eq!(tree(dir.path()), vec!["a", "a/keep", "b", "b/fresh"]);
    // A whiteout of the directory just written into: later entries land in a new one.
    let mut again = Layer::new();
    again
        .file("c/f1", b"1", 0o644, 1)
        .file(".wh.c", b"", 0o644, 1)
        .file("c/f2", b"2", 0o644, 1);
    let fresh = tempfile::tempdir().unwrap();
    unpack_layer(&again.tar()[..], fresh.path(), &o).unwrap();
    assert_eq!(tree(fresh.path()), vec!["c", "c/f2"]);
}

/// Unpacks `layer` through the store (temp snapshot + commit) and checks it is refused
/// naming `entry`, that `outside` is untouched, and that the snapshots dir holds nothing.
fn assert_refused(layer: &[u8], entry: &str, o: UnpackOptions) -> UnpackError {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"s").unwrap();
    let store = ImageStore::open(dir.path().join("store")).unwrap();
    let err = store
        .apply_layer("sha256:layer", None, layer, &o)
        .expect_err("layer must be refused");
    let ApplyError::Unpack(e) = err else {
        panic!("not an unpack error: {err}")
    };
    assert!(
        e.to_string().contains(entry),
        "error {e} should name {entry}"
    );
    assert_eq!(tree(&outside), vec!["secret"], "nothing written outside");
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"s");
    assert!(store.snapshotter().list().unwrap().is_empty());
    let left: Vec<_> = tree(store.snapshotter().dir())
        .into_iter()
        .filter(|n| !n.starts_with("metadata"))
        .collect();
    assert!(left.is_empty(), "snapshots dir not clean: {left:?}");
    let _ = fs::remove_dir_all(dir.path().join("escape"));
    e
}

fn outside_of(store_rel: &str) -> String {
    // From <tmp>/store/snapshots/<id>/fs/<entry>: five levels up is <tmp>.
    format!("../../../../../{store_rel}")
}

#[test]
fn refuses_dotdot_traversal() {
    require_root("refuses_dotdot_traversal");
    let mut l = Layer::new();
    l.file("ok", b"", 0o644, 1)
        .file(&outside_of("outside/pwned"), b"x", 0o644, 1);
    let e = assert_refused(&l.tar(), "outside/pwned", opts());
    assert!(e.to_string().contains(".."), "{e}");
}

/// Absolute member names (umoci writes `/` and `/bin/...`) are relative to the target, as
/// GNU tar and containerd read them: they land inside, never on the host path.
#[test]
fn absolute_paths_land_inside_the_target() {
    require_root("absolute_paths_land_inside_the_target");
    let host = format!("/tmp/gantry-abs-pwned-{}", std::process::id());
    let mut l = Layer::new();
    l.dir("/", 0o755, 1)
        .dir("/bin/", 0o755, 1)
        .file("/bin/tool", b"x", 0o755, 1)
        .hardlink("/bin/hard", "/bin/tool")
        .file(&host, b"y", 0o644, 1);
    let dir = tempfile::tempdir().unwrap();
    unpack_layer(&l.tar()[..], dir.path(), &opts()).unwrap();
    assert_eq!(fs::read(dir.path().join("bin/hard")).unwrap(), b"x");
    assert_eq!(
        fs::read(dir.path().join(host.trim_start_matches('/'))).unwrap(),
        b"y"
    );
    assert!(
        !Path::new(&host).exists(),
        "nothing written at the host path"
    );
}

#[test]
fn refuses_write_through_escaping_symlink() {
    require_root("refuses_write_through_escaping_symlink");
    // Absolute symlink target: inside the root it would mean <root>/tmp..., the host sees
    // the real outside dir — both must be refused.
    let probe = tempfile::tempdir().unwrap();
    let mut l = Layer::new();
    l.symlink("evil", probe.path().to_str().unwrap())
        .file("evil/pwned", b"x", 0o644, 1);
    assert_refused(&l.tar(), "evil/pwned", opts());
    assert!(!probe.path().join("pwned").exists());
    let mut l = Layer::new();
    l.symlink("rel", &outside_of("outside"))
        .file("rel/pwned", b"x", 0o644, 1);
    let e = assert_refused(&l.tar(), "rel/pwned", opts());
    assert!(e.to_string().contains("outside the layer root"), "{e}");
}

#[test]
fn refuses_hardlink_to_outside() {
    require_root("refuses_hardlink_to_outside");
    let mut l = Layer::new();
    l.hardlink("h", &outside_of("outside/secret"));
    assert_refused(&l.tar(), "h", opts());
    // Through a symlink planted by the layer.
    let mut l = Layer::new();
    l.symlink("s", &outside_of("outside"))
        .hardlink("h2", "s/secret");
    let e = assert_refused(&l.tar(), "h2", opts());
    assert!(e.to_string().contains("outside"), "{e}");
}

#[test]
fn refuses_whiteout_outside() {
    require_root("refuses_whiteout_outside");
    let mut l = Layer::new();
    l.file(&outside_of("outside/.wh.secret"), b"", 0o644, 1);
    assert_refused(&l.tar(), ".wh.secret", opts());
    let mut l = Layer::new();
    l.symlink("s", &outside_of("outside"))
        .file("s/.wh.secret", b"", 0o644, 1);
    assert_refused(&l.tar(), "s/.wh.secret", opts());
}

#[test]
fn refuses_device_under_deny_policy_and_skips_under_skip() {
    require_root("refuses_device_under_deny_policy_and_skips_under_skip");
    let mut l = Layer::new();
    l.file("a", b"", 0o644, 1)
        .device("dev/sda", tar::EntryType::Block, 8, 0);
    let deny = UnpackOptions {
        devices: DevicePolicy::Deny,
        ..opts()
    };
    let e = assert_refused(&l.tar(), "dev/sda", deny);
    assert!(e.to_string().contains("device"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let skip = UnpackOptions {
        devices: DevicePolicy::Skip,
        ..opts()
    };
    unpack_layer(&l.tar()[..], dir.path(), &skip).unwrap();
    assert!(!dir.path().join("dev/sda").exists());
    let dir = tempfile::tempdir().unwrap();
    let mut l = Layer::new();
    l.device("null", tar::EntryType::Char, 1, 3);
    unpack_layer(&l.tar()[..], dir.path(), &opts()).unwrap();
    let m = fs::symlink_metadata(dir.path().join("null")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), libc::makedev(1, 3));
}

#[test]
fn refuses_gzip_bombs() {
    require_root("refuses_gzip_bombs");
    let limit = 4 << 20;
    let o = UnpackOptions {
        max_uncompressed: limit,
        ..opts()
    };
    // One entry declaring more than the limit: stopped before any data is written.
    let zeros = vec![0u8; 64 << 20];
    let mut l = Layer::new();
    l.file("bomb", &zeros, 0o644, 1);
    let gz = l.gzip();
    assert!(
        gz.len() < 1 << 20,
        "a real bomb: {} bytes compressed",
        gz.len()
    );
    let e = assert_refused(&gz, "bomb", o.clone());
    assert!(matches!(e, UnpackError::TooLarge { .. }), "{e}");
    // Many entries each under the limit: the decompressed stream limit stops them.
    let mut l = Layer::new();
    for i in 0..8 {
        l.file(&format!("part{i}"), &zeros[..1 << 20], 0o644, 1);
    }
    let e = assert_refused(&l.gzip(), "part", o);
    assert!(matches!(e, UnpackError::TooLarge { .. }), "{e}");
}

#[test]
fn refuses_digest_mismatch() {
    require_root("refuses_digest_mismatch");
    let mut l = Layer::new();
    l.file("a", b"a", 0o644, 1);
    let tar = l.tar();
    let o = UnpackOptions {
        expected_diff_id: Some(Digest::of(b"other")),
        ..opts()
    };
    let e = assert_refused(&tar, "", o);
    assert!(
        matches!(
            e,
            UnpackError::DigestMismatch {
                what: "diff_id",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn concurrent_unpackers_of_one_chain_id_share_one_snapshot() {
    require_root("concurrent_unpackers_of_one_chain_id_share_one_snapshot");
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let mut l = Layer::new();
    l.file("f", b"data", 0o644, 1);
    let tar = l.tar();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                store
                    .apply_layer("sha256:same", None, &tar[..], &opts())
                    .unwrap()
            });
        }
    });
    let list = store.snapshotter().list().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].key, "sha256:same");
    let fsd = store.snapshotter().fs_dir(&list[0]);
    assert_eq!(fs::read(fsd.join("f")).unwrap(), b"data");
    assert_eq!(fs::read_dir(store.snapshotter().dir()).unwrap().count(), 3); // metadata.json, .lock, one id
}
