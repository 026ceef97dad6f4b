//! nftables trace events, read as `nft monitor trace` reads them: a `NETLINK_NETFILTER`
//! socket subscribed to `NFNLGRP_NFTRACE`, on which the kernel sends one
//! `NFT_MSG_TRACE` message per step of every packet whose `nftrace` bit is set (a rule
//! that matched, a chain that returned, a base chain's policy). The attributes are
//! decoded here without libnftnl; the numbers are those of
//! `linux/netfilter/nf_tables.h` (`enum nft_trace_attributes`, `enum nft_trace_types`).
//!
//! What the kernel sends (net/netfilter/nf_tables_trace.c): every message names the
//! table (its family in the nfgenmsg), the chain, the kind of step and the packet's
//! trace id; a rule step carries the rule's handle and its verdict (nested: code and,
//! for jump/goto, the target chain); a policy step carries the base chain's policy.
//! The first message of each base chain a packet runs through also carries the packet:
//! input and output interface, network and transport headers and (Linux 6.10+) its
//! conntrack state. A later base chain thus shows the packet after an earlier DNAT.

use super::netlink::attrs;
use anyhow::{Context, Result};
use std::time::Duration;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

const NFTA_TRACE_TABLE: u16 = 1;
const NFTA_TRACE_CHAIN: u16 = 2;
const NFTA_TRACE_RULE_HANDLE: u16 = 3;
const NFTA_TRACE_TYPE: u16 = 4;
const NFTA_TRACE_VERDICT: u16 = 5;
const NFTA_TRACE_ID: u16 = 6;
const NFTA_TRACE_NETWORK_HEADER: u16 = 8;
const NFTA_TRACE_TRANSPORT_HEADER: u16 = 9;
const NFTA_TRACE_IIF: u16 = 10;
const NFTA_TRACE_OIF: u16 = 12;
const NFTA_TRACE_MARK: u16 = 14;
const NFTA_TRACE_NFPROTO: u16 = 15;
const NFTA_TRACE_POLICY: u16 = 16;
const NFTA_TRACE_CT_STATE: u16 = 21;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

const NFT_TRACETYPE_POLICY: u32 = 1;
const NFT_TRACETYPE_RETURN: u32 = 2;
const NFT_TRACETYPE_RULE: u32 = 3;

/// What kind of step one trace event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// A rule matched (its verdict may be `continue`).
    Rule,
    /// The end of a chain was reached (or a `return`): back to the calling chain.
    Return,
    /// The end of a base chain was reached: its policy decides.
    Policy,
    /// A kind this version does not know, by number.
    Other(u32),
}

/// A verdict as the kernel reports it: the code (`NF_DROP` 0, `NF_ACCEPT` 1, ...,
/// `NFT_CONTINUE` -1, `NFT_JUMP` -3, ...) and, for jump and goto, the target chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceVerdict {
    /// The verdict code, signed as in the kernel.
    pub code: i32,
    /// The chain jumped to, for `jump` and `goto`.
    pub chain: Option<String>,
}

/// One trace event: one step of one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// The packet's trace id: every step of one packet carries the same.
    pub id: u32,
    /// The table's family (`NFPROTO_*`: 1 inet, 2 ip, 10 ip6, ...).
    pub family: u8,
    /// The table's name.
    pub table: String,
    /// The chain's name.
    pub chain: String,
    /// What happened.
    pub kind: StepKind,
    /// For a rule step: the rule's handle.
    pub rule_handle: Option<u64>,
    /// For rule and return steps: the verdict.
    pub verdict: Option<TraceVerdict>,
    /// For a policy step: the base chain's policy (`NF_DROP` 0 or `NF_ACCEPT` 1).
    pub policy: Option<u32>,
    /// The input interface's index (first event of a base chain only).
    pub iif: Option<u32>,
    /// The output interface's index, where known.
    pub oif: Option<u32>,
    /// The packet's mark, when not 0.
    pub mark: Option<u32>,
    /// The netfilter protocol being processed (`NFPROTO_IPV4`, ...).
    pub nfproto: Option<u32>,
    /// The start of the network header (first event of a base chain only).
    pub network_header: Option<Vec<u8>>,
    /// The start of the transport header (first event of a base chain only).
    pub transport_header: Option<Vec<u8>>,
    /// The conntrack state bits (Linux 6.10+), as `ct state` numbers them.
    pub ct_state: Option<u32>,
}

fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

fn string(v: &[u8]) -> String {
    String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
}

/// Decodes one netlink message (header included) if it is an `NFT_MSG_TRACE`; `None`
/// for any other message or one too short to name its table and chain.
pub fn parse_message(msg: &[u8]) -> Option<TraceEvent> {
    if msg.len() < NLMSG_HDRLEN + NFGENMSG_LEN {
        return None;
    }
    let ty = u16::from_ne_bytes([msg[4], msg[5]]);
    if ty != (NFNL_SUBSYS_NFTABLES << 8) | libc::NFT_MSG_TRACE as u16 {
        return None;
    }
    let mut ev = TraceEvent {
        id: 0,
        family: msg[NLMSG_HDRLEN],
        table: String::new(),
        chain: String::new(),
        kind: StepKind::Other(0),
        rule_handle: None,
        verdict: None,
        policy: None,
        iif: None,
        oif: None,
        mark: None,
        nfproto: None,
        network_header: None,
        transport_header: None,
        ct_state: None,
    };
    for (t, v) in attrs(&msg[NLMSG_HDRLEN + NFGENMSG_LEN..]) {
        match t {
            NFTA_TRACE_TABLE => ev.table = string(v),
            NFTA_TRACE_CHAIN => ev.chain = string(v),
            NFTA_TRACE_RULE_HANDLE => {
                ev.rule_handle = v
                    .get(..8)
                    .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
            }
            NFTA_TRACE_TYPE => {
                ev.kind = match be32(v)? {
                    NFT_TRACETYPE_RULE => StepKind::Rule,
                    NFT_TRACETYPE_RETURN => StepKind::Return,
                    NFT_TRACETYPE_POLICY => StepKind::Policy,
                    n => StepKind::Other(n),
                }
            }
            NFTA_TRACE_VERDICT => {
                let mut code = None;
                let mut chain = None;
                for (vt, vv) in attrs(v) {
                    match vt {
                        NFTA_VERDICT_CODE => code = be32(vv).map(|c| c as i32),
                        NFTA_VERDICT_CHAIN => chain = Some(string(vv)),
                        _ => {}
                    }
                }
                ev.verdict = code.map(|code| TraceVerdict { code, chain });
            }
            NFTA_TRACE_ID => ev.id = be32(v)?,
            NFTA_TRACE_NETWORK_HEADER => ev.network_header = Some(v.to_vec()),
            NFTA_TRACE_TRANSPORT_HEADER => ev.transport_header = Some(v.to_vec()),
            NFTA_TRACE_IIF => ev.iif = be32(v),
            NFTA_TRACE_OIF => ev.oif = be32(v),
            NFTA_TRACE_MARK => ev.mark = be32(v),
            NFTA_TRACE_NFPROTO => ev.nfproto = be32(v),
            NFTA_TRACE_POLICY => ev.policy = be32(v),
            NFTA_TRACE_CT_STATE => ev.ct_state = be32(v),
            _ => {}
        }
    }
    (!ev.table.is_empty() && !ev.chain.is_empty()).then_some(ev)
}

/// The trace events in one datagram, in order; other messages are skipped.
pub fn parse_datagram(mut rest: &[u8]) -> Vec<TraceEvent> {
    let mut events = Vec::new();
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            break;
        }
        events.extend(parse_message(&rest[..len]));
        rest = rest.get(len.div_ceil(4) * 4..).unwrap_or_default();
    }
    events
}

