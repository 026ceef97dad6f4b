//! Wake-ups for `loopgate watch`: links appearing and disappearing (rtnetlink) and any
//! change to the nftables ruleset (the nftables multicast group). Most events only say
//! "look again"; what to repair is decided by comparing the kernel with the plan.
//!
//! One kind is read closely: a batch *from another process* that touched loopgate's
//! table (`nft flush ruleset`, `delete table`, `flags dormant`, an edited chain). The
//! kernel sends one notification per object it changed, then `NFT_MSG_NEWGEN` with the
//! committing process's name, so the monitor can tell watch "the guard may be gone"
//! the moment the commit lands, before any read-back: reading the table right after a
//! large commit can take the kernel 10 ms, while a neighbour floods 127.0.0.1.

use super::netlink::attrs;
use anyhow::{Context, Result};
use std::time::Duration;

const RTMGRP_LINK: u32 = 1;
const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
/// Attribute 1 of table, chain, rule, set and set-element messages: the table's name.
const NFTA_TABLE_NAME_ATTR: u16 = 1;
const NFTA_GEN_PROC_NAME: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

/// What a wait saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Wake {
    /// Any event arrived (or the socket overflowed): look again.
    pub events: bool,
    /// A batch committed by a process other than loopgate changed loopgate's table.
    pub foreign_touch: bool,
}

/// Two subscribed netlink sockets.
pub struct Monitor {
    sockets: Vec<mnl::Socket>,
    buf: Vec<u8>,
    /// Objects of loopgate's table touched by a batch whose closing NEWGEN has not
    /// been read yet.
    touched: bool,
    /// The comm name loopgate's own batches carry.
    own_name: Vec<u8>,
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

/// This process's comm name (what the kernel puts in NFTA_GEN_PROC_NAME).
fn own_comm() -> Vec<u8> {
    std::fs::read("/proc/self/comm")
        .map(|mut v| {
            while v.last() == Some(&b'\n') {
                v.pop();
            }
            v
        })
        .unwrap_or_else(|_| b"loopgate".to_vec())
}

/// Reads nftables notifications in one datagram. `touched` carries "an object of
/// `table` changed in the batch being read" across datagrams; returns true when a
/// batch that touched it was committed by a process not called `own_name`.
pub fn scan_nft_events(datagram: &[u8], table: &[u8], own_name: &[u8], touched: &mut bool) -> bool {
    let mut foreign = false;
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let ty = u16::from_ne_bytes([rest[4], rest[5]]);
        if len < NLMSG_HDRLEN || len > rest.len() {
            // Truncated: assume the worst of the batch being read.
            return *touched;
        }
        let msg = &rest[..len];
        if ty >> 8 == NFNL_SUBSYS_NFTABLES {
            let family = msg.get(NLMSG_HDRLEN).copied();
            let body = msg.get(NLMSG_HDRLEN + NFGENMSG_LEN..).unwrap_or_default();
            if ty & 0xff == NFT_MSG_NEWGEN {
                let name = attrs(body)
                    .find(|(t, _)| *t == NFTA_GEN_PROC_NAME)
                    .map(|(_, v)| v.split(|b| *b == 0).next().unwrap_or_default());
                if *touched && name != Some(own_name) {
                    foreign = true;
                }
                *touched = false;
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
    foreign
}

impl Monitor {
    pub fn new() -> Result<Monitor> {
        Ok(Monitor {
            sockets: vec![
                subscribed(mnl::Bus::Route, RTMGRP_LINK)?,
                subscribed(mnl::Bus::Netfilter, 1 << (NFNLGRP_NFTABLES - 1))?,
            ],
            buf: vec![0u8; 1 << 16],
            touched: false,
            own_name: own_comm(),
        })
    }

    /// Waits up to `timeout` for events and consumes every queued one. A signal
    /// interrupts the wait. An overflowing nftables queue (ENOBUFS: events were lost)
    /// counts as a foreign touch: watch must assume the worst.
    pub fn wait(&mut self, timeout: Duration) -> Wake {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use nix::sys::socket::{recv, MsgFlags};
        use std::os::fd::BorrowedFd;
        let raw: Vec<i32> = self.sockets.iter().map(fd).collect();
        // SAFETY: each fd belongs to a socket in `self.sockets`, which outlives these
        // borrows (they end with this function).
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
        let table = crate::ruleset::TABLE.as_bytes();
        for (i, &f) in raw.iter().enumerate() {
            let nft = i == 1;
            loop {
                match recv(f, &mut self.buf, MsgFlags::MSG_DONTWAIT) {
                    Ok(0) => break,
                    Ok(n) => {
                        if nft {
                            wake.foreign_touch |= scan_nft_events(
                                &self.buf[..n],
                                table,
                                &self.own_name,
                                &mut self.touched,
                            );
                        }
                    }
                    // Events were dropped: assume the worst of what was lost.
                    Err(nix::errno::Errno::ENOBUFS) => wake.foreign_touch |= nft,
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

    fn gen(name: &[u8]) -> Vec<u8> {
        let mut n = name.to_vec();
        n.push(0);
        msg(
            15,
            0,
            &[(1, &7u32.to_be_bytes()), (2, &1u32.to_be_bytes()), (3, &n)],
        )
    }

    #[test]
    fn a_foreign_batch_touching_the_table_is_told_from_loopgates_own() {
        let ip = libc::NFPROTO_IPV4 as u8;
        let del_table = msg(2, ip, &[(1, b"loopgate\0")]);
        let other_table = msg(2, ip, &[(1, b"filter\0")]);
        let inet_same_name = msg(2, 1, &[(1, b"loopgate\0")]);
        for (batch, who, want) in [
            (vec![del_table.clone()], &b"nft"[..], true),
            (vec![del_table.clone()], &b"loopgate"[..], false),
            (vec![other_table], &b"nft"[..], false),
            (vec![inet_same_name], &b"nft"[..], false),
        ] {
            let mut touched = false;
            let mut datagram: Vec<u8> = batch.concat();
            datagram.extend(gen(who));
            assert_eq!(
                scan_nft_events(&datagram, b"loopgate", b"loopgate", &mut touched),
                want
            );
            assert!(!touched);
        }
        // A batch split over two datagrams.
        let mut touched = false;
        assert!(!scan_nft_events(
            &del_table,
            b"loopgate",
            b"loopgate",
            &mut touched
        ));
        assert!(touched);
        assert!(scan_nft_events(
            &gen(b"nft"),
            b"loopgate",
            b"loopgate",
            &mut touched
        ));
    }
}
