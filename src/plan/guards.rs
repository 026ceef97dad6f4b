//! Interface guards: the rules that make `route_localnet=1` safe on one interface.
//!
//! Turning on `route_localnet` lets the kernel route 127/8 to and from an interface at
//! all; these chains take back everything except what a grant publishes: no packet
//! addressed to loopback comes in directly, no spoofed loopback source is accepted or
//! leaves, and loopback is reached only through a published port (the input chain ends
//! in drop). They are one concern apart from the grants because they must exist for
//! every managed interface whatever its grants are: the guard is what `audit` and the
//! transaction's "never open without guard" rule check for.

use super::{
    rule, target_key, MAP_INPUT_IFACES, MAP_INPUT_TARGETS, MAP_POST_IFACES, MAP_RAW_IFACES,
};
use crate::grant::{loopback, Grant};
use crate::ruleset::{Chain, CtDir, KeyField, KeyValue, MapElement, Match, Verdict, VerdictMap};

/// The guard's drop rules, by what ends their comment (`IFACE guard: WHAT`), with the
/// kind `audit` reports their counters under (`blocked`).
pub(crate) const GUARD_DROPS: [(&str, &str); 4] = [
    (DIRECT, "direct-to-loopback"),
    (SPOOFED, "spoofed-loopback-source"),
    (LEAKED, "leaked-loopback-source"),
    (INPUT_DROP, "input-drop"),
];
const DIRECT: &str = "no direct route to loopback";
const SPOOFED: &str = "no spoofed loopback source";
const LEAKED: &str = "no loopback source leaves";
const INPUT_DROP: &str = "loopback only through published ports";

/// The three per-interface dispatch maps and the guard chains they jump to.
pub(super) struct Guards {
    /// `iifname vmap @raw_ifaces`: interface -> `raw_ifN`.
    pub raw: VerdictMap,
    /// `iifname vmap @input_ifaces`: interface -> `input_ifN`.
    pub input: VerdictMap,
    /// `oifname vmap @post_ifaces`: interface -> `post_ifN`.
    pub post: VerdictMap,
    /// `raw_ifN`, `input_ifN`, `post_ifN` for each interface in turn.
    pub chains: Vec<Chain>,
}

impl Guards {
    /// Plans the guard of every interface `grants` publish on and of every interface
    /// in `guarded` (guard only, no grant); interface N is the N-th distinct one in
    /// name order.
    pub fn plan(grants: &[&Grant], guarded: &[String]) -> Guards {
        let mut guards = Guards {
            // map raw_ifaces { type ifname : verdict; elements = { "br0" : jump raw_if0 } }
            raw: iface_map(MAP_RAW_IFACES, KeyField::IifName),
            // map input_ifaces { type ifname : verdict; elements = { "br0" : jump input_if0 } }
            input: iface_map(MAP_INPUT_IFACES, KeyField::IifName),
            // map post_ifaces { type ifname : verdict; elements = { "br0" : jump post_if0 } }
            post: iface_map(MAP_POST_IFACES, KeyField::OifName),
            chains: Vec::new(),
        };
        let mut ifaces: Vec<&str> = grants
            .iter()
            .map(|g| g.iface.as_str())
            .chain(guarded.iter().map(String::as_str))
            .collect();
        ifaces.sort();
        ifaces.dedup();
        for (i, iface) in ifaces.into_iter().enumerate() {
            let (raw, input, post) = (raw(i, iface), input(i, iface), post(i, iface));
            jump(&mut guards.raw, iface, &raw);
            jump(&mut guards.input, iface, &input);
            jump(&mut guards.post, iface, &post);
            guards.chains.extend([raw, input, post]);
        }
        guards
    }
}

