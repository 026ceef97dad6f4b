//! Entering a network namespace (`--netns`) and naming the current one.
//!
//! loopgate's state is per network namespace. The namespace is identified by its cookie
//! (`SO_NETNS_COOKIE`), which unlike the nsfs inode number is never reused while the
//! machine is up, so a new namespace can never inherit a deleted one's state.

use anyhow::{Context, Result};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `SO_NETNS_COOKIE` from asm-generic/socket.h (Linux 5.14+).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Moves this (single-threaded) process into the named namespace: a name under
/// /run/netns (as `ip netns` creates them) or a path such as /proc/PID/ns/net.
pub fn enter(name_or_path: &str) -> Result<()> {
    let path = if name_or_path.contains('/') {
        name_or_path.to_string()
    } else {
        format!("/run/netns/{name_or_path}")
    };
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            crate::bad_input!(
                "network namespace {name_or_path:?} does not exist ({path} not found)"
            )
        }
        Err(e) => return Err(e).with_context(|| format!("opening network namespace {path}")),
    };
    // SAFETY: a valid fd for the duration of the call; setns only affects this thread,
    // and loopgate runs single-threaded.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINVAL) {
            crate::bad_input!("{path} is not a network namespace");
        }
        return Err(err).with_context(|| format!("entering network namespace {path}"));
    }
    Ok(())
}

/// The cookie of the caller's current network namespace.
pub fn cookie() -> Result<u64> {
    // SAFETY: plain socket creation; the fd is closed by OwnedFd-like handling below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error())
            .context("opening a socket to identify the namespace");
    }
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd; `cookie` and `len` are live and sized as the kernel expects.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    let err = io::Error::last_os_error();
    // SAFETY: closing the fd we opened above.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(err)
            .context("reading the network namespace cookie (needs Linux 5.14 or newer)");
    }
    Ok(cookie)
}
