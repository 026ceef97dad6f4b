//! Wake-ups for `loopgate watch`: links appearing and disappearing (rtnetlink) and any
//! change to the nftables ruleset (the nftables multicast group). The events only say
//! "look again"; what to repair is decided by comparing the kernel with the plan.

use anyhow::{Context, Result};
use std::time::Duration;

const RTMGRP_LINK: u32 = 1;
const NFNLGRP_NFTABLES: u32 = 7;

/// Two subscribed netlink sockets.
pub struct Monitor {
    sockets: Vec<mnl::Socket>,
    buf: Vec<u8>,
}

fn subscribed(bus: mnl::Bus, groups: u32) -> Result<mnl::Socket> {
    let sock = mnl::Socket::open(bus).context("opening a netlink socket")?;
    sock.bind(groups, mnl::mnl_sys::MNL_SOCKET_AUTOPID as libc::pid_t)
        .context("subscribing to netlink events")?;
    Ok(sock)
}

fn fd(sock: &mnl::Socket) -> i32 {
    // SAFETY: the socket is open for the lifetime of the Monitor.
    unsafe { mnl::mnl_sys::mnl_socket_get_fd(sock.as_raw_socket()) }
}

impl Monitor {
    pub fn new() -> Result<Monitor> {
        Ok(Monitor {
            sockets: vec![
                subscribed(mnl::Bus::Route, RTMGRP_LINK)?,
                subscribed(mnl::Bus::Netfilter, 1 << (NFNLGRP_NFTABLES - 1))?,
            ],
            buf: vec![0u8; 1 << 16],
        })
    }

    /// Waits up to `timeout` for events; returns true when any arrived (all queued events
    /// are consumed). A signal interrupts the wait and returns false.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let mut fds: Vec<libc::pollfd> = self
            .sockets
            .iter()
            .map(|s| libc::pollfd {
                fd: fd(s),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                timeout.as_millis() as i32,
            )
        };
        if n <= 0 {
            return false;
        }
        for f in &fds {
            // Drain; an overflowing queue (ENOBUFS) also just means "look again".
            loop {
                // SAFETY: valid fd and a writable buffer of the given length.
                let r = unsafe {
                    libc::recv(
                        f.fd,
                        self.buf.as_mut_ptr().cast(),
                        self.buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if r <= 0 {
                    let e = std::io::Error::last_os_error().raw_os_error();
                    if r < 0 && e == Some(libc::ENOBUFS) {
                        continue;
                    }
                    break;
                }
            }
        }
        true
    }
}
