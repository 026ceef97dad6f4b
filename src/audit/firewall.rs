//! Whether another firewall on the host stops a grant's flow: another table's base
//! chain that drops or rejects it (a `policy drop` input chain of `/etc/nftables.conf`,
//! ufw or firewalld), a `notrack` rule that keeps loopgate's DNAT from ever happening,
//! or iptables-legacy tables that nft cannot see.
//!
//! loopgate's accept cannot override another table's drop: every base chain on a hook
//! runs, and a drop is final. So audit follows the grant's packets through every other
//! table's base chains, in the kernel's hook and priority order, on a plain model of
//! their rules ([`Foreign`]): the expressions as the kernel holds them (register loads,
//! compares, bitwise masks, verdicts), evaluated over what is known of the packet.
//! What a rule compares against a field loopgate cannot know (a mark, a set's
//! members, an expression not modelled here) splits the path: if one side drops, the
//! answer is "may drop", naming the chain and why. [`evaluate`] is pure and unit
//! tested; the model and its reading are the kernel's ([`crate::kernel::firewall`]).
//!
//! The packets followed, for each allowed network of a grant:
//! - the first packet (ct state new) at prerouting (before loopgate's DNAT at priority
//!   -100 addressed to the listen address, after it to the target) and at input;
//! - later packets of the flow (ct state established) on the same path;
//! - the replies (ct state established, direction reply) at output and postrouting,
//!   leaving through the grant's interface.

use super::{Code, Finding, Severity};
use crate::grant::Grant;
use crate::kernel::firewall::{Chain, Expr, Foreign, Hook, Jump, Rule, CT_XT_STATE};
use ipnetwork::Ipv4Network;
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// What a foreign firewall does with a grant's flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing seen stops it.
    Passes,
    /// Every path through this chain stops it.
    Drops {
        /// The table (`inet filter`).
        table: String,
        /// The base chain.
        chain: String,
        /// The rule that decides (`rule handle 4 in chain input: reject`), or `None`
        /// for the chain's policy.
        rule: Option<String>,
        /// How it is stopped.
        stop: Stop,
    },
    /// Some path through this chain stops it, depending on what is not modelled.
    MayDrop {
        /// The table.
        table: String,
        /// The base chain.
        chain: String,
        /// What it depends on.
        why: String,
        /// How it would be stopped, when a modelled drop, reject, notrack or policy is
        /// what may be reached.
        stop: Option<Stop>,
    },
}

/// How a flow is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The base chain's `policy drop`.
    Policy,
    /// A `drop` verdict.
    Drop,
    /// A `reject`.
    Reject,
    /// A `notrack` before conntrack: loopgate's DNAT never happens.
    Notrack,
}

impl Stop {
    fn words(self) -> &'static str {
        match self {
            Stop::Policy => "policy drop",
            Stop::Drop => "drop",
            Stop::Reject => "reject",
            Stop::Notrack => "notrack",
        }
    }
}

/// conntrack's own priority at prerouting: chains before it see untracked packets.
const PRIORITY_CONNTRACK: i32 = -200;
/// loopgate's DNAT (and every nat chain's destination NAT) at prerouting.
const PRIORITY_DSTNAT: i32 = -100;
/// Where the source of a DNATed flow's replies is translated back, at postrouting.
const PRIORITY_SRCNAT: i32 = 100;

/// What is known of one byte: its value where `known` has a bit set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Byte {
    value: u8,
    known: u8,
}

fn known(bytes: &[u8]) -> Vec<Byte> {
    bytes
        .iter()
        .map(|&value| Byte { value, known: 0xff })
        .collect()
}

fn unknown(len: usize) -> Vec<Byte> {
    vec![Byte::default(); len]
}

/// An IPv4 address of which the prefix is known (a client in an allowed network).
fn addr_bytes(net: Ipv4Network) -> Vec<Byte> {
    let v = net.network().octets();
    let m = net.mask().octets();
    (0..4)
        .map(|i| Byte {
            value: v[i] & m[i],
            known: m[i],
        })
        .collect()
}

/// Three-valued truth: what a rule's match is, as far as it can be told.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tri {
    Yes,
    No,
    Maybe(String),
}

/// One packet of the flow as a chain at some hook and priority sees it.
#[derive(Debug, Clone)]
struct Packet {
    iif: Option<(String, Option<u32>)>,
    oif: Option<(String, Option<u32>)>,
    saddr: Vec<Byte>,
    daddr: Vec<Byte>,
    proto: u8,
    sport: Option<u16>,
    dport: Option<u16>,
    /// Conntrack has seen the packet (its priority is after conntrack's).
    tracked: bool,
    /// The first packet of the flow (nat chains see only it).
    first: bool,
    reply: bool,
    /// The flow's destination NAT is recorded (after loopgate's DNAT, or any later
    /// packet).
    dnat: bool,
    /// Original-direction tuple, for `ct original ...`: client network, listen
    /// address, proto ports.
    orig_src: Vec<Byte>,
    orig_dst: Ipv4Addr,
    orig_dport: u16,
    /// Reply-direction tuple source (the target) and port.
    reply_src: Ipv4Addr,
    reply_sport: u16,
}

fn ifname(name: &str) -> Vec<Byte> {
    let mut b = [0u8; 16];
    let n = name.len().min(16);
    b[..n].copy_from_slice(&name.as_bytes()[..n]);
    known(&b)
}

