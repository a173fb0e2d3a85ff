//! The container's terminal (`process.terminal: true`), with runc's console-socket
//! protocol: the caller (podman's conmon, containerd's shim) listens on a unix socket and
//! passes its path as `--console-socket`; the runtime connects, and the container's init
//! allocates a pty in the container's own devpts, sends the **master** over the socket
//! (one message: the pty's name as payload, the fd as `SCM_RIGHTS`), and makes the
//! **slave** its stdin, stdout, stderr and controlling terminal.
//!
//! The pty is allocated before `pivot_root` through `<rootfs>/dev/pts/ptmx` (the spec's
//! devpts is mounted by then) and the slave opened from the master with `TIOCGPTPEER`, so no
//! path inside the container is needed and `create` returns with the console delivered.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::stat::Mode;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("--console-socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("process.terminal: {what}: {source}")]
    Pty {
        what: String,
        #[source]
        source: nix::Error,
    },
}

fn pty(what: impl Into<String>) -> impl FnOnce(nix::Error) -> ConsoleError {
    let what = what.into();
    move |source| ConsoleError::Pty { what, source }
}

/// Connects to the caller's console socket (in the runtime, before the clone).
pub fn connect(path: &Path) -> Result<OwnedFd, ConsoleError> {
    UnixStream::connect(path)
        .map(OwnedFd::from)
        .map_err(|source| ConsoleError::Connect {
            path: path.to_path_buf(),
            source,
        })
}

/// The name sent with the master, as runc sends it.
pub fn pty_name(index: u32) -> String {
    format!("/dev/pts/{index}")
}

/// In the container's init, before `pivot_root`: allocates a pty in the devpts mounted at
/// `<rootfs>/dev/pts`, sends the master over `socket`, returns the slave.
pub fn open_and_send(rootfs: &Path, socket: &OwnedFd) -> Result<OwnedFd, ConsoleError> {
    let ptmx = rootfs.join("dev/pts/ptmx");
    let master = nix::fcntl::open(
        &ptmx,
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(pty(format!(
        "opening {} (a devpts mount at /dev/pts is needed)",
        ptmx.display()
    )))?;
    let m = master.as_raw_fd();
    let mut index: libc::c_uint = 0;
    let mut unlock: libc::c_int = 0;
    // SAFETY: pty ioctls with pointers to properly sized locals.
    unsafe {
        if libc::ioctl(m, libc::TIOCSPTLCK, &mut unlock) < 0 {
            return Err(pty("unlocking the pty")(nix::Error::last()));
        }
        if libc::ioctl(m, libc::TIOCGPTN, &mut index) < 0 {
            return Err(pty("reading the pty number")(nix::Error::last()));
        }
    }
    // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor.
    let slave = unsafe {
        libc::ioctl(
            m,
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(pty("opening the pty slave")(nix::Error::last()));
    }
    // SAFETY: the ioctl just returned this fresh descriptor.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    let name = pty_name(index);
    let fds = [m];
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(name.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(pty("sending the pty master over the console socket"))?;
    Ok(slave)
}

/// Makes the pty slave the process's controlling terminal and stdio (new session first).
pub fn make_stdio(slave: OwnedFd) -> Result<(), ConsoleError> {
    nix::unistd::setsid().map_err(pty("setsid"))?;
    let s = slave.as_raw_fd();
    // SAFETY: TIOCSCTTY on our own session's new terminal.
    if unsafe { libc::ioctl(s, libc::TIOCSCTTY, 0) } < 0 {
        return Err(pty("making the pty the controlling terminal")(
            nix::Error::last(),
        ));
    }
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors (clears close-on-exec on them).
        if unsafe { libc::dup2(s, fd) } < 0 {
            return Err(pty(format!("dup2 onto fd {fd}"))(nix::Error::last()));
        }
    }
    if s > 2 {
        drop(slave);
    } else {
        std::mem::forget(slave);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_is_the_pts_path() {
        assert_eq!(pty_name(0), "/dev/pts/0");
        assert_eq!(pty_name(12), "/dev/pts/12");
    }

    #[test]
    fn connect_names_the_socket_path() {
        let e = connect(Path::new("/nonexistent/console.sock"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--console-socket /nonexistent/console.sock"),
            "{e}"
        );
    }
}
