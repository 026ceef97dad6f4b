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
    // setns only moves the calling thread, and loopgate runs single-threaded.
    match nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => crate::bad_input!("{path} is not a network namespace"),
        Err(e) => {
            Err(io::Error::from(e)).with_context(|| format!("entering network namespace {path}"))
        }
    }
}

/// The cookie of the caller's current network namespace (`SO_NETNS_COOKIE`).
///
/// Errors: kernels older than 5.14 do not have the option.
pub fn cookie() -> Result<u64> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)
    .context("opening a socket to identify the namespace")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `sock` is an open socket owned for the whole call; `cookie` and `len` are
    // live and sized as the kernel expects (a u64). nix has no wrapper for this option.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error())
            .context("reading the network namespace cookie (needs Linux 5.14 or newer)");
    }
    Ok(cookie)
}
