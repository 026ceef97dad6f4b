//! NAT: one chain per grant that turns a published address and port into its loopback
//! target, for the grant's allowed sources only.
//!
//! The `nat_prerouting` base chain looks the packet's `iifname . ip daddr . meta l4proto
//! . th dport` up in `nat_grants`; the element of each grant jumps to its
//! `nat_IF_LISTEN_PROTO_PORT` chain (named after that same key), which checks the source set and DNATs. Checking the source before translating
//! means only allowed sources are ever turned into packets to loopback; the input
//! accepts ([`super::targets`]) check the same sets again, so neither half alone opens
//! a loopback service. The chain runs at priority `dstnat`; why there is said at
//! [`super::hooks::PRIORITY_DSTNAT`].

use super::names::Naming;
use super::{rule, target_key, target_key_of, Dispatch, MAP_NAT_GRANTS};
use crate::grant::Grant;
use crate::ruleset::{Chain, MapElement, Match, Verdict, VerdictMap};

/// Plans `nat_grants` and the grants' chains, named by `naming`. `grants` are in
/// canonical order and `sets_of[i]` names the allow sets of `grants[i]` (see
/// [`super::allow`]).
pub(super) fn plan(grants: &[&Grant], sets_of: &[Vec<String>], naming: Naming) -> Dispatch {
    // map nat_grants { type ifname . ipv4_addr . inet_proto . inet_service : verdict;
    //   elements = { "br0" . 192.0.2.1 . tcp . 3306 : jump nat_br0_192.0.2.1_tcp_3306 } }
    let mut map = VerdictMap {
        name: MAP_NAT_GRANTS.to_string(),
        key: target_key(),
        elements: Vec::new(),
    };
    let mut chains = Vec::with_capacity(grants.len());
    for (i, (g, sets)) in grants.iter().zip(sets_of).enumerate() {
        let chain = Chain {
            name: naming.nat(i, &g.iface, g.listen, g.proto, g.port),
            attach: None,
            // meta l4proto tcp ip saddr @allow_H counter dnat to 127.0.0.1:3306
            // (nft needs the protocol before a port mapping); one rule per set of the
            // allow list
            rules: sets
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
        map.elements.push(MapElement {
            key: target_key_of(&g.iface, g.listen, g.proto, g.port),
            jump: chain.name.clone(),
        });
        chains.push(chain);
    }
    Dispatch { map, chains }
}
