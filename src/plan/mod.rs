//! The pure heart of loopgate: grants in, the complete desired table out.
//!
//! Nothing here touches the system, so every rule loopgate will ever install can be
//! read, printed and golden-tested from this module alone. See
//! `shared/notes/security-model.md` for why each rule sits on the hook it does.

use crate::cidr;
use crate::grant::{Grant, Proto};
use crate::input::loopback;
use crate::ruleset::{
    AddrSet, Attachment, Chain, ChainKind, CtDir, Hook, KeyField, KeyValue, MapElement, Match,
    Rule, Ruleset, Verdict, VerdictMap,
};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

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
///
/// Shape (each lookup is one hash step, so a packet's cost does not grow with the
/// number of interfaces, grants or allowed networks):
/// - every hook's base chain dispatches on the interface (`iifname vmap`) or, for
///   DNAT, on `iifname . ip daddr . meta l4proto . th dport`;
/// - per interface: `raw_ifN`, `input_ifN`, `post_ifN` hold that interface's guard;
/// - per grant: `nat_gN` checks the source set and DNATs;
/// - per (interface, loopback target): `input_tN` accepts the flows a grant DNATed,
///   identified by their conntrack original tuple. Grants sharing one target on one
///   interface share this chain, one rule each.
pub fn ruleset(grants: &[Grant]) -> Option<Ruleset> {
    if grants.is_empty() {
        return None;
    }
    let mut grants: Vec<&Grant> = grants.iter().collect();
    grants.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));

    // Sets per distinct (merged) allow list, shared by the grants that use it.
    let mut sets: Vec<AddrSet> = Vec::new();
    let mut sets_of: BTreeMap<Vec<cidr::Range>, Vec<String>> = BTreeMap::new();
    let mut grant_sets = Vec::with_capacity(grants.len());
    for g in &grants {
        let ranges = cidr::merge(&g.allow);
        let n = sets_of.len();
        let names = sets_of
            .entry(ranges.clone())
            .or_insert_with(|| {
                split_hosts(ranges)
                    .into_iter()
                    .map(|(hosts, ranges)| {
                        let name = match hosts {
                            true => format!("allow_{n}_hosts"),
                            false => format!("allow_{n}"),
                        };
                        sets.push(AddrSet {
                            name: name.clone(),
                            hosts,
                            ranges,
                        });
                        name
                    })
                    .collect()
            })
            .clone();
        grant_sets.push(names);
    }

    let mut chains = base_chains();
    let mut raw_ifaces = iface_map(MAP_RAW_IFACES, KeyField::IifName);
    let mut input_ifaces = iface_map(MAP_INPUT_IFACES, KeyField::IifName);
    let mut post_ifaces = iface_map(MAP_POST_IFACES, KeyField::OifName);
    let mut ifaces: Vec<&str> = grants.iter().map(|g| g.iface.as_str()).collect();
    ifaces.dedup();
    for (i, &iface) in ifaces.iter().enumerate() {
        let jump = |map: &mut VerdictMap, chain: &Chain| {
            map.elements.push(MapElement {
                key: vec![KeyValue::Name(iface.to_string())],
                jump: chain.name.clone(),
            });
        };
        let raw = Chain {
            name: format!("raw_if{i}"),
            attach: None,
            rules: vec![
                // ip daddr 127.0.0.0/8 drop
                rule(
                    vec![Match::DaddrIn(loopback())],
                    Verdict::Drop,
                    format!("{iface} guard: no direct route to loopback"),
                ),
                // ip saddr 127.0.0.0/8 drop
                rule(
                    vec![Match::SaddrIn(loopback())],
                    Verdict::Drop,
                    format!("{iface} guard: no spoofed loopback source"),
                ),
            ],
        };
        let input = Chain {
            name: format!("input_if{i}"),
            attach: None,
            rules: vec![
                // ct direction reply accept
                rule(
                    vec![Match::CtDirection(CtDir::Reply)],
                    Verdict::Accept,
                    format!("{iface} guard: replies of flows the host opened"),
                ),
                // iifname . ip daddr . meta l4proto . th dport vmap @input_targets
                rule(
                    vec![],
                    Verdict::Vmap {
                        key: target_key(),
                        map: MAP_INPUT_TARGETS.to_string(),
                    },
                    format!("{iface}: flows a grant DNATed"),
                ),
                // drop  (also catches untracked packets)
                rule(
                    vec![],
                    Verdict::Drop,
                    format!("{iface} guard: loopback only through published ports"),
                ),
            ],
        };
        let post = Chain {
            name: format!("post_if{i}"),
            attach: None,
            // ip saddr 127.0.0.0/8 drop
            rules: vec![rule(
                vec![Match::SaddrIn(loopback())],
                Verdict::Drop,
                format!("{iface} guard: no loopback source leaves"),
            )],
        };
        jump(&mut raw_ifaces, &raw);
        jump(&mut input_ifaces, &input);
        jump(&mut post_ifaces, &post);
        chains.extend([raw, input, post]);
    }

    let mut nat_grants = VerdictMap {
        name: MAP_NAT_GRANTS.to_string(),
        key: target_key(),
        elements: Vec::new(),
    };
    for (i, (g, names)) in grants.iter().zip(&grant_sets).enumerate() {
        let chain = Chain {
            name: format!("nat_g{i}"),
            attach: None,
            // meta l4proto tcp ip saddr @allow_N dnat to T  (nft needs the protocol
            // before a port mapping); one rule per set of the allow list
            rules: names
                .iter()
                .map(|set| {
                    rule(
                        vec![Match::L4Proto(g.proto), Match::SaddrInSet(set.clone())],
                        Verdict::Dnat(g.to),
                        format!("grant {}", g.name),
                    )
                })
                .collect(),
        };
        nat_grants.elements.push(MapElement {
            key: target_key_of(&g.iface, g.listen, g.proto, g.port),
            jump: chain.name.clone(),
        });
        chains.push(chain);
    }

    // After DNAT the packet's own address and port are the target's, shared by every
    // grant that maps to it; the conntrack original tuple tells those grants apart.
    let mut by_target: BTreeMap<(&str, Ipv4Addr, Proto, u16), Vec<Rule>> = BTreeMap::new();
    for (g, names) in grants.iter().zip(&grant_sets) {
        // ct status dnat ct original ip daddr L ct original protocol tcp
        //   ct original proto-dst P ip saddr @allow_N accept
        let rules = by_target
            .entry((&g.iface, *g.to.ip(), g.proto, g.to.port()))
            .or_default();
        for set in names {
            rules.push(rule(
                vec![
                    Match::CtStatusDnat,
                    Match::CtOriginalDaddr(g.listen),
                    Match::CtOriginalProtoDst(g.proto, g.port),
                    Match::SaddrInSet(set.clone()),
                ],
                Verdict::Accept,
                format!("grant {}", g.name),
            ));
        }
    }
    let mut input_targets = VerdictMap {
        name: MAP_INPUT_TARGETS.to_string(),
        key: target_key(),
        elements: Vec::new(),
    };
    for (i, ((iface, addr, proto, port), rules)) in by_target.into_iter().enumerate() {
        let name = format!("input_t{i}");
        input_targets.elements.push(MapElement {
            key: target_key_of(iface, addr, proto, port),
            jump: name.clone(),
        });
        chains.push(Chain {
            name,
            attach: None,
            rules,
        });
    }

    Some(Ruleset {
        sets,
        maps: vec![
            raw_ifaces,
            nat_grants,
            input_ifaces,
            input_targets,
            post_ifaces,
        ],
        chains,
    })
}

