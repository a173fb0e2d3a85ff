//! Interop with the Docker engine (Debian `docker.io`): a private `dockerd`, started by
//! this test on its own socket, data and exec roots (no bridge, no iptables), pushes an
//! image to the gantry registry and pulls it back. Needs root and dockerd; fails loudly
//! without them.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A private dockerd; stopped (SIGTERM, then SIGKILL) and its roots removed on drop.
struct Dockerd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Dockerd {
    fn start() -> Dockerd {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the Docker interop test needs root (dockerd)"
        );
        // Short paths: unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("gdk")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        std::fs::write(d.join("daemon.json"), "{}").unwrap();
        std::fs::create_dir_all(d.join("client")).unwrap();
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("x"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", d.join("d.sock").display()))
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start dockerd ({e}): install docker.io (scripts/setup.sh)")
            });
        let me = Dockerd { child, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if me
                .docker(&["version", "--format", "{{.Server.Version}}"])
                .status
                .success()
            {
                return me;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer within 60 s; log:\n{}",
                me.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .env("DOCKER_CONFIG", self.dir.path().join("client"))
            .arg("--host")
            .arg(format!(
                "unix://{}",
                self.dir.path().join("d.sock").display()
            ))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run docker ({e}): install docker.io"))
    }

    /// Runs `docker args…`, which must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Anything dockerd left mounted under its roots (it unmounts on a clean stop).
        unmount_under(self.dir.path());
    }
}

fn unmount_under(root: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(root))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A rootfs tar with busybox as /bin/busybox and /bin/sh.
fn busybox_tar(path: &Path) {
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox is missing: install busybox-static (scripts/setup.sh)");
    let mut tar = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    tar.append_data(&mut h, "bin/", std::io::empty()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    tar.append_data(&mut h, "bin/busybox", busybox.as_slice())
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    tar.append_link(&mut h, "bin/sh", "busybox").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(6);
    tar.append_data(&mut h, "hello.txt", &b"hello\n"[..])
        .unwrap();
    tar.finish().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pushes_to_and_pulls_from_the_gantry_registry() {
    let reg = start().await;
    let dockerd = tokio::task::spawn_blocking(Dockerd::start).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let rootfs = work.path().join("rootfs.tar");
    busybox_tar(&rootfs);
    let image = format!("127.0.0.1:{}/interop/docker-bb:v1", reg.addr.port());

    let pushed = {
        let image = image.clone();
        let rootfs = rootfs.clone();
        tokio::task::spawn_blocking(move || {
            dockerd.ok(&["import", rootfs.to_str().unwrap(), &image]);
            let out = dockerd.ok(&["push", &image]);
            (dockerd, out)
        })
        .await
        .unwrap()
    };
    let (dockerd, push_out) = pushed;
    // docker prints "v1: digest: sha256:… size: N".
    let digest = push_out
        .split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("no digest in docker push output: {push_out}"))
        .to_string();

    // The registry serves the manifest docker pushed, under that digest, and its blobs.
    let c = client();
    let r = c
        .get(reg.u("/v2/interop/docker-bb/manifests/v1"))
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), digest);
    let body = r.bytes().await.unwrap();
    assert_eq!(common::digest(&body), digest);
    let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "docker import makes one layer: {manifest}");
    for d in [&manifest["config"]["digest"], &layers[0]["digest"]] {
        let d = d.as_str().unwrap();
        let r = c
            .get(reg.u(&format!("/v2/interop/docker-bb/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(common::digest(&r.bytes().await.unwrap()), d);
    }

    // Remove it from the engine and pull it back: same digest, same files.
    let image2 = image.clone();
    let (dockerd, repo_digests, hello) = tokio::task::spawn_blocking(move || {
        dockerd.ok(&["rmi", &image2]);
        let gone = dockerd.docker(&["image", "inspect", &image2]);
        assert!(!gone.status.success(), "the image was not removed");
        dockerd.ok(&["pull", &image2]);
        let rd = dockerd.ok(&[
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            &image2,
        ]);
        // `docker save` gives the layer back without running a container.
        let saved = dockerd.dir.path().join("saved.tar");
        dockerd.ok(&["save", "-o", saved.to_str().unwrap(), &image2]);
        let hello = find_in_saved(&saved, "hello.txt");
        (dockerd, rd, hello)
    })
    .await
    .unwrap();
    assert!(
        repo_digests.contains(&digest),
        "pulled image's RepoDigests {repo_digests} lack {digest}"
    );
    assert_eq!(hello.as_deref(), Some(&b"hello\n"[..]));
    drop(dockerd);
}

/// The content of `name` in any layer of a `docker save` archive.
fn find_in_saved(saved: &Path, name: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut outer = tar::Archive::new(std::fs::File::open(saved).unwrap());
    for e in outer.entries().unwrap() {
        let mut e = e.unwrap();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        if data.len() < 512 {
            continue;
        }
        let mut inner = tar::Archive::new(&data[..]);
        let Ok(entries) = inner.entries() else {
            continue;
        };
        for le in entries.flatten() {
            let mut le = le;
            if le.path().ok().is_some_and(|p| p.as_os_str() == name) {
                let mut out = Vec::new();
                le.read_to_end(&mut out).ok()?;
                return Some(out);
            }
        }
    }
    None
}
