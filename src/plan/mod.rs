//! The pure heart of loopgate: grants in, the complete desired table out.
//!
//! Nothing here touches the system, so every rule loopgate will ever install can be
//! read, printed and golden-tested from this module alone. The table is built from
//! parts, one private module per concern: `allow` (the source sets), `guards` (each
//! interface's guard), `nat` (one DNAT chain per grant), `targets` (the input accepts of
//! DNATed flows) and `hooks` (the base chains); [`ruleset()`] only composes them.
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
//! - per interface: `raw_ifN`, `input_ifN`, `post_ifN` hold that interface's guard;
//! - per grant: `nat_gN` checks the source set and DNATs;
//! - per (interface, loopback target): `input_tN` accepts the flows a grant DNATed,
//!   identified by their conntrack original tuple. Grants sharing one target on one
//!   interface share this chain, one rule each.

mod allow;
mod guards;
pub(crate) use guards::GUARD_DROPS;
mod hooks;
mod nat;
mod render;
mod targets;
#[cfg(any(test, feature = "verify"))]
mod verify;

pub use allow::HOSTS_SET_FROM;
pub use hooks::{PRIORITY_AFTER_SRCNAT, PRIORITY_DSTNAT, PRIORITY_FILTER, PRIORITY_RAW};
pub use render::render;
#[cfg(any(test, feature = "verify"))]
pub use verify::verify;

use crate::grant::{Grant, Proto};
use crate::ruleset::{Chain, KeyField, KeyValue, Match, Rule, Ruleset, Verdict, VerdictMap};
use std::net::Ipv4Addr;

/// `iifname vmap @raw_ifaces`: interface -> `raw_ifN` (prerouting, raw priority).
pub const MAP_RAW_IFACES: &str = "raw_ifaces";
/// `iifname . ip daddr . meta l4proto . th dport vmap @nat_grants`: published address
/// and port -> `nat_gN`.
pub const MAP_NAT_GRANTS: &str = "nat_grants";
/// `iifname vmap @input_ifaces`: interface -> `input_ifN` (input, for 127/8 only).
pub const MAP_INPUT_IFACES: &str = "input_ifaces";
/// `iifname . ip daddr . meta l4proto . th dport vmap @input_targets`: DNATed loopback
/// target -> `input_tN`.
pub const MAP_INPUT_TARGETS: &str = "input_targets";
/// `oifname vmap @post_ifaces`: interface -> `post_ifN` (postrouting, after srcnat).
pub const MAP_POST_IFACES: &str = "post_ifaces";

/// The interfaces the grants expose, sorted and without duplicates.
pub fn interfaces(grants: &[Grant]) -> Vec<String> {
    let mut v: Vec<String> = grants.iter().map(|g| g.iface.clone()).collect();
    v.sort();
    v.dedup();
    v
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
    if grants.is_empty() && guarded.is_empty() {
        return None;
    }
    // Canonical order first: set, chain and map element numbers follow it, so the same
    // grants always give the same table (and `audit` can compare images).
    let mut grants: Vec<&Grant> = grants.iter().collect();
    grants.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));

    let allow = allow::AllowSets::plan(&grants);
    let guards = guards::Guards::plan(&grants, guarded);
    let nat = nat::plan(&grants, &allow.names_of);
    let targets = targets::plan(&grants, &allow.names_of);

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