/// What one [`TraceListener::wait`] read.
#[derive(Debug, Default)]
pub struct Received {
    /// The trace events, in the order the kernel sent them.
    pub events: Vec<TraceEvent>,
    /// The socket overflowed: the kernel dropped events (too many packets at once).
    pub lost: bool,
}

/// A socket subscribed to the kernel's trace events in the caller's namespace.
/// Subscribe before tracing is switched on, or the first packets' events are missed.
pub struct TraceListener {
    sock: mnl::Socket,
    buf: Vec<u8>,
}

impl TraceListener {
    /// Subscribes to `NFNLGRP_NFTRACE`, with a receive buffer of 8 MiB so a burst of
    /// packets does not overflow it.
    ///
    /// Errors: the socket cannot be opened or subscribed.
    pub fn subscribe() -> Result<TraceListener> {
        let sock = mnl::Socket::open(mnl::Bus::Netfilter).context("opening a netlink socket")?;
        sock.bind(
            1 << (libc::NFNLGRP_NFTRACE - 1),
            mnl::mnl_sys::MNL_SOCKET_AUTOPID as libc::pid_t,
        )
        .context("subscribing to nftables trace events")?;
        let listener = TraceListener {
            sock,
            buf: vec![0u8; 1 << 16],
        };
        let size: usize = 8 << 20;
        nix::sys::socket::setsockopt(
            &listener.as_fd(),
            nix::sys::socket::sockopt::RcvBufForce,
            &size,
        )
        .map_err(std::io::Error::from)
        .context("sizing the trace socket's receive buffer")?;
        Ok(listener)
    }

