//! Wake-ups for `loopgate watch`: links appearing and disappearing (rtnetlink) and any
//! change to the nftables ruleset (the nftables multicast group). Most events only say
//! "look again"; what to repair is decided by comparing the kernel with the plan.
//!
//! One kind is read closely: a batch that touched loopgate's table (`nft flush
//! ruleset`, `delete table`, `flags dormant`, an edited chain, or loopgate's own
//! replace). The kernel sends one notification per object it changed, then
//! `NFT_MSG_NEWGEN` with the committing process's pid and the new generation, which
//! the monitor reports so watch can tell another process's commit from loopgate's own
//! the moment it lands, before any read-back: reading the table right after a large
//! commit can take the kernel 10 ms, while a neighbour floods 127.0.0.1. The pid and
//! the generation, not the process name: any process can call itself `loopgate`. The
//! generation is what identifies loopgate's own commits inside a PID namespace, where
//! the kernel reports a pid (of the initial namespace) the process does not know.

use super::netlink::attrs;
use anyhow::{Context, Result};
use std::time::Duration;

const RTMGRP_LINK: u32 = 1;
const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
/// Attribute 1 of table, chain, rule, set and set-element messages: the table's name.
const NFTA_TABLE_NAME_ATTR: u16 = 1;
const NFTA_GEN_ID: u16 = 1;
const NFTA_GEN_PROC_PID: u16 = 2;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

/// What a wait saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Wake {
    /// Any event arrived (or the socket overflowed): look again.
    pub events: bool,
    /// One entry per committed batch that changed loopgate's table.
    pub table_batches: Vec<Batch>,
    /// Which of the extra fds given to [`Monitor::wait_with`] are readable, in the
    /// order given (empty when the wait timed out).
    pub extra: Vec<bool>,
}

/// One committed batch that changed loopgate's table, as its `NFT_MSG_NEWGEN` told.
/// Both fields are `None` when the kernel did not say or events were lost (assume the
/// worst).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// The committing process's pid, in the initial PID namespace (the kernel's
    /// `task_pid_nr`).
    pub pid: Option<u32>,
    /// The nftables generation the commit created.
    pub generation: Option<u32>,
}

/// Two subscribed netlink sockets.
pub struct Monitor {
    sockets: Vec<mnl::Socket>,
    buf: Vec<u8>,
    /// Objects of loopgate's table touched by a batch whose closing NEWGEN has not
    /// been read yet.
    touched: bool,
}

fn subscribed(bus: mnl::Bus, groups: u32) -> Result<mnl::Socket> {
    let sock = mnl::Socket::open(bus).context("opening a netlink socket")?;
    sock.bind(groups, mnl::mnl_sys::MNL_SOCKET_AUTOPID as libc::pid_t)
        .context("subscribing to netlink events")?;
    Ok(sock)
}

/// How many bytes of nftables events may queue between two reads: the kernel notifies
/// every object a batch changed, and a table of 1,000 allow lists rewritten whole is
/// thousands of notifications. With the default buffer they overflowed, and watch took
/// its own commit for another process's (events lost: assume the worst) and closed
/// every interface. Memory is only charged for what is queued.
const NFT_EVENTS_BUFFER: usize = 64 << 20;

/// `sock` with [`NFT_EVENTS_BUFFER`] of receive buffer (best effort: without it, lost
/// events still count as a foreign batch, the safe side).
fn roomy(sock: mnl::Socket) -> mnl::Socket {
    use nix::sys::socket::{setsockopt, sockopt};
    // SAFETY: the fd belongs to `sock`, open for the duration of the borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd(&sock)) };
    let _ = setsockopt(&fd, sockopt::RcvBufForce, &NFT_EVENTS_BUFFER);
    sock
}

fn fd(sock: &mnl::Socket) -> i32 {
    std::os::fd::AsRawFd::as_raw_fd(sock)
}

/// Reads nftables notifications in one datagram. `touched` carries "an object of
/// `table` changed in the batch being read" across datagrams; returns each batch that
/// touched it and ended in this datagram.
pub fn scan_nft_events(datagram: &[u8], table: &[u8], touched: &mut bool) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let ty = u16::from_ne_bytes([rest[4], rest[5]]);
        if len < NLMSG_HDRLEN || len > rest.len() {
            // Truncated: assume the worst of the batch being read.
            if std::mem::take(touched) {
                batches.push(Batch::default());
            }
            return batches;
        }
        let msg = &rest[..len];
        if ty >> 8 == NFNL_SUBSYS_NFTABLES {
            let family = msg.get(NLMSG_HDRLEN).copied();
            let body = msg.get(NLMSG_HDRLEN + NFGENMSG_LEN..).unwrap_or_default();
            if ty & 0xff == NFT_MSG_NEWGEN {
                let u32_attr = |ty: u16| {
                    attrs(body)
                        .find(|(t, _)| *t == ty)
                        .and_then(|(_, v)| Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?)))
                };
                if std::mem::take(touched) {
                    batches.push(Batch {
                        pid: u32_attr(NFTA_GEN_PROC_PID),
                        generation: u32_attr(NFTA_GEN_ID),
                    });
                }
            } else if family == Some(libc::NFPROTO_IPV4 as u8)
                && attrs(body).any(|(t, v)| {
                    t == NFTA_TABLE_NAME_ATTR && v.split(|b| *b == 0).next() == Some(table)
                })
            {
                *touched = true;
            }
        }
        rest = &rest[len.div_ceil(4) * 4..];
        if rest.len() < NLMSG_HDRLEN {
            break;
        }
    }
    batches
}

