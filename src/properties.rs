//! Property tests of the pure core: CIDR merging, the guard's completeness, determinism
//! and idempotence of the plan, names that change only with their own object.
//! Generated inputs, checked against simple models.

use crate::cidr;
use crate::grant::{Grant, GrantKey, Proto};
use crate::kernel::nft;
use crate::kernel::sysctl::Device;
use crate::plan;
use crate::ruleset::Verdict;
use crate::state::{State, STATE_VERSION};
use crate::txn::{Change, Target};
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
        0usize..5,
        prop_oneof![Just(Proto::Tcp), Just(Proto::Udp)],
        1u16..6,
        1u8..4,
        0u16..2,
        prop_oneof![
            prop::collection::vec(net_in_small_space(), 1..6),
            // Enough single addresses for a hash set of their own, plus a network.
            (0u32..40, 64u32..90, net_in_small_space()).prop_map(|(start, count, net)| {
                let base = u32::from(Ipv4Addr::new(198, 51, 100, 0));
                (start..start + count)
                    .map(|h| Ipv4Network::new(Ipv4Addr::from(base + 2 * h), 32).unwrap())
                    .chain([net])
                    .collect()
            }),
        ],
    )
        .prop_map(|(iface, proto, port, target, target_port, allow)| {
            // Two names a sanitiser that drops odd characters would make one.
            let ifaces = ["br0", "cni0", "docker0", "a@b.c+d", "a#b.c+d"];
            Grant {
                name: format!("g{iface}{port}"),
                iface: ifaces[iface].to_string(),
                proto,
                listen: Ipv4Addr::new(192, 0, 2, iface as u8 + 1),
                port,
                // Few targets, so grants on one interface often share one.
                to: SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, target), 3306 + target_port),
                allow,
                network: None,
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

#[test]
fn many_single_addresses_get_a_hash_set_and_the_rest_an_interval_set() {
    let base = u32::from(Ipv4Addr::new(198, 51, 100, 0));
    let mut allow: Vec<Ipv4Network> = (0..plan::HOSTS_SET_FROM as u32)
        .map(|h| Ipv4Network::new(Ipv4Addr::from(base + 2 * h), 32).unwrap())
        .collect();
    allow.push("203.0.113.0/24".parse().unwrap());
    let g = Grant {
        name: "big".into(),
        iface: "br0".into(),
        proto: Proto::Tcp,
        listen: Ipv4Addr::new(192, 0, 2, 1),
        port: 1,
        to: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1),
        allow: allow.clone(),
        network: None,
    };
    let r = plan::ruleset(std::slice::from_ref(&g)).unwrap();
    let kinds: Vec<(&str, bool, usize)> = r
        .sets
        .iter()
        .map(|s| (s.name.as_str(), s.hosts, s.ranges.len()))
        .collect();
    let hash = r.sets[1].name.strip_prefix("allow_").unwrap();
    assert_eq!(hash.len(), 16, "{kinds:?}");
    let hosts = format!("allow_{hash}_hosts");
    assert_eq!(
        kinds,
        vec![
            (hosts.as_str(), true, plan::HOSTS_SET_FROM),
            (r.sets[1].name.as_str(), false, 1)
        ]
    );
    assert_eq!(plan::verify(&r, std::slice::from_ref(&g)), Ok(()));
    // One address fewer: everything stays in one interval set.
    allow.remove(0);
    let small = Grant { allow, ..g };
    let r = plan::ruleset(std::slice::from_ref(&small)).unwrap();
    assert_eq!(r.sets.len(), 1);
    assert!(!r.sets[0].hosts);
}

