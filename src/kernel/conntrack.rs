//! Cutting established connections of revoked grants through ctnetlink.
//!
//! Deleting a DNAT rule does not end flows that already have a conntrack entry: their
//! NAT binding lives in the entry. Revoking access therefore also deletes the entries
//! whose original destination is a revoked publication (the "stale access" class).

use super::netlink::{attrs, nest_attr, put_attr, NlSocket};
use crate::grant::Proto;
use anyhow::{Context, Result};
use std::net::Ipv4Addr;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// The original-direction tuple of a conntrack entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Source address of the flow's first packet (the client).
    pub src: Ipv4Addr,
    /// Destination of the first packet, before NAT: a grant's listen address, or a
    /// 127.0.0.0/8 address for a flow that reached loopback directly.
    pub dst: Ipv4Addr,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// Source port, host byte order.
    pub sport: u16,
    /// Destination port before NAT, host byte order.
    pub dport: u16,
    /// Conntrack zone (`CTA_ZONE`); 0 when the entry has none. Needed to delete it.
    pub zone: u16,
}

fn parse_flow(msg_payload: &[u8]) -> Option<Flow> {
    let body = msg_payload.get(4..)?; // skip struct nfgenmsg
    let mut zone = 0;
    let mut flow = None;
    for (ty, data) in attrs(body) {
        match ty {
            CTA_ZONE => zone = u16::from_be_bytes(data.get(..2)?.try_into().ok()?),
            CTA_TUPLE_ORIG => {
                let mut f = Flow {
                    src: Ipv4Addr::UNSPECIFIED,
                    dst: Ipv4Addr::UNSPECIFIED,
                    proto: 0,
                    sport: 0,
                    dport: 0,
                    zone: 0,
                };
                for (t, d) in attrs(data) {
                    match t {
                        CTA_TUPLE_IP => {
                            for (a, v) in attrs(d) {
                                let addr = <[u8; 4]>::try_from(v).ok().map(Ipv4Addr::from);
                                match (a, addr) {
                                    (CTA_IP_V4_SRC, Some(x)) => f.src = x,
                                    (CTA_IP_V4_DST, Some(x)) => f.dst = x,
                                    _ => {}
                                }
                            }
                        }
                        CTA_TUPLE_PROTO => {
                            for (a, v) in attrs(d) {
                                match a {
                                    CTA_PROTO_NUM => f.proto = *v.first()?,
                                    CTA_PROTO_SRC_PORT => {
                                        f.sport = u16::from_be_bytes(v.get(..2)?.try_into().ok()?)
                                    }
                                    CTA_PROTO_DST_PORT => {
                                        f.dport = u16::from_be_bytes(v.get(..2)?.try_into().ok()?)
                                    }
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
                flow = Some(f);
            }
            _ => {}
        }
    }
    flow.map(|f| Flow { zone, ..f })
}

/// A tiny netlink message builder: header, nfgenmsg, nested attributes.
struct MsgBuilder {
    buf: Vec<u8>,
}

impl MsgBuilder {
    fn new(msg: u16, flags: u16) -> Self {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg).to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        buf[8..12].copy_from_slice(&1u32.to_ne_bytes());
        // struct nfgenmsg: family, version 0, res_id 0 (big endian)
        buf.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
        MsgBuilder { buf }
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// How many connections the current namespace tracks, if conntrack is loaded. Cheap,
/// unlike a listing: a conntrack dump walks the whole host's hash table, whatever the
/// namespace holds.
pub fn count() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Lists the IPv4 conntrack entries of the current namespace.
pub fn list() -> Result<Vec<Flow>> {
    let mut sock = NlSocket::netfilter()?;
    sock.size_buffers(4 << 20)?;
    let req = MsgBuilder::new(
        IPCTNL_MSG_CT_GET,
        (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
    )
    .finish();
    let rows = match sock.dump(&req) {
        Ok(r) => r,
        // No conntrack in this namespace: nothing can be established.
        Err(e) if is_unsupported(&e) => return Ok(vec![]),
        Err(e) => return Err(e).context("listing conntrack entries"),
    };
    Ok(rows
        .iter()
        .filter_map(|m| parse_flow(m.get(16..)?))
        .collect())
}

fn is_unsupported(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .and_then(|e| e.raw_os_error())
        .is_some_and(|c| c == libc::EOPNOTSUPP || c == libc::EPROTONOSUPPORT)
}

/// The request that deletes one entry, named by its original tuple and zone.
fn delete_message(f: &Flow) -> Vec<u8> {
    let mut b = MsgBuilder::new(
        IPCTNL_MSG_CT_DELETE,
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
    );
    nest_attr(&mut b.buf, CTA_TUPLE_ORIG, |b| {
        nest_attr(b, CTA_TUPLE_IP, |b| {
            put_attr(b, CTA_IP_V4_SRC, &f.src.octets());
            put_attr(b, CTA_IP_V4_DST, &f.dst.octets());
        });
        nest_attr(b, CTA_TUPLE_PROTO, |b| {
            put_attr(b, CTA_PROTO_NUM, &[f.proto]);
            put_attr(b, CTA_PROTO_SRC_PORT, &f.sport.to_be_bytes());
            put_attr(b, CTA_PROTO_DST_PORT, &f.dport.to_be_bytes());
        });
    });
    if f.zone != 0 {
        put_attr(&mut b.buf, CTA_ZONE, &f.zone.to_be_bytes());
    }
    b.finish()
}

/// Deletes the given entries; entries that vanished meanwhile are not an error.
pub fn delete(flows: &[Flow]) -> Result<usize> {
    if flows.is_empty() {
        return Ok(0);
    }
    crate::failpoint::check("conntrack-delete")?;
    let mut sock = NlSocket::netfilter()?;
    let mut deleted = 0;
    for f in flows {
        match sock.dump(&delete_message(f)) {
            Ok(_) => deleted += 1,
            Err(e)
                if e.downcast_ref::<std::io::Error>()
                    .and_then(|e| e.raw_os_error())
                    == Some(libc::ENOENT) => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "deleting conntrack entry {}:{} -> {}:{}",
                        f.src, f.sport, f.dst, f.dport
                    )
                })
            }
        }
    }
    Ok(deleted)
}

/// The entries that are flows to `listen:port/proto`.
pub fn matches(flow: &Flow, listen: Ipv4Addr, proto: Proto, port: u16) -> bool {
    flow.dst == listen && flow.proto == proto.number() && flow.dport == port
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_delete_message_parses_back_to_the_same_flow() {
        let f = Flow {
            src: Ipv4Addr::new(192, 0, 2, 2),
            dst: Ipv4Addr::new(192, 0, 2, 1),
            proto: 6,
            sport: 40000,
            dport: 3306,
            zone: 7,
        };
        let msg = delete_message(&f);
        assert_eq!(
            u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize,
            msg.len()
        );
        assert_eq!(parse_flow(&msg[16..]), Some(f));
    }
}
