//! The packet's mark followed through a walk, and the reverse path checks (`rpfilter`,
//! `fib saddr . iif oif`) judged from the routes read: Calico's raw PREROUTING as
//! felix writes it, and its variants.

use super::*;
use crate::kernel::host::RouteLookup;
use crate::kernel::xt::{match_exprs, target_exprs};
use std::collections::BTreeMap;

/// `-j MARK --set-xmark VALUE/MASK`, as the xt decoder reads iptables' struct.
fn set_xmark(value: u32, mask: u32) -> Vec<Expr> {
    let mut d = value.to_ne_bytes().to_vec();
    d.extend(mask.to_ne_bytes());
    target_exprs("MARK", 2, &d)
}
/// `-m mark --mark VALUE/MASK`.
fn mark_match(value: u32, mask: u32) -> Vec<Expr> {
    let mut d = value.to_ne_bytes().to_vec();
    d.extend(mask.to_ne_bytes());
    d.push(0);
    match_exprs("mark", 1, &d)
}
/// `-m rpfilter` with xt_rpfilter_info's flags.
fn rpfilter(flags: u8) -> Vec<Expr> {
    match_exprs("rpfilter", 0, &[flags])
}
const VALIDMARK_INVERT: u8 = 0x2 | 0x8;

/// Calico's raw PREROUTING (felix/rules/static.go, StaticRawPreroutingChain, v3.28):
/// clear the bits, mark packets from workloads, drop those failing rpfilter.
fn calico_raw(iface_prefix: &str) -> Vec<Chain> {
    let mut prefix = iface_prefix.as_bytes().to_vec();
    prefix.retain(|b| *b != b'+');
    vec![
        base(
            "ip raw",
            "PREROUTING",
            Hook::Prerouting,
            -300,
            false,
            vec![rule(1, vec![v(Jump::Jump("cali-PREROUTING".into()))])],
        ),
        regular(
            "ip raw",
            "cali-PREROUTING",
            vec![
                rule(2, vec![set_xmark(0, 0xf0000)]),
                rule(
                    3,
                    vec![vec![meta(6), cmp(0, &prefix)], set_xmark(0x40000, 0x40000)],
                ),
                rule(
                    4,
                    vec![
                        mark_match(0x40000, 0x40000),
                        rpfilter(VALIDMARK_INVERT),
                        v(Jump::Drop),
                    ],
                ),
            ],
        ),
    ]
}

fn said_for(chains: Vec<Chain>, route_back: RouteBack) -> String {
    let foreign = Foreign {
        chains,
        ..Default::default()
    };
    match evaluate(
        &foreign,
        &Flow {
            route_back,
            ..flow()
        },
    ) {
        Verdict::Passes => "passes".into(),
        Verdict::Drops { chain, stop, .. } => format!("drops {chain} {}", stop.words()),
        Verdict::MayDrop { chain, why, .. } => format!("may {chain}: {why}"),
    }
}

const STRICT_OK: RouteBack = RouteBack {
    strict: Some(true),
    loose: Some(true),
};
const ELSEWHERE: RouteBack = RouteBack {
    strict: Some(false),
    loose: Some(true),
};

#[test]
fn a_mark_set_earlier_in_the_walk_decides_a_later_mark_match() {
    // From a workload (cali+): the mark is set, rpfilter decides.
    assert_eq!(said_for(calico_raw("br"), STRICT_OK), "passes");
    assert_eq!(
        said_for(calico_raw("br"), ELSEWHERE),
        "drops PREROUTING drop"
    );
    // Not from a workload: the bit was cleared, the rule cannot match whatever
    // rpfilter says (it is not even asked).
    assert_eq!(said_for(calico_raw("cali"), RouteBack::default()), "passes");
    // From a workload, the route back not known: "may", naming rpfilter, not the mark.
    let may = said_for(calico_raw("br"), RouteBack::default());
    assert!(
        may.starts_with("may PREROUTING") && may.contains("rpfilter --validmark --invert"),
        "{may}"
    );
    assert!(
        may.contains("unless") && may.contains("`rpfilter --validmark --invert` (not known"),
        "{may}"
    );
}

