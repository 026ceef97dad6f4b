//! What is known of one packet of a flow as a chain at some hook and priority sees
//! it: bytes with known and unknown bits, and what `meta`, `payload` and `ct` load
//! from it. The evaluator's input; nothing here judges a rule.

use crate::kernel::firewall::CT_XT_STATE;
use ipnetwork::Ipv4Network;
use std::net::Ipv4Addr;

/// What is known of one byte: its value where `known` has a bit set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Byte {
    pub(super) value: u8,
    pub(super) known: u8,
}

pub(super) fn known(bytes: &[u8]) -> Vec<Byte> {
    bytes
        .iter()
        .map(|&value| Byte { value, known: 0xff })
        .collect()
}

pub(super) fn unknown(len: usize) -> Vec<Byte> {
    vec![Byte::default(); len]
}

/// An IPv4 address of which the prefix is known (a client in an allowed network).
pub(super) fn addr_bytes(net: Ipv4Network) -> Vec<Byte> {
    let v = net.network().octets();
    let m = net.mask().octets();
    (0..4)
        .map(|i| Byte {
            value: v[i] & m[i],
            known: m[i],
        })
        .collect()
}

/// What is known of the packet's mark (`meta mark`): the bits of `known`, with their
/// values in `value`. Nothing at first: a mark may come from eBPF, tc or an earlier
/// table; a `meta mark set` (xt `MARK`) the walk passes makes its bits known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub(super) struct Mark {
    pub(super) value: u32,
    pub(super) known: u32,
}

impl Mark {
    /// What both may hold: the bits known, and equal, in each.
    pub(super) fn join(self, other: Mark) -> Mark {
        let known = self.known & other.known & !(self.value ^ other.value);
        Mark {
            value: self.value & known,
            known,
        }
    }

    /// As `meta load mark` puts it in a register (32 bits, host order).
    pub(super) fn bytes(self) -> Vec<Byte> {
        let v = self.value.to_ne_bytes();
        let k = self.known.to_ne_bytes();
        (0..4)
            .map(|i| Byte {
                value: v[i] & k[i],
                known: k[i],
            })
            .collect()
    }

    /// From a register's first four bytes.
    pub(super) fn of(bytes: &[Byte]) -> Mark {
        let b = |i: usize| bytes.get(i).copied().unwrap_or_default();
        let value = u32::from_ne_bytes([b(0).value, b(1).value, b(2).value, b(3).value]);
        let known = u32::from_ne_bytes([b(0).known, b(1).known, b(2).known, b(3).known]);
        Mark {
            value: value & known,
            known,
        }
    }
}

/// What a reverse path check (`rpfilter`, `fib saddr . iif`) finds for the flow's
/// clients, from the routes audit read: `None` where it cannot be told (policy
/// routing that may depend on the mark, source or interface, routes not read, a
/// network whose parts are routed apart).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteBack {
    /// The route back leaves through the grant's interface (strict check passes).
    pub strict: Option<bool>,
    /// A unicast route back exists (loose check passes).
    pub loose: Option<bool>,
}

/// Three-valued truth: what a rule's match is, as far as it can be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Tri {
    Yes,
    No,
    Maybe(String),
}

/// One packet of the flow as a chain at some hook and priority sees it.
#[derive(Debug, Clone)]
pub(super) struct Packet {
    pub(super) iif: Option<(String, Option<u32>)>,
    pub(super) oif: Option<(String, Option<u32>)>,
    pub(super) saddr: Vec<Byte>,
    pub(super) daddr: Vec<Byte>,
    pub(super) proto: u8,
    pub(super) sport: Option<u16>,
    pub(super) dport: Option<u16>,
    /// Conntrack has seen the packet (its priority is after conntrack's).
    pub(super) tracked: bool,
    /// The first packet of the flow (nat chains see only it).
    pub(super) first: bool,
    pub(super) reply: bool,
    /// The flow's destination NAT is recorded (after loopgate's DNAT, or any later
    /// packet).
    pub(super) dnat: bool,
    /// Original-direction tuple, for `ct original ...`: client network, listen
    /// address, proto ports.
    pub(super) orig_src: Vec<Byte>,
    pub(super) orig_dst: Ipv4Addr,
    pub(super) orig_dport: u16,
    /// Reply-direction tuple source (the target) and port.
    pub(super) reply_src: Ipv4Addr,
    pub(super) reply_sport: u16,
    /// The reverse path checks' answer for the client (incoming packets).
    pub(super) route_back: RouteBack,
}

pub(super) fn ifname(name: &str) -> Vec<Byte> {
    let mut b = [0u8; 16];
    let n = name.len().min(16);
    b[..n].copy_from_slice(&name.as_bytes()[..n]);
    known(&b)
}

impl Packet {
    /// What `key` of `meta` loads, `None` when the kernel breaks the rule (no input
    /// interface at output, no output interface before routing).
    pub(super) fn meta(&self, key: u32) -> Option<(Vec<Byte>, &'static str)> {
        Some(match key {
            1 => (known(&[0x08, 0x00]), "meta protocol"),
            4 => (
                self.iif
                    .as_ref()?
                    .1
                    .map_or_else(|| unknown(4), |i| known(&i.to_ne_bytes())),
                "meta iif",
            ),
            5 => (
                self.oif
                    .as_ref()?
                    .1
                    .map_or_else(|| unknown(4), |i| known(&i.to_ne_bytes())),
                "meta oif",
            ),
            6 => (ifname(&self.iif.as_ref()?.0), "iifname"),
            7 => (ifname(&self.oif.as_ref()?.0), "oifname"),
            15 => (known(&[libc::NFPROTO_IPV4 as u8]), "meta nfproto"),
            16 => (known(&[self.proto]), "meta l4proto"),
            // PACKET_HOST: a unicast packet to this host, as the grant's clients send.
            8 if self.iif.is_some() => (known(&[0]), "meta pkttype"),
            3 => (unknown(4), "meta mark"),
            _ => (unknown(16), "a meta key"),
        })
    }