impl Packet {
    /// What `key` of `meta` loads, `None` when the kernel breaks the rule (no input
    /// interface at output, no output interface before routing).
    fn meta(&self, key: u32) -> Option<(Vec<Byte>, &'static str)> {
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
            3 => (unknown(4), "meta mark"),
            _ => (unknown(16), "a meta key"),
        })
    }

    fn payload(&self, base: u32, offset: u32, len: u32) -> (Vec<Byte>, &'static str) {
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
            _ => "a header field",
        };
        let (o, l) = (offset as usize, len as usize);
        header.resize(header.len().max(o + l), Byte::default());
        (header[o..o + l].to_vec(), label)
    }

    /// What `ct` loads, `None` when the kernel breaks the rule (no conntrack entry).
    fn ct(&self, key: u32, dir: Option<u8>) -> Option<(Vec<Byte>, &'static str)> {
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

/// The register file: 16 32-bit registers, byte by byte, each load labelled.
struct Regs {
    bytes: [Byte; 64],
    labels: [Option<&'static str>; 64],
}

/// The byte offset of register `reg` in the register file.
fn reg_offset(reg: u32) -> Option<usize> {
    match reg {
        1..=4 => Some((reg as usize - 1) * 16),
        8..=23 => Some((reg as usize - 8) * 4),
        _ => None,
    }
}

impl Regs {
    fn new() -> Regs {
        Regs {
            bytes: [Byte::default(); 64],
            labels: [None; 64],
        }
    }

    fn write(&mut self, reg: u32, data: &[Byte], label: &'static str) {
        let Some(o) = reg_offset(reg) else { return };
        // A load pads to whole 32-bit words with zeroes, as the kernel does.
        let padded = data.len().div_ceil(4) * 4;
        for i in 0..padded {
            if let Some(b) = self.bytes.get_mut(o + i) {
                *b = data.get(i).copied().unwrap_or(Byte {
                    value: 0,
                    known: 0xff,
                });
            }
        }
        if let Some(l) = self.labels.get_mut(o) {
            *l = Some(label);
        }
    }

    fn read(&self, reg: u32, len: usize) -> (Vec<Byte>, &'static str) {
        let Some(o) = reg_offset(reg) else {
            return (unknown(len), "a register");
        };
        let bytes = (o..o + len)
            .map(|i| self.bytes.get(i).copied().unwrap_or_default())
            .collect();
        (
            bytes,
            self.labels
                .get(o)
                .copied()
                .flatten()
                .unwrap_or("a register"),
        )
    }
}

/// `value == data`, as far as known.
fn equal(value: &[Byte], data: &[u8]) -> Option<bool> {
    let mut all_known = true;
    for (b, d) in value.iter().zip(data) {
        if (b.value ^ d) & b.known != 0 {
            return Some(false);
        }
        if b.known != 0xff {
            all_known = false;
        }
    }
    all_known.then_some(true)
}

/// memcmp of a fully known value with `data`.
fn order(value: &[Byte], data: &[u8]) -> Option<std::cmp::Ordering> {
    if value.iter().any(|b| b.known != 0xff) {
        return None;
    }
    let v: Vec<u8> = value.iter().map(|b| b.value).collect();
    Some(v.as_slice().cmp(data))
}

/// The value a compare shows a person: an interface name, an address, a number.
fn shown(label: &str, data: &[u8]) -> String {
    match (label, data.len()) {
        ("iifname" | "oifname", _) => {
            let name: Vec<u8> = data.iter().copied().take_while(|b| *b != 0).collect();
            let wildcard = if data.last() != Some(&0) { "*" } else { "" };
            format!("\"{}{wildcard}\"", String::from_utf8_lossy(&name))
        }
        (_, 4) if label.contains("addr") => {
            Ipv4Addr::new(data[0], data[1], data[2], data[3]).to_string()
        }
        (_, 2) if label.contains("port") || label.contains("proto-") => {
            u16::from_be_bytes([data[0], data[1]]).to_string()
        }
        ("meta l4proto" | "ip protocol" | "ct protocol", 1) => match data[0] {
            6 => "tcp".into(),
            17 => "udp".into(),
            1 => "icmp".into(),
            n => n.to_string(),
        },
        _ => format!(
            "0x{}",
            data.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}

/// How a rule ends for the evaluator.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Continue,
    Accept,
    Stop(Stop),
    Jump(String),
    Goto(String),
    Return,
    /// An action not modelled (a verdict map, `queue`, `nat`...): may do anything.
    Opaque(String),
}

/// What a rule does to `pkt`: whether it matches, and its action, with a short text
/// for messages.
///
/// With `describe` false no text is made (the reasons of a [`Tri::Maybe`] are empty):
/// most rules do not match, and only those that decide need words.
fn run_rule(
    rule: &Rule,
    pkt: &Packet,
    before_conntrack: bool,
    describe: bool,
) -> (Tri, Action, String) {
    let mut regs = Regs::new();
    let mut matched = Tri::Yes;
    let mut words: Vec<String> = Vec::new();
    let mut action = Action::Continue;
    let say = |text: &dyn Fn() -> String| if describe { text() } else { String::new() };
    for e in &rule.exprs {
        match e {
            Expr::Meta { key, dreg } => match pkt.meta(*key) {
                Some((v, l)) => regs.write(*dreg, &v, l),
                None => return (Tri::No, Action::Continue, String::new()),
            },
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                let (v, l) = pkt.payload(*base, *offset, *len);
                regs.write(*dreg, &v, l);
            }
            Expr::Ct { key, dir, dreg } => match pkt.ct(*key, *dir) {
                Some((v, l)) => regs.write(*dreg, &v, l),
                None => return (Tri::No, Action::Continue, String::new()),
            },
            Expr::Load { dreg, data } => regs.write(*dreg, &known(data), "a value"),
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                let (v, l) = regs.read(*sreg, mask.len());
                let out: Vec<Byte> = v
                    .iter()
                    .zip(mask.iter().zip(xor.iter().chain(std::iter::repeat(&0))))
                    .map(|(b, (m, x))| Byte {
                        value: (b.value & m) ^ x,
                        known: b.known | !m,
                    })
                    .collect();
                regs.write(*dreg, &out, l);
            }
            Expr::Cmp { sreg, op, data } => {
                let (v, l) = regs.read(*sreg, data.len());
                let (truth, sym) = match op {
                    0 => (equal(&v, data), "=="),
                    1 => (equal(&v, data).map(|t| !t), "!="),
                    2 => (order(&v, data).map(|o| o.is_lt()), "<"),
                    3 => (order(&v, data).map(|o| o.is_le()), "<="),
                    4 => (order(&v, data).map(|o| o.is_gt()), ">"),
                    5 => (order(&v, data).map(|o| o.is_ge()), ">="),
                    _ => (None, "?"),
                };
                let text = match describe {
                    true => format!("{l} {sym} {}", shown(l, data)),
                    false => String::new(),
                };
                words.push(text.clone());
                match truth {
                    Some(true) => {}
                    Some(false) => return (Tri::No, Action::Continue, String::new()),
                    None => {
                        if matched == Tri::Yes {
                            matched = Tri::Maybe(format!("`{text}` (not known for the flow)"));
                        }
                    }
                }
            }
            Expr::Range { sreg, op, from, to } => {
                let (v, l) = regs.read(*sreg, from.len());
                let inside = match (order(&v, from), order(&v, to)) {
                    (Some(a), Some(b)) => Some(a.is_ge() && b.is_le()),
                    _ => None,
                };
                let truth = if *op == 0 { inside } else { inside.map(|t| !t) };
                let text = match describe {
                    true => format!(
                        "{l} {}{}-{}",
                        if *op == 0 { "" } else { "!= " },
                        shown(l, from),
                        shown(l, to)
                    ),
                    false => String::new(),
                };
                words.push(text.clone());
                match truth {
                    Some(true) => {}
                    Some(false) => return (Tri::No, Action::Continue, String::new()),
                    None => {
                        if matched == Tri::Yes {
                            matched = Tri::Maybe(format!("`{text}` (not known for the flow)"));
                        }
                    }
                }
            }
            Expr::Lookup { set, verdict_map } => {
                words.push(say(&|| format!("@{set}")));
                if *verdict_map {
                    action = Action::Opaque(say(&|| format!("a verdict map lookup in @{set}")));
                    break;
                }
                if matched == Tri::Yes {
                    matched = Tri::Maybe(say(&|| {
                        format!("a lookup in set @{set} (its members are not read)")
                    }));
                }
            }
            Expr::Verdict(j) => {
                action = match j {
                    Jump::Accept => Action::Accept,
                    Jump::Drop => Action::Stop(Stop::Drop),
                    Jump::Continue => Action::Continue,
                    Jump::Return => Action::Return,
                    Jump::Jump(c) => Action::Jump(c.clone()),
                    Jump::Goto(c) => Action::Goto(c.clone()),
                };
                break;
            }
            Expr::Reject => {
                action = Action::Stop(Stop::Reject);
                break;
            }
            Expr::Notrack => {
                if before_conntrack {
                    action = Action::Stop(Stop::Notrack);
                    break;
                }
            }
            Expr::Statement(_) => {}
            Expr::Unknown(name) => {
                words.push(say(&|| name.clone()));
                // It may have loaded any register (fib, rt, socket, hash, a map's
                // data): nothing read before it can be trusted after it.
                regs = Regs::new();
                if matches!(
                    name.as_str(),
                    "queue" | "nat" | "redir" | "fwd" | "tproxy" | "synproxy" | "dup"
                ) || name.starts_with("target")
                {
                    action = Action::Opaque(say(&|| format!("`{name}` (not modelled)")));
                    break;
                }
                if matched == Tri::Yes {
                    matched = Tri::Maybe(say(&|| format!("`{name}` (not modelled)")));
                }
            }
        }
    }
    let verdict = match &action {
        Action::Continue => "continue".to_string(),
        Action::Accept => "accept".to_string(),
        Action::Stop(s) => s.words().to_string(),
        Action::Jump(c) => format!("jump {c}"),
        Action::Goto(c) => format!("goto {c}"),
        Action::Return => "return".to_string(),
        Action::Opaque(w) => w.clone(),
    };
    words.push(verdict);
    if !describe {
        return (matched, action, String::new());
    }
    (
        matched,
        action,
        format!("rule handle {}: {}", rule.handle, words.join(" ")),
    )
}

/// Where a stop was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hit {
    stop: Stop,
    rule: Option<String>,
}

