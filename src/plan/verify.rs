//! An independent reading of a planned table, compiled for the property tests and the
//! fuzzer only.
//!
//! `ruleset` is checked against this second description of what the table must do,
//! written from the packet's side (follow each interface and grant through the maps the
//! way the kernel would) rather than the builder's, so a mistake has to be made twice
//! to go unnoticed. Nothing at run time needs it, so release builds leave it out: it is
//! built under `cfg(test)` and, for `fuzz/`, under the `verify` cargo feature.

use super::{
    interfaces, target_key_of, MAP_INPUT_IFACES, MAP_INPUT_TARGETS, MAP_NAT_GRANTS,
    MAP_POST_IFACES, MAP_RAW_IFACES,
};
use crate::cidr;
use crate::grant::{loopback, Grant};
use crate::ruleset::{Chain, CtDir, KeyValue, Match, Rule, Ruleset, Verdict};

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
    // Every accept is a grant's (a DNATed flow from its allow set), a reply, or a flow
    // another table DNATed from outside 127/8 (never one addressed to loopback).
    for chain in &r.chains {
        for x in chain.rules.iter().filter(|x| x.verdict == Verdict::Accept) {
            let grant = x.matches.contains(&Match::CtStatusDnat) && set_of(&x.matches).is_some();
            let reply = x.matches == [Match::CtDirection(CtDir::Reply)];
            let forward =
                x.matches == [Match::CtStatusDnat, Match::CtOriginalDaddrNotIn(loopback())];
            if !grant && !reply && !forward {
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
