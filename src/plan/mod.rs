//! The pure heart of loopgate: grants in, the complete desired table out.
//!
//! Nothing here touches the system, so every rule loopgate will ever install can be
//! read, printed and golden-tested from this module alone. The table is built from
//! parts, one private module per concern: `allow` (the source sets), `guards` (each
//! interface's guard), `nat` (one DNAT chain per grant), `targets` (the input accepts of
//! DNATed flows) and `hooks` (the base chains); [`ruleset()`] only composes them.
//! `names` names every object after its own key, so that one interface or grant more
//! or less changes only its own objects (see there).
//! `render` prints a plan, and `verify` (tests and the fuzzer only) re-checks one
//! independently.
//! Why each rule sits on the hook it does is said where it is built: `hooks` (the raw
//! guard runs before conntrack, the postrouting guard after source NAT) and `guards`;
//! docs/behaviour.md, "What it installs", has the whole table at a glance.
//!
//! Shape (each lookup is one hash step, so a packet's cost does not grow with the
//! number of interfaces, grants or allowed networks):
//! - every hook's base chain dispatches on the interface (`iifname vmap`) or, for
//!   DNAT, on `iifname . ip daddr . meta l4proto . th dport`;
//! - per interface: `raw_if_IF`, `input_if_IF`, `post_if_IF` hold that interface's
//!   guard;
//! - per grant: `nat_IF_LISTEN_PROTO_PORT` checks the source set and DNATs;
//! - per (interface, loopback target): `input_to_IF_ADDR_PROTO_PORT` accepts the flows
//!   a grant DNATed, identified by their conntrack original tuple. Grants sharing one
//!   target on one interface share this chain, one rule each;
//! - per distinct allow list: `allow_HASH` (and `allow_HASH_hosts`).

mod allow;
mod guards;
pub(crate) use guards::GUARD_DROPS;
mod hooks;
mod names;
mod nat;
mod render;
mod targets;
#[cfg(any(test, feature = "verify"))]
mod verify;

pub use allow::HOSTS_SET_FROM;
pub use hooks::{PRIORITY_AFTER_SRCNAT, PRIORITY_DSTNAT, PRIORITY_FILTER, PRIORITY_RAW};
use names::Naming;
pub use names::{iface_token, MAX_NAME_LEN};
pub use render::render;
#[cfg(any(test, feature = "verify"))]
pub use verify::verify;

use crate::grant::{Grant, Proto};
use crate::ruleset::{Chain, KeyField, KeyValue, Match, Rule, Ruleset, Verdict, VerdictMap};
use std::net::Ipv4Addr;

/// `iifname vmap @raw_ifaces`: interface -> `raw_if_IF` (prerouting, raw priority).
pub const MAP_RAW_IFACES: &str = "raw_ifaces";
/// `iifname . ip daddr . meta l4proto . th dport vmap @nat_grants`: published address
/// and port -> the grant's `nat_IF_LISTEN_PROTO_PORT`.
pub const MAP_NAT_GRANTS: &str = "nat_grants";
/// `iifname vmap @input_ifaces`: interface -> `input_if_IF` (input, for 127/8 only).
pub const MAP_INPUT_IFACES: &str = "input_ifaces";
/// `iifname . ip daddr . meta l4proto . th dport vmap @input_targets`: DNATed loopback
/// target -> `input_to_IF_ADDR_PROTO_PORT`.
pub const MAP_INPUT_TARGETS: &str = "input_targets";
/// `oifname vmap @post_ifaces`: interface -> `post_if_IF` (postrouting, after srcnat).
pub const MAP_POST_IFACES: &str = "post_ifaces";

/// The interfaces the grants expose, sorted and without duplicates.
pub fn interfaces(grants: &[Grant]) -> Vec<String> {
    let mut v: Vec<String> = grants.iter().map(|g| g.iface.clone()).collect();
    v.sort();
    v.dedup();
    v
}

/// The chains of `ruleset` whose rules count what the guards drop (the comments
/// `GUARD_DROPS` names, which audit's blocked totals are made of): what a change that
/// starts their counters again reads first.
pub fn counting_chains<'a>(ruleset: &'a Ruleset, among: Option<&'a [String]>) -> Vec<String> {
    let among: Option<std::collections::HashSet<&str>> =
        among.map(|names| names.iter().map(String::as_str).collect());
    ruleset
        .chains
        .iter()
        .filter(|c| {
            among
                .as_ref()
                .is_none_or(|names| names.contains(c.name.as_str()))
        })
        .filter(|c| {
            c.rules.iter().any(|r| {
                r.comment
                    .split_once(" guard: ")
                    .is_some_and(|(_, what)| GUARD_DROPS.iter().any(|(w, _)| *w == what))
            })
        })
        .map(|c| c.name.clone())
        .collect()
}