    /// The `RTN_*` route type of the destination (or source) address, where known
    /// without the routing table: 127/8 and the listen address are local (the grant's
    /// listen address is one of the host's), 224/4 multicast, 255.255.255.255
    /// broadcast.
    pub(super) fn addr_type(&self, daddr: bool) -> Option<u32> {
        let bytes = if daddr { &self.daddr } else { &self.saddr };
        if bytes.iter().any(|b| b.known != 0xff) {
            return None;
        }
        let a = Ipv4Addr::new(
            bytes[0].value,
            bytes[1].value,
            bytes[2].value,
            bytes[3].value,
        );
        if a.is_loopback() || a == self.orig_dst {
            Some(2)
        } else if a.is_multicast() {
            Some(5)
        } else if a.is_broadcast() {
            Some(3)
        } else {
            None
        }
    }

    pub(super) fn payload(&self, base: u32, offset: u32, len: u32) -> (Vec<Byte>, &'static str) {
        let mut header = match base {
            1 => {
                let mut h = unknown(20);
                h[9] = known(&[self.proto])[0];
                h[12..16].copy_from_slice(&self.saddr);
                h[16..20].copy_from_slice(&self.daddr);
                h
            }
            2 => {
                let mut h = unknown(20);
                let port =
                    |p: Option<u16>| p.map_or_else(|| unknown(2), |p| known(&p.to_be_bytes()));
                h[0..2].copy_from_slice(&port(self.sport));
                h[2..4].copy_from_slice(&port(self.dport));
                // A TCP flow's first packet is a bare SYN; later ones are not known.
                if self.proto == 6 && self.first && !self.reply {
                    h[13] = known(&[0x02])[0];
                }
                h
            }
            _ => unknown(0),
        };
        let label = match (base, offset, len) {
            (1, 12, _) => "ip saddr",
            (1, 16, _) => "ip daddr",
            (1, 9, 1) => "ip protocol",
            (2, 0, 2) => "th sport",
            (2, 2, 2) => "th dport",
            (2, 13, 1) => "tcp flags",
            _ => "a header field",
        };
        let (o, l) = (offset as usize, len as usize);
        header.resize(header.len().max(o + l), Byte::default());
        (header[o..o + l].to_vec(), label)
    }

    /// What `ct` loads, `None` when the kernel breaks the rule (no conntrack entry).
    pub(super) fn ct(&self, key: u32, dir: Option<u8>) -> Option<(Vec<Byte>, &'static str)> {
        if key == 0 {
            // NF_CT_STATE_BIT(ctinfo): established 2, related 4, new 8; invalid 1
            // when conntrack has not seen the packet yet.
            let state: u32 = match (self.tracked, self.first) {
                (false, _) => 1,
                (true, true) => 8,
                (true, false) => 2,
            };
            return Some((known(&state.to_ne_bytes()), "ct state"));
        }
        if key == CT_XT_STATE {
            let (state, _) = self.ct(0, None)?;
            let mut bytes = state;
            let dnat = if self.tracked && self.dnat { 0x80 } else { 0 };
            // SNAT (0x40) is not modelled.
            bytes[0] = Byte {
                value: bytes[0].value | dnat,
                known: !0x40,
            };
            return Some((bytes, "ctstate"));
        }
        if !self.tracked {
            return None;
        }
        let addr = |a: Ipv4Addr| known(&a.octets());
        Some(match (key, dir) {
            (1, _) => (known(&[u8::from(self.reply)]), "ct direction"),
            (2, _) => {
                // Known bits: expected (0x1), seen reply (0x2), confirmed (0x8),
                // dst nat (0x20); the rest is not modelled.
                let mut value = 0u32;
                if !self.first {
                    value |= 0x2 | 0x8;
                }
                if self.dnat {
                    value |= 0x20;
                }
                let k = 0x1u32 | 0x2 | 0x8 | 0x20;
                let v = value.to_ne_bytes();
                let m = k.to_ne_bytes();
                let bytes = (0..4)
                    .map(|i| Byte {
                        value: v[i],
                        known: m[i],
                    })
                    .collect();
                (bytes, "ct status")
            }
            (7, _) => (known(&[libc::NFPROTO_IPV4 as u8]), "ct l3proto"),
            (10, _) => (known(&[self.proto]), "ct protocol"),
            (8 | 19, Some(0)) => (self.orig_src.clone(), "ct original saddr"),
            (9 | 20, Some(0)) => (addr(self.orig_dst), "ct original daddr"),
            (12, Some(0)) => (
                known(&self.orig_dport.to_be_bytes()),
                "ct original proto-dst",
            ),
            (8 | 19, Some(1)) => (addr(self.reply_src), "ct reply saddr"),
            (9 | 20, Some(1)) => (self.orig_src.clone(), "ct reply daddr"),
            (11, Some(1)) => (known(&self.reply_sport.to_be_bytes()), "ct reply proto-src"),
            (3, _) => (unknown(4), "ct mark"),
            _ => (unknown(16), "a ct key"),
        })
    }
}
