//! Resolving specs against fake hosts: patterns, runtime networks, missing interfaces
//! and addresses, kept guards and conflicts.

use super::*;
use crate::input::Interfaces;

struct FakeHost(Vec<(&'static str, Vec<Ipv4Addr>)>);

impl Interfaces for FakeHost {
    fn ipv4_addresses(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| a.clone())
    }
}

impl Host for FakeHost {
    fn interface_names(&self) -> Vec<String> {
        self.0.iter().map(|(n, _)| n.to_string()).collect()
    }

    fn runtime_network(
        &self,
        runtime: crate::kernel::runtime::Runtime,
        name: &str,
    ) -> std::result::Result<Option<crate::kernel::runtime::RuntimeNet>, String> {
        match (runtime, name) {
            (crate::kernel::runtime::Runtime::Docker, "myproj_default") => {
                Ok(Some(crate::kernel::runtime::RuntimeNet {
                    bridge: "br-0123456789ab".into(),
                    subnets: vec!["203.0.113.32/27".parse().unwrap()],
                    gateway: Some(a("203.0.113.33")),
                }))
            }
            (_, "mv") => Err("docker network mv uses the \"macvlan\" driver".into()),
            _ => Ok(None),
        }
    }
}

#[test]
fn a_runtime_network_resolves_to_its_bridge_subnets_and_gateway_or_is_pending() {
    use crate::kernel::runtime::Runtime;
    let mut by_name = GrantRequest {
        ports: vec!["5432".into()],
        network: Some((Runtime::Docker, "myproj_default".into())),
        ..Default::default()
    };
    let specs = from_request(&by_name, Source::Cli).unwrap();
    // The bridge is not there yet: pending, with its guard ready for it.
    let r = resolve(
        &specs,
        &FakeHost(vec![("docker0", vec![a("198.51.100.1")])]),
    );
    assert_eq!(r.grants.len(), 1);
    assert_eq!(r.grants[0].iface, "br-0123456789ab");
    assert!(
        r.pending[0].reason.contains("br-0123456789ab"),
        "{:?}",
        r.pending
    );
    let host = FakeHost(vec![("br-0123456789ab", vec![a("203.0.113.33")])]);
    let r = resolve(&specs, &host);
    let g = &r.grants[0];
    assert_eq!(
        (g.iface.as_str(), g.listen),
        ("br-0123456789ab", a("203.0.113.33"))
    );
    assert_eq!(g.allow, vec!["203.0.113.32/27".parse().unwrap()]);
    // An explicit allow list narrows it; a missing network or a refused one is pending.
    by_name.allow = vec!["203.0.113.34".into()];
    let r = resolve(&from_request(&by_name, Source::Cli).unwrap(), &host);
    assert_eq!(r.grants[0].allow, vec!["203.0.113.34/32".parse().unwrap()]);
    for (name, says) in [("gone", "does not list it now"), ("mv", "macvlan")] {
        by_name.network = Some((Runtime::Docker, name.into()));
        let r = resolve(&from_request(&by_name, Source::Cli).unwrap(), &host);
        assert!(
            r.grants.is_empty() && r.pending[0].reason.contains(says),
            "{:?}",
            r.pending
        );
    }
}

#[test]
fn a_runtime_networks_missing_bridge_keeps_the_guard_the_network_asks_for_now() {
    use crate::kernel::runtime::Runtime;
    let request = GrantRequest {
        ports: vec!["5432".into()],
        network: Some((Runtime::Docker, "myproj_default".into())),
        ..Default::default()
    };
    let specs = from_request(&request, Source::Cli).unwrap();
    let up = FakeHost(vec![("br-0123456789ab", vec![a("203.0.113.33")])]);
    let now = resolve(&specs, &up).grants;
    assert_eq!(now.len(), 1);
    // The bridge is being re-created (or not addressed yet): the guard stays, as
    // the runtime describes the network now, whatever was committed before.
    let mut stale = now.clone();
    stale[0].allow = vec!["198.51.100.0/24".parse().unwrap()];
    for host in [
        FakeHost(vec![("docker0", vec![a("198.51.100.1")])]),
        FakeHost(vec![("br-0123456789ab", vec![])]),
    ] {
        for previous in [&[][..], &stale[..]] {
            let r = resolve_keeping(&specs, &host, previous);
            assert_eq!(r.grants, now);
            assert!(
                r.pending[0].reason.contains("guard stays"),
                "{:?}",
                r.pending
            );
        }
    }
    // A network that is gone, or a runtime that does not answer, vouches for
    // nothing: no committed grant is adopted (it may be one the user revoked).
    let down = FakeHost(vec![("docker0", vec![a("198.51.100.1")])]);
    for name in ["gone", "mv"] {
        let other = GrantRequest {
            network: Some((Runtime::Docker, name.into())),
            ..request.clone()
        };
        let specs = from_request(&other, Source::Cli).unwrap();
        assert!(
            resolve_keeping(&specs, &down, &now).grants.is_empty(),
            "{name}"
        );
    }
}

#[test]
fn an_interface_without_any_address_yet_keeps_its_guard() {
    let specs = from_request(&req("podman1", "3306", None), Source::Cli).unwrap();
    let up = FakeHost(vec![("podman1", vec![a("192.0.2.1")])]);
    let committed = resolve(&specs, &up).grants;
    // Re-created, up, not addressed yet: the guard stays.
    let bare = FakeHost(vec![("podman1", vec![])]);
    let r = resolve_keeping(&specs, &bare, &committed);
    assert_eq!(r.grants, committed);
    assert!(
        r.pending[0].reason.contains("guard stays"),
        "{:?}",
        r.pending
    );
    // Without committed grants, or once readdressed elsewhere: nothing is kept.
    assert!(resolve(&specs, &bare).grants.is_empty());
    let moved = FakeHost(vec![("podman1", vec![a("198.51.100.1")])]);
    let pinned = from_request(&req("podman1", "3306", Some("192.0.2.1")), Source::Cli).unwrap();
    assert!(resolve_keeping(&pinned, &moved, &committed)
        .grants
        .is_empty());
    assert_eq!(
        resolve_keeping(&pinned, &bare, &committed).grants,
        committed
    );
}

#[test]
fn an_unresolvable_network_does_not_adopt_a_revoked_grant_of_another_spec() {
    use crate::kernel::runtime::Runtime;
    // `expose wg0 --port 5432 --allow 198.51.100.0/24`, committed while wg0 was up.
    let mut named = req("wg0", "5432", None);
    named.allow = vec!["198.51.100.0/24".into()];
    let named = from_request(&named, Source::Cli).unwrap();
    let committed = resolve(&named, &FakeHost(vec![("wg0", vec![a("192.0.2.1")])])).grants;
    assert_eq!(committed.len(), 1);
    // wg0 goes down and the user revokes its spec; what is left is an unrelated
    // runtime network's spec on the same port, which does not resolve now (network
    // gone, or the runtime did not answer).
    for network in ["gone", "mv"] {
        let left = from_request(
            &GrantRequest {
                ports: vec!["5432".into()],
                network: Some((Runtime::Docker, network.into())),
                ..Default::default()
            },
            Source::Cli,
        )
        .unwrap();
        let r = resolve_keeping(&left, &FakeHost(vec![]), &committed);
        assert!(
            r.grants.is_empty(),
            "{network}: the revoked wg0 grant (allow 198.51.100.0/24) is kept by a \
             spec that never made it: {:?}",
            r.grants
        );
    }
}

#[test]
fn a_kept_network_grant_does_not_outlive_the_subnets_the_runtime_reports_now() {
    use crate::kernel::runtime::Runtime;
    // Committed with an explicit, broader allow list ...
    let broad = GrantRequest {
        ports: vec!["5432".into()],
        allow: vec!["198.51.100.0/24".into()],
        network: Some((Runtime::Docker, "myproj_default".into())),
        ..Default::default()
    };
    let up = FakeHost(vec![("br-0123456789ab", vec![a("203.0.113.33")])]);
    let committed = resolve(&from_request(&broad, Source::Cli).unwrap(), &up).grants;
    // ... then narrowed to the network's own subnet (no --allow). The runtime says
    // the network is 203.0.113.32/27 on br-0123456789ab, which exists, unaddressed.
    let narrow = from_request(
        &GrantRequest {
            allow: vec![],
            ..broad
        },
        Source::Cli,
    )
    .unwrap();
    let bare = FakeHost(vec![("br-0123456789ab", vec![])]);
    for host in [&bare, &FakeHost(vec![])] {
        let r = resolve_keeping(&narrow, host, &committed);
        let subnet: Ipv4Network = "203.0.113.32/27".parse().unwrap();
        assert!(
            r.grants.iter().all(|g| g.allow == vec![subnet]),
            "the withdrawn allow list stays: {:?}",
            r.grants
        );
    }
}

fn req(iface: &str, port: &str, listen: Option<&str>) -> GrantRequest {
    GrantRequest {
        iface: iface.into(),
        allow: vec!["192.0.2.0/24".into()],
        ports: vec![port.into()],
        listen: listen.map(str::to_string),
        ..Default::default()
    }
}

fn a(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

#[test]
fn a_pattern_expands_to_each_matching_interface_with_its_own_primary_address() {
    let host = FakeHost(vec![
        ("lo", vec![a("127.0.0.1")]),
        ("br-aaa", vec![a("192.0.2.1"), a("192.0.2.2")]),
        ("br-bbb", vec![a("198.51.100.1")]),
        ("docker0", vec![a("203.0.113.1")]),
        ("br-none", vec![]),
    ]);
    let specs = from_request(&req("br-*", "5432", None), Source::Cli).unwrap();
    let r = resolve(&specs, &host);
    let got: Vec<(String, Ipv4Addr, String)> = r
        .grants
        .iter()
        .map(|g| (g.iface.clone(), g.listen, g.name.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("br-aaa".into(), a("192.0.2.1"), "br-aaa-tcp-5432".into()),
            ("br-bbb".into(), a("198.51.100.1"), "br-bbb-tcp-5432".into()),
        ]
    );
    assert_eq!(r.pending.len(), 1);
    assert!(
        r.pending[0].reason.contains("no IPv4 address"),
        "{:?}",
        r.pending
    );
    // `*` never takes lo.
    let all = from_request(&req("*", "5432", None), Source::Cli).unwrap();
    assert!(resolve(&all, &host).grants.iter().all(|g| g.iface != "lo"));
}

#[test]
fn a_missing_interface_or_address_is_pending_not_an_error() {
    let host = FakeHost(vec![("br0", vec![a("192.0.2.1")])]);
    let mut specs = from_request(&req("br9", "80", None), Source::Policy).unwrap();
    specs.extend(from_request(&req("br0", "81", Some("192.0.2.7")), Source::Policy).unwrap());
    specs.extend(from_request(&req("cali*", "82", None), Source::Policy).unwrap());
    let r = resolve(&specs, &host);
    assert!(r.grants.is_empty());
    let reasons: Vec<&str> = r.pending.iter().map(|p| p.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "the interface does not exist now",
            "192.0.2.7 is not an address of br0 now",
            "no interface matches the pattern now"
        ]
    );
}

#[test]
fn the_listen_address_is_looked_up_again_each_time() {
    let specs = from_request(&req("br0", "80", None), Source::Cli).unwrap();
    let before = resolve(&specs, &FakeHost(vec![("br0", vec![a("192.0.2.1")])]));
    let after = resolve(&specs, &FakeHost(vec![("br0", vec![a("198.51.100.1")])]));
    assert_eq!(before.grants[0].listen, a("192.0.2.1"));
    assert_eq!(after.grants[0].listen, a("198.51.100.1"));
}

#[test]
fn two_patterns_publishing_one_port_to_two_targets_keep_the_first() {
    let host = FakeHost(vec![("br-x", vec![a("192.0.2.1")])]);
    let mut one = req("br-*", "80", None);
    one.to = Some("127.0.0.1:8080".into());
    let mut two = req("br-?", "80", None);
    two.to = Some("127.0.0.2:8080".into());
    let mut specs = from_request(&one, Source::Cli).unwrap();
    specs.extend(from_request(&two, Source::Cli).unwrap());
    let r = resolve(&specs, &host);
    assert_eq!(r.grants.len(), 1);
    assert_eq!(r.grants[0].to, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(r.pending[0].kind, PendingKind::Conflict);
    assert!(r.pending[0].reason.contains("already published"));
}

#[test]
fn patterns_are_checked_like_names() {
    assert!(parse_interface("br-*").is_ok());
    assert!(parse_interface("veth[0-9]*").is_ok());
    for bad in ["br/*", "a*:b", "br-[", "*********************"] {
        assert!(parse_interface(bad).is_err(), "{bad}");
    }
}

/// FakeHost with Docker's host-gateway: docker0's address, owned by the host.
struct WithHostGateway(FakeHost);

impl Interfaces for WithHostGateway {
    fn ipv4_addresses(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        self.0.ipv4_addresses(name)
    }
    fn owns(&self, addr: Ipv4Addr) -> bool {
        self.0 .0.iter().any(|(_, a)| a.contains(&addr))
    }
    fn host_gateway(&self) -> Option<Ipv4Addr> {
        self.0.ipv4_addresses("docker0")?.first().copied()
    }
}

impl Host for WithHostGateway {
    fn interface_names(&self) -> Vec<String> {
        self.0.interface_names()
    }
    fn runtime_network(
        &self,
        runtime: crate::kernel::runtime::Runtime,
        name: &str,
    ) -> std::result::Result<Option<crate::kernel::runtime::RuntimeNet>, String> {
        self.0.runtime_network(runtime, name)
    }
}

#[test]
fn a_network_grant_is_named_network_proto_port_whatever_address_it_listens_on() {
    use crate::kernel::runtime::Runtime;
    let host = WithHostGateway(FakeHost(vec![
        ("docker0", vec![a("198.51.100.1")]),
        ("br-0123456789ab", vec![a("203.0.113.33")]),
    ]));
    for listen in [None, Some("host-gateway"), Some("198.51.100.1")] {
        let request = GrantRequest {
            ports: vec!["5432".into()],
            listen: listen.map(String::from),
            network: Some((Runtime::Docker, "myproj_default".into())),
            ..Default::default()
        };
        let specs = from_request(&request, Source::Cli).unwrap();
        let r = resolve(&specs, &host);
        assert_eq!(r.grants.len(), 1, "{listen:?}: {:?}", r.pending);
        // The name refusals use (shown_name) is the one the grant gets.
        assert_eq!(
            (r.grants[0].name.as_str(), specs[0].shown_name().as_str()),
            ("myproj_default-tcp-5432", "myproj_default-tcp-5432"),
            "{listen:?}"
        );
    }
    // A plain interface's grant on a secondary address keeps the address in its name.
    let host = FakeHost(vec![("br0", vec![a("192.0.2.1"), a("192.0.2.5")])]);
    let r = resolve(
        &from_request(&req("br0", "53", Some("192.0.2.5")), Source::Cli).unwrap(),
        &host,
    );
    assert_eq!(r.grants[0].name, "br0-192.0.2.5-tcp-53");
}

#[test]
fn a_grant_in_force_stays_as_last_resolved_while_its_runtime_does_not_answer() {
    use crate::kernel::runtime::Runtime;
    let request = GrantRequest {
        ports: vec!["5432".into()],
        network: Some((Runtime::Docker, "mv".into())),
        ..Default::default()
    };
    let specs = from_request(&request, Source::Policy).unwrap();
    let host = FakeHost(vec![("br-0123456789ab", vec![a("203.0.113.33")])]);
    // Nothing in force: the runtime's silence leaves it pending.
    let r = resolve(&specs, &host);
    assert!(r.grants.is_empty());
    assert_eq!(r.pending[0].kind, PendingKind::RuntimeUnknown);
    // In force: kept as it is, and said so (not pending).
    let in_force = Grant {
        name: "mv-tcp-5432".into(),
        iface: "br-0123456789ab".into(),
        proto: crate::grant::Proto::Tcp,
        listen: a("203.0.113.33"),
        port: 5432,
        to: "127.0.0.1:5432".parse().unwrap(),
        allow: vec!["203.0.113.32/27".parse().unwrap()],
        network: specs[0].network.clone(),
    };
    let r = resolve_keeping(&specs, &host, std::slice::from_ref(&in_force));
    assert_eq!(r.grants, vec![in_force]);
    assert_eq!(r.pending.len(), 1);
    assert_eq!(r.pending[0].kind, PendingKind::Unconfirmed);
    assert!(
        r.pending[0]
            .what()
            .starts_with("docker network mv tcp/5432: in force on br-0123456789ab as last resolved; docker does not answer: "),
        "{}",
        r.pending[0].what()
    );
}