/// `chain raw_ifN`, reached at prerouting before conntrack and routing: a packet that
/// names loopback on this interface is dropped before the kernel can route it.
///
/// Why here and why both addresses: with `route_localnet=1` the kernel no longer
/// treats 127/8 on this interface as martian, so a neighbour's packet to 127.0.0.1
/// (CVE-2020-8558) would be routed to every loopback service; a spoofed 127/8 source
/// would look local to services that trust 127.0.0.1, and their replies would go to
/// loopback. At `raw` (-300) the drop comes before conntrack (a dropped flood leaves no
/// conntrack entries) and before `dstnat` (-100): a granted packet still carries the
/// published address here, not 127.0.0.1, so only the DNAT of a grant, later, ever
/// turns a packet from this interface into one for loopback.
fn raw(i: usize, iface: &str) -> Chain {
    Chain {
        name: format!("raw_if{i}"),
        attach: None,
        rules: vec![
            // ip daddr 127.0.0.0/8 counter drop
            rule(
                vec![Match::DaddrIn(loopback())],
                Verdict::Drop,
                format!("{iface} guard: {DIRECT}"),
            ),
            // ip saddr 127.0.0.0/8 counter drop
            rule(
                vec![Match::SaddrIn(loopback())],
                Verdict::Drop,
                format!("{iface} guard: {SPOOFED}"),
            ),
        ],
    }
}

/// `chain input_ifN`, reached at input for packets to 127/8 from this interface: only
/// replies and flows a grant DNATed get through.
///
/// Why replies: loopgate's own grants never need the first rule, but other tools'
/// hairpins do. Docker with `--userland-proxy=false`, netavark and the CNI portmap
/// plugin DNAT a host connection to `127.0.0.1:PORT` to a container and masquerade it;
/// the container's replies come back on the bridge and conntrack turns their
/// destination back into 127.0.0.1 before input. Without the rule, guarding such a
/// bridge (`loopgate guard`) would break that hairpin. It opens nothing to a neighbour:
/// conntrack calls a packet a reply only when it matches the reply tuple of a flow that
/// already exists, which the host opened; anything else, untracked packets included,
/// falls through to the final drop.
fn input(i: usize, iface: &str) -> Chain {
    Chain {
        name: format!("input_if{i}"),
        attach: None,
        rules: vec![
            // ct direction reply counter accept
            rule(
                vec![Match::CtDirection(CtDir::Reply)],
                Verdict::Accept,
                format!("{iface} guard: replies of flows the host opened"),
            ),
            // iifname . ip daddr . meta l4proto . th dport vmap @input_targets
            // (a DNATed flow's accept lives in its target's chain: see targets.rs)
            rule(
                vec![],
                Verdict::Vmap {
                    key: target_key(),
                    map: MAP_INPUT_TARGETS.to_string(),
                },
                format!("{iface}: flows a grant DNATed"),
            ),
            // counter drop  (also catches untracked packets)
            rule(
                vec![],
                Verdict::Drop,
                format!("{iface} guard: {INPUT_DROP}"),
            ),
        ],
    }
}

/// `chain post_ifN`, reached at postrouting after source NAT, where the replies of a
/// DNATed flow already carry the published address again: a packet still leaving with
/// a loopback source is a leak that `route_localnet` would otherwise let out.
fn post(i: usize, iface: &str) -> Chain {
    Chain {
        name: format!("post_if{i}"),
        attach: None,
        // ip saddr 127.0.0.0/8 counter drop
        rules: vec![rule(
            vec![Match::SaddrIn(loopback())],
            Verdict::Drop,
            format!("{iface} guard: {LEAKED}"),
        )],
    }
}

/// An empty map keyed by one interface field, filled as the interfaces are planned.
fn iface_map(name: &str, field: KeyField) -> VerdictMap {
    VerdictMap {
        name: name.to_string(),
        key: vec![field],
        elements: Vec::new(),
    }
}

/// Adds `"iface" : jump <chain>` to `map`.
fn jump(map: &mut VerdictMap, iface: &str, chain: &Chain) {
    map.elements.push(MapElement {
        key: vec![KeyValue::Name(iface.to_string())],
        jump: chain.name.clone(),
    });
}
