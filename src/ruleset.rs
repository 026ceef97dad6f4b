//! The desired nftables table as a plain value that prints as nft syntax.
//!
//! `plan` builds a [`Ruleset`]; `kernel::nft` encodes the same value into one netlink
//! batch. Keeping the value independent of netlink lets `--dry-run`, `plan`, golden-file
//! tests and the kernel encoding all agree on one description of the rules.
//!
//! Besides plain rules the value has verdict maps: a key built from packet fields
//! (`iifname . ip daddr . meta l4proto . th dport`) looked up in one hash step that
//! jumps to the chain of the matching element. That is what keeps the per-packet cost
//! flat however many interfaces and grants a host has.

use crate::cidr::{self, Range};
use crate::grant::Proto;
use ipnetwork::Ipv4Network;
use std::fmt::{self, Write};
use std::net::{Ipv4Addr, SocketAddrV4};

/// The one table loopgate owns, in the `ip` family. It never touches any other table.
pub const TABLE: &str = "loopgate";

/// loopgate's whole table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub sets: Vec<AddrSet>,
    pub maps: Vec<VerdictMap>,
    /// Base chains first (the entry points), then the chains the maps jump to.
    pub chains: Vec<Chain>,
}

/// A set of IPv4 source addresses: an interval set of ranges, or (`hosts`) a hash set
/// of single addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrSet {
    pub name: String,
    /// Single addresses only, kept in a hash set: half the elements of an interval set
    /// (no end elements) and far cheaper for the kernel to insert.
    pub hosts: bool,
    pub ranges: Vec<Range>,
}

/// A map from a concatenated packet key to `jump <chain>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictMap {
    pub name: String,
    pub key: Vec<KeyField>,
    pub elements: Vec<MapElement>,
}

/// One entry of a [`VerdictMap`]: packets whose key equals `key` jump to `jump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapElement {
    pub key: Vec<KeyValue>,
    pub jump: String,
}

/// One field of a map key, in the order the fields are concatenated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyField {
    /// `iifname` (ifname, 16 bytes)
    IifName,
    /// `oifname` (ifname, 16 bytes)
    OifName,
    /// `ip daddr` (ipv4_addr)
    Daddr,
    /// `meta l4proto` (inet_proto)
    L4Proto,
    /// `th dport` (inet_service); only meaningful next to `meta l4proto` tcp/udp.
    Dport,
}

/// A value of one [`KeyField`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyValue {
    Name(String),
    Addr(Ipv4Addr),
    Proto(Proto),
    Port(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainKind {
    Filter,
    Nat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Postrouting,
}

/// Where a base chain is attached. Its policy is always accept: loopgate only takes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attachment {
    pub kind: ChainKind,
    pub hook: Hook,
    pub priority: i32,
}

/// A chain: a base chain when `attach` is set, else a regular chain reached by `jump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub attach: Option<Attachment>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub verdict: Verdict,
    pub comment: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtDir {
    Original,
    Reply,
}

/// One condition of a rule; all must hold for the verdict to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// `iifname "X"`
    IifName(String),
    /// `oifname "X"`
    OifName(String),
    /// `ip saddr a.b.c.d/n`
    SaddrIn(Ipv4Network),
    /// `ip daddr a.b.c.d/n`
    DaddrIn(Ipv4Network),
    /// `ip daddr a.b.c.d`
    Daddr(Ipv4Addr),
    /// `ip saddr @set`
    SaddrInSet(String),
    /// `meta l4proto tcp|udp`
    L4Proto(Proto),
    /// `tcp dport N` / `udp dport N` (checks the protocol first)
    Dport(Proto, u16),
    /// `ct direction original|reply`
    CtDirection(CtDir),
    /// `ct status dnat`
    CtStatusDnat,
    /// `ct original ip daddr a.b.c.d`
    CtOriginalDaddr(Ipv4Addr),
    /// `ct original protocol tcp ct original proto-dst N`
    CtOriginalProtoDst(Proto, u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Dnat(SocketAddrV4),
    /// `KEY vmap @map`: jump to the chain the packet's key maps to; fall through when
    /// the key is not in the map.
    Vmap {
        key: Vec<KeyField>,
        map: String,
    },
}

