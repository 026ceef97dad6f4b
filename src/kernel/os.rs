//! Small safe wrappers of the process-level system calls that neither std nor nix
//! wraps safely: a pidfd of a pid, descriptors received over a unix socket, and the
//! stop flag that SIGTERM and SIGINT set. The rest of loopgate calls these, so its
//! `unsafe` stays in this layer.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};

/// A pidfd of process `pid` (`pidfd_open(2)`, Linux 5.3+), close-on-exec.
///
/// Errors: the system's (`ESRCH`: no such process; `ENOSYS`: an older kernel).
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and touches no memory of ours; it
    // returns a new descriptor or -1, and a new descriptor is owned by nothing else,
    // so the OwnedFd may close it.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd as RawFd))
    }
}

/// Reads one message of at most `buf.len()` bytes from `stream` with `recvmsg(2)`,
/// taking the descriptors it carries (`SCM_RIGHTS`, room for one; close-on-exec).
/// Returns the number of bytes read and the descriptors, now owned by the caller.
///
/// Errors: the system's, as nix reports them (`EINTR`, `EAGAIN` at a timeout).
pub fn recv_with_fds(stream: &UnixStream, buf: &mut [u8]) -> nix::Result<(usize, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel installed these descriptors in this process for this
            // message, and nothing else has seen them: each is owned by no one yet.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok((msg.bytes, fds))
}

/// Set once SIGTERM or SIGINT arrived after [`stop_on_term_and_int`].
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Clears the stop flag, then makes SIGTERM and SIGINT set it instead of ending the
/// process: a long-running verb polls [`stop_requested`] and ends cleanly.
pub fn stop_on_term_and_int() {
    STOP.store(false, Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe,
        // and it is a plain `extern "C" fn` that lives for the whole process.
        unsafe { libc::signal(sig, on_stop_signal as *const () as libc::sighandler_t) };
    }
}

/// True once SIGTERM or SIGINT arrived after [`stop_on_term_and_int`].
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}