/// Every way a chain can end for the packet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Possible {
    accept: bool,
    /// Falls off the end or returns.
    ret: bool,
    /// A stop some path reaches (the first one in rule order).
    hit: Option<Hit>,
    /// An unmodelled action some path reaches.
    opaque: Option<String>,
    /// The first unmodelled match that splits the paths.
    maybe: Option<String>,
}

impl Possible {
    fn union(mut self, other: Possible) -> Possible {
        self.accept |= other.accept;
        self.ret |= other.ret;
        self.hit = self.hit.or(other.hit);
        self.opaque = self.opaque.or(other.opaque);
        self.maybe = self.maybe.or(other.maybe);
        self
    }
}

/// Jumps deeper than this are not followed (the kernel's own limit is 16).
const MAX_DEPTH: usize = 16;

struct Walker<'a> {
    chains: HashMap<(&'a str, &'a str), &'a Chain>,
    pkt: &'a Packet,
    before_conntrack: bool,
    memo: HashMap<(&'a str, &'a str), Possible>,
}

impl<'a> Walker<'a> {
    fn chain(&mut self, chain: &'a Chain, depth: usize) -> Possible {
        let key = (chain.table.as_str(), chain.name.as_str());
        if let Some(p) = self.memo.get(&key) {
            return p.clone();
        }
        let mut acc = Possible {
            ret: true,
            ..Default::default()
        };
        for rule in chain.rules.iter().rev() {
            let (matched, action, _) = run_rule(rule, self.pkt, self.before_conntrack, false);
            if matched == Tri::No {
                continue;
            }
            // Words only for a rule that decides something or splits the paths.
            let (matched, action, text) = match (&matched, &action) {
                (Tri::Yes, Action::Continue | Action::Accept | Action::Return) => {
                    (matched, action, String::new())
                }
                _ => run_rule(rule, self.pkt, self.before_conntrack, true),
            };
            let then = match action {
                Action::Continue => acc.clone(),
                Action::Accept => Possible {
                    accept: true,
                    ..Default::default()
                },
                Action::Stop(stop) => Possible {
                    hit: Some(Hit {
                        stop,
                        rule: Some(format!("{text} (in chain {})", chain.name)),
                    }),
                    ..Default::default()
                },
                Action::Return => Possible {
                    ret: true,
                    ..Default::default()
                },
                Action::Jump(ref to) | Action::Goto(ref to) => {
                    let target = self
                        .chains
                        .get(&(chain.table.as_str(), to.as_str()))
                        .copied();
                    let sub = match target {
                        Some(t) if depth < MAX_DEPTH => self.chain(t, depth + 1),
                        _ => Possible {
                            opaque: Some(format!("{text}: chain {to} not followed")),
                            ..Default::default()
                        },
                    };
                    if matches!(action, Action::Jump(_)) && sub.ret {
                        Possible { ret: false, ..sub }.union(acc.clone())
                    } else {
                        sub
                    }
                }
                Action::Opaque(why) => Possible {
                    opaque: Some(format!("{text}: {why}")),
                    ..Default::default()
                },
            };
            acc = match matched {
                Tri::Yes => then,
                Tri::Maybe(why) => {
                    let mut p = then.union(acc);
                    p.maybe = Some(format!("{text}: {why}"));
                    p
                }
                Tri::No => unreachable!(),
            };
        }
        self.memo.insert(key, acc.clone());
        acc
    }
}