impl ChainKind {
    pub fn name(self) -> &'static str {
        match self {
            ChainKind::Filter => "filter",
            ChainKind::Nat => "nat",
        }
    }
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Postrouting => "postrouting",
        }
    }
}

impl KeyField {
    /// The expression as written in nft syntax.
    pub fn expr(self) -> &'static str {
        match self {
            KeyField::IifName => "iifname",
            KeyField::OifName => "oifname",
            KeyField::Daddr => "ip daddr",
            KeyField::L4Proto => "meta l4proto",
            KeyField::Dport => "th dport",
        }
    }

    /// The nft datatype name used in the map's `type` line.
    pub fn type_name(self) -> &'static str {
        match self {
            KeyField::IifName | KeyField::OifName => "ifname",
            KeyField::Daddr => "ipv4_addr",
            KeyField::L4Proto => "inet_proto",
            KeyField::Dport => "inet_service",
        }
    }

    /// How many bytes the kernel loads for the field; in a concatenation each field
    /// then takes whole 4-byte registers.
    pub fn loaded_len(self) -> usize {
        match self {
            KeyField::IifName | KeyField::OifName => 16,
            KeyField::Daddr => 4,
            KeyField::L4Proto => 1,
            KeyField::Dport => 2,
        }
    }

    /// The field's length rounded up to whole 32-bit registers.
    pub fn padded_len(self) -> usize {
        self.loaded_len().div_ceil(4) * 4
    }
}

impl KeyValue {
    /// The value as the kernel compares it: network byte order, names padded with NULs
    /// to 16 bytes (an exact name, not a prefix), each field padded to 4-byte registers.
    pub fn key_bytes(&self) -> Vec<u8> {
        let mut b = match self {
            KeyValue::Name(n) => {
                let mut v = n.as_bytes().to_vec();
                v.resize(16, 0);
                v
            }
            KeyValue::Addr(a) => a.octets().to_vec(),
            KeyValue::Proto(p) => vec![p.number()],
            KeyValue::Port(p) => p.to_be_bytes().to_vec(),
        };
        b.resize(b.len().div_ceil(4) * 4, 0);
        b
    }
}

impl fmt::Display for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyValue::Name(n) => write!(f, "{n:?}"),
            KeyValue::Addr(a) => write!(f, "{a}"),
            KeyValue::Proto(p) => write!(f, "{p}"),
            KeyValue::Port(p) => write!(f, "{p}"),
        }
    }
}

impl VerdictMap {
    /// The chain that `key` jumps to, if the map holds it.
    pub fn jump_for(&self, key: &[KeyValue]) -> Option<&str> {
        self.elements
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.jump.as_str())
    }
}

/// Renders a priority the way nft accepts it: a standard name plus an offset.
fn priority_text(p: i32) -> String {
    const NAMES: [(&str, i32); 4] = [
        ("raw", -300),
        ("dstnat", -100),
        ("filter", 0),
        ("srcnat", 100),
    ];
    let (name, base) = NAMES
        .iter()
        .min_by_key(|(_, base)| (p - base).abs())
        .copied()
        .unwrap_or(("filter", 0));
    match p - base {
        0 => name.to_string(),
        d if d > 0 => format!("{name} + {d}"),
        d => format!("{name} - {}", -d),
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::IifName(n) => write!(f, "iifname {n:?}"),
            Match::OifName(n) => write!(f, "oifname {n:?}"),
            Match::SaddrIn(n) => write!(f, "ip saddr {n}"),
            Match::DaddrIn(n) => write!(f, "ip daddr {n}"),
            Match::Daddr(a) => write!(f, "ip daddr {a}"),
            Match::SaddrInSet(s) => write!(f, "ip saddr @{s}"),
            Match::L4Proto(p) => write!(f, "meta l4proto {p}"),
            Match::Dport(p, port) => write!(f, "{p} dport {port}"),
            Match::CtDirection(CtDir::Original) => f.write_str("ct direction original"),
            Match::CtDirection(CtDir::Reply) => f.write_str("ct direction reply"),
            Match::CtStatusDnat => f.write_str("ct status dnat"),
            Match::CtOriginalDaddr(a) => write!(f, "ct original ip daddr {a}"),
            Match::CtOriginalProtoDst(p, port) => {
                write!(f, "ct original protocol {p} ct original proto-dst {port}")
            }
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Dnat(to) => write!(f, "dnat to {to}"),
            Verdict::Vmap { key, map } => {
                let fields: Vec<&str> = key.iter().map(|k| k.expr()).collect();
                write!(f, "{} vmap @{map}", fields.join(" . "))
            }
        }
    }
}