/// From this many single addresses on, an allow list keeps them in a hash set of their
/// own: inserting 100,000 hosts into an interval set (start and end element each) was
/// most of the kernel's work in `apply`. Shorter lists stay in one interval set.
pub const HOSTS_SET_FROM: usize = 64;

/// Splits merged ranges into (hosts?, ranges) groups, each a set to create: single
/// addresses apart once there are [`HOSTS_SET_FROM`] of them.
fn split_hosts(ranges: Vec<cidr::Range>) -> Vec<(bool, Vec<cidr::Range>)> {
    let (hosts, nets): (Vec<_>, Vec<_>) = ranges.iter().partition(|(a, b)| a == b);
    if hosts.len() < HOSTS_SET_FROM {
        return vec![(false, ranges)];
    }
    let mut out = vec![(true, hosts)];
    if !nets.is_empty() {
        out.push((false, nets));
    }
    out
}

pub const MAP_RAW_IFACES: &str = "raw_ifaces";
pub const MAP_NAT_GRANTS: &str = "nat_grants";
pub const MAP_INPUT_IFACES: &str = "input_ifaces";
pub const MAP_INPUT_TARGETS: &str = "input_targets";
pub const MAP_POST_IFACES: &str = "post_ifaces";

fn rule(matches: Vec<Match>, verdict: Verdict, comment: String) -> Rule {
    Rule {
        matches,
        verdict,
        comment,
    }
}

/// `iifname . ip daddr . meta l4proto . th dport`: where a packet came in and what it
/// is addressed to. The protocol is part of the key, so `th dport` only ever matches
/// TCP and UDP ports.
fn target_key() -> Vec<KeyField> {
    vec![
        KeyField::IifName,
        KeyField::Daddr,
        KeyField::L4Proto,
        KeyField::Dport,
    ]
}

