//! The evaluator against hand-built foreign rulesets (as `nft --debug=netlink` shows
//! them), and the findings it gives.

use super::*;
use crate::audit::Severity;
use crate::grant::Grant;
use crate::kernel::firewall::BaseHook;
use crate::kernel::firewall::{Chain, Expr, Foreign, Hook, Jump, Rule};
use ipnetwork::Ipv4Network;
use std::net::Ipv4Addr;

// Builders for the expressions nft generates (as `nft --debug=netlink` shows).
fn meta(key: u32) -> Expr {
    Expr::Meta { key, dreg: 1 }
}
fn cmp(op: u32, data: &[u8]) -> Expr {
    Expr::Cmp {
        sreg: 1,
        op,
        data: data.to_vec(),
    }
}
fn iifname(name: &str) -> Vec<Expr> {
    let mut b = [0u8; 16];
    b[..name.len()].copy_from_slice(name.as_bytes());
    vec![meta(6), cmp(0, &b)]
}
fn iifname_neq(name: &str) -> Vec<Expr> {
    let mut b = [0u8; 16];
    b[..name.len()].copy_from_slice(name.as_bytes());
    vec![meta(6), cmp(1, &b)]
}
fn saddr(net: &str) -> Vec<Expr> {
    let net: Ipv4Network = net.parse().unwrap();
    vec![
        Expr::Payload {
            base: 1,
            offset: 12,
            len: 4,
            dreg: 1,
        },
        Expr::Bitwise {
            sreg: 1,
            dreg: 1,
            mask: net.mask().octets().to_vec(),
            xor: vec![0; 4],
        },
        cmp(0, &net.network().octets()),
    ]
}
fn daddr(a: [u8; 4]) -> Vec<Expr> {
    vec![
        Expr::Payload {
            base: 1,
            offset: 16,
            len: 4,
            dreg: 1,
        },
        cmp(0, &a),
    ]
}
fn dport(proto: u8, port: u16) -> Vec<Expr> {
    vec![
        meta(16),
        cmp(0, &[proto]),
        Expr::Payload {
            base: 2,
            offset: 2,
            len: 2,
            dreg: 1,
        },
        cmp(0, &port.to_be_bytes()),
    ]
}
/// `ct state STATES` (bits: established 2, related 4, new 8, invalid 1).
fn ct_state(bits: u32) -> Vec<Expr> {
    vec![
        Expr::Ct {
            key: 0,
            dir: None,
            dreg: 1,
        },
        Expr::Bitwise {
            sreg: 1,
            dreg: 1,
            mask: bits.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        cmp(1, &0u32.to_ne_bytes()),
    ]
}
fn ct_status_dnat() -> Vec<Expr> {
    vec![
        Expr::Ct {
            key: 2,
            dir: None,
            dreg: 1,
        },
        Expr::Bitwise {
            sreg: 1,
            dreg: 1,
            mask: 0x20u32.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        cmp(1, &0u32.to_ne_bytes()),
    ]
}
fn mark(m: u32) -> Vec<Expr> {
    vec![meta(3), cmp(0, &m.to_ne_bytes())]
}
fn v(j: Jump) -> Vec<Expr> {
    vec![Expr::Verdict(j)]
}
fn rule(handle: u64, parts: Vec<Vec<Expr>>) -> Rule {
    Rule {
        handle,
        exprs: parts.into_iter().flatten().collect(),
    }
}
fn base(
    table: &str,
    name: &str,
    hook: Hook,
    priority: i32,
    policy_drop: bool,
    rules: Vec<Rule>,
) -> Chain {
    Chain {
        table: table.into(),
        name: name.into(),
        base: Some(BaseHook {
            hook,
            priority,
            policy_drop,
            nat: false,
        }),
        rules,
    }
}
fn regular(table: &str, name: &str, rules: Vec<Rule>) -> Chain {
    Chain {
        table: table.into(),
        name: name.into(),
        base: None,
        rules,
    }
}
fn input(policy_drop: bool, rules: Vec<Rule>) -> Chain {
    base("inet filter", "input", Hook::Input, 0, policy_drop, rules)
}
fn flow() -> Flow {
    Flow {
        iface: "br0".into(),
        ifindex: Some(5),
        src: "192.0.2.0/25".parse().unwrap(),
        listen: (Ipv4Addr::new(192, 0, 2, 1), 3306),
        to: (Ipv4Addr::LOCALHOST, 3306),
        proto: 6,
        route_back: Default::default(),
    }
}

/// What the evaluator says, in short: "passes", "drops CHAIN STOP", "may CHAIN".
fn said(chains: Vec<Chain>) -> String {
    let foreign = Foreign {
        chains,
        ..Default::default()
    };
    match evaluate(&foreign, &flow()) {
        Verdict::Passes => "passes".into(),
        Verdict::Drops { chain, stop, .. } => format!("drops {chain} {}", stop.words()),
        Verdict::MayDrop { chain, stop, .. } => format!(
            "may {chain}{}",
            stop.map(|s| format!(" {}", s.words())).unwrap_or_default()
        ),
    }
}

#[test]
fn the_evaluator_follows_the_flow_through_foreign_chains() {
    use Jump::{Accept, Drop, Goto, Return};
    let est = || rule(1, vec![ct_state(2 | 4), v(Accept)]);
    let suggested = || {
        rule(
            9,
            vec![
                iifname("br0"),
                daddr([127, 0, 0, 1]),
                dport(6, 3306),
                ct_status_dnat(),
                v(Accept),
            ],
        )
    };
    let cases: Vec<(&str, Vec<Chain>, &str)> = vec![
        ("no foreign chains", vec![], "passes"),
        (
            "policy accept, no rules",
            vec![input(false, vec![])],
            "passes",
        ),
        (
            "policy drop",
            vec![input(true, vec![])],
            "drops input policy drop",
        ),
        (
            "policy drop, established accepted: the first packet still dropped",
            vec![input(true, vec![est()])],
            "drops input policy drop",
        ),
        (
            "policy drop with the suggested accept",
            vec![input(true, vec![est(), suggested()])],
            "passes",
        ),
        (
            "accept only the first packet: later ones dropped",
            vec![input(true, vec![rule(1, vec![ct_state(8), v(Accept)])])],
            "drops input policy drop",
        ),
        (
            "accept on another interface",
            vec![input(true, vec![rule(2, vec![iifname("eth0"), v(Accept)])])],
            "drops input policy drop",
        ),
        (
            "accept by a wildcard interface",
            vec![input(
                true,
                vec![rule(2, vec![vec![meta(6), cmp(0, b"br")], v(Accept)])],
            )],
            "passes",
        ),
        (
            "drop of everything but br0",
            vec![input(
                false,
                vec![rule(2, vec![iifname_neq("br0"), v(Drop)])],
            )],
            "passes",
        ),
        (
            "reject on the target port",
            vec![input(
                false,
                vec![rule(3, vec![dport(6, 3306), vec![Expr::Reject]])],
            )],
            "drops input reject",
        ),
        (
            "reject on the udp port only",
            vec![input(
                false,
                vec![rule(3, vec![dport(17, 3306), vec![Expr::Reject]])],
            )],
            "passes",
        ),
        (
            "drop of the listen port at input: after DNAT the port is the target's",
            vec![input(
                false,
                vec![rule(3, vec![daddr([192, 0, 2, 1]), v(Drop)])],
            )],
            "passes",
        ),
        (
            "drop of the listen address in filter prerouting before DNAT",
            vec![base(
                "ip pre",
                "pre",
                Hook::Prerouting,
                -150,
                false,
                vec![rule(3, vec![daddr([192, 0, 2, 1]), v(Drop)])],
            )],
            "drops pre drop",
        ),
        (
            "the same drop after DNAT does not match",
            vec![base(
                "ip pre",
                "pre",
                Hook::Prerouting,
                0,
                false,
                vec![rule(3, vec![daddr([192, 0, 2, 1]), v(Drop)])],
            )],
            "passes",
        ),
        (
            "drop of another source network",
            vec![input(
                false,
                vec![rule(4, vec![saddr("10.0.0.0/8"), v(Drop)])],
            )],
            "passes",
        ),
        (
            "drop of the whole allowed network",
            vec![input(
                false,
                vec![rule(4, vec![saddr("192.0.2.0/24"), v(Drop)])],
            )],
            "drops input drop",
        ),
        (
            "drop of part of the allowed network",
            vec![input(
                false,
                vec![rule(4, vec![saddr("192.0.2.64/26"), v(Drop)])],
            )],
            "may input drop",
        ),
        (
            "unmodelled match before a drop",
            vec![input(false, vec![rule(5, vec![mark(1), v(Drop)])])],
            "may input drop",
        ),
        (
            "unmodelled match before the accept of a drop chain",
            vec![input(true, vec![rule(5, vec![mark(1), v(Accept)])])],
            "may input policy drop",
        ),
        (
            "a set lookup accepting",
            vec![input(
                true,
                vec![rule(
                    6,
                    vec![
                        vec![
                            meta(16),
                            cmp(0, &[6]),
                            Expr::Payload {
                                base: 2,
                                offset: 2,
                                len: 2,
                                dreg: 1,
                            },
                            Expr::Lookup {
                                set: "__set0".into(),
                                sreg: 1,
                                invert: false,
                                verdict_map: false,
                                members: None,
                            },
                        ],
                        v(Accept),
                    ],
                )],
            )],
            "may input policy drop",
        ),
        (
            "a verdict map",
            vec![input(
                false,
                vec![rule(
                    6,
                    vec![vec![
                        meta(6),
                        Expr::Lookup {
                            set: "zones".into(),
                            sreg: 1,
                            invert: false,
                            verdict_map: true,
                            members: None,
                        },
                    ]],
                )],
            )],
            "may input",
        ),
        (
            "an unmodelled expression (xt match) with drop",
            vec![input(
                false,
                vec![rule(
                    7,
                    vec![vec![Expr::Unknown("match state".into())], v(Drop)],
                )],
            )],
            "may input drop",
        ),
        (
            "jump to a chain that drops",
            vec![
                input(false, vec![rule(1, vec![v(Jump::Jump("d".into()))])]),
                regular(
                    "inet filter",
                    "d",
                    vec![rule(2, vec![dport(6, 3306), v(Drop)])],
                ),
            ],
            "drops input drop",
        ),
        (
            "jump to a chain that returns, then policy drop",
            vec![
                input(true, vec![rule(1, vec![v(Jump::Jump("r".into()))])]),
                regular("inet filter", "r", vec![rule(2, vec![v(Return)])]),
            ],
            "drops input policy drop",
        ),
        (
            "jump to a chain that accepts",
            vec![
                input(
                    true,
                    vec![rule(1, vec![iifname("br0"), v(Goto("a".into()))])],
                ),
                regular("inet filter", "a", vec![rule(2, vec![v(Accept)])]),
            ],
            "passes",
        ),
        (
            "an accept in one table does not save it from another table's drop",
            vec![
                input(false, vec![rule(1, vec![v(Accept)])]),
                base("ip other", "in", Hook::Input, 10, true, vec![]),
            ],
            "drops in policy drop",
        ),
        (
            "ct state invalid drop before conntrack: untracked packets are invalid",
            vec![base(
                "ip raw",
                "pre",
                Hook::Prerouting,
                -300,
                false,
                vec![rule(1, vec![ct_state(1), v(Drop)])],
            )],
            "drops pre drop",
        ),
        (
            "ct state invalid drop after conntrack",
            vec![input(false, vec![rule(1, vec![ct_state(1), v(Drop)])])],
            "passes",
        ),
        (
            "notrack of the flow in raw prerouting",
            vec![base(
                "ip raw",
                "pre",
                Hook::Prerouting,
                -300,
                false,
                vec![rule(1, vec![iifname("br0"), vec![Expr::Notrack]])],
            )],
            "drops pre notrack",
        ),
        (
            "notrack of udp only",
            vec![base(
                "ip raw",
                "pre",
                Hook::Prerouting,
                -300,
                false,
                vec![rule(1, vec![dport(17, 53), vec![Expr::Notrack]])],
            )],
            "passes",
        ),
        (
            "notrack after conntrack does nothing",
            vec![base(
                "ip raw",
                "pre",
                Hook::Prerouting,
                -150,
                false,
                vec![rule(1, vec![vec![Expr::Notrack]])],
            )],
            "passes",
        ),
        (
            "notrack under an unmodelled match",
            vec![base(
                "ip raw",
                "pre",
                Hook::Prerouting,
                -300,
                false,
                vec![rule(1, vec![mark(7), vec![Expr::Notrack]])],
            )],
            "may pre notrack",
        ),
        (
            "replies dropped at output",
            vec![base("inet filter", "output", Hook::Output, 0, true, vec![])],
            "drops output policy drop",
        ),
        (
            "replies accepted as established",
            vec![base(
                "inet filter",
                "output",
                Hook::Output,
                0,
                true,
                vec![est()],
            )],
            "passes",
        ),
        (
            "forward is not on the path",
            vec![base(
                "inet filter",
                "forward",
                Hook::Forward,
                0,
                true,
                vec![],
            )],
            "passes",
        ),
        (
            "a nat chain with policy accept",
            vec![Chain {
                base: Some(BaseHook {
                    hook: Hook::Input,
                    priority: 100,
                    policy_drop: false,
                    nat: true,
                }),
                ..regular("ip nat", "in", vec![])
            }],
            "passes",
        ),
        (
            "counter and log change nothing",
            vec![input(
                true,
                vec![rule(
                    1,
                    vec![
                        vec![
                            Expr::Statement("counter".into()),
                            Expr::Statement("log".into()),
                        ],
                        v(Accept),
                    ],
                )],
            )],
            "passes",
        ),
    ];
    for (name, chains, want) in cases {
        assert_eq!(said(chains), want, "{name}");
    }
}

#[test]
fn findings_name_table_chain_rule_and_the_remedy() {
    let g = Grant {
        name: "mysql".into(),
        iface: "br0".into(),
        proto: crate::grant::Proto::Tcp,
        listen: Ipv4Addr::new(192, 0, 2, 1),
        port: 3306,
        to: "127.0.0.1:3306".parse().unwrap(),
        allow: vec!["192.0.2.0/25".parse().unwrap()],
        network: None,
    };
    let ix = std::collections::BTreeMap::new();
    let lookups = std::collections::BTreeMap::new();
    let ix = (
        &ix,
        &Routes {
            lookups: &lookups,
            table: &[],
        },
    );
    let findings = |f: &Foreign, g: &[Grant], ix: &(_, &Routes)| findings(f, g, ix.0, ix.1);
    let foreign = |chains| Foreign {
        chains,
        ..Default::default()
    };
    let f = findings(
        &foreign(vec![input(true, vec![])]),
        std::slice::from_ref(&g),
        &ix,
    );
    assert_eq!(
        (f[0].code.as_str(), f[0].severity),
        ("firewall-drops", Severity::Warning)
    );
    let m = &f[0].message;
    assert!(
        m.contains("table inet filter chain input") && m.contains("policy drop"),
        "{m}"
    );
    assert!(
        m.contains("nft insert rule inet filter input iifname \"br0\" ip daddr 127.0.0.1 tcp dport 3306 ct status dnat accept"),
        "{m}"
    );
    // A plain nft table gets the nft line only: ufw's or firewalld's would not touch it.
    assert!(!m.contains("ufw") && !m.contains("firewall-cmd"), "{m}");
    let reject = input(
        false,
        vec![rule(12, vec![dport(6, 3306), vec![Expr::Reject]])],
    );
    let f = findings(&foreign(vec![reject]), std::slice::from_ref(&g), &ix);
    assert!(
        f[0].message.contains("rule handle 12") && f[0].message.contains("th dport == 3306"),
        "{}",
        f[0].message
    );
    let raw = base(
        "ip raw",
        "prerouting",
        Hook::Prerouting,
        -300,
        false,
        vec![rule(3, vec![vec![Expr::Notrack]])],
    );
    let f = findings(&foreign(vec![raw]), std::slice::from_ref(&g), &ix);
    assert_eq!(f[0].code, "notrack");
    let odd = input(false, vec![rule(5, vec![mark(1), v(Jump::Drop)])]);
    let f = findings(&foreign(vec![odd]), std::slice::from_ref(&g), &ix);
    assert_eq!(f[0].code, "firewall-may-drop");
    assert!(
        f[0].message.contains("may drop") && f[0].message.contains("meta mark"),
        "{}",
        f[0].message
    );
    assert!(findings(&foreign(vec![]), &[g], &ix).is_empty());
}

/// A lookup in a set whose members were read: `reg 1 in @name`.
fn in_set(name: &str, by_word: bool, keys: &[(&[u8], &[u8], Option<Jump>)]) -> Expr {
    use crate::kernel::firewall::{Member, Members};
    Expr::Lookup {
        set: name.into(),
        sreg: 1,
        invert: false,
        verdict_map: keys.iter().any(|k| k.2.is_some()),
        members: Some(Members {
            by_word,
            items: keys
                .iter()
                .map(|(from, to, verdict)| Member {
                    from: from.to_vec(),
                    to: to.to_vec(),
                    verdict: verdict.clone(),
                })
                .collect(),
        }),
    }
}

#[test]
fn sets_maps_and_address_types_are_evaluated_with_what_they_hold() {
    use Jump::{Accept, Drop};
    let th_dport = || Expr::Payload {
        base: 2,
        offset: 2,
        len: 2,
        dreg: 1,
    };
    let est = Expr::Ct {
        key: 0,
        dir: None,
        dreg: 1,
    };
    let p = |n: u16| n.to_be_bytes();
    let cases: Vec<(&str, Vec<Chain>, &str)> = vec![
        (
            "ct state { established, related } accept, then policy drop",
            vec![input(
                true,
                vec![rule(
                    1,
                    vec![
                        vec![
                            est.clone(),
                            in_set(
                                "__set0",
                                false,
                                &[
                                    (&[2, 0, 0, 0], &[2, 0, 0, 0], None),
                                    (&[4, 0, 0, 0], &[4, 0, 0, 0], None),
                                ],
                            ),
                        ],
                        v(Accept),
                    ],
                )],
            )],
            "drops input policy drop",
        ),
        (
            "tcp dport { 80, 3000-4000 } accept",
            vec![input(
                true,
                vec![rule(
                    1,
                    vec![
                        vec![
                            th_dport(),
                            in_set(
                                "__set1",
                                false,
                                &[(&p(80), &p(80), None), (&p(3000), &p(4000), None)],
                            ),
                        ],
                        v(Accept),
                    ],
                )],
            )],
            "passes",
        ),
        (
            "a set of client addresses the allowed /25 straddles",
            vec![input(
                false,
                vec![rule(
                    1,
                    vec![
                        vec![
                            Expr::Payload {
                                base: 1,
                                offset: 12,
                                len: 4,
                                dreg: 1,
                            },
                            in_set(
                                "blocked",
                                false,
                                &[(&[192, 0, 2, 7], &[192, 0, 2, 7], None)],
                            ),
                        ],
                        v(Drop),
                    ],
                )],
            )],
            "may input drop",
        ),
        (
            "a verdict map on the destination port: the grant's element drops",
            vec![input(
                false,
                vec![rule(
                    1,
                    vec![vec![
                        th_dport(),
                        in_set(
                            "ports",
                            false,
                            &[
                                (&p(22), &p(22), Some(Accept)),
                                (&p(3306), &p(3306), Some(Drop)),
                            ],
                        ),
                    ]],
                )],
            )],
            "drops input drop",
        ),
        (
            "a verdict map without the grant's key",
            vec![input(
                false,
                vec![rule(
                    1,
                    vec![vec![
                        th_dport(),
                        in_set("ports", false, &[(&p(22), &p(22), Some(Drop))]),
                    ]],
                )],
            )],
            "passes",
        ),
        (
            "a verdict map keyed on the client address: some clients dropped",
            vec![input(
                false,
                vec![rule(
                    1,
                    vec![vec![
                        Expr::Payload {
                            base: 1,
                            offset: 12,
                            len: 4,
                            dreg: 1,
                        },
                        in_set(
                            "clients",
                            true,
                            &[(&[192, 0, 2, 9], &[192, 0, 2, 9], Some(Drop))],
                        ),
                    ]],
                )],
            )],
            "may input drop",
        ),
        (
            "addrtype --dst-type LOCAL -j RETURN before a drop (ufw-not-local)",
            vec![input(
                false,
                vec![
                    rule(
                        1,
                        vec![
                            vec![Expr::AddrType {
                                daddr: true,
                                types: 1 << 2,
                                invert: false,
                                limit_iface: false,
                            }],
                            v(Accept),
                        ],
                    ),
                    rule(2, vec![v(Drop)]),
                ],
            )],
            "passes",
        ),
        (
            "fib daddr type multicast drop",
            vec![input(
                false,
                vec![rule(
                    1,
                    vec![
                        vec![
                            Expr::FibType {
                                daddr: true,
                                dreg: 1,
                            },
                            cmp(0, &5u32.to_ne_bytes()),
                        ],
                        v(Drop),
                    ],
                )],
            )],
            "passes",
        ),
    ];
    for (name, chains, want) in cases {
        assert_eq!(said(chains), want, "{name}");
    }
}

mod marks;
mod packet;