/// What one base chain does with `pkt`.
fn base_verdict(ruleset: &Foreign, chain: &Chain, pkt: &Packet, before_conntrack: bool) -> Verdict {
    let mut walker = Walker {
        chains: ruleset
            .chains
            .iter()
            .map(|c| ((c.table.as_str(), c.name.as_str()), c))
            .collect(),
        pkt,
        before_conntrack,
        memo: HashMap::new(),
    };
    let mut p = walker.chain(chain, 0);
    let base = chain.base.as_ref();
    if p.ret {
        p.ret = false;
        if base.is_some_and(|b| b.policy_drop) {
            p = p.union(Possible {
                hit: Some(Hit {
                    stop: Stop::Policy,
                    rule: None,
                }),
                ..Default::default()
            });
        } else {
            p.accept = true;
        }
    }
    let table = chain.table.clone();
    let name = chain.name.clone();
    match (&p.hit, &p.opaque) {
        (Some(hit), None) if !p.accept => Verdict::Drops {
            table,
            chain: name,
            rule: hit.rule.clone(),
            stop: hit.stop,
        },
        (None, None) => Verdict::Passes,
        (hit, opaque) => Verdict::MayDrop {
            table,
            chain: name,
            why: match (hit, opaque, &p.maybe) {
                (Some(h), _, Some(m)) => format!(
                    "{} unless {m}",
                    h.rule.clone().unwrap_or_else(|| "its policy drop".into())
                ),
                (Some(h), _, None) => h.rule.clone().unwrap_or_else(|| "its policy drop".into()),
                (None, Some(o), _) => o.clone(),
                (None, None, _) => unreachable!(),
            },
            stop: hit.as_ref().map(|h| h.stop),
        },
    }
}

/// The flow of one grant from one allowed network.
#[derive(Debug, Clone)]
pub struct Flow {
    /// The grant's interface.
    pub iface: String,
    /// Its ifindex, when known.
    pub ifindex: Option<u32>,
    /// The allowed network the client is in.
    pub src: Ipv4Network,
    /// The address and port clients connect to.
    pub listen: (Ipv4Addr, u16),
    /// The target after DNAT.
    pub to: (Ipv4Addr, u16),
    /// IP protocol number.
    pub proto: u8,
}

/// The stages of the flow: (hook, which packet) and the packet each base chain sees.
fn packet_at(
    flow: &Flow,
    hook: Hook,
    priority: i32,
    first: bool,
    after_dnat: bool,
) -> Option<Packet> {
    let iface = Some((flow.iface.clone(), flow.ifindex));
    let client = addr_bytes(flow.src);
    let base = Packet {
        iif: None,
        oif: None,
        saddr: client.clone(),
        daddr: known(&flow.listen.0.octets()),
        proto: flow.proto,
        sport: None,
        dport: Some(flow.listen.1),
        tracked: true,
        first,
        reply: false,
        dnat: !first || after_dnat,
        orig_src: client.clone(),
        orig_dst: flow.listen.0,
        orig_dport: flow.listen.1,
        reply_src: flow.to.0,
        reply_sport: flow.to.1,
    };
    match hook {
        Hook::Prerouting | Hook::Input => {
            let to = after_dnat || hook == Hook::Input;
            Some(Packet {
                iif: iface,
                daddr: known(&if to { flow.to.0 } else { flow.listen.0 }.octets()),
                dport: Some(if to { flow.to.1 } else { flow.listen.1 }),
                tracked: hook == Hook::Input || priority > PRIORITY_CONNTRACK,
                dnat: base.dnat || to,
                ..base
            })
        }
        Hook::Output | Hook::Postrouting if !first => {
            let translated = hook == Hook::Postrouting && after_dnat;
            let (src, sport) = if translated { flow.listen } else { flow.to };
            Some(Packet {
                oif: iface,
                saddr: known(&src.octets()),
                daddr: client,
                sport: Some(sport),
                dport: None,
                reply: true,
                dnat: true,
                ..base
            })
        }
        _ => None,
    }
}

