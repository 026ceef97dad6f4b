//! The four entry points: the base chains attached to netfilter hooks, and their
//! priorities.
//!
//! Base chains hold dispatching rules only; everything loopgate decides happens in the
//! chains the maps jump to. Kept apart because these are the only chains whose hook and
//! priority matter for safety (the raw guard must run before conntrack, the
//! postrouting guard after source NAT). `verify` checks their dispatch rules and that
//! there are four; the unit test `the_base_chains_sit_at_their_priorities` checks their
//! hooks' priorities.

use super::{rule, target_key, MAP_INPUT_IFACES, MAP_NAT_GRANTS, MAP_POST_IFACES, MAP_RAW_IFACES};
use crate::grant::loopback;
use crate::ruleset::{Attachment, Chain, ChainKind, Hook, KeyField, Match, Rule, Verdict};

/// Netfilter hook priorities used by the table (see `nft(8)`, "standard priority
/// names"): `raw`, before conntrack sees the packet.
pub const PRIORITY_RAW: i32 = -300;
/// `dstnat` (-100): after the raw guard (-300) and conntrack (-200), so the guard still
/// sees the published address and NAT has the flow's conntrack entry; before the
/// routing decision, so the route lookup sees 127.0.0.1 arriving on an interface with
/// route_localnet=1.
pub const PRIORITY_DSTNAT: i32 = -100;
/// `filter`: the ordinary filtering priority.
pub const PRIORITY_FILTER: i32 = 0;
/// After srcnat (100), where a reply's source is already translated back, and where
/// another tool's masquerade of a 127/8 source (Docker's hairpin) has already happened.
pub const PRIORITY_AFTER_SRCNAT: i32 = 110;

/// The four entry points, made of dispatching rules only. Where the guard is about
/// 127/8 addresses, a one-byte compare comes before the map lookup, so traffic that is
/// none of loopgate's business (nearly all of it) pays no hash lookup.
pub(super) fn base_chains() -> Vec<Chain> {
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
        // chain raw_prerouting { type filter hook prerouting priority raw; policy accept;
        //   ip daddr 127.0.0.0/8 iifname vmap @raw_ifaces
        //   ip saddr 127.0.0.0/8 iifname vmap @raw_ifaces }
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
        // chain nat_prerouting { type nat hook prerouting priority dstnat; policy accept;
        //   iifname . ip daddr . meta l4proto . th dport vmap @nat_grants }
        // No 127/8 gate here, unlike the other three: a grant's packet still carries the
        // published address at this point, and a packet already addressed to 127/8 was
        // dropped by the raw guard.
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
        // chain input { type filter hook input priority filter; policy accept;
        //   ip daddr 127.0.0.0/8 iifname vmap @input_ifaces }
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
        // chain postrouting { type filter hook postrouting priority srcnat + 10; policy accept;
        //   ip saddr 127.0.0.0/8 oifname vmap @post_ifaces }
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