impl Monitor {
    /// Subscribes to link events (rtnetlink `RTMGRP_LINK`) and nf_tables events.
    ///
    /// Errors: a netlink socket cannot be opened or bound to the groups.
    pub fn new() -> Result<Monitor> {
        Ok(Monitor {
            sockets: vec![
                subscribed(mnl::Bus::Route, RTMGRP_LINK)?,
                roomy(subscribed(
                    mnl::Bus::Netfilter,
                    1 << (NFNLGRP_NFTABLES - 1),
                )?),
            ],
            buf: vec![0u8; 1 << 16],
            touched: false,
        })
    }

    /// Waits up to `timeout` for events and consumes every queued one. A signal
    /// interrupts the wait. An overflowing nftables queue (ENOBUFS: events were lost)
    /// counts as a batch of unknown origin: watch must assume the worst.
    pub fn wait(&mut self, timeout: Duration) -> Wake {
        self.wait_with(timeout, &[])
    }

    /// As [`Monitor::wait`], also waking when one of `extra` (a listening socket, a
    /// pipe) is readable; [`Wake::extra`] says which, in the same order.
    pub fn wait_with(&mut self, timeout: Duration, extra: &[i32]) -> Wake {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use nix::sys::socket::{recv, MsgFlags};
        use std::os::fd::BorrowedFd;
        let mut raw: Vec<i32> = self.sockets.iter().map(fd).collect();
        raw.extend_from_slice(extra);
        // SAFETY: each fd belongs to a socket in `self.sockets`, or is the caller's
        // `extra`, open for the call; all outlive these borrows (they end with this
        // function).
        let borrowed: Vec<BorrowedFd<'_>> = raw
            .iter()
            .map(|&f| unsafe { BorrowedFd::borrow_raw(f) })
            .collect();
        let mut fds: Vec<PollFd> = borrowed
            .iter()
            .map(|f| PollFd::new(*f, PollFlags::POLLIN))
            .collect();
        let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
        let ready = poll(
            &mut fds,
            PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX),
        );
        let mut wake = Wake::default();
        if !matches!(ready, Ok(n) if n > 0) {
            return wake; // timeout, or a signal interrupted the wait
        }
        wake.events = true;
        wake.extra = fds[self.sockets.len()..]
            .iter()
            .map(|f| f.revents().is_some_and(|r| r.contains(PollFlags::POLLIN)))
            .collect();
        let table = crate::ruleset::TABLE.as_bytes();
        for (i, &f) in raw.iter().take(self.sockets.len()).enumerate() {
            let nft = i == 1;
            loop {
                match recv(f, &mut self.buf, MsgFlags::MSG_DONTWAIT) {
                    Ok(0) => break,
                    Ok(n) => {
                        if nft {
                            wake.table_batches.extend(scan_nft_events(
                                &self.buf[..n],
                                table,
                                &mut self.touched,
                            ));
                        }
                    }
                    // Events were dropped: assume the worst of what was lost.
                    Err(nix::errno::Errno::ENOBUFS) if nft => {
                        wake.table_batches.push(Batch::default())
                    }
                    Err(nix::errno::Errno::ENOBUFS) => {}
                    Err(_) => break,
                }
            }
        }
        wake
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u8, family: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![family, 0, 0, 0];
        for (t, v) in attrs {
            super::super::netlink::put_attr(&mut body, *t, v);
        }
        let mut m = vec![0u8; 16];
        m[0..4].copy_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m[4..6].copy_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | u16::from(ty)).to_ne_bytes());
        m.extend(body);
        m
    }

    fn gen(pid: u32) -> Vec<u8> {
        msg(
            15,
            0,
            &[
                (1, &7u32.to_be_bytes()),
                (2, &pid.to_be_bytes()),
                (3, b"nft\0"),
            ],
        )
    }

    #[test]
    fn each_batch_touching_the_table_is_reported_with_its_pid() {
        let ip = libc::NFPROTO_IPV4 as u8;
        let del_table = msg(2, ip, &[(1, b"loopgate\0")]);
        let other_table = msg(2, ip, &[(1, b"filter\0")]);
        let inet_same_name = msg(2, 1, &[(1, b"loopgate\0")]);
        for (batch, want) in [
            (vec![del_table.clone()], vec![batch(4242)]),
            (vec![other_table], vec![]),
            (vec![inet_same_name], vec![]),
        ] {
            let mut touched = false;
            let mut datagram: Vec<u8> = batch.concat();
            datagram.extend(gen(4242));
            assert_eq!(scan_nft_events(&datagram, b"loopgate", &mut touched), want);
            assert!(!touched);
        }
        // A batch split over two datagrams.
        let mut touched = false;
        assert!(scan_nft_events(&del_table, b"loopgate", &mut touched).is_empty());
        assert!(touched);
        assert_eq!(
            scan_nft_events(&gen(7), b"loopgate", &mut touched),
            vec![batch(7)]
        );
        // A truncated datagram while a batch is open: unknown origin.
        let mut touched = true;
        assert_eq!(
            scan_nft_events(&del_table[..20], b"loopgate", &mut touched),
            vec![Batch::default()]
        );
    }

    fn batch(pid: u32) -> Batch {
        Batch {
            pid: Some(pid),
            generation: Some(7),
        }
    }
}
