//! Property tests of the pure core: CIDR merging, the guard's completeness, determinism
//! and idempotence of the plan. Generated inputs, checked against simple models.

use crate::cidr;
use crate::grant::{Grant, GrantKey, Proto};
use crate::kernel::nft;
use crate::plan;
use crate::ruleset::{Match, Verdict};
use crate::state::{State, STATE_VERSION};
use crate::txn::Change;
use ipnetwork::Ipv4Network;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};

fn net_in_small_space() -> impl Strategy<Value = Ipv4Network> {
    (0u32..256, 24u8..=32).prop_map(|(host, prefix)| {
        let addr = u32::from(Ipv4Addr::new(198, 51, 100, 0)) + host;
        let n = Ipv4Network::new(Ipv4Addr::from(addr), prefix).unwrap();
        Ipv4Network::new(n.network(), prefix).unwrap()
    })
}

fn grant() -> impl Strategy<Value = Grant> {
    (
        0usize..3,
        prop_oneof![Just(Proto::Tcp), Just(Proto::Udp)],
        1u16..6,
        1u8..4,
        prop::collection::vec(net_in_small_space(), 1..6),
    )
        .prop_map(|(iface, proto, port, target, allow)| {
            let ifaces = ["br0", "cni0", "docker0"];
            Grant {
                name: format!("g{iface}{port}"),
                iface: ifaces[iface].to_string(),
                proto,
                listen: Ipv4Addr::new(192, 0, 2, iface as u8 + 1),
                port,
                to: SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, target), port + 1000),
                allow,
            }
        })
}

/// Grants with distinct keys, as validation guarantees.
fn grants() -> impl Strategy<Value = Vec<Grant>> {
    prop::collection::vec(grant(), 1..12).prop_map(|gs| {
        let mut seen: BTreeSet<GrantKey> = BTreeSet::new();
        gs.into_iter().filter(|g| seen.insert(g.key())).collect()
    })
}

proptest! {
    #[test]
    fn merging_equals_the_brute_force_model(nets in prop::collection::vec(net_in_small_space(), 0..20)) {
        let merged = cidr::merge(&nets);
        for w in merged.windows(2) {
            prop_assert!(w[0].1 + 1 < w[1].0, "sorted, disjoint, not touching");
        }
        let base = u32::from(Ipv4Addr::new(198, 51, 100, 0));
        for addr in base..base + 256 {
            let model = nets.iter().any(|n| n.contains(Ipv4Addr::from(addr)));
            let got = merged.iter().any(|&(s, e)| s <= addr && addr <= e);
            prop_assert_eq!(model, got);
        }
    }

    #[test]
    fn every_planned_ruleset_guards_every_exposed_interface(gs in grants()) {
        let r = plan::ruleset(&gs).unwrap();
        let chain = |name: &str| r.chains.iter().find(|c| c.name == name).unwrap();
        let has = |chain_name: &str, m: &Match, v: Verdict| {
            chain(chain_name).rules.iter().any(|rule| rule.verdict == v && rule.matches.contains(m) && rule.matches.len() == 2)
        };
        for iface in plan::interfaces(&gs) {
            let iif = Match::IifName(iface.clone());
            prop_assert!(has("raw_prerouting", &iif, Verdict::Drop));
            prop_assert_eq!(chain("raw_prerouting").rules.iter().filter(|x| x.matches.contains(&iif) && x.verdict == Verdict::Drop).count(), 2);
            // The input chain ends with the catch-all drop for this interface.
            let last = chain("input").rules.iter().rev().find(|x| x.matches.contains(&iif)).unwrap();
            prop_assert_eq!(last.verdict, Verdict::Drop);
            prop_assert!(has("postrouting", &Match::OifName(iface.clone()), Verdict::Drop));
        }
        for g in &gs {
            let dnat = chain("nat_prerouting").rules.iter().filter(|x| x.verdict == Verdict::Dnat(g.to) && x.matches.contains(&Match::Daddr(g.listen)) && x.matches.contains(&Match::Dport(g.proto, g.port))).count();
            prop_assert_eq!(dnat, 1);
            let accept = chain("input").rules.iter().filter(|x| x.verdict == Verdict::Accept && x.matches.contains(&Match::CtOriginalProtoDst(g.proto, g.port)) && x.matches.contains(&Match::CtOriginalDaddr(g.listen))).count();
            prop_assert_eq!(accept, 1);
        }
        // Nothing in the table accepts what it does not guard: every accept is either a
        // grant's (ct status dnat) or a reply.
        for rule in chain("input").rules.iter().filter(|x| x.verdict == Verdict::Accept) {
            prop_assert!(rule.matches.contains(&Match::CtStatusDnat) || rule.matches.iter().any(|m| matches!(m, Match::CtDirection(crate::ruleset::CtDir::Reply))));
        }
    }

    #[test]
    fn the_plan_is_deterministic(gs in grants(), seed in any::<u64>()) {
        let mut shuffled = gs.clone();
        let n = shuffled.len();
        let mut s = seed;
        for i in (1..n).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let a = plan::ruleset(&gs).unwrap();
        let b = plan::ruleset(&shuffled).unwrap();
        prop_assert_eq!(a.to_nft(), b.to_nft());
        prop_assert_eq!(nft::planned_image(&a), nft::planned_image(&b));
    }

    #[test]
    fn planning_again_after_applying_changes_nothing(gs in grants()) {
        let before: BTreeMap<String, u8> = plan::interfaces(&gs).into_iter().map(|i| (i, 0)).collect();
        let applied = Change::compute(State { version: STATE_VERSION, ..Default::default() }, gs.clone(), &before, None);
        prop_assert_eq!(applied.sysctls.len(), before.len());
        // What the kernel and the state file hold after that change committed:
        let state = State { version: STATE_VERSION, grants: applied.grants.clone(), originals: applied.originals.clone(), pending: None };
        let sysctls: BTreeMap<String, u8> = applied.originals.keys().map(|i| (i.clone(), 1)).collect();
        let kernel = applied.ruleset.as_ref().map(nft::planned_image);
        let again = Change::compute(state, gs, &sysctls, kernel.as_ref());
        prop_assert!(again.is_noop(), "{:?}", again.describe());
    }
}
