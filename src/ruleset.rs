//! The desired nftables table as a plain value that prints as nft syntax.
//!
//! `plan` builds a [`Ruleset`]; `kernel::nft` encodes the same value into one netlink
//! batch. Keeping the value independent of netlink lets `--dry-run`, `plan`, golden-file
//! tests and the kernel encoding all agree on one description of the rules.

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
    pub chains: Vec<BaseChain>,
}

/// An interval set of IPv4 source addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrSet {
    pub name: String,
    pub ranges: Vec<Range>,
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

/// A base chain attached to a netfilter hook, policy accept: loopgate only takes away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseChain {
    pub name: &'static str,
    pub kind: ChainKind,
    pub hook: Hook,
    pub priority: i32,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Dnat(SocketAddrV4),
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
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.matches {
            write!(f, "{m} ")?;
        }
        write!(f, "counter {} comment {:?}", self.verdict, self.comment)
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
            writeln!(out, "\t\tflags interval")?;
            let elems: Vec<String> = set.ranges.iter().map(|r| cidr::render(*r)).collect();
            writeln!(out, "\t\telements = {{ {} }}", elems.join(", "))?;
            writeln!(out, "\t}}")?;
            writeln!(out)?;
        }
        for (i, chain) in self.chains.iter().enumerate() {
            if i > 0 {
                writeln!(out)?;
            }
            writeln!(out, "\tchain {} {{", chain.name)?;
            writeln!(
                out,
                "\t\ttype {} hook {} priority {}; policy accept;",
                chain.kind.name(),
                chain.hook.name(),
                priority_text(chain.priority)
            )?;
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
}
