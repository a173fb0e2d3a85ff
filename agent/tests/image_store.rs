//! The image store end to end on temp dirs: resolve, unpack into shared snapshots, mount
//! the returned overlay for real, garbage-collect.
mod image_support;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gantry_agent::image::{gc, ImageStore, Mount, Reference, Snapshotter};
use image_support::{put_image, require_root, tree, Layer};

/// Mounts `mounts` on a fresh dir; unmounts (lazily, so a failing test can't leak it) on drop.
struct Mounted {
    target: PathBuf,
}

impl Mounted {
    fn new(mounts: &[Mount], target: &Path) -> Mounted {
        assert_eq!(mounts.len(), 1);
        let m = &mounts[0];
        fs::create_dir_all(target).unwrap();
        let (fstype, flags, data) = match m.kind.as_str() {
            "overlay" => ("overlay", 0, m.options.join(",")),
            "bind" => ("none", libc::MS_BIND | libc::MS_REC, String::new()),
            other => panic!("unexpected mount type {other}"),
        };
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let r = unsafe {
            libc::mount(
                c(&m.source).as_ptr(),
                c(target.to_str().unwrap()).as_ptr(),
                c(fstype).as_ptr(),
                flags,
                c(&data).as_ptr().cast(),
            )
        };
        assert_eq!(r, 0, "mount {m:?}: {}", std::io::Error::last_os_error());
        Mounted {
            target: target.to_path_buf(),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let c = std::ffi::CString::new(self.target.to_str().unwrap()).unwrap();
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

fn three_layers() -> Vec<Vec<u8>> {
    let mut base = Layer::new();
    base.dir("etc/", 0o755, 1)
        .file("etc/passwd", b"root\n", 0o644, 1)
        .file("etc/hosts", b"localhost\n", 0o644, 1)
        .dir("var/", 0o755, 1)
        .file("var/old", b"old", 0o644, 1)
        .file("bin/sh", b"sh", 0o755, 1);
    let mut mid = Layer::new();
    mid.file("etc/.wh.hosts", b"", 0o644, 1)
        .dir("var/", 0o755, 1)
        .file("var/.wh..wh..opq", b"", 0o644, 1)
        .file("var/new", b"new", 0o644, 1);
    let mut top = Layer::new();
    top.file("etc/passwd", b"root\nuser\n", 0o644, 1)
        .file("app", b"app", 0o755, 1);
    vec![base.tar(), mid.tar(), top.tar()]
}

#[test]
fn overlay_merged_view_of_three_layers_with_whiteouts() {
    require_root("overlay_merged_view_of_three_layers_with_whiteouts");
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("store")).unwrap();
    put_image(&store, "test/app:1", &three_layers());
    let image = store
        .resolve(&Reference::parse("test/app:1").unwrap())
        .unwrap();
    assert_eq!(image.chain_ids.len(), 3);
    let mounts = store.prepare_rootfs("ctr-1", &image).unwrap();
    assert_eq!(mounts[0].kind, "overlay");
    let target = dir.path().join("rootfs");
    {
        let _m = Mounted::new(&mounts, &target);
        assert_eq!(
            tree(&target),
            vec![
                "app",
                "bin",
                "bin/sh",
                "etc",
                "etc/passwd",
                "var",
                "var/new"
            ]
        );
        assert_eq!(
            fs::read(target.join("etc/passwd")).unwrap(),
            b"root\nuser\n"
        );
        // The container writes go to its upper dir, never to the shared layers.
        fs::write(target.join("var/written"), b"w").unwrap();
    }
    let upper = store
        .snapshotter()
        .fs_dir(&store.snapshotter().stat("ctr-1").unwrap());
    assert_eq!(fs::read(upper.join("var/written")).unwrap(), b"w");
    // A second image sharing the first two layers reuses their snapshots.
    let mut layers = three_layers();
    layers.truncate(2);
    let mut other = Layer::new();
    other.file("other", b"o", 0o644, 1);
    layers.push(other.tar());
    put_image(&store, "test/other:1", &layers);
    let before = store.snapshotter().list().unwrap().len();
    let img2 = store
        .resolve(&Reference::parse("test/other:1").unwrap())
        .unwrap();
    assert_eq!(img2.chain_ids[..2], image.chain_ids[..2]);
    store.unpack(&img2).unwrap();
    assert_eq!(
        store.snapshotter().list().unwrap().len(),
        before + 1,
        "only the new layer unpacked"
    );
    // A read-only view.
    let view = store
        .snapshotter()
        .view("view-1", Some(&img2.chain_ids[2].to_string()))
        .unwrap();
    {
        let _m = Mounted::new(&view, &dir.path().join("view"));
        assert!(dir.path().join("view/other").exists());
        assert!(!dir.path().join("view/etc/hosts").exists());
        assert!(
            fs::write(dir.path().join("view/x"), b"").is_err(),
            "view is read-only"
        );
    }
}

#[test]
fn gc_removes_only_unreferenced_blobs_and_snapshots() {
    require_root("gc_removes_only_unreferenced_blobs_and_snapshots");
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let layers = three_layers();
    put_image(&store, "keep:1", &layers[..2]);
    put_image(&store, "drop:1", &layers);
    let keep = store.resolve(&Reference::parse("keep:1").unwrap()).unwrap();
    let drop = store.resolve(&Reference::parse("drop:1").unwrap()).unwrap();
    store.unpack(&keep).unwrap();
    store.prepare_rootfs("ctr-drop", &drop).unwrap();
    let stray = store.content().put(b"stray blob", None).unwrap();
    store.untag(&Reference::parse("drop:1").unwrap()).unwrap();

    // The container still uses drop's top snapshot: it and its parents stay.
    let roots: HashSet<String> = ["ctr-drop".to_string()].into();
    let r = gc::collect(&store, &roots, Duration::ZERO).unwrap();
    assert!(r.blobs_removed.contains(&stray.digest));
    assert!(r.blobs_removed.contains(&drop.manifest_digest));
    assert!(r.blobs_removed.contains(&drop.config_digest));
    assert!(r.snapshots_removed.is_empty(), "{:?}", r.snapshots_removed);
    assert!(store.content().exists(&keep.manifest_digest));
    for l in &keep.layers {
        assert!(store
            .content()
            .exists(&l.digest().to_string().parse().unwrap()));
    }
    // Container gone: drop's own top layer snapshot goes, shared ones stay.
    store.snapshotter().remove("ctr-drop").unwrap();
    let r = gc::collect(&store, &HashSet::new(), Duration::ZERO).unwrap();
    assert_eq!(r.snapshots_removed, vec![drop.chain_ids[2].to_string()]);
    let left: Vec<_> = store
        .snapshotter()
        .list()
        .unwrap()
        .into_iter()
        .map(|i| i.key)
        .collect();
    let mut want: Vec<_> = keep.chain_ids.iter().map(|c| c.to_string()).collect();
    want.sort();
    assert_eq!(left, want);
    // Still resolvable and unpackable.
    store
        .unpack(&store.resolve(&Reference::parse("keep:1").unwrap()).unwrap())
        .unwrap();
}

/// A layer staged without a parent (as a pull unpacks it while downloading) is stacked
/// afterwards with `commit_onto`; a parent that is not committed is refused and changes
/// nothing.
#[test]
fn staged_layers_are_stacked_onto_committed_parents() {
    let dir = tempfile::tempdir().unwrap();
    let snaps = gantry_agent::image::OverlaySnapshotter::open(dir.path()).unwrap();
    let lower = snaps.prepare_for_unpack("stage-lower", None).unwrap();
    fs::write(lower.join("l"), b"lower").unwrap();
    let upper = snaps.prepare_for_unpack("stage-upper", None).unwrap();
    fs::write(upper.join("u"), b"upper").unwrap();

    // The parent is still active: refused, and both staged snapshots are unchanged.
    let err = snaps
        .commit_onto("chain-upper", "stage-upper", Some("stage-lower"))
        .unwrap_err();
    assert!(err.to_string().contains("stage-lower"), "{err}");
    assert!(snaps.stat("chain-upper").is_err());
    assert_eq!(snaps.stat("stage-upper").unwrap().parent, None);

    snaps
        .commit_onto("chain-lower", "stage-lower", None)
        .unwrap();
    snaps
        .commit_onto("chain-upper", "stage-upper", Some("chain-lower"))
        .unwrap();
    let info = snaps.stat("chain-upper").unwrap();
    assert_eq!(info.parent.as_deref(), Some("chain-lower"));
    assert_eq!(fs::read(snaps.fs_dir(&info).join("u")).unwrap(), b"upper");
    // The lower one now has a child: removing it is refused.
    assert!(snaps.remove("chain-lower").is_err());
    let mounts = snaps.view("v", Some("chain-upper")).unwrap();
    let lowerdir = mounts[0]
        .options
        .iter()
        .find(|o| o.starts_with("lowerdir="))
        .unwrap();
    assert_eq!(lowerdir.matches(':').count(), 1, "two lowers: {lowerdir}");
}