proptest! {
    #[test]
    fn fast_network_text_equals_display(addr in any::<u32>(), prefix in 0u8..=32) {
        let n = Ipv4Network::new(Ipv4Addr::from(addr), prefix).unwrap();
        prop_assert_eq!(crate::grant::network_text(&n), n.to_string());
    }

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
        prop_assert_eq!(plan::verify(&r, &gs), Ok(()));
    }

    #[test]
    fn verify_notices_a_missing_guard_or_an_extra_accept(gs in grants(), which in 0usize..3) {
        let mut r = plan::ruleset(&gs).unwrap();
        match which {
            // A guard chain loses its drop.
            0 => { r.chains.iter_mut().find(|c| c.name.starts_with("raw_if_")).unwrap().rules.remove(0); }
            // An interface chain accepts what it should drop.
            1 => { r.chains.iter_mut().find(|c| c.name.starts_with("input_if_")).unwrap().rules.last_mut().unwrap().verdict = Verdict::Accept; }
            // A grant admits the whole loopback set's neighbours: its allow set is widened.
            _ => { r.sets[0].ranges = vec![(0, u32::MAX)]; }
        }
        prop_assert!(plan::verify(&r, &gs).is_err());
    }

    #[test]
    fn the_plan_is_deterministic(gs in grants(), seed in any::<u64>()) {
        // `ruleset` sorts the grants first, so shuffling them alone tests that sort
        // only: the allow lists inside each grant and the guarded interfaces are
        // shuffled too, and the same input is planned twice (no order from a hash).
        let mut s = seed;
        let mut shuffle = |n: usize| -> Vec<usize> {
            let mut order: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                order.swap(i, (s >> 33) as usize % (i + 1));
            }
            order
        };
        let mut shuffled: Vec<Grant> = shuffle(gs.len()).into_iter().map(|i| gs[i].clone()).collect();
        for g in &mut shuffled {
            g.allow = shuffle(g.allow.len()).into_iter().map(|i| g.allow[i]).collect();
        }
        let guarded = vec!["gd0".to_string(), "gd1".to_string(), "gd2".to_string()];
        let guarded_shuffled: Vec<String> =
            shuffle(guarded.len()).into_iter().map(|i| guarded[i].clone()).collect();
        let a = plan::ruleset_with(&gs, &guarded).unwrap();
        let again = plan::ruleset_with(&gs, &guarded).unwrap();
        let b = plan::ruleset_with(&shuffled, &guarded_shuffled).unwrap();
        prop_assert_eq!(a.to_nft(), again.to_nft());
        prop_assert_eq!(a.to_nft(), b.to_nft());
        prop_assert_eq!(nft::planned_image(&a), nft::planned_image(&b));
    }

    #[test]
    fn planning_again_after_applying_changes_nothing(gs in grants()) {
        let devices = |value: i32| -> BTreeMap<u32, Device> {
            plan::interfaces(&gs).into_iter().enumerate().map(|(i, name)| {
                let ifindex = i as u32 + 2;
                (ifindex, Device { ifindex, name, route_localnet: value, ready: true })
            }).collect()
        };
        let before = devices(0);
        let target = Target { grants: gs.clone(), ..Default::default() };
        let applied = Change::compute(State { version: STATE_VERSION, ..Default::default() }, target, &before, None, None);
        prop_assert_eq!(applied.raise.len(), before.len());
        prop_assert!(applied.lower.is_empty());
        // What the kernel and the state file hold after that change committed:
        let state = State { version: STATE_VERSION, grants: applied.grants.clone(), originals: applied.originals.clone(), pending: None, vouch: None, writers: vec![], specs: vec![], guards: vec![], guarded: vec![], admitted: applied.admitted.clone() };
        let sysctls = devices(1);
        let kernel = applied.ruleset.as_deref().map(nft::planned_image);
        let target = Target { grants: gs, ..Target::recorded(&state) };
        let again = Change::compute(state, target, &sysctls, kernel.as_ref(), None);
        prop_assert!(again.is_noop(), "{:?}", again.describe());
    }

    #[test]
    fn names_are_unique_short_and_plain_nft_identifiers(gs in grants()) {
        let r = plan::ruleset_with(&gs, &["a@b".to_string(), "a#b".to_string()]).unwrap();
        let names: Vec<&str> = r.chains.iter().map(|c| c.name.as_str())
            .chain(r.sets.iter().map(|s| s.name.as_str()))
            .chain(r.maps.iter().map(|m| m.name.as_str()))
            .collect();
        let unique: BTreeSet<&str> = names.iter().copied().collect();
        prop_assert_eq!(unique.len(), names.len(), "{:?}", names);
        for n in names {
            prop_assert!(n.len() <= plan::MAX_NAME_LEN, "{}", n);
            prop_assert!(n.starts_with(|c: char| c.is_ascii_alphabetic()), "{}", n);
            prop_assert!(n.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-./".contains(&b)), "{}", n);
        }
    }

    /// Adding a grant (and removing it again) changes only its own objects: its DNAT
    /// chain, its target's chain, its allow list's sets, its interface's guard, and
    /// map elements; every other chain and set keeps its name and its content.
    #[test]
    fn one_grant_more_or_less_touches_only_its_own_objects(gs in grants(), g in grant()) {
        prop_assume!(!gs.iter().any(|x| x.key() == g.key()));
        let without = plan::ruleset(&gs).unwrap();
        let mut more = gs.clone();
        more.push(g.clone());
        let with = plan::ruleset(&more).unwrap();
        let jump = |map: &str, key: Vec<crate::ruleset::KeyValue>| {
            with.map(map).unwrap().jump_for(&key).unwrap().to_string()
        };
        let nat = jump(plan::MAP_NAT_GRANTS, plan::target_key_of(&g.iface, g.listen, g.proto, g.port));
        let mut own: BTreeSet<String> = [plan::MAP_RAW_IFACES, plan::MAP_INPUT_IFACES, plan::MAP_POST_IFACES]
            .into_iter()
            .map(|m| jump(m, vec![crate::ruleset::KeyValue::Name(g.iface.clone())]))
            .collect();
        own.insert(jump(plan::MAP_INPUT_TARGETS, plan::target_key_of(&g.iface, *g.to.ip(), g.proto, g.to.port())));
        for rule in &with.chain(&nat).unwrap().rules {
            for m in &rule.matches {
                if let crate::ruleset::Match::SaddrInSet(s) = m {
                    own.insert(s.clone());
                }
            }
        }
        own.insert(nat);
        own.extend(with.maps.iter().map(|m| m.name.clone()));
        for (from, to) in [(&without, &with), (&with, &without)] {
            let d = nft::diff(from, to).unwrap();
            for label in d.labels() {
                let name = label.trim_end_matches(" (flush)").trim_end_matches(" (delete)");
                let name = name.rsplit(' ').next().unwrap();
                prop_assert!(own.contains(name), "{} is not {}'s: {:?}", label, g.name, own);
            }
        }
    }
}