/// Builds loopgate's whole table for `grants`; `None` when there is nothing to guard
/// (the table is then removed). The result does not depend on the order of `grants`.
/// See the module documentation for the shape.
pub fn ruleset(grants: &[Grant]) -> Option<Ruleset> {
    ruleset_with(grants, &[])
}

/// As [`ruleset`], also guarding the interfaces in `guarded` that publish nothing
/// (`loopgate guard`: another tool opened them; loopgate adds the guard chains, no
/// grant). `None` when there is nothing to guard.
pub fn ruleset_with(grants: &[Grant], guarded: &[String]) -> Option<Ruleset> {
    ruleset_admitting(grants, guarded, &[])
}

/// As [`ruleset_with`], where the guards of `guarded` and of `admitted` (interfaces of
/// `grants` that were open before loopgate: `State::admitted`) let another table's
/// forward to 127/8 through; the guard of every other interface drops it (see
/// `guards::input`).
pub fn ruleset_admitting(
    grants: &[Grant],
    guarded: &[String],
    admitted: &[String],
) -> Option<Ruleset> {
    ruleset_named(grants, guarded, admitted, Naming::Stable)
}

/// [`ruleset_admitting`] under the positional names earlier versions of loopgate gave
/// (`raw_if0`, `nat_g3`, `input_t1`, `allow_2`): the table such a version wrote for the
/// same grants. Only to recognise that table as rightful after an upgrade (it guards
/// exactly as the new one does), so that the first change rewrites it whole instead of
/// taking it for a lost guard and closing every interface; never installed.
pub fn legacy_ruleset_admitting(
    grants: &[Grant],
    guarded: &[String],
    admitted: &[String],
) -> Option<Ruleset> {
    ruleset_named(grants, guarded, admitted, Naming::Positional)
}

fn ruleset_named(
    grants: &[Grant],
    guarded: &[String],
    admitted: &[String],
    naming: Naming,
) -> Option<Ruleset> {
    if grants.is_empty() && guarded.is_empty() {
        return None;
    }
    // Canonical order first: the order of sets, chains and map elements follows it, so
    // the same grants always give the same table (and `audit` can compare images).
    let mut grants: Vec<&Grant> = grants.iter().collect();
    grants.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));

    let allow = allow::AllowSets::plan(&grants, naming);
    let guards = guards::Guards::plan(&grants, guarded, admitted, naming);
    let nat = nat::plan(&grants, &allow.names_of, naming);
    let targets = targets::plan(&grants, &allow.names_of, naming);

    // Base chains first, then the chains the maps jump to; maps in hook order.
    let mut chains = hooks::base_chains();
    chains.extend(guards.chains);
    chains.extend(nat.chains);
    chains.extend(targets.chains);
    Some(Ruleset {
        sets: allow.sets,
        maps: vec![guards.raw, nat.map, guards.input, targets.map, guards.post],
        chains,
    })
}

/// A verdict map and the regular chains its elements jump to: what the per-grant and
/// per-target parts each contribute.
struct Dispatch {
    map: VerdictMap,
    chains: Vec<Chain>,
}

