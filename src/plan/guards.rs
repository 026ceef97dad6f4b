//! Interface guards: the rules that make `route_localnet=1` safe on one interface.
//!
//! Turning on `route_localnet` lets the kernel route 127/8 to and from an interface at
//! all; these chains take back everything except what a grant publishes: no packet
//! addressed to loopback comes in directly, no spoofed loopback source is accepted or
//! leaves, and loopback is reached only through a published port (the input chain ends
//! in drop). They are one concern apart from the grants because they must exist for
//! every managed interface whatever its grants are: the guard is what `audit` and the
//! transaction's "never open without guard" rule check for.

use super::names::{GuardHook, Naming};
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
pub(super) const INPUT_DROP: &str = "loopback only through published ports";
/// The comment's end on the accept of flows another table DNATed to loopback, by
/// which `audit` finds its counter.
const FOREIGN_FORWARDS: &str = "flows another table DNATed to loopback";

/// The three per-interface dispatch maps and the guard chains they jump to.
pub(super) struct Guards {
    /// `iifname vmap @raw_ifaces`: interface -> `raw_if_IF`.
    pub raw: VerdictMap,
    /// `iifname vmap @input_ifaces`: interface -> `input_if_IF`.
    pub input: VerdictMap,
    /// `oifname vmap @post_ifaces`: interface -> `post_if_IF`.
    pub post: VerdictMap,
    /// `raw_if_IF`, `input_if_IF`, `post_if_IF` for each interface in name order.
    pub chains: Vec<Chain>,
}

impl Guards {
    /// Plans the guard of every interface `grants` publish on and of every interface
    /// in `guarded` (guard only, no grant), in name order, their chains named by
    /// `naming`.
    pub fn plan(
        grants: &[&Grant],
        guarded: &[String],
        admitted: &[String],
        naming: Naming,
    ) -> Guards {
        let mut guards = Guards {
            // map raw_ifaces { type ifname : verdict; elements = { "br0" : jump raw_if_br0 } }
            raw: iface_map(MAP_RAW_IFACES, KeyField::IifName),
            // map input_ifaces { type ifname : verdict; elements = { "br0" : jump input_if_br0 } }
            input: iface_map(MAP_INPUT_IFACES, KeyField::IifName),
            // map post_ifaces { type ifname : verdict; elements = { "br0" : jump post_if_br0 } }
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
            // Only where loopgate did not open the interface itself (see `input`).
            let admit = guarded.iter().chain(admitted).any(|g| g == iface);
            let name = |hook| naming.guard(hook, i, iface);
            let (raw, input, post) = (
                raw(name(GuardHook::Raw), iface),
                input(name(GuardHook::Input), iface, admit),
                post(name(GuardHook::Post), iface),
            );
            jump(&mut guards.raw, iface, &raw);
            jump(&mut guards.input, iface, &input);
            jump(&mut guards.post, iface, &post);
            guards.chains.extend([raw, input, post]);
        }
        guards
    }
}

