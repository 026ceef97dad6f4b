//! Input targets: the accepts that let a DNATed flow reach its loopback service.
//!
//! After DNAT the packet's own address and port are the target's, shared by every
//! grant that maps to it (two published ports to one `127.0.0.1:3306`); only the
//! conntrack original tuple still tells those grants apart. So the input guard looks
//! the packet up by its translated `iifname . ip daddr . meta l4proto . th dport` in
//! `input_targets`, and the chain of that target holds one accept per grant, each
//! matching the grant's original address, port and allow set. Grants sharing a target
//! on one interface share its chain.
//!
//! Each chain ends in a drop: a flow that reached a grant's target without being one of
//! its grants' flows (a source taken out of an allow set, another table's DNAT to the
//! same target) stops here, so the input guard's accept of flows other tables DNATed
//! (see `guards`) can never take a flow loopgate DNATed, nor a flow to what a grant
//! publishes.

use super::guards::INPUT_DROP;
use super::names::Naming;
use super::{rule, target_key, target_key_of, Dispatch, MAP_INPUT_TARGETS};
use crate::grant::{Grant, Proto};
use crate::ruleset::{Chain, MapElement, Match, Rule, Verdict, VerdictMap};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Plans `input_targets` and its chains, named by `naming`, in the order of their
/// (interface, address, protocol, port). `grants` are in canonical order and
/// `sets_of[i]` names the allow sets of `grants[i]` (see [`super::allow`]).
pub(super) fn plan(grants: &[&Grant], sets_of: &[Vec<String>], naming: Naming) -> Dispatch {
    let mut by_target: BTreeMap<(&str, Ipv4Addr, Proto, u16), Vec<Rule>> = BTreeMap::new();
    for (g, sets) in grants.iter().zip(sets_of) {
        let rules = by_target
            .entry((&g.iface, *g.to.ip(), g.proto, g.to.port()))
            .or_default();
        for set in sets {
            // ct status dnat ct original ip daddr 192.0.2.1 ct original protocol tcp
            //   ct original proto-dst 3306 ip saddr @allow_H counter accept
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
    // map input_targets { type ifname . ipv4_addr . inet_proto . inet_service : verdict;
    //   elements = { "br0" . 127.0.0.1 . tcp . 3306 : jump input_to_br0_127.0.0.1_tcp_3306 } }
    let mut map = VerdictMap {
        name: MAP_INPUT_TARGETS.to_string(),
        key: target_key(),
        elements: Vec::new(),
    };
    let mut chains = Vec::with_capacity(by_target.len());
    for (i, ((iface, addr, proto, port), rules)) in by_target.into_iter().enumerate() {
        // chain input_to_br0_127.0.0.1_tcp_3306 { <the accepts above> }
        let name = naming.target(i, iface, addr, proto, port);
        map.elements.push(MapElement {
            key: target_key_of(iface, addr, proto, port),
            jump: name.clone(),
        });
        let mut rules = rules;
        // counter drop
        rules.push(rule(
            vec![],
            Verdict::Drop,
            format!("{iface} guard: {INPUT_DROP}"),
        ));
        chains.push(Chain {
            name,
            attach: None,
            rules,
        });
    }
    Dispatch { map, chains }
}
