//! The pure heart of loopgate: grants in, the complete desired table out.
//!
//! Nothing here touches the system, so every rule loopgate will ever install can be
//! read, printed and golden-tested from this module alone. See
//! `shared/notes/security-model.md` for why each rule sits on the hook it does.

use crate::cidr;
use crate::grant::Grant;
use crate::input::loopback;
use crate::ruleset::{AddrSet, BaseChain, ChainKind, CtDir, Hook, Match, Rule, Ruleset, Verdict};
use std::collections::BTreeMap;

/// Netfilter hook priorities used by the table (see `nft(8)`, "standard priority names").
pub const PRIORITY_RAW: i32 = -300;
pub const PRIORITY_DSTNAT: i32 = -100;
pub const PRIORITY_FILTER: i32 = 0;
/// After srcnat (100), where a reply's source is already translated back.
pub const PRIORITY_AFTER_SRCNAT: i32 = 110;

/// The interfaces the grants expose, sorted and without duplicates.
pub fn interfaces(grants: &[Grant]) -> Vec<String> {
    let mut v: Vec<String> = grants.iter().map(|g| g.iface.clone()).collect();
    v.sort();
    v.dedup();
    v
}

/// Builds loopgate's whole table for `grants`; `None` when there is nothing to guard
/// (the table is then removed).
pub fn ruleset(grants: &[Grant]) -> Option<Ruleset> {
    if grants.is_empty() {
        return None;
    }
    let mut grants: Vec<&Grant> = grants.iter().collect();
    grants.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));

    // One interval set per distinct (merged) allow list; grants sharing a list share it.
    let mut sets: Vec<AddrSet> = Vec::new();
    let mut set_of: BTreeMap<Vec<cidr::Range>, String> = BTreeMap::new();
    let mut grant_set = Vec::with_capacity(grants.len());
    for g in &grants {
        let ranges = cidr::merge(&g.allow);
        let name = set_of
            .entry(ranges.clone())
            .or_insert_with(|| {
                let name = format!("allow_{}", sets.len());
                sets.push(AddrSet {
                    name: name.clone(),
                    ranges,
                });
                name
            })
            .clone();
        grant_set.push(name);
    }

    let mut raw = Vec::new();
    let mut nat = Vec::new();
    let mut input = Vec::new();
    let mut post = Vec::new();
    let mut ifaces: Vec<&str> = grants.iter().map(|g| g.iface.as_str()).collect();
    ifaces.dedup();
    for &iface in &ifaces {
        let iif = || Match::IifName(iface.to_string());
        // iifname "X" ip daddr 127.0.0.0/8 drop
        raw.push(Rule {
            matches: vec![iif(), Match::DaddrIn(loopback())],
            verdict: Verdict::Drop,
            comment: format!("{iface} guard: no direct route to loopback"),
        });
        // iifname "X" ip saddr 127.0.0.0/8 drop
        raw.push(Rule {
            matches: vec![iif(), Match::SaddrIn(loopback())],
            verdict: Verdict::Drop,
            comment: format!("{iface} guard: no spoofed loopback source"),
        });
        for (g, set) in grants
            .iter()
            .zip(&grant_set)
            .filter(|(g, _)| g.iface == iface)
        {
            // iifname "X" ip saddr @allow_N ip daddr L tcp dport P dnat to T
            nat.push(Rule {
                matches: vec![
                    iif(),
                    Match::SaddrInSet(set.clone()),
                    Match::Daddr(g.listen),
                    Match::Dport(g.proto, g.port),
                ],
                verdict: Verdict::Dnat(g.to),
                comment: format!("grant {}", g.name),
            });
            // iifname "X" ct direction original ct status dnat ct original ip daddr L
            //   ct original protocol tcp ct original proto-dst P ip saddr @allow_N
            //   ip daddr T tcp dport TP accept
            input.push(Rule {
                matches: vec![
                    iif(),
                    Match::CtDirection(CtDir::Original),
                    Match::CtStatusDnat,
                    Match::CtOriginalDaddr(g.listen),
                    Match::CtOriginalProtoDst(g.proto, g.port),
                    Match::SaddrInSet(set.clone()),
                    Match::Daddr(*g.to.ip()),
                    Match::Dport(g.proto, g.to.port()),
                ],
                verdict: Verdict::Accept,
                comment: format!("grant {}", g.name),
            });
        }
        // iifname "X" ip daddr 127.0.0.0/8 ct direction reply accept
        input.push(Rule {
            matches: vec![
                iif(),
                Match::DaddrIn(loopback()),
                Match::CtDirection(CtDir::Reply),
            ],
            verdict: Verdict::Accept,
            comment: format!("{iface} guard: replies of flows the host opened"),
        });
        // iifname "X" ip daddr 127.0.0.0/8 drop  (also catches untracked packets)
        input.push(Rule {
            matches: vec![iif(), Match::DaddrIn(loopback())],
            verdict: Verdict::Drop,
            comment: format!("{iface} guard: loopback only through published ports"),
        });
        // oifname "X" ip saddr 127.0.0.0/8 drop
        post.push(Rule {
            matches: vec![
                Match::OifName(iface.to_string()),
                Match::SaddrIn(loopback()),
            ],
            verdict: Verdict::Drop,
            comment: format!("{iface} guard: no loopback source leaves"),
        });
    }

    Some(Ruleset {
        sets,
        chains: vec![
            BaseChain {
                name: "raw_prerouting",
                kind: ChainKind::Filter,
                hook: Hook::Prerouting,
                priority: PRIORITY_RAW,
                rules: raw,
            },
            BaseChain {
                name: "nat_prerouting",
                kind: ChainKind::Nat,
                hook: Hook::Prerouting,
                priority: PRIORITY_DSTNAT,
                rules: nat,
            },
            BaseChain {
                name: "input",
                kind: ChainKind::Filter,
                hook: Hook::Input,
                priority: PRIORITY_FILTER,
                rules: input,
            },
            BaseChain {
                name: "postrouting",
                kind: ChainKind::Filter,
                hook: Hook::Postrouting,
                priority: PRIORITY_AFTER_SRCNAT,
                rules: post,
            },
        ],
    })
}

/// The nft text of the planned table, or a note that there is none.
pub fn render(ruleset: Option<&Ruleset>) -> String {
    match ruleset {
        Some(r) => r.to_nft(),
        None => format!(
            "# no grants: table ip {} is absent\n",
            crate::ruleset::TABLE
        ),
    }
}