/// What the other tables' base chains do with `flow`: the first chain, in hook and
/// priority order, that drops it, else the first that may, else [`Verdict::Passes`].
pub fn evaluate(ruleset: &Foreign, flow: &Flow) -> Verdict {
    let mut bases: Vec<&Chain> = ruleset.chains.iter().filter(|c| c.base.is_some()).collect();
    bases.sort_by_key(|c| {
        let b = c.base.as_ref().expect("filtered to base chains");
        (b.hook, b.priority)
    });
    let mut maybe = None;
    // The first packet, then the later ones, then the replies.
    for (first, hooks) in [
        (true, &[Hook::Prerouting, Hook::Input][..]),
        (
            false,
            &[
                Hook::Prerouting,
                Hook::Input,
                Hook::Output,
                Hook::Postrouting,
            ][..],
        ),
    ] {
        for chain in &bases {
            let b = chain.base.as_ref().expect("filtered to base chains");
            if !hooks.contains(&b.hook) || (b.nat && !first) {
                continue;
            }
            let edge = match b.hook {
                Hook::Prerouting => PRIORITY_DSTNAT,
                Hook::Postrouting => PRIORITY_SRCNAT,
                _ => i32::MIN,
            };
            // At the very priority of the translation, the order is not fixed: both.
            let sides: &[bool] = match b.priority.cmp(&edge) {
                std::cmp::Ordering::Less => &[false],
                std::cmp::Ordering::Equal => &[false, true],
                std::cmp::Ordering::Greater => &[true],
            };
            for &after in sides {
                let Some(pkt) = packet_at(flow, b.hook, b.priority, first, after) else {
                    continue;
                };
                let before_conntrack =
                    b.hook == Hook::Prerouting && b.priority <= PRIORITY_CONNTRACK;
                match base_verdict(ruleset, chain, &pkt, before_conntrack) {
                    Verdict::Passes => {}
                    d @ Verdict::Drops { .. } => return d,
                    m @ Verdict::MayDrop { .. } => {
                        maybe.get_or_insert(m);
                    }
                }
            }
        }
    }
    if let Some(m) = maybe {
        return m;
    }
    if let Some((table, chain, why)) = ruleset.unjudged.first() {
        return Verdict::MayDrop {
            table: table.clone(),
            chain: chain.clone(),
            why: why.clone(),
            stop: None,
        };
    }
    if let Some(why) = ruleset.unreadable.first() {
        return Verdict::MayDrop {
            table: "iptables-legacy".into(),
            chain: "INPUT".into(),
            why: why.clone(),
            stop: None,
        };
    }
    Verdict::Passes
}

/// The flows of `grant`: one per allowed network.
pub fn flows(grant: &Grant, ifindex: Option<u32>) -> Vec<Flow> {
    grant
        .allow
        .iter()
        .map(|net| Flow {
            iface: grant.iface.clone(),
            ifindex,
            src: *net,
            listen: (grant.listen, grant.port),
            to: (*grant.to.ip(), grant.to.port()),
            proto: grant.proto.number(),
        })
        .collect()
}

/// The lines that would let the flow through, for nft, ufw and firewalld.
fn remedies(grant: &Grant, table: &str, chain: &str) -> String {
    let (p, to) = (grant.proto, grant.to);
    let nft = if table.starts_with("iptables-legacy") {
        format!(
            "iptables-legacy -I INPUT -i {} -d {} -p {p} --dport {} -m conntrack --ctstate DNAT -j ACCEPT",
            grant.iface,
            to.ip(),
            to.port()
        )
    } else {
        format!(
            "nft insert rule {table} {chain} iifname \"{}\" ip daddr {} {p} dport {} ct status dnat accept",
            grant.iface,
            to.ip(),
            to.port()
        )
    };
    format!(
        "to let it through: `{nft}`; with ufw: `ufw allow in on {} to {} port {} proto {p}` (an input rule, not `ufw route`); with firewalld: `firewall-cmd --zone=trusted --add-interface={}` or a rich rule accepting {p} port {} on that interface's zone",
        grant.iface,
        to.ip(),
        to.port(),
        grant.iface,
        to.port()
    )
}

/// The findings for `grants` against the other firewalls of the host: for each grant,
/// the first stop on its flow (see [`evaluate`]), as `firewall-drops`,
/// `firewall-may-drop` or `notrack` (warnings), and the iptables-legacy tables that are
/// loaded, as info, when they stop nothing seen.
pub fn findings(
    foreign: &Foreign,
    grants: &[Grant],
    ifindexes: &std::collections::BTreeMap<String, u32>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for g in grants {
        let flows = flows(g, ifindexes.get(&g.iface).copied());
        // From any source first: a known source only prunes paths, so what passes from
        // any source passes from each allowed network, and large allow lists cost one
        // evaluation in the common case.
        let any = flows.first().map(|f| Flow {
            src: Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0 is valid"),
            ..f.clone()
        });
        if any.is_none_or(|f| evaluate(foreign, &f) == Verdict::Passes) {
            continue;
        }
        let verdict = flows
            .iter()
            .map(|f| evaluate(foreign, f))
            .find(|v| *v != Verdict::Passes)
            .unwrap_or(Verdict::Passes);
        let flow = format!(
            "{}:{}/{} on {} (DNATed to {})",
            g.listen, g.port, g.proto, g.iface, g.to
        );
        let finding = match verdict {
            Verdict::Passes => continue,
            Verdict::Drops {
                table,
                chain,
                rule,
                stop,
            } => {
                let by = match rule {
                    Some(r) => format!("{r} ({})", stop.words()),
                    None => "its policy drop".to_string(),
                };
                let (code, what) = match stop {
                    Stop::Notrack => (
                        Code::Notrack,
                        "marks it untracked before conntrack, so loopgate's DNAT never happens and the client gets no answer",
                    ),
                    _ => (
                        Code::FirewallDrops,
                        "drops it: loopgate's accept cannot override another table's drop, and the client times out",
                    ),
                };
                Finding {
                    severity: Severity::Warning,
                    code,
                    interface: Some(g.iface.clone()),
                    message: format!(
                        "grant {} ({flow}) cannot work: table {table} chain {chain} {what}; decided by {by}; {}",
                        g.name,
                        remedies(g, &table, &chain)
                    ),
                }
            }
            Verdict::MayDrop {
                table,
                chain,
                why,
                stop,
            } => Finding {
                severity: Severity::Warning,
                code: if stop == Some(Stop::Notrack) {
                    Code::Notrack
                } else {
                    Code::FirewallMayDrop
                },
                interface: Some(g.iface.clone()),
                message: format!(
                    "grant {} ({flow}) may not work: table {table} chain {chain} may {} it: {why}; if it does, {}",
                    g.name,
                    if stop == Some(Stop::Notrack) {
                        "mark untracked (no DNAT)"
                    } else {
                        "drop"
                    },
                    remedies(g, &table, &chain)
                ),
            },
        };
        out.push(finding);
    }
    if !foreign.legacy_tables.is_empty() && !grants.is_empty() {
        let input = foreign
            .chains
            .iter()
            .find(|c| c.table == "iptables-legacy filter" && c.name == "INPUT")
            .and_then(|c| c.base.as_ref())
            .map_or("INPUT not read".to_string(), |b| {
                format!(
                    "INPUT policy {}",
                    if b.policy_drop { "DROP" } else { "ACCEPT" }
                )
            });
        out.push(Finding {
            severity: Severity::Info,
            code: Code::IptablesLegacy,
            interface: None,
            message: format!(
                "iptables-legacy tables are loaded: {} ({input}); nft does not list them, audit read them through the legacy interface",
                foreign.legacy_tables.join(", ")
            ),
        });
    }
    out
}

