//! What one rule does to a packet: its expressions run over a register file of
//! partly known bytes, giving whether it matches (yes, no, or "maybe", and why) and
//! how it ends. One rule at a time; following jumps is [`super::walk`]'s.

use super::packet::{known, unknown, Byte, Packet, Tri};
use super::Stop;
use crate::kernel::firewall::{Expr, Jump, Rule};
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

/// How a rule ends for the evaluator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
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
pub(super) fn run_rule(
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
                if !compared(truth, text, &mut matched, &mut words) {
                    return (Tri::No, Action::Continue, String::new());
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
                    return (Tri::No, Action::Continue, String::new());
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