#[test]
fn a_mark_not_set_in_the_walk_stays_unknown() {
    // Without the clearing rule and the set, the mark may be anything (eBPF, tc,
    // another table): the match is not known.
    let only_match = vec![base(
        "ip raw",
        "PREROUTING",
        Hook::Prerouting,
        -300,
        false,
        vec![rule(4, vec![mark_match(0x40000, 0x40000), v(Jump::Drop)])],
    )];
    assert!(said_for(only_match.clone(), STRICT_OK).starts_with("may PREROUTING"));
    // Bits set elsewhere than the ones matched stay unknown too.
    let mut partly = only_match.clone();
    partly[0]
        .rules
        .insert(0, rule(1, vec![set_xmark(0x1, 0x1)]));
    assert!(said_for(partly, STRICT_OK).starts_with("may PREROUTING"));
    // A set under a match not known for the flow leaves both marks possible.
    let mut maybe_set = only_match.clone();
    maybe_set[0]
        .rules
        .insert(0, rule(2, vec![set_xmark(0, 0x40000)]));
    maybe_set[0].rules.insert(
        1,
        rule(3, vec![saddr("192.0.2.0/26"), set_xmark(0x40000, 0x40000)]),
    );
    assert!(said_for(maybe_set.clone(), STRICT_OK).starts_with("may PREROUTING"));
    // ... and a certain one decides: cleared, then set, then dropped.
    maybe_set[0].rules[1] = rule(3, vec![saddr("192.0.2.0/24"), set_xmark(0x40000, 0x40000)]);
    assert_eq!(said_for(maybe_set, STRICT_OK), "drops PREROUTING drop");
    // CONNMARK --restore-mark (mode 2) makes the mark unknown again.
    let mut restored = only_match;
    restored[0]
        .rules
        .insert(0, rule(1, vec![set_xmark(0, 0x40000)]));
    let mut connmark = vec![0u8; 16];
    connmark[12] = 2;
    restored[0]
        .rules
        .insert(1, rule(2, vec![target_exprs("CONNMARK", 1, &connmark)]));
    // (At raw PREROUTING the packet is not tracked yet: the restore does nothing.)
    assert_eq!(said_for(restored.clone(), STRICT_OK), "passes");
    restored[0].base.as_mut().unwrap().priority = -150;
    assert!(said_for(restored, STRICT_OK).starts_with("may PREROUTING"));
}

#[test]
fn a_mark_set_in_a_jumped_chain_comes_back_with_the_return() {
    // Calico's filter side: a profile chain sets the accept bit, its caller returns
    // on it, and the drop after is never reached.
    let chains = vec![
        input(
            false,
            vec![
                rule(1, vec![set_xmark(0, 0x10000)]),
                rule(2, vec![v(Jump::Jump("cali-pro".into()))]),
                rule(3, vec![mark_match(0x10000, 0x10000), v(Jump::Accept)]),
                rule(4, vec![v(Jump::Drop)]),
            ],
        ),
        regular(
            "inet filter",
            "cali-pro",
            vec![rule(5, vec![set_xmark(0x10000, 0x10000)])],
        ),
    ];
    assert_eq!(said_for(chains.clone(), RouteBack::default()), "passes");
    // The profile sets it only for some sources: the drop may be reached.
    let mut some = chains;
    some[1].rules[0] = rule(5, vec![saddr("192.0.2.0/26"), set_xmark(0x10000, 0x10000)]);
    assert!(said_for(some, RouteBack::default()).starts_with("may input"));
}

