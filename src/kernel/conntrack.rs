//! Cutting established connections of revoked grants through ctnetlink.
//!
//! Deleting a DNAT rule does not end flows that already have a conntrack entry: their
//! NAT binding lives in the entry. Revoking access therefore also deletes the entries
//! whose original destination is a revoked publication (the "stale access" class).

use super::netlink::{attrs, nest_attr, put_attr, NlSocket};
use crate::grant::Proto;
use anyhow::{Context, Result};
use std::net::{Ipv4Addr, SocketAddrV4};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
/// `IPS_DST_NAT` of `enum ip_conntrack_status`: the entry's destination is rewritten.
const IPS_DST_NAT: u32 = 1 << 5;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// The original-direction tuple of a conntrack entry, and where DNAT sends it.
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
    /// Where destination NAT sends the flow (the reply tuple's source) when the entry
    /// carries `IPS_DST_NAT`; `None` for an entry without DNAT, such as one created
    /// before the grant's rule existed (conntrack binds NAT once, at the first packet).
    /// Not part of what names an entry for deletion.
    pub dnat: Option<SocketAddrV4>,
}

/// One direction's tuple as ctnetlink nests it (`CTA_TUPLE_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tuple {
    src: Option<Ipv4Addr>,
    dst: Option<Ipv4Addr>,
    proto: u8,
    sport: u16,
    dport: u16,
}

fn parse_tuple(data: &[u8]) -> Option<Tuple> {
    let mut t = Tuple::default();
    for (ty, d) in attrs(data) {
        match ty {
            CTA_TUPLE_IP => {
                for (a, v) in attrs(d) {
                    let addr = <[u8; 4]>::try_from(v).ok().map(Ipv4Addr::from);
                    match (a, addr) {
                        (CTA_IP_V4_SRC, Some(x)) => t.src = Some(x),
                        (CTA_IP_V4_DST, Some(x)) => t.dst = Some(x),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (a, v) in attrs(d) {
                    match a {
                        CTA_PROTO_NUM => t.proto = *v.first()?,
                        CTA_PROTO_SRC_PORT => {
                            t.sport = u16::from_be_bytes(v.get(..2)?.try_into().ok()?)
                        }
                        CTA_PROTO_DST_PORT => {
                            t.dport = u16::from_be_bytes(v.get(..2)?.try_into().ok()?)
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(t)
}

fn parse_flow(msg_payload: &[u8]) -> Option<Flow> {
    let body = msg_payload.get(4..)?; // skip struct nfgenmsg
    let mut zone = 0;
    let mut status = None;
    let (mut orig, mut reply) = (None, None);
    for (ty, data) in attrs(body) {
        match ty {
            CTA_ZONE => zone = u16::from_be_bytes(data.get(..2)?.try_into().ok()?),
            CTA_STATUS => status = Some(u32::from_be_bytes(data.get(..4)?.try_into().ok()?)),
            CTA_TUPLE_ORIG => orig = Some(parse_tuple(data)?),
            CTA_TUPLE_REPLY => reply = Some(parse_tuple(data)?),
            _ => {}
        }
    }
    let orig = orig?;
    // Destination NAT rewrote the destination: replies come from where it sent the
    // flow, which is the reply tuple's source. Without the status bit the reply tuple
    // only mirrors the original one (or a source NAT) and says nothing about DNAT.
    let dnat = match (status, reply) {
        (Some(s), Some(r)) if s & IPS_DST_NAT != 0 => Some(SocketAddrV4::new(
            r.src.unwrap_or(Ipv4Addr::UNSPECIFIED),
            r.sport,
        )),
        _ => None,
    };
    Some(Flow {
        src: orig.src.unwrap_or(Ipv4Addr::UNSPECIFIED),
        dst: orig.dst.unwrap_or(Ipv4Addr::UNSPECIFIED),
        proto: orig.proto,
        sport: orig.sport,
        dport: orig.dport,
        zone,
        dnat,
    })
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
pub(in crate::kernel) fn delete(flows: &[Flow]) -> Result<usize> {
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
            dnat: None,
        };
        let msg = delete_message(&f);
        assert_eq!(
            u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize,
            msg.len()
        );
        assert_eq!(parse_flow(&msg[16..]), Some(f));
    }

    /// An entry as a dump reports it: both tuples, the status word and the zone.
    fn entry_message(f: &Flow, reply: (Ipv4Addr, u16, Ipv4Addr, u16), status: u32) -> Vec<u8> {
        let mut b = MsgBuilder::new(0, 0);
        let tuple = |b: &mut Vec<u8>, ty, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16| {
            nest_attr(b, ty, |b| {
                nest_attr(b, CTA_TUPLE_IP, |b| {
                    put_attr(b, CTA_IP_V4_SRC, &src.octets());
                    put_attr(b, CTA_IP_V4_DST, &dst.octets());
                });
                nest_attr(b, CTA_TUPLE_PROTO, |b| {
                    put_attr(b, CTA_PROTO_NUM, &[f.proto]);
                    put_attr(b, CTA_PROTO_SRC_PORT, &sport.to_be_bytes());
                    put_attr(b, CTA_PROTO_DST_PORT, &dport.to_be_bytes());
                });
            })
        };
        tuple(&mut b.buf, CTA_TUPLE_ORIG, f.src, f.sport, f.dst, f.dport);
        tuple(
            &mut b.buf,
            CTA_TUPLE_REPLY,
            reply.0,
            reply.1,
            reply.2,
            reply.3,
        );
        put_attr(&mut b.buf, CTA_STATUS, &status.to_be_bytes());
        put_attr(&mut b.buf, CTA_ZONE, &f.zone.to_be_bytes());
        b.finish()
    }

    /// IPS_CONFIRMED | IPS_SRC_NAT_DONE | IPS_DST_NAT_DONE: what an entry that went
    /// through the NAT hooks without a matching rule carries (a null binding).
    const NULL_BINDING: u32 = (1 << 3) | (1 << 7) | (1 << 8);

    #[test]
    fn a_dnated_entry_says_where_dnat_sends_it() {
        let f = Flow {
            src: Ipv4Addr::new(192, 0, 2, 10),
            dst: Ipv4Addr::new(192, 0, 2, 1),
            proto: 17,
            sport: 40000,
            dport: 53,
            zone: 0,
            dnat: None,
        };
        let dnated = entry_message(
            &f,
            (Ipv4Addr::LOCALHOST, 5353, f.src, f.sport),
            NULL_BINDING | IPS_DST_NAT,
        );
        assert_eq!(
            parse_flow(&dnated[16..]),
            Some(Flow {
                dnat: Some(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 5353)),
                ..f
            })
        );
        // The entry made before the rule existed: its reply tuple mirrors the original.
        let plain = entry_message(&f, (f.dst, f.dport, f.src, f.sport), NULL_BINDING);
        assert_eq!(parse_flow(&plain[16..]), Some(f));
        // Source NAT alone rewrites the reply tuple too; it is no DNAT.
        let snat = entry_message(
            &f,
            (f.dst, f.dport, Ipv4Addr::new(198, 51, 100, 1), 1024),
            NULL_BINDING | (1 << 4),
        );
        assert_eq!(parse_flow(&snat[16..]), Some(f));
    }
}