    fn fd(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.sock)
    }

    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the descriptor belongs to `self.sock`, open for as long as `self`
        // lives, which bounds the borrow.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd()) }
    }

    /// Waits up to `timeout` for events and reads every queued one. A signal ends the
    /// wait early (with what was read so far: nothing).
    ///
    /// Errors: reading the socket failed for another reason than an overflow.
    pub fn wait(&mut self, timeout: Duration) -> Result<Received> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let fd = self.fd();
        let mut fds = [PollFd::new(self.as_fd(), PollFlags::POLLIN)];
        let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
        let mut got = Received::default();
        match poll(
            &mut fds,
            PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(n) if n > 0 => {}
            Ok(_) | Err(nix::errno::Errno::EINTR) => return Ok(got),
            Err(e) => return Err(e).context("waiting for trace events"),
        }
        loop {
            match nix::sys::socket::recv(
                fd,
                &mut self.buf,
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(0) => break,
                Ok(n) => got.events.extend(parse_datagram(&self.buf[..n])),
                Err(nix::errno::Errno::ENOBUFS) => got.lost = true,
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => break,
                Err(e) => return Err(e).context("reading trace events"),
            }
        }
        Ok(got)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernel::netlink::{nest_attr, put_attr};

    /// One step as the kernel would send it, for tests here and in `verbs::trace`.
    pub(crate) struct Step<'a> {
        pub id: u32,
        pub family: u8,
        pub table: &'a str,
        pub chain: &'a str,
        pub kind: u32,
        pub handle: Option<u64>,
        pub verdict: Option<(i32, Option<&'a str>)>,
        pub policy: Option<u32>,
        pub iif: Option<u32>,
        pub network: Option<Vec<u8>>,
        pub transport: Option<Vec<u8>>,
    }

    impl Default for Step<'_> {
        fn default() -> Self {
            Step {
                id: 0xabcd,
                family: libc::NFPROTO_IPV4 as u8,
                table: "loopgate_trace",
                chain: "prerouting",
                kind: NFT_TRACETYPE_RULE,
                handle: None,
                verdict: None,
                policy: None,
                iif: None,
                network: None,
                transport: None,
            }
        }
    }

    /// The raw message of `s`, header included.
    pub(crate) fn message(s: &Step) -> Vec<u8> {
        let mut body = vec![s.family, 0, 0, 0];
        put_attr(&mut body, NFTA_TRACE_NFPROTO, &2u32.to_be_bytes());
        put_attr(&mut body, NFTA_TRACE_TYPE, &s.kind.to_be_bytes());
        put_attr(&mut body, NFTA_TRACE_ID, &s.id.to_be_bytes());
        put_attr(
            &mut body,
            NFTA_TRACE_CHAIN,
            &[s.chain.as_bytes(), &[0]].concat(),
        );
        put_attr(
            &mut body,
            NFTA_TRACE_TABLE,
            &[s.table.as_bytes(), &[0]].concat(),
        );
        if let Some(h) = s.handle {
            put_attr(&mut body, NFTA_TRACE_RULE_HANDLE, &h.to_be_bytes());
        }
        if let Some((code, chain)) = s.verdict {
            nest_attr(&mut body, NFTA_TRACE_VERDICT, |b| {
                put_attr(b, NFTA_VERDICT_CODE, &code.to_be_bytes());
                if let Some(c) = chain {
                    put_attr(b, NFTA_VERDICT_CHAIN, &[c.as_bytes(), &[0]].concat());
                }
            });
        }
        if let Some(p) = s.policy {
            put_attr(&mut body, NFTA_TRACE_POLICY, &p.to_be_bytes());
        }
        if let Some(i) = s.iif {
            put_attr(&mut body, NFTA_TRACE_IIF, &i.to_be_bytes());
        }
        if let Some(n) = &s.network {
            put_attr(&mut body, NFTA_TRACE_NETWORK_HEADER, n);
        }
        if let Some(t) = &s.transport {
            put_attr(&mut body, NFTA_TRACE_TRANSPORT_HEADER, t);
        }
        let mut m = vec![0u8; NLMSG_HDRLEN];
        m[0..4].copy_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | libc::NFT_MSG_TRACE as u16;
        m[4..6].copy_from_slice(&ty.to_ne_bytes());
        m.extend(body);
        m
    }

    #[test]
    fn a_rule_step_is_decoded_with_its_verdict_and_packet() {
        let ip = vec![0x45u8; 20];
        let msg = message(&Step {
            handle: Some(7),
            verdict: Some((-3, Some("nat_br0_192.0.2.1_tcp_3306"))),
            iif: Some(4),
            network: Some(ip.clone()),
            ..Step::default()
        });
        let ev = parse_message(&msg).unwrap();
        assert_eq!(ev.id, 0xabcd);
        assert_eq!(ev.family, 2);
        assert_eq!(
            (ev.table.as_str(), ev.chain.as_str()),
            ("loopgate_trace", "prerouting")
        );
        assert_eq!(ev.kind, StepKind::Rule);
        assert_eq!(ev.rule_handle, Some(7));
        assert_eq!(
            ev.verdict,
            Some(TraceVerdict {
                code: -3,
                chain: Some("nat_br0_192.0.2.1_tcp_3306".into())
            })
        );
        assert_eq!(ev.iif, Some(4));
        assert_eq!(ev.nfproto, Some(2));
        assert_eq!(ev.network_header, Some(ip));
        assert_eq!(ev.policy, None);
    }

    #[test]
    fn a_datagram_of_several_messages_yields_each_trace_and_skips_the_rest() {
        let policy = message(&Step {
            family: libc::NFPROTO_INET as u8,
            table: "filter",
            chain: "input",
            kind: NFT_TRACETYPE_POLICY,
            policy: Some(0),
            ..Step::default()
        });
        let mut other = policy.clone();
        let newgen = (NFNL_SUBSYS_NFTABLES << 8) | libc::NFT_MSG_NEWGEN as u16;
        other[4..6].copy_from_slice(&newgen.to_ne_bytes());
        let datagram = [policy.clone(), other, policy].concat();
        let events = parse_datagram(&datagram);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].kind, StepKind::Policy);
        assert_eq!(events[0].policy, Some(0));
        assert_eq!(events[0].family, 1);
        // Truncated: what is whole is still read, the rest ignored.
        assert_eq!(parse_datagram(&datagram[..datagram.len() - 3]).len(), 1);
    }
}