/// The warnings `expose` prints: the findings' messages.
pub fn warnings(
    foreign: &Foreign,
    grants: &[Grant],
    ifindexes: &std::collections::BTreeMap<String, u32>,
) -> Vec<String> {
    findings(foreign, grants, ifindexes)
        .into_iter()
        .filter(|f| f.severity >= Severity::Warning)
        .map(|f| f.message)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::firewall::BaseHook;

    // Builders for the expressions nft generates (as `nft --debug=netlink` shows).
    fn meta(key: u32) -> Expr {
        Expr::Meta { key, dreg: 1 }
    }
    fn cmp(op: u32, data: &[u8]) -> Expr {
        Expr::Cmp {
            sreg: 1,
            op,
            data: data.to_vec(),
        }
    }
    fn iifname(name: &str) -> Vec<Expr> {
        let mut b = [0u8; 16];
        b[..name.len()].copy_from_slice(name.as_bytes());
        vec![meta(6), cmp(0, &b)]
    }
    fn iifname_neq(name: &str) -> Vec<Expr> {
        let mut b = [0u8; 16];
        b[..name.len()].copy_from_slice(name.as_bytes());
        vec![meta(6), cmp(1, &b)]
    }
    fn saddr(net: &str) -> Vec<Expr> {
        let net: Ipv4Network = net.parse().unwrap();
        vec![
            Expr::Payload {
                base: 1,
                offset: 12,
                len: 4,
                dreg: 1,
            },
            Expr::Bitwise {
                sreg: 1,
                dreg: 1,
                mask: net.mask().octets().to_vec(),
                xor: vec![0; 4],
            },
            cmp(0, &net.network().octets()),
        ]
    }
    fn daddr(a: [u8; 4]) -> Vec<Expr> {
        vec![
            Expr::Payload {
                base: 1,
                offset: 16,
                len: 4,
                dreg: 1,
            },
            cmp(0, &a),
        ]
    }
    fn dport(proto: u8, port: u16) -> Vec<Expr> {
        vec![
            meta(16),
            cmp(0, &[proto]),
            Expr::Payload {
                base: 2,
                offset: 2,
                len: 2,
                dreg: 1,
            },
            cmp(0, &port.to_be_bytes()),
        ]
    }
    /// `ct state STATES` (bits: established 2, related 4, new 8, invalid 1).
    fn ct_state(bits: u32) -> Vec<Expr> {
        vec![
            Expr::Ct {
                key: 0,
                dir: None,
                dreg: 1,
            },
            Expr::Bitwise {
                sreg: 1,
                dreg: 1,
                mask: bits.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            },
            cmp(1, &0u32.to_ne_bytes()),
        ]
    }
    fn ct_status_dnat() -> Vec<Expr> {
        vec![
            Expr::Ct {
                key: 2,
                dir: None,
                dreg: 1,
            },
            Expr::Bitwise {
                sreg: 1,
                dreg: 1,
                mask: 0x20u32.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            },
            cmp(1, &0u32.to_ne_bytes()),
        ]
    }
    fn mark(m: u32) -> Vec<Expr> {
        vec![meta(3), cmp(0, &m.to_ne_bytes())]
    }
    fn v(j: Jump) -> Vec<Expr> {
        vec![Expr::Verdict(j)]
    }
    fn rule(handle: u64, parts: Vec<Vec<Expr>>) -> Rule {
        Rule {
            handle,
            exprs: parts.into_iter().flatten().collect(),
        }
    }
    fn base(
        table: &str,
        name: &str,
        hook: Hook,
        priority: i32,
        policy_drop: bool,
        rules: Vec<Rule>,
    ) -> Chain {
        Chain {
            table: table.into(),
            name: name.into(),
            base: Some(BaseHook {
                hook,
                priority,
                policy_drop,
                nat: false,
            }),
            rules,
        }
    }
    fn regular(table: &str, name: &str, rules: Vec<Rule>) -> Chain {
        Chain {
            table: table.into(),
            name: name.into(),
            base: None,
            rules,
        }
    }
    fn input(policy_drop: bool, rules: Vec<Rule>) -> Chain {
        base("inet filter", "input", Hook::Input, 0, policy_drop, rules)
    }
    fn flow() -> Flow {
        Flow {
            iface: "br0".into(),
            ifindex: Some(5),
            src: "192.0.2.0/25".parse().unwrap(),
            listen: (Ipv4Addr::new(192, 0, 2, 1), 3306),
            to: (Ipv4Addr::LOCALHOST, 3306),
            proto: 6,
        }
    }

    /// What the evaluator says, in short: "passes", "drops CHAIN STOP", "may CHAIN".
    fn said(chains: Vec<Chain>) -> String {
        let foreign = Foreign {
            chains,
            ..Default::default()
        };
        match evaluate(&foreign, &flow()) {
            Verdict::Passes => "passes".into(),
            Verdict::Drops { chain, stop, .. } => format!("drops {chain} {}", stop.words()),
            Verdict::MayDrop { chain, stop, .. } => format!(
                "may {chain}{}",
                stop.map(|s| format!(" {}", s.words())).unwrap_or_default()
            ),
        }
    }

    #[test]
    fn the_evaluator_follows_the_flow_through_foreign_chains() {
        use Jump::{Accept, Drop, Goto, Return};
        let est = || rule(1, vec![ct_state(2 | 4), v(Accept)]);
        let suggested = || {
            rule(
                9,
                vec![
                    iifname("br0"),
                    daddr([127, 0, 0, 1]),
                    dport(6, 3306),
                    ct_status_dnat(),
                    v(Accept),
                ],
            )
        };
        let cases: Vec<(&str, Vec<Chain>, &str)> = vec![
            ("no foreign chains", vec![], "passes"),
            (
                "policy accept, no rules",
                vec![input(false, vec![])],
                "passes",
            ),
            (
                "policy drop",
                vec![input(true, vec![])],
                "drops input policy drop",
            ),
            (
                "policy drop, established accepted: the first packet still dropped",
                vec![input(true, vec![est()])],
                "drops input policy drop",
            ),
            (
                "policy drop with the suggested accept",
                vec![input(true, vec![est(), suggested()])],
                "passes",
            ),
            (
                "accept only the first packet: later ones dropped",
                vec![input(true, vec![rule(1, vec![ct_state(8), v(Accept)])])],
                "drops input policy drop",
            ),
            (
                "accept on another interface",
                vec![input(true, vec![rule(2, vec![iifname("eth0"), v(Accept)])])],
                "drops input policy drop",
            ),
            (
                "accept by a wildcard interface",
                vec![input(
                    true,
                    vec![rule(2, vec![vec![meta(6), cmp(0, b"br")], v(Accept)])],
                )],
                "passes",
            ),
            (
                "drop of everything but br0",
                vec![input(
                    false,
                    vec![rule(2, vec![iifname_neq("br0"), v(Drop)])],
                )],
                "passes",
            ),
            (
                "reject on the target port",
                vec![input(
                    false,
                    vec![rule(3, vec![dport(6, 3306), vec![Expr::Reject]])],
                )],
                "drops input reject",
            ),
            (
                "reject on the udp port only",
                vec![input(
                    false,
                    vec![rule(3, vec![dport(17, 3306), vec![Expr::Reject]])],
                )],
                "passes",
            ),
            (
                "drop of the listen port at input: after DNAT the port is the target's",
                vec![input(
                    false,
                    vec![rule(3, vec![daddr([192, 0, 2, 1]), v(Drop)])],
                )],
                "passes",
            ),
            (
                "drop of the listen address in filter prerouting before DNAT",
                vec![base(
                    "ip pre",
                    "pre",
                    Hook::Prerouting,
                    -150,
                    false,
                    vec![rule(3, vec![daddr([192, 0, 2, 1]), v(Drop)])],
                )],
                "drops pre drop",
            ),
            (
                "the same drop after DNAT does not match",
                vec![base(
                    "ip pre",
                    "pre",
                    Hook::Prerouting,
                    0,
                    false,
                    vec![rule(3, vec![daddr([192, 0, 2, 1]), v(Drop)])],
                )],
                "passes",
            ),
            (
                "drop of another source network",
                vec![input(
                    false,
                    vec![rule(4, vec![saddr("10.0.0.0/8"), v(Drop)])],
                )],
                "passes",
            ),
            (
                "drop of the whole allowed network",
                vec![input(
                    false,
                    vec![rule(4, vec![saddr("192.0.2.0/24"), v(Drop)])],
                )],
                "drops input drop",
            ),
            (
                "drop of part of the allowed network",
                vec![input(
                    false,
                    vec![rule(4, vec![saddr("192.0.2.64/26"), v(Drop)])],
                )],
                "may input drop",
            ),
            (
                "unmodelled match before a drop",
                vec![input(false, vec![rule(5, vec![mark(1), v(Drop)])])],
                "may input drop",
            ),
            (
                "unmodelled match before the accept of a drop chain",
                vec![input(true, vec![rule(5, vec![mark(1), v(Accept)])])],
                "may input policy drop",
            ),
            (
                "a set lookup accepting",
                vec![input(
                    true,
                    vec![rule(
                        6,
                        vec![
                            vec![
                                meta(16),
                                cmp(0, &[6]),
                                Expr::Payload {
                                    base: 2,
                                    offset: 2,
                                    len: 2,
                                    dreg: 1,
                                },
                                Expr::Lookup {
                                    set: "__set0".into(),
                                    verdict_map: false,
                                },
                            ],
                            v(Accept),
                        ],
                    )],
                )],
                "may input policy drop",
            ),
            (
                "a verdict map",
                vec![input(
                    false,
                    vec![rule(
                        6,
                        vec![vec![
                            meta(6),
                            Expr::Lookup {
                                set: "zones".into(),
                                verdict_map: true,
                            },
                        ]],
                    )],
                )],
                "may input",
            ),
            (
                "an unmodelled expression (xt match) with drop",
                vec![input(
                    false,
                    vec![rule(
                        7,
                        vec![vec![Expr::Unknown("match state".into())], v(Drop)],
                    )],
                )],
                "may input drop",
            ),
            (
                "jump to a chain that drops",
                vec![
                    input(false, vec![rule(1, vec![v(Jump::Jump("d".into()))])]),
                    regular(
                        "inet filter",
                        "d",
                        vec![rule(2, vec![dport(6, 3306), v(Drop)])],
                    ),
                ],
                "drops input drop",
            ),
            (
                "jump to a chain that returns, then policy drop",
                vec![
                    input(true, vec![rule(1, vec![v(Jump::Jump("r".into()))])]),
                    regular("inet filter", "r", vec![rule(2, vec![v(Return)])]),
                ],
                "drops input policy drop",
            ),
            (
                "jump to a chain that accepts",
                vec![
                    input(
                        true,
                        vec![rule(1, vec![iifname("br0"), v(Goto("a".into()))])],
                    ),
                    regular("inet filter", "a", vec![rule(2, vec![v(Accept)])]),
                ],
                "passes",
            ),
            (
                "an accept in one table does not save it from another table's drop",
                vec![
                    input(false, vec![rule(1, vec![v(Accept)])]),
                    base("ip other", "in", Hook::Input, 10, true, vec![]),
                ],
                "drops in policy drop",
            ),
            (
                "ct state invalid drop before conntrack: untracked packets are invalid",
                vec![base(
                    "ip raw",
                    "pre",
                    Hook::Prerouting,
                    -300,
                    false,
                    vec![rule(1, vec![ct_state(1), v(Drop)])],
                )],
                "drops pre drop",
            ),
            (
                "ct state invalid drop after conntrack",
                vec![input(false, vec![rule(1, vec![ct_state(1), v(Drop)])])],
                "passes",
            ),
            (
                "notrack of the flow in raw prerouting",
                vec![base(
                    "ip raw",
                    "pre",
                    Hook::Prerouting,
                    -300,
                    false,
                    vec![rule(1, vec![iifname("br0"), vec![Expr::Notrack]])],
                )],
                "drops pre notrack",
            ),
            (
                "notrack of udp only",
                vec![base(
                    "ip raw",
                    "pre",
                    Hook::Prerouting,
                    -300,
                    false,
                    vec![rule(1, vec![dport(17, 53), vec![Expr::Notrack]])],
                )],
                "passes",
            ),
            (
                "notrack after conntrack does nothing",
                vec![base(
                    "ip raw",
                    "pre",
                    Hook::Prerouting,
                    -150,
                    false,
                    vec![rule(1, vec![vec![Expr::Notrack]])],
                )],
                "passes",
            ),
            (
                "notrack under an unmodelled match",
                vec![base(
                    "ip raw",
                    "pre",
                    Hook::Prerouting,
                    -300,
                    false,
                    vec![rule(1, vec![mark(7), vec![Expr::Notrack]])],
                )],
                "may pre notrack",
            ),
            (
                "replies dropped at output",
                vec![base("inet filter", "output", Hook::Output, 0, true, vec![])],
                "drops output policy drop",
            ),
            (
                "replies accepted as established",
                vec![base(
                    "inet filter",
                    "output",
                    Hook::Output,
                    0,
                    true,
                    vec![est()],
                )],
                "passes",
            ),
            (
                "forward is not on the path",
                vec![base(
                    "inet filter",
                    "forward",
                    Hook::Forward,
                    0,
                    true,
                    vec![],
                )],
                "passes",
            ),
            (
                "a nat chain with policy accept",
                vec![Chain {
                    base: Some(BaseHook {
                        hook: Hook::Input,
                        priority: 100,
                        policy_drop: false,
                        nat: true,
                    }),
                    ..regular("ip nat", "in", vec![])
                }],
                "passes",
            ),
            (
                "counter and log change nothing",
                vec![input(
                    true,
                    vec![rule(
                        1,
                        vec![
                            vec![
                                Expr::Statement("counter".into()),
                                Expr::Statement("log".into()),
                            ],
                            v(Accept),
                        ],
                    )],
                )],
                "passes",
            ),
        ];
        for (name, chains, want) in cases {
            assert_eq!(said(chains), want, "{name}");
        }
    }

    #[test]
    fn findings_name_table_chain_rule_and_the_remedy() {
        let g = Grant {
            name: "mysql".into(),
            iface: "br0".into(),
            proto: crate::grant::Proto::Tcp,
            listen: Ipv4Addr::new(192, 0, 2, 1),
            port: 3306,
            to: "127.0.0.1:3306".parse().unwrap(),
            allow: vec!["192.0.2.0/25".parse().unwrap()],
        };
        let ix = std::collections::BTreeMap::new();
        let foreign = |chains| Foreign {
            chains,
            ..Default::default()
        };
        let f = findings(
            &foreign(vec![input(true, vec![])]),
            std::slice::from_ref(&g),
            &ix,
        );
        assert_eq!(
            (f[0].code.as_str(), f[0].severity),
            ("firewall-drops", Severity::Warning)
        );
        let m = &f[0].message;
        assert!(
            m.contains("table inet filter chain input") && m.contains("policy drop"),
            "{m}"
        );
        assert!(
            m.contains("nft insert rule inet filter input iifname \"br0\" ip daddr 127.0.0.1 tcp dport 3306 ct status dnat accept"),
            "{m}"
        );
        assert!(m.contains("ufw") && m.contains("firewall-cmd"), "{m}");
        let reject = input(
            false,
            vec![rule(12, vec![dport(6, 3306), vec![Expr::Reject]])],
        );
        let f = findings(&foreign(vec![reject]), std::slice::from_ref(&g), &ix);
        assert!(
            f[0].message.contains("rule handle 12") && f[0].message.contains("th dport == 3306"),
            "{}",
            f[0].message
        );
        let raw = base(
            "ip raw",
            "prerouting",
            Hook::Prerouting,
            -300,
            false,
            vec![rule(3, vec![vec![Expr::Notrack]])],
        );
        let f = findings(&foreign(vec![raw]), std::slice::from_ref(&g), &ix);
        assert_eq!(f[0].code, "notrack");
        let odd = input(false, vec![rule(5, vec![mark(1), v(Jump::Drop)])]);
        let f = findings(&foreign(vec![odd]), std::slice::from_ref(&g), &ix);
        assert_eq!(f[0].code, "firewall-may-drop");
        assert!(
            f[0].message.contains("may drop") && f[0].message.contains("meta mark"),
            "{}",
            f[0].message
        );
        assert!(findings(&foreign(vec![]), &[g], &ix).is_empty());
    }
}