#[test]
fn nft_fib_reverse_path_checks_read_the_route_back() {
    // `fib saddr . iif oif missing drop` (firewalld's rpfilter, as nft >= 1.0 writes it
    // with NFTA_FIB_F_PRESENT) and the older form comparing the index with 0.
    let fib = |present: bool, name: bool| Expr::FibOif {
        iif: true,
        present,
        name,
        dreg: 1,
    };
    let check = |e: Expr, zero: &[u8]| {
        vec![base(
            "inet firewalld",
            "filter_PREROUTING",
            Hook::Prerouting,
            -290,
            false,
            vec![rule(7, vec![vec![e, cmp(0, zero)], v(Jump::Drop)])],
        )]
    };
    for (e, zero) in [
        (fib(true, false), &[0u8][..]),
        (fib(false, false), &[0u8; 4][..]),
        (fib(false, true), &[0u8; 16][..]),
    ] {
        assert_eq!(
            said_for(check(e.clone(), zero), STRICT_OK),
            "passes",
            "{e:?}"
        );
        assert_eq!(
            said_for(check(e.clone(), zero), ELSEWHERE),
            "drops filter_PREROUTING drop",
            "{e:?}"
        );
        assert!(said_for(check(e.clone(), zero), RouteBack::default()).starts_with("may"));
    }
    // Loose (`fib saddr oif missing`): any route back will do.
    let loose = Expr::FibOif {
        iif: false,
        present: true,
        name: false,
        dreg: 1,
    };
    assert_eq!(said_for(check(loose.clone(), &[0]), ELSEWHERE), "passes");
    let none = RouteBack {
        strict: Some(false),
        loose: Some(false),
    };
    assert_eq!(
        said_for(check(loose, &[0]), none),
        "drops filter_PREROUTING drop"
    );
    // xt rpfilter --loose.
    let xt_loose = vec![base(
        "ip raw",
        "PREROUTING",
        Hook::Prerouting,
        -300,
        false,
        vec![rule(4, vec![rpfilter(0x1 | 0x8), v(Jump::Drop)])],
    )];
    assert_eq!(said_for(xt_loose.clone(), ELSEWHERE), "passes");
    assert_eq!(said_for(xt_loose, none), "drops PREROUTING drop");
}

#[test]
fn the_route_back_is_judged_only_under_the_default_policy_rules() {
    let net: Ipv4Network = "198.51.100.0/24".parse().unwrap();
    let out = |d: &str| RouteLookup::Out(d.into());
    let mut lookups = BTreeMap::new();
    for s in crate::audit::reachability::samples(net) {
        lookups.insert(s, RouteLookup::Unroutable("no route".into()));
    }
    // A CNI's /32 per pod: the part here is what counts.
    let table = vec![
        ("198.51.100.10/32".parse().unwrap(), "cali1".to_string()),
        ("198.51.100.11/32".parse().unwrap(), "cali2".to_string()),
    ];
    let routes = Routes {
        lookups: &lookups,
        table: &table,
    };
    let rb = route_back(Some(true), &routes, net, "cali1");
    assert_eq!(rb.strict, Some(true));
    assert_eq!(rb.loose, Some(false), "the samples have no route at all");
    // Another interface's only: strict fails.
    assert_eq!(
        route_back(Some(true), &routes, net, "cali3").strict,
        Some(false)
    );
    // Policy rules beyond the defaults, or not read: nothing is known.
    assert_eq!(
        route_back(Some(false), &routes, net, "cali1"),
        RouteBack::default()
    );
    assert_eq!(
        route_back(None, &routes, net, "cali1"),
        RouteBack::default()
    );
    // Every sample out through the interface.
    let mut through = BTreeMap::new();
    for s in crate::audit::reachability::samples(net) {
        through.insert(s, out("br0"));
    }
    let routes = Routes {
        lookups: &through,
        table: &[],
    };
    assert_eq!(route_back(Some(true), &routes, net, "br0"), STRICT_OK);
    assert_eq!(route_back(Some(true), &routes, net, "br1"), ELSEWHERE);
    // Split between interfaces, nothing of it routed here by its own route: unknown.
    let first = *through.keys().next().unwrap();
    through.insert(first, out("br1"));
    let routes = Routes {
        lookups: &through,
        table: &[],
    };
    assert_eq!(route_back(Some(true), &routes, net, "br0").strict, None);
    // A network too wide to sample, or samples not looked up.
    let wide: Ipv4Network = "0.0.0.0/0".parse().unwrap();
    assert_eq!(
        route_back(Some(true), &routes, wide, "br0"),
        RouteBack::default()
    );
    let empty = BTreeMap::new();
    let routes = Routes {
        lookups: &empty,
        table: &[],
    };
    assert_eq!(
        route_back(Some(true), &routes, net, "br0"),
        RouteBack::default()
    );
}
