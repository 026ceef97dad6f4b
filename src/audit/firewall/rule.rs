//! What one rule does to a packet: its expressions run over a register file of
//! partly known bytes, giving whether it matches (yes, no, or "maybe", and why) and
//! how it ends. One rule at a time; following jumps is [`super::walk`]'s.

use super::packet::{ifname, known, unknown, Byte, Mark, Packet, Tri};
use super::Stop;
use crate::kernel::firewall::{Expr, Jump, Member, Rule};
use std::net::Ipv4Addr;

/// The register file: 16 32-bit registers, byte by byte, each load labelled.
pub(super) struct Regs {
    pub(super) bytes: [Byte; 64],
    pub(super) labels: [Option<&'static str>; 64],
}

/// The byte offset of register `reg` in the register file.
pub(super) fn reg_offset(reg: u32) -> Option<usize> {
    match reg {
        1..=4 => Some((reg as usize - 1) * 16),
        8..=23 => Some((reg as usize - 8) * 4),
        _ => None,
    }
}

impl Regs {
    pub(super) fn new() -> Regs {
        Regs {
            bytes: [Byte::default(); 64],
            labels: [None; 64],
        }
    }

    pub(super) fn write(&mut self, reg: u32, data: &[Byte], label: &'static str) {
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

    pub(super) fn read(&self, reg: u32, len: usize) -> (Vec<Byte>, &'static str) {
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
pub(super) fn equal(value: &[Byte], data: &[u8]) -> Option<bool> {
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
pub(super) fn order(value: &[Byte], data: &[u8]) -> Option<std::cmp::Ordering> {
    if value.iter().any(|b| b.known != 0xff) {
        return None;
    }
    let v: Vec<u8> = value.iter().map(|b| b.value).collect();
    Some(v.as_slice().cmp(data))
}

/// The value a compare shows a person: an interface name, an address, a number.
pub(super) fn shown(label: &str, data: &[u8]) -> String {
    match (label, data.len()) {
        ("iifname" | "oifname", _) => {
            let name: Vec<u8> = data.iter().copied().take_while(|b| *b != 0).collect();
            let wildcard = if data.last() != Some(&0) { "*" } else { "" };
            format!("\"{}{wildcard}\"", String::from_utf8_lossy(&name))
        }
        (_, 4) if label.contains("addr") => {
            Ipv4Addr::new(data[0], data[1], data[2], data[3]).to_string()
        }
        // nft loads only the prefix's bytes for a whole-byte prefix (`ip saddr
        // 198.51.100.0/24`).
        (_, 1..=3) if label.contains("addr") => {
            let mut a = [0u8; 4];
            a[..data.len()].copy_from_slice(data);
            format!("{}/{}", Ipv4Addr::from(a), data.len() * 8)
        }
        (_, 2) if label.contains("port") || label.contains("proto-") => {
            u16::from_be_bytes([data[0], data[1]]).to_string()
        }
        ("meta mark", 4) => format!(
            "0x{:x}",
            u32::from_ne_bytes([data[0], data[1], data[2], data[3]])
        ),
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

/// The tail of a compare (`cmp` or `range`): its text joins the rule's words, and its
/// truth folds into the rule's match. `false` when the rule cannot match; an unknown
/// truth makes a matching rule a [`Tri::Maybe`], naming the first such compare.
fn compared(truth: Option<bool>, text: String, matched: &mut Tri, words: &mut Vec<String>) -> bool {
    let fits = match truth {
        Some(true) => true,
        Some(false) => false,
        None => {
            if *matched == Tri::Yes {
                *matched = Tri::Maybe(format!("`{text}` (not known for the flow)"));
            }
            true
        }
    };
    words.push(text);
    fits
}

/// The action of a verdict.
fn jump_action(j: &Jump) -> Action {
    match j {
        Jump::Accept => Action::Accept,
        Jump::Drop => Action::Stop(Stop::Drop),
        Jump::Continue => Action::Continue,
        Jump::Return => Action::Return,
        Jump::Jump(c) => Action::Jump(c.clone()),
        Jump::Goto(c) => Action::Goto(c.clone()),
    }
}

/// The lowest and highest value a partly known key can have (memcmp order).
pub(super) fn bounds(value: &[Byte]) -> (Vec<u8>, Vec<u8>) {
    (
        value.iter().map(|b| b.value & b.known).collect(),
        value.iter().map(|b| b.value | !b.known).collect(),
    )
}

/// Whether a key between `lo` and `hi` (see [`bounds`]) is inside `m` (`None`: it
/// depends on the unknown bits). A concatenation (`by_word`) is compared word by word,
/// as the kernel matches the intervals of each field; anything else as one
/// memcmp-ordered key.
pub(super) fn contains((lo, hi): (&[u8], &[u8]), m: &Member, by_word: bool) -> Option<bool> {
    let inside = |lo: &[u8], hi: &[u8], from: &[u8], to: &[u8]| -> Option<bool> {
        if from <= lo && hi <= to {
            Some(true)
        } else if hi < from || lo > to {
            Some(false)
        } else {
            None
        }
    };
    if !by_word {
        return inside(lo, hi, &m.from, &m.to);
    }
    let mut all = Some(true);
    for (((l, h), f), t) in lo
        .chunks(4)
        .zip(hi.chunks(4))
        .zip(m.from.chunks(4))
        .zip(m.to.chunks(4))
    {
        match inside(l, h, f, t) {
            Some(false) => return Some(false),
            None => all = None,
            Some(true) => {}
        }
    }
    all
}

/// `RTN_*` types by name, for messages.
fn type_names(types: u16) -> String {
    const NAMES: [&str; 12] = [
        "UNSPEC",
        "UNICAST",
        "LOCAL",
        "BROADCAST",
        "ANYCAST",
        "MULTICAST",
        "BLACKHOLE",
        "UNREACHABLE",
        "PROHIBIT",
        "THROW",
        "NAT",
        "XRESOLVE",
    ];
    NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| types & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

/// How a rule ends for the evaluator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    Continue,
    Accept,
    Stop(Stop),
    Jump(String),
    Goto(String),
    Return,
    /// One of these, depending on what is not known (a verdict map's elements the key
    /// may hit).
    Either(Vec<Action>),
    /// An action not modelled (a verdict map, `queue`, `nat`...): may do anything.
    Opaque(String),
}

/// What one rule did to a packet.
#[derive(Debug, Clone)]
pub(super) struct Ran {
    /// Whether it matches.
    pub(super) matched: Tri,
    /// How it ends when it does.
    pub(super) action: Action,
    /// A short text for messages (empty unless asked for).
    pub(super) text: String,
    /// The packet's mark at the end of the rule (where it stopped, for a rule that
    /// does not match: a mark set before a failing match stays set).
    pub(super) mark: Mark,
    /// Every mark the packet held while the rule ran, joined: what it may leave with
    /// when a match not known for the flow fails.
    pub(super) seen: Mark,
}

/// What a rule does to `pkt` holding `mark`: whether it matches, its action, and the
/// mark it leaves, with a short text for messages.
///
/// With `describe` false no text is made (the reasons of a [`Tri::Maybe`] are empty):
/// most rules do not match, and only those that decide need words.
pub(super) fn run_rule(
    rule: &Rule,
    pkt: &Packet,
    before_conntrack: bool,
    describe: bool,
    mut mark: Mark,
) -> Ran {
    let mut seen = mark;
    let no = |mark: Mark, seen: Mark| Ran {
        matched: Tri::No,
        action: Action::Continue,
        text: String::new(),
        mark,
        seen,
    };
    let mut regs = Regs::new();
    let mut matched = Tri::Yes;
    let mut words: Vec<String> = Vec::new();
    let mut action = Action::Continue;
    let say = |text: &dyn Fn() -> String| if describe { text() } else { String::new() };
    for e in &rule.exprs {
        match e {
            Expr::Meta { key: 3, dreg } => regs.write(*dreg, &mark.bytes(), "meta mark"),
            Expr::MetaSet { key: 3, sreg } => {
                mark = Mark::of(&regs.read(*sreg, 4).0);
                seen = seen.join(mark);
                words.push(say(&|| "meta mark set".to_string()));
            }
            Expr::MetaSet { .. } => {}
            Expr::RpFilter {
                loose,
                mark: with_mark,
                accept_local: _,
                invert,
            } => {
                // No input interface (output): the kernel does not allow the match there.
                let valid = match pkt.iif {
                    None => None,
                    Some(_) if *loose => pkt.route_back.loose,
                    Some(_) => pkt.route_back.strict,
                };
                let text = match describe {
                    true => format!(
                        "rpfilter{}{}{}",
                        if *loose { " --loose" } else { "" },
                        if *with_mark { " --validmark" } else { "" },
                        if *invert { " --invert" } else { "" }
                    ),
                    false => String::new(),
                };
                if !compared(valid.map(|v| v != *invert), text, &mut matched, &mut words) {
                    return no(mark, seen);
                }
            }
            Expr::FibOif {
                iif,
                present,
                name,
                dreg,
            } => {
                // What the lookup stores: the incoming interface when the route back
                // leaves through it (strict), else nothing (0) when there is none.
                let valid = match pkt.iif {
                    None => None,
                    Some(_) if *iif => pkt.route_back.strict,
                    Some(_) => pkt.route_back.loose,
                };
                let iface = pkt.iif.as_ref().filter(|_| *iif);
                let v = match (valid, present, name) {
                    (Some(v), true, _) => known(&[u8::from(v)]),
                    (Some(false), false, true) => known(&[0; 16]),
                    (Some(false), false, false) => known(&[0; 4]),
                    (Some(true), false, true) => {
                        iface.map_or_else(|| unknown(16), |i| ifname(&i.0))
                    }
                    (Some(true), false, false) => iface
                        .and_then(|i| i.1)
                        .map_or_else(|| unknown(4), |i| known(&i.to_ne_bytes())),
                    (None, _, _) => unknown(if *present {
                        1
                    } else if *name {
                        16
                    } else {
                        4
                    }),
                };
                regs.write(
                    *dreg,
                    &v,
                    if *iif {
                        "fib saddr . iif oif"
                    } else {
                        "fib saddr oif"
                    },
                );
            }
            Expr::Meta { key, dreg } => match pkt.meta(*key) {
                Some((v, l)) => regs.write(*dreg, &v, l),
                None => return no(mark, seen),
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
                None => return no(mark, seen),
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
                if !compared(truth, text, &mut matched, &mut words) {
                    return no(mark, seen);
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
                if !compared(truth, text, &mut matched, &mut words) {
                    return no(mark, seen);
                }
            }
            Expr::Lookup {
                set,
                sreg,
                invert,
                verdict_map,
                members,
            } => {
                let Some(members) = members else {
                    words.push(say(&|| format!("@{set}")));
                    if *verdict_map {
                        action = Action::Opaque(say(&|| {
                            format!("a verdict map lookup in @{set} (its elements are not read)")
                        }));
                        break;
                    }
                    if matched == Tri::Yes {
                        matched = Tri::Maybe(say(&|| {
                            format!("a lookup in set @{set} (its members are not read)")
                        }));
                    }
                    continue;
                };
                let len = members.items.first().map_or(0, |m| m.from.len());
                let (v, l) = regs.read(*sreg, len);
                let (lo, hi) = bounds(&v);
                let key = (lo.as_slice(), hi.as_slice());
                let mut hit = None;
                let mut unsure = false;
                for m in &members.items {
                    match contains(key, m, members.by_word) {
                        Some(true) => {
                            hit = Some(m);
                            break;
                        }
                        Some(false) => {}
                        None => unsure = true,
                    }
                }
                if *verdict_map {
                    words.push(say(&|| format!("{l} vmap @{set}")));
                    match hit {
                        Some(m) => {
                            action = match &m.verdict {
                                Some(j) => jump_action(j),
                                None => Action::Opaque(say(&|| {
                                    format!("an element of @{set} without a verdict")
                                })),
                            };
                            break;
                        }
                        None if !unsure => return no(mark, seen),
                        None => {
                            // Every element the key may hit, or none.
                            action = Action::Either(
                                members
                                    .items
                                    .iter()
                                    .filter(|m| contains(key, m, members.by_word).is_none())
                                    .map(|m| match &m.verdict {
                                        Some(j) => jump_action(j),
                                        None => Action::Opaque(String::new()),
                                    })
                                    .collect(),
                            );
                            if matched == Tri::Yes {
                                matched = Tri::Maybe(say(&|| {
                                    format!("`{l} vmap @{set}` (the key is not known for the flow)")
                                }));
                            }
                            break;
                        }
                    }
                }
                let truth = match (hit, unsure) {
                    (Some(_), _) => Some(true),
                    (None, false) => Some(false),
                    (None, true) => None,
                }
                .map(|t| t != *invert);
                let text = match describe {
                    true => format!("{l} {}@{set}", if *invert { "!= " } else { "" }),
                    false => String::new(),
                };
                if !compared(truth, text, &mut matched, &mut words) {
                    return no(mark, seen);
                }
            }
            Expr::AddrType {
                daddr,
                types,
                invert,
                limit_iface,
            } => {
                let truth = match pkt.addr_type(*daddr) {
                    Some(t) if !*limit_iface => Some((types >> t) & 1 != 0),
                    _ => None,
                }
                .map(|t| t != *invert);
                let text = match describe {
                    true => format!(
                        "addrtype {} {}{}",
                        if *daddr { "dst" } else { "src" },
                        if *invert { "!= " } else { "" },
                        type_names(*types)
                    ),
                    false => String::new(),
                };
                if !compared(truth, text, &mut matched, &mut words) {
                    return no(mark, seen);
                }
            }
            Expr::FibType { daddr, dreg } => {
                let v = pkt
                    .addr_type(*daddr)
                    .map_or_else(|| unknown(4), |t| known(&t.to_ne_bytes()));
                regs.write(
                    *dreg,
                    &v,
                    if *daddr {
                        "fib daddr type"
                    } else {
                        "fib saddr type"
                    },
                );
            }
            Expr::Verdict(j) => {
                action = jump_action(j);
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
            // Another tool's DNAT: an action the evaluator does not follow, as before
            // it was read (`audit::forwards` lists those to 127/8).
            Expr::Dnat(_) => {
                words.push(say(&|| "dnat".to_string()));
                action = Action::Opaque(say(&|| "`dnat` (not modelled)".to_string()));
                break;
            }
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
        Action::Either(a) => format!("one of {} verdicts", a.len()),
        Action::Opaque(w) => w.clone(),
    };
    words.push(verdict);
    let text = match describe {
        true => format!("rule handle {}: {}", rule.handle, words.join(" ")),
        false => String::new(),
    };
    Ran {
        matched,
        action,
        text,
        mark,
        seen,
    }
}