/// A rule with its counter decided by the verdict (see [`Rule::counts`]).
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
/// address, protocol and port: the published address of a grant in `nat_grants`, its
/// loopback target in `input_targets`.
pub fn target_key_of(iface: &str, addr: Ipv4Addr, proto: Proto, port: u16) -> Vec<KeyValue> {
    vec![
        KeyValue::Name(iface.to_string()),
        KeyValue::Addr(addr),
        KeyValue::Proto(proto),
        KeyValue::Port(port),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::Proto;
    use crate::ruleset::{Chain, Verdict};
    use std::net::SocketAddrV4;

    fn grant(iface: &str, port: u16) -> Grant {
        Grant {
            name: format!("{iface}-tcp-{port}"),
            iface: iface.into(),
            proto: Proto::Tcp,
            listen: Ipv4Addr::new(192, 0, 2, 1),
            port,
            to: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            allow: vec!["192.0.2.0/25".parse().unwrap()],
            network: None,
        }
    }

    fn chain<'a>(r: &'a Ruleset, name: &str) -> &'a Chain {
        r.chains
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no chain {name}"))
    }

    fn jumps(r: &Ruleset, map: &str) -> Vec<String> {
        r.maps
            .iter()
            .find(|m| m.name == map)
            .map(|m| m.elements.iter().map(|e| e.jump.clone()).collect())
            .unwrap_or_default()
    }

    /// The chains whose counters make audit's blocked totals are the guard chains
    /// that drop (not the DNAT chains, which count grants): each interface's drop
    /// rules, and only those chains, are what a change must read before resetting.
    #[test]
    fn the_counting_chains_are_those_with_the_guards_drops() {
        let r = ruleset(&[grant("br0", 3306), grant("br1", 3307)]).unwrap();
        let counting = counting_chains(&r, None);
        let drops: Vec<String> = r
            .chains
            .iter()
            .filter(|c| {
                c.rules
                    .iter()
                    .any(|rule| rule.verdict == Verdict::Drop && rule.comment.contains(" guard: "))
            })
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(counting, drops);
        assert!(counting.len() >= 6, "{counting:?}");
        let one = vec![counting[0].clone(), "nat_g0".to_string()];
        assert_eq!(counting_chains(&r, Some(&one)), [counting[0].clone()]);
    }

    #[test]
    fn nothing_to_guard_is_no_table() {
        assert!(ruleset_with(&[], &[]).is_none());
    }

    /// `loopgate guard`: the guard chains, in every guard map, and no DNAT at all.
    #[test]
    fn a_guarded_interface_gets_the_whole_guard_and_publishes_nothing() {
        let r = ruleset_with(&[], &["br1".to_string()]).unwrap();
        for map in [MAP_RAW_IFACES, MAP_INPUT_IFACES, MAP_POST_IFACES] {
            assert_eq!(jumps(&r, map).len(), 1, "{map}");
        }
        assert!(jumps(&r, MAP_NAT_GRANTS).is_empty());
        assert!(!r
            .chains
            .iter()
            .any(|c| c.name.starts_with("nat_") && c.attach.is_none()));
    }

    /// The guard's three chains end as the threat model says: raw drops both loopback
    /// destinations and sources, input ends in drop, postrouting drops loopback sources.
    #[test]
    fn each_guard_chain_ends_in_its_drops() {
        let r = ruleset(&[grant("br0", 3306)]).unwrap();
        let raw = chain(&r, &jumps(&r, MAP_RAW_IFACES)[0]);
        assert_eq!(raw.rules.len(), 2);
        assert!(raw.rules.iter().all(|x| x.verdict == Verdict::Drop));
        let input = chain(&r, &jumps(&r, MAP_INPUT_IFACES)[0]);
        let last = input.rules.last().unwrap();
        assert!(last.matches.is_empty() && last.verdict == Verdict::Drop);
        let post = chain(&r, &jumps(&r, MAP_POST_IFACES)[0]);
        assert!(post.rules.iter().all(|x| x.verdict == Verdict::Drop));
    }

    /// One DNAT chain per grant, each to its own target, and one guard per interface
    /// however many grants it has.
    #[test]
    fn one_dnat_per_grant_and_one_guard_per_interface() {
        let r = ruleset(&[grant("br0", 3306), grant("br0", 5432), grant("br1", 53)]).unwrap();
        let nat = jumps(&r, MAP_NAT_GRANTS);
        assert_eq!(nat.len(), 3);
        let targets: std::collections::BTreeSet<u16> = nat
            .iter()
            .flat_map(|c| chain(&r, c).rules.iter())
            .filter_map(|x| match x.verdict {
                Verdict::Dnat(to) => Some(to.port()),
                _ => None,
            })
            .collect();
        assert_eq!(targets, [53, 3306, 5432].into_iter().collect());
        assert_eq!(jumps(&r, MAP_RAW_IFACES).len(), 2);
        assert_eq!(
            interfaces(&[grant("br1", 1), grant("br0", 2), grant("br1", 3)]),
            ["br0", "br1"]
        );
    }

    /// Only the four base chains are attached, at the priorities the guard's safety
    /// depends on: raw before conntrack and DNAT, postrouting after source NAT.
    #[test]
    fn the_base_chains_sit_at_their_priorities() {
        let r = ruleset(&[grant("br0", 3306)]).unwrap();
        let mut prios: Vec<(String, i32)> = r
            .chains
            .iter()
            .filter_map(|c| c.attach.as_ref().map(|a| (c.name.clone(), a.priority)))
            .collect();
        prios.sort_by_key(|(_, p)| *p);
        assert_eq!(prios.len(), 4, "{prios:?}");
        assert_eq!(prios[0].1, PRIORITY_RAW);
        assert_eq!(prios[1].1, PRIORITY_DSTNAT);
        assert_eq!(prios[2].1, PRIORITY_FILTER);
        assert_eq!(prios[3].1, PRIORITY_AFTER_SRCNAT);
        // Raw before conntrack (-200), the postrouting guard after srcnat (100).
        const { assert!(PRIORITY_RAW < -200 && PRIORITY_AFTER_SRCNAT > 100) };
    }

    /// Networks allowed in by two grants are one set, not two.
    #[test]
    fn equal_allow_lists_share_one_set() {
        let r = ruleset(&[grant("br0", 3306), grant("br0", 5432)]).unwrap();
        assert_eq!(r.sets.len(), 1, "{:?}", r.sets);
        let mut other = grant("br0", 8080);
        other.allow = vec!["198.51.100.0/24".parse().unwrap()];
        let r = ruleset(&[grant("br0", 3306), other]).unwrap();
        assert_eq!(r.sets.len(), 2);
    }
}