impl Rule {
    /// Whether the rule carries a counter. Rules that decide count what they matched;
    /// a map lookup only dispatches (it would count every packet of the hook) and the
    /// rules it leads to count instead.
    pub fn counts(&self) -> bool {
        !matches!(self.verdict, Verdict::Vmap { .. })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.matches {
            write!(f, "{m} ")?;
        }
        if self.counts() {
            f.write_str("counter ")?;
        }
        write!(f, "{} comment {:?}", self.verdict, self.comment)
    }
}

impl Ruleset {
    /// The table in nft syntax, loadable with `nft -f`.
    pub fn to_nft(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_nft(&mut out);
        out
    }

    fn write_nft(&self, out: &mut String) -> fmt::Result {
        writeln!(out, "table ip {TABLE} {{")?;
        for set in &self.sets {
            writeln!(out, "\tset {} {{", set.name)?;
            writeln!(out, "\t\ttype ipv4_addr")?;
            match set.hosts {
                // Sized up front, as the kernel encoding does (see kernel::nft).
                true => writeln!(out, "\t\tsize {}", set.ranges.len())?,
                false => writeln!(out, "\t\tflags interval")?,
            }
            let elems: Vec<String> = set.ranges.iter().map(|r| cidr::render(*r)).collect();
            writeln!(out, "\t\telements = {{ {} }}", elems.join(", "))?;
            writeln!(out, "\t}}")?;
            writeln!(out)?;
        }
        for map in &self.maps {
            let types: Vec<&str> = map.key.iter().map(|k| k.type_name()).collect();
            writeln!(out, "\tmap {} {{", map.name)?;
            writeln!(out, "\t\ttype {} : verdict", types.join(" . "))?;
            writeln!(out, "\t\tsize {}", map.elements.len())?;
            let elems: Vec<String> = map
                .elements
                .iter()
                .map(|e| {
                    let key: Vec<String> = e.key.iter().map(|v| v.to_string()).collect();
                    format!("{} : jump {}", key.join(" . "), e.jump)
                })
                .collect();
            writeln!(out, "\t\telements = {{ {} }}", elems.join(",\n\t\t\t     "))?;
            writeln!(out, "\t}}")?;
            writeln!(out)?;
        }
        for (i, chain) in self.chains.iter().enumerate() {
            if i > 0 {
                writeln!(out)?;
            }
            writeln!(out, "\tchain {} {{", chain.name)?;
            if let Some(a) = chain.attach {
                writeln!(
                    out,
                    "\t\ttype {} hook {} priority {}; policy accept;",
                    a.kind.name(),
                    a.hook.name(),
                    priority_text(a.priority)
                )?;
            }
            for rule in &chain.rules {
                writeln!(out, "\t\t{rule}")?;
            }
            writeln!(out, "\t}}")?;
        }
        writeln!(out, "}}")
    }

    pub fn rule_count(&self) -> usize {
        self.chains.iter().map(|c| c.rules.len()).sum()
    }

    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }

    pub fn map(&self, name: &str) -> Option<&VerdictMap> {
        self.maps.iter().find(|m| m.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_render_as_standard_names() {
        assert_eq!(priority_text(-300), "raw");
        assert_eq!(priority_text(-100), "dstnat");
        assert_eq!(priority_text(0), "filter");
        assert_eq!(priority_text(110), "srcnat + 10");
        assert_eq!(priority_text(-290), "raw + 10");
    }

    #[test]
    fn key_values_are_padded_to_whole_registers() {
        assert_eq!(KeyValue::Name("br0".into()).key_bytes().len(), 16);
        assert_eq!(KeyValue::Proto(Proto::Udp).key_bytes(), vec![17, 0, 0, 0]);
        assert_eq!(KeyValue::Port(3306).key_bytes(), vec![0x0c, 0xea, 0, 0]);
        assert_eq!(
            KeyValue::Addr(Ipv4Addr::new(192, 0, 2, 1)).key_bytes(),
            vec![192, 0, 2, 1]
        );
    }
}