/// The key value (`iifname . ip daddr . meta l4proto . th dport`) for one interface,
/// address, protocol and port.
pub fn target_key_of(iface: &str, addr: Ipv4Addr, proto: Proto, port: u16) -> Vec<KeyValue> {
    vec![
        KeyValue::Name(iface.to_string()),
        KeyValue::Addr(addr),
        KeyValue::Proto(proto),
        KeyValue::Port(port),
    ]
}

fn iface_map(name: &str, field: KeyField) -> VerdictMap {
    VerdictMap {
        name: name.to_string(),
        key: vec![field],
        elements: Vec::new(),
    }
}

/// The four entry points, made of dispatching rules only. Where the guard is about
/// 127/8 addresses, a one-byte compare comes before the map lookup, so traffic that is
/// none of loopgate's business (nearly all of it) pays no hash lookup.
fn base_chains() -> Vec<Chain> {
    let base = |name: &str, kind, hook, priority, rules: Vec<Rule>| Chain {
        name: name.to_string(),
        attach: Some(Attachment {
            kind,
            hook,
            priority,
        }),
        rules,
    };
    let vmap = |key: Vec<KeyField>, map: &str| Verdict::Vmap {
        key,
        map: map.to_string(),
    };
    vec![
        // ip daddr 127.0.0.0/8 iifname vmap @raw_ifaces
        // ip saddr 127.0.0.0/8 iifname vmap @raw_ifaces
        base(
            "raw_prerouting",
            ChainKind::Filter,
            Hook::Prerouting,
            PRIORITY_RAW,
            [Match::DaddrIn(loopback()), Match::SaddrIn(loopback())]
                .into_iter()
                .map(|gate| {
                    rule(
                        vec![gate],
                        vmap(vec![KeyField::IifName], MAP_RAW_IFACES),
                        "loopback addresses on guarded interfaces".to_string(),
                    )
                })
                .collect(),
        ),
        // iifname . ip daddr . meta l4proto . th dport vmap @nat_grants
        base(
            "nat_prerouting",
            ChainKind::Nat,
            Hook::Prerouting,
            PRIORITY_DSTNAT,
            vec![rule(
                vec![],
                vmap(target_key(), MAP_NAT_GRANTS),
                "published addresses and ports".to_string(),
            )],
        ),
        // ip daddr 127.0.0.0/8 iifname vmap @input_ifaces
        base(
            "input",
            ChainKind::Filter,
            Hook::Input,
            PRIORITY_FILTER,
            vec![rule(
                vec![Match::DaddrIn(loopback())],
                vmap(vec![KeyField::IifName], MAP_INPUT_IFACES),
                "loopback traffic from guarded interfaces".to_string(),
            )],
        ),
        // ip saddr 127.0.0.0/8 oifname vmap @post_ifaces
        base(
            "postrouting",
            ChainKind::Filter,
            Hook::Postrouting,
            PRIORITY_AFTER_SRCNAT,
            vec![rule(
                vec![Match::SaddrIn(loopback())],
                vmap(vec![KeyField::OifName], MAP_POST_IFACES),
                "loopback sources leaving guarded interfaces".to_string(),
            )],
        ),
    ]
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

/// An independent reading of a planned table, for the property tests and the fuzzer:
/// follows each interface and each grant through the maps the way the kernel would and
/// checks that every guard is in place, every grant reaches exactly its target from
/// exactly its allow set, and nothing else is accepted.
pub fn verify(r: &Ruleset, grants: &[Grant]) -> Result<(), String> {
    let via = |map: &str, key: Vec<KeyValue>| -> Result<&Chain, String> {
        let m = r.map(map).ok_or(format!("map {map} is missing"))?;
        let jump = m
            .jump_for(&key)
            .ok_or(format!("map {map} has no element for {key:?}"))?;
        r.chain(jump)
            .ok_or(format!("map {map} jumps to missing chain {jump}"))
    };
    let has = |c: &Chain, matches: &[Match], verdict: Verdict| {
        c.rules
            .iter()
            .any(|x| x.matches == matches && x.verdict == verdict)
    };
    let ifaces = interfaces(grants);
    for iface in &ifaces {
        let name = || vec![KeyValue::Name(iface.clone())];
        let raw = via(MAP_RAW_IFACES, name())?;
        if !has(raw, &[Match::DaddrIn(loopback())], Verdict::Drop)
            || !has(raw, &[Match::SaddrIn(loopback())], Verdict::Drop)
        {
            return Err(format!("{iface}: raw guard incomplete"));
        }
        let input = via(MAP_INPUT_IFACES, name())?;
        match input.rules.last() {
            Some(last) if last.matches.is_empty() && last.verdict == Verdict::Drop => {}
            _ => return Err(format!("{iface}: input guard does not end in drop")),
        }
        if !has(
            via(MAP_POST_IFACES, name())?,
            &[Match::SaddrIn(loopback())],
            Verdict::Drop,
        ) {
            return Err(format!("{iface}: postrouting guard missing"));
        }
    }
    let set_of = |matches: &[Match]| {
        matches.iter().find_map(|m| match m {
            Match::SaddrInSet(s) => r.sets.iter().find(|x| x.name == *s),
            _ => None,
        })
    };
    // What a group of rules admits together: the union of their sets, merged.
    let admitted = |rules: &[&Rule]| -> Option<Vec<cidr::Range>> {
        let mut all: Vec<cidr::Range> = Vec::new();
        for x in rules {
            let set = set_of(&x.matches)?;
            if set.hosts && set.ranges.iter().any(|(a, b)| a != b) {
                return None; // a hash set holds single addresses only
            }
            all.extend(&set.ranges);
        }
        Some(cidr::merge_ranges(all))
    };
    let mut targets = std::collections::BTreeSet::new();
    for g in grants {
        let allow = cidr::merge(&g.allow);
        let nat = via(
            MAP_NAT_GRANTS,
            target_key_of(&g.iface, g.listen, g.proto, g.port),
        )?;
        let dnats: Vec<&Rule> = nat.rules.iter().collect();
        if dnats.is_empty()
            || dnats.iter().any(|x| x.verdict != Verdict::Dnat(g.to))
            || admitted(&dnats) != Some(allow.clone())
        {
            return Err(format!("grant {}: DNAT chain is wrong", g.name));
        }
        let target = target_key_of(&g.iface, *g.to.ip(), g.proto, g.to.port());
        let accepts: Vec<&Rule> = via(MAP_INPUT_TARGETS, target.clone())?
            .rules
            .iter()
            .filter(|x| {
                x.matches.contains(&Match::CtOriginalDaddr(g.listen))
                    && x.matches
                        .contains(&Match::CtOriginalProtoDst(g.proto, g.port))
            })
            .collect();
        if accepts.is_empty()
            || accepts
                .iter()
                .any(|x| x.verdict != Verdict::Accept || !x.matches.contains(&Match::CtStatusDnat))
            || admitted(&accepts) != Some(allow.clone())
        {
            return Err(format!("grant {}: input accepts are wrong", g.name));
        }
        targets.insert(target);
    }
    // Nothing beyond what the grants need is reachable through the maps.
    let size = |map: &str| r.map(map).map_or(0, |m| m.elements.len());
    let expected = [
        (MAP_RAW_IFACES, ifaces.len()),
        (MAP_INPUT_IFACES, ifaces.len()),
        (MAP_POST_IFACES, ifaces.len()),
        (MAP_NAT_GRANTS, grants.len()),
        (MAP_INPUT_TARGETS, targets.len()),
    ];
    for (map, n) in expected {
        if size(map) != n {
            return Err(format!(
                "map {map} has {} elements, expected {n}",
                size(map)
            ));
        }
    }
    // Every accept is a grant's (a DNATed flow from its allow set) or a reply.
    for chain in &r.chains {
        for x in chain.rules.iter().filter(|x| x.verdict == Verdict::Accept) {
            let grant = x.matches.contains(&Match::CtStatusDnat) && set_of(&x.matches).is_some();
            let reply = x.matches == [Match::CtDirection(CtDir::Reply)];
            if !grant && !reply {
                return Err(format!("chain {}: unexpected accept: {x}", chain.name));
            }
        }
    }
    // The entry points: dispatching rules only, each sending exactly the packets its
    // guard is about to the guard's map (a gate narrower than this would skip the guard).
    let lo = loopback;
    let expected: [(&str, Vec<Vec<Match>>); 4] = [
        (
            "raw_prerouting",
            vec![vec![Match::DaddrIn(lo())], vec![Match::SaddrIn(lo())]],
        ),
        ("nat_prerouting", vec![vec![]]),
        ("input", vec![vec![Match::DaddrIn(lo())]]),
        ("postrouting", vec![vec![Match::SaddrIn(lo())]]),
    ];
    for (name, gates) in expected {
        let chain = r
            .chain(name)
            .ok_or(format!("base chain {name} is missing"))?;
        let have: Vec<&Vec<Match>> = chain.rules.iter().map(|x| &x.matches).collect();
        if have != gates.iter().collect::<Vec<_>>()
            || !chain
                .rules
                .iter()
                .all(|x| matches!(x.verdict, Verdict::Vmap { .. }))
        {
            return Err(format!("base chain {name} does not dispatch as it must"));
        }
    }
    if r.chains.iter().filter(|c| c.attach.is_some()).count() != 4 {
        return Err("unexpected base chain".to_string());
    }
    Ok(())
}