/// `chain raw_if_IF`, reached at prerouting before conntrack and routing: a packet that
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
fn raw(name: String, iface: &str) -> Chain {
    Chain {
        name,
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

/// `chain input_if_IF`, reached at input for packets to 127/8 from this interface: only
/// replies, flows a grant DNATed and flows another table's DNAT rule sent to loopback
/// get through.
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
///
/// Why another table's DNAT: a tool that publishes a loopback service itself (the
/// Amazon ECS agent DNATs `169.254.170.2:80` to `127.0.0.1:51679` so that tasks fetch
/// their credentials; an operator's hand-made `dnat to 127.0.0.1:PORT`) set
/// `route_localnet=1` for that forward, and guarding the interface must not break it
/// (`audit` lists each such forward as a `foreign-forward` exposure instead, with its
/// source restriction). What the accept needs is what only an explicit DNAT rule
/// produces: the flow is DNATed (`ct status dnat`, set by the NAT binding of its first
/// packet) and its first packet was not addressed to 127/8 (the raw guard drops a
/// packet that is, before conntrack, so no flow of this interface ever starts there;
/// the check keeps that true whatever else changes). A packet sent to 127.x directly
/// or with a spoofed 127/8 source never gets here (raw), an untracked packet has no
/// status (it falls to the drop), and a `redirect` sends to the interface's own
/// address, never to 127/8. Flows loopgate itself DNATed never reach the accept: their
/// target is in `input_targets`, whose chains end in a drop ([`super::targets`]).
///
/// The accept is only in the guard of an interface in `guarded` (loopgate guards it
/// without opening it: another tool opened it) or `admitted` (it was open before
/// loopgate managed it: its recorded route_localnet, or conf.all, was non-zero; see
/// `txn::compute`). There
/// another table's forward to 127/8 worked before loopgate came, and the guard must
/// not break it (the Amazon ECS agent's credentials endpoint). On an interface loopgate
/// opened for its grants, such a forward never worked (the kernel dropped it as a
/// martian while route_localnet was 0), so letting it through would widen access
/// beyond what was asked: there it is dropped, and `audit` reports it.
fn input(name: String, iface: &str, admit_forwards: bool) -> Chain {
    let mut rules = vec![
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
    ];
    if admit_forwards {
        // ct status dnat ct original ip daddr != 127.0.0.0/8 counter accept
        rules.push(rule(
            vec![Match::CtStatusDnat, Match::CtOriginalDaddrNotIn(loopback())],
            Verdict::Accept,
            format!("{iface}: {FOREIGN_FORWARDS}"),
        ));
    }
    // counter drop  (also catches untracked packets)
    rules.push(rule(
        vec![],
        Verdict::Drop,
        format!("{iface} guard: {INPUT_DROP}"),
    ));
    Chain {
        name,
        attach: None,
        rules,
    }
}

/// `chain post_if_IF`, reached at postrouting after source NAT, where the replies of a
/// DNATed flow already carry the published address again: a packet still leaving with
/// a loopback source is a leak that `route_localnet` would otherwise let out.
fn post(name: String, iface: &str) -> Chain {
    Chain {
        name,
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

#[cfg(test)]
mod tests {
    use super::super::{ruleset, MAP_INPUT_IFACES, MAP_INPUT_TARGETS};
    use crate::grant::{loopback, Grant, Proto};
    use crate::ruleset::{Match, Ruleset, Verdict};

    fn chains_of<'a>(r: &'a Ruleset, map: &str) -> Vec<&'a crate::ruleset::Chain> {
        let m = r.maps.iter().find(|m| m.name == map).unwrap();
        m.elements
            .iter()
            .map(|e| r.chains.iter().find(|c| c.name == e.jump).unwrap())
            .collect()
    }

    /// The accept of another table's DNAT is only in the guard of an interface in
    /// `guarded` (loopgate did not open it), after the grants' targets and before the
    /// drop; it asks for a DNATed flow whose first packet was not addressed to 127/8,
    /// and every grant target's chain ends in a drop, so it never takes loopgate's own
    /// flows (nor another table's flow to a grant's target). On an interface loopgate
    /// opened for its grants there is no such accept.
    #[test]
    fn foreign_dnat_is_accepted_only_where_loopgate_did_not_open_and_never_for_a_grant_target() {
        let g = Grant {
            name: "g".into(),
            iface: "br0".into(),
            proto: Proto::Tcp,
            listen: "192.0.2.1".parse().unwrap(),
            port: 3306,
            to: "127.0.0.1:3306".parse().unwrap(),
            allow: vec!["192.0.2.0/25".parse().unwrap()],
            network: None,
        };
        let opened = ruleset(std::slice::from_ref(&g)).unwrap();
        let input = chains_of(&opened, MAP_INPUT_IFACES)[0];
        let verdicts: Vec<&Verdict> = input.rules.iter().map(|x| &x.verdict).collect();
        assert_eq!(verdicts.len(), 3, "{input:?}");
        assert_eq!(verdicts[2], &Verdict::Drop);
        let r = super::super::ruleset_admitting(&[g], &[], &["br0".to_string()]).unwrap();
        let input = chains_of(&r, MAP_INPUT_IFACES)[0];
        let verdicts: Vec<&Verdict> = input.rules.iter().map(|x| &x.verdict).collect();
        assert!(matches!(verdicts[1], Verdict::Vmap { .. }), "{input:?}");
        assert_eq!(
            (verdicts[2], verdicts[3]),
            (&Verdict::Accept, &Verdict::Drop)
        );
        assert_eq!(
            input.rules[2].matches,
            [Match::CtStatusDnat, Match::CtOriginalDaddrNotIn(loopback())]
        );
        for t in chains_of(&r, MAP_INPUT_TARGETS) {
            let last = t.rules.last().unwrap();
            assert!(
                last.matches.is_empty() && last.verdict == Verdict::Drop,
                "{t:?}"
            );
        }
    }
}
