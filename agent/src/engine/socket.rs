//! The engine API's unix socket, root-only from its first instant.
//!
//! Whoever can connect to the engine socket runs containers as root: it must never be
//! reachable by another user, not even briefly. `bind` creates a socket file with the mode
//! the umask leaves (often 0755, or 0777 under umask 0), and a `chmod` after it leaves a
//! window; the umask cannot be changed safely in a multi-threaded process. So
//! [`bind_private`] binds inside a fresh 0700 directory beside the target, sets 0600 there,
//! and renames the socket into place: the path only ever names a 0600 socket, and the
//! rename also replaces a stale socket atomically. Connecting to a unix socket needs write
//! permission on it, so 0600 owned by root means root only.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Mode of the engine socket.
pub const SOCKET_MODE: u32 = 0o600;

/// Binds a unix socket at `path` with mode 0600 and no moment at which `path` names a
/// socket with another mode (see the module doc). Errors name the path and the step.
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
    let err = |step: &str, p: &Path, e: io::Error| {
        io::Error::new(e.kind(), format!("{step} {}: {e}", p.display()))
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file path", path.display()),
        )
    })?;
    std::fs::create_dir_all(dir).map_err(|e| err("creating", dir, e))?;
    let staging = dir.join(format!(
        ".{}.bind-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // left over from a crash of this pid's predecessor: not ours to trust
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|e| err("creating", &staging, e))?;
    let result = (|| {
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| err("chmod 0700", &staging, e))?;
        let tmp = staging.join("s");
        let listener = UnixListener::bind(&tmp).map_err(|e| err("binding", &tmp, e))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(|e| err("chmod 0600", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| err("renaming the socket to", path, e))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    fn require_root(test: &str) {
        assert_eq!(
            nix::unistd::geteuid().as_raw(),
            0,
            "{test} needs root (it checks that another user cannot connect); run as root"
        );
    }

    /// Whether uid 65534 (nobody) can connect to the socket at `path` (in a forked child
    /// that sets its uid; nothing is allocated between fork and _exit).
    fn nobody_can_connect(path: &Path) -> bool {
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_os_str().as_encoded_bytes();
        assert!(bytes.len() < addr.sun_path.len(), "socket path too long");
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => unsafe {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    libc::_exit(3);
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let r = libc::connect(
                    fd,
                    &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                );
                let code = if r == 0 {
                    0
                } else if *libc::__errno_location() == libc::EACCES {
                    1
                } else {
                    2
                };
                libc::_exit(code)
            },
            nix::unistd::ForkResult::Parent { child } => {
                match nix::sys::wait::waitpid(child, None).expect("waitpid") {
                    nix::sys::wait::WaitStatus::Exited(_, 0) => true,
                    nix::sys::wait::WaitStatus::Exited(_, 1) => false,
                    other => panic!("connect as nobody: unexpected outcome {other:?}"),
                }
            }
        }
    }

    #[test]
    fn engine_socket_is_root_only_and_replaces_a_stale_one() {
        require_root("engine_socket_is_root_only_and_replaces_a_stale_one");
        let dir = tempfile::tempdir().unwrap();
        // traversable by everyone: only the socket's own mode may keep nobody out
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("run/agent.sock");
        let _stale = {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            UnixListener::bind(&path).unwrap()
        };
        let listener = bind_private(&path).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(m.mode() & 0o7777, SOCKET_MODE, "mode");
        assert_eq!(m.uid(), 0, "owner");
        // only the socket is left: no staging directory
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("agent.sock")]);
        // root connects (to the new listener, not the stale one); nobody does not
        let _c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        assert!(listener.accept().is_ok(), "the path names the new listener");
        assert!(
            !nobody_can_connect(&path),
            "nobody connected to a 0600 socket"
        );
        // the check itself can fail: with a permissive mode nobody gets in
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(
            nobody_can_connect(&path),
            "the probe cannot see a permissive socket"
        );
    }

    #[test]
    fn the_socket_path_never_names_a_socket_with_another_mode() {
        require_root("the_socket_path_never_names_a_socket_with_another_mode");
        let dir = tempfile::tempdir().unwrap();
        let path = Arc::new(dir.path().join("agent.sock"));
        let done = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicU64::new(0));
        let watcher = {
            let (path, done, seen) = (path.clone(), done.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut bad = std::collections::BTreeSet::new();
                while !done.load(Ordering::Relaxed) {
                    if let Ok(m) = std::fs::symlink_metadata(&*path) {
                        seen.fetch_add(1, Ordering::Relaxed);
                        if m.mode() & 0o7777 != SOCKET_MODE {
                            bad.insert(format!("{:o}", m.mode() & 0o7777));
                        }
                    }
                }
                bad
            })
        };
        // the umask (022 here) would leave 0755 on a plain bind: the watcher would see it
        let mut rounds = 0;
        while seen.load(Ordering::Relaxed) < 100 && rounds < 100_000 {
            let l = bind_private(&path).unwrap();
            let _c = std::os::unix::net::UnixStream::connect(&*path).unwrap();
            drop(l);
            std::fs::remove_file(&*path).unwrap();
            rounds += 1;
        }
        done.store(true, Ordering::Relaxed);
        let bad = watcher.join().unwrap();
        assert!(
            bad.is_empty(),
            "the path named a socket with mode(s) {bad:?}"
        );
        assert!(
            seen.load(Ordering::Relaxed) >= 100,
            "the watcher saw the socket {} times in {rounds} rounds: the test checked too little",
            seen.load(Ordering::Relaxed)
        );
    }
}
