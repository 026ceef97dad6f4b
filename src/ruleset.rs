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
    /// The allowed-source sets (`allow_HASH`, `allow_HASH_hosts`), one per distinct allow list.
    pub sets: Vec<AddrSet>,
    /// The dispatch maps (`raw_ifaces`, `nat_grants`, ...) the base chains look up.
    pub maps: Vec<VerdictMap>,
    /// Base chains first (the entry points), then the chains the maps jump to.
    pub chains: Vec<Chain>,
}

/// A set of IPv4 source addresses: an interval set of ranges, or (`hosts`) a hash set
/// of single addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrSet {
    /// The set's name in the table, referred to as `@name` by [`Match::SaddrInSet`].
    pub name: String,
    /// Single addresses only, kept in a hash set: half the elements of an interval set
    /// (no end elements) and far cheaper for the kernel to insert.
    pub hosts: bool,
    /// The members as sorted, disjoint inclusive ranges (see [`crate::cidr`]); every
    /// range is a single address when `hosts` is set.
    pub ranges: Vec<Range>,
}

/// A map from a concatenated packet key to `jump <chain>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictMap {
    /// The map's name in the table, referred to as `@name` by [`Verdict::Vmap`].
    pub name: String,
    /// The fields of the lookup key, concatenated in this order.
    pub key: Vec<KeyField>,
    /// The entries; a key absent from them falls through to the next rule.
    pub elements: Vec<MapElement>,
}

/// One entry of a [`VerdictMap`]: packets whose key equals `key` jump to `jump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapElement {
    /// One value per field of the map's key, in the same order.
    pub key: Vec<KeyValue>,
    /// The name of a regular chain of the table.
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
    /// For `iifname` / `oifname`: an exact interface name (at most 15 bytes).
    Name(String),
    /// For `ip daddr`.
    Addr(Ipv4Addr),
    /// For `meta l4proto`.
    Proto(Proto),
    /// For `th dport`, in host order (encoded big-endian).
    Port(u16),
}

/// The type of a base chain (nft's `type filter` / `type nat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainKind {
    /// `type filter`: accepts and drops.
    Filter,
    /// `type nat`: sees the first packet of each flow only; where the DNAT happens.
    Nat,
}

/// The netfilter hook a base chain is attached to (IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Every packet arriving on an interface, before routing.
    Prerouting,
    /// Packets routed to this host, after prerouting.
    Input,
    /// Every packet leaving through an interface, after routing.
    Postrouting,
}

/// Where a base chain is attached. Its policy is always accept: loopgate only takes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attachment {
    /// The chain type.
    pub kind: ChainKind,
    /// The hook it runs at.
    pub hook: Hook,
    /// Order among chains on the same hook, lower first (nft's numbers: raw -300,
    /// dstnat -100, filter 0, srcnat 100; see [`crate::plan::PRIORITY_RAW`] and its
    /// siblings).
    pub priority: i32,
}

/// A chain: a base chain when `attach` is set, else a regular chain reached by `jump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// The chain's name in the table, e.g. `raw_prerouting`, `input_if_br0`,
    /// `nat_br0_192.0.2.1_tcp_3306`.
    pub name: String,
    /// The hook for a base chain; `None` for a chain only reached by a map's jump.
    pub attach: Option<Attachment>,
    /// The rules, evaluated in order.
    pub rules: Vec<Rule>,
}

/// One rule: when every match holds, the verdict applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The conditions, all of which must hold (none: every packet).
    pub matches: Vec<Match>,
    /// What happens to a matching packet.
    pub verdict: Verdict,
    /// Text kept with the rule in the kernel (nft `comment`), e.g. `grant docker0-tcp-3306`
    /// or `br0 guard: no spoofed loopback source`: what `audit`'s counters are labelled
    /// with and how the read-back table is compared. Cut to 127 bytes in the kernel.
    pub comment: String,
}

/// A conntrack direction, as matched by `ct direction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtDir {
    /// Packets in the direction of the flow's first packet.
    Original,
    /// Packets answering them.
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
    /// `ct original ip daddr != a.b.c.d/n`: the flow's first packet was not addressed
    /// inside the network.
    CtOriginalDaddrNotIn(Ipv4Network),
    /// `ct original protocol tcp ct original proto-dst N`
    CtOriginalProtoDst(Proto, u16),
}

/// What a rule does with a packet that matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `accept`: the packet leaves this base chain; base chains that come later on the
    /// same hook (of any table) still judge it.
    Accept,
    /// `drop`: the packet is discarded.
    Drop,
    /// `dnat to ADDR:PORT`: rewrite the destination (the loopback target of a grant).
    Dnat(SocketAddrV4),
    /// `KEY vmap @map`: jump to the chain the packet's key maps to; fall through when
    /// the key is not in the map.
    Vmap {
        /// The fields the lookup key is built from, in order.
        key: Vec<KeyField>,
        /// The name of a [`VerdictMap`] of the table.
        map: String,
    },
}

impl ChainKind {
    /// The nft spelling: `filter` or `nat`.
    pub fn name(self) -> &'static str {
        match self {
            ChainKind::Filter => "filter",
            ChainKind::Nat => "nat",
        }
    }
}

impl Hook {
    /// The nft spelling: `prerouting`, `input` or `postrouting`.
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
            Match::CtOriginalDaddrNotIn(n) => write!(f, "ct original ip daddr != {n}"),
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

    /// The number of rules over all chains.
    pub fn rule_count(&self) -> usize {
        self.chains.iter().map(|c| c.rules.len()).sum()
    }

    /// The chain called `name`, if the table has one.
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }

    /// The verdict map called `name`, if the table has one.
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
