//! Whether each grant in place can actually work, and what the guard has stopped:
//! findings about the path of a published flow (the target socket, the listen address,
//! the routes there and back) and the guard's drop counters. Pure, like
//! [`assess`](super::assess), which calls [`judge`].

use super::{Blocked, Code, Finding, Observed, Severity};
use crate::grant::Grant;
use crate::kernel::host::RouteLookup;
use crate::state::State;
use ipnetwork::Ipv4Network;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// The allowed networks of one grant whose routes are looked up; the rest are not
/// judged (a lookup is a netlink round trip, and a grant may allow 100,000 networks).
pub const MAX_NETWORKS: usize = 256;

/// How many networks one finding names.
const NAMED: usize = 5;

/// The addresses of `net` that stand for it in a route lookup: its first two and its
/// last host address (the first is often the host's own). None for a network wider
/// than /8: one address cannot say where such a network lives.
pub(crate) fn samples(net: Ipv4Network) -> Vec<Ipv4Addr> {
    let first = u32::from(net.network());
    let last = u32::from(net.broadcast());
    match net.prefix() {
        0..=7 => vec![],
        31 | 32 => vec![net.network(), net.broadcast()],
        _ => vec![first + 1, first + 2, last - 1]
            .into_iter()
            .map(Ipv4Addr::from)
            .collect(),
    }
    .into_iter()
    .collect::<BTreeSet<_>>()
    .into_iter()
    .collect()
}

/// Every address audit looks up a route to for `grants` (see `samples`), sorted,
/// without duplicates.
pub fn probes(grants: &[Grant]) -> Vec<Ipv4Addr> {
    grants
        .iter()
        .flat_map(|g| g.allow.iter().take(MAX_NETWORKS))
        .flat_map(|n| samples(*n))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Adds the findings about whether the grants can work and what the guard blocked to
/// `findings`; returns the guard's drop counters by interface and kind.
pub(super) fn judge(
    observed: &Observed,
    state: &State,
    findings: &mut Vec<Finding>,
) -> Vec<Blocked> {
    for g in &state.grants {
        target(observed, g, findings);
        // A grant whose interface is missing is `pending`; nothing can reach it anyway.
        if observed.ifindexes.contains_key(&g.iface) {
            listen_address(observed, g, findings);
            routes(observed, g, findings);
        }
    }
    blocked(observed, findings)
}

/// `not-listening`, `listener-bound-to-device`: the DNATed flow needs a socket on the
/// target that takes packets arriving on the grant's interface.
fn target(observed: &Observed, g: &Grant, findings: &mut Vec<Finding>) {
    let to = format!("{}/{}", g.to, g.proto);
    let candidates: Vec<_> = observed
        .loopback_listeners
        .iter()
        .filter(|l| {
            l.proto == g.proto
                && l.port == g.to.port()
                && (l.addr == *g.to.ip() || l.addr.is_unspecified())
        })
        .collect();
    if candidates.is_empty() {
        findings.push(Finding {
            severity: Severity::Warning,
            code: Code::NotListening,
            interface: Some(g.iface.clone()),
            message: format!(
                "nothing listens on {to}, the target of grant {} on {}: its clients are refused; start the service or correct --to",
                g.name,
                match &g.network {
                    Some(n) => format!("{} ({n})", g.iface),
                    None => g.iface.clone(),
                }
            ),
        });
        return;
    }
    // A socket bound to a device takes only packets that arrive on that device; a
    // DNATed packet still arrives on the grant's interface.
    let usable = candidates
        .iter()
        .any(|l| l.device.as_ref().is_none_or(|d| *d == g.iface));
    if !usable {
        let devices: BTreeSet<&str> = candidates
            .iter()
            .filter_map(|l| l.device.as_deref())
            .collect();
        let devices: Vec<&str> = devices.into_iter().collect();
        findings.push(Finding {
            severity: Severity::Warning,
            code: Code::ListenerBoundToDevice,
            interface: Some(g.iface.clone()),
            message: format!(
                "the socket on {to}, the target of grant {} on {}, is bound to device {} (SO_BINDTODEVICE, or an address like 127.0.0.53%lo): it ignores packets arriving on {}, so the grant cannot work; point --to at a socket that is not bound to a device (systemd-resolved: 127.0.0.54, or a DNSStubListenerExtra= address)",
                g.name,
                g.iface,
                devices.join(", "),
                g.iface
            ),
        });
    }
}

/// `listen-address-gone`: the grant's DNAT matches an address the host no longer has
/// (a listen address may be another interface's, such as Docker's host-gateway on
/// docker0), so no client reaches it there.
fn listen_address(observed: &Observed, g: &Grant, findings: &mut Vec<Finding>) {
    if observed.addresses.iter().any(|a| a.addr == g.listen) {
        return;
    }
    let now: Vec<String> = observed
        .addresses
        .iter()
        .filter(|a| a.iface == g.iface)
        .map(|a| a.addr.to_string())
        .collect();
    findings.push(Finding {
        severity: Severity::Warning,
        code: Code::ListenAddressGone,
        interface: Some(g.iface.clone()),
        message: format!(
            "grant {} publishes on {}:{}/{}, but no interface of the host has {} now ({} has {}; re-created with another address?): its DNAT stays in place and serves nobody; run `loopgate watch --once` (or keep `loopgate watch` running): a defaulted address follows the interface; a pinned --listen must be revoked and exposed anew",
            g.name,
            g.listen,
            g.port,
            g.proto,
            g.listen,
            g.iface,
            if now.is_empty() { "no IPv4 address".to_string() } else { now.join(", ") }
        ),
    });
}

/// `reply-route`, `allow-route`: an allowed network the host routes through another
/// interface than the grant's. What matters is that the route back to a client goes
/// through the interface its packets came in on:
/// - a network with a part routed through the grant's interface (a CNI's /32 route
///   per pod on its own veth, Calico's `cali*`) is fine: clients behind it get their
///   replies through it, and the rest arrive elsewhere, where this grant does not
///   apply;
/// - on the grant's link, or reached only through a default route: clients coming in
///   through the grant's interface get no replies, which leave elsewhere, where the
///   kernel refuses a 127/8 source (`reply-route`: asymmetric routing);
/// - behind a route of its own through another interface: its packets arrive there,
///   where the grant does not apply (`allow-route`).
///
/// Only unicast routes are judged.
fn routes(observed: &Observed, g: &Grant, findings: &mut Vec<Finding>) {
    let on_link = |addr: Ipv4Addr| {
        observed.addresses.iter().any(|a| {
            a.iface == g.iface && Ipv4Network::new(a.addr, a.prefix).is_ok_and(|n| n.contains(addr))
        })
    };
    // code -> (network, sample, interface it leaves through)
    let mut wrong: BTreeMap<Code, Vec<(Ipv4Network, Ipv4Addr, &str)>> = BTreeMap::new();
    for net in g.allow.iter().take(MAX_NETWORKS) {
        let away = samples(*net)
            .into_iter()
            .find_map(|s| match observed.routes.get(&s) {
                Some(RouteLookup::Out(dev)) if *dev != g.iface => Some((s, dev.as_str())),
                _ => None,
            });
        // A part of the network routed through the grant's interface.
        let part_here = observed.route_table.iter().any(|(dst, dev)| {
            *dev == g.iface && dst.prefix() >= net.prefix() && net.contains(dst.network())
        });
        if let Some((sample, dev)) = away.filter(|_| !part_here) {
            // The most specific route to the sample: the network's own, or a default.
            let own_route = observed
                .route_table
                .iter()
                .filter(|(dst, d)| d == dev && dst.contains(sample))
                .map(|(dst, _)| dst.prefix())
                .max()
                .is_some_and(|p| p > 0);
            let code = if on_link(sample) || !own_route {
                Code::ReplyRoute
            } else {
                Code::AllowRoute
            };
            wrong.entry(code).or_default().push((*net, sample, dev));
        }
    }
    for (code, nets) in wrong {
        let named: Vec<String> = nets
            .iter()
            .take(NAMED)
            .map(|(net, sample, dev)| format!("{net} through {dev} (`ip route get {sample}`)"))
            .collect();
        let more = match nets.len().saturating_sub(NAMED) {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        // The commands for the networks named: a network on the grant's link is sent
        // elsewhere by a more specific route, which only its removal undoes; another one
        // needs a route back through the router on the link the clients come through,
        // whose address audit cannot know (ROUTER).
        let fixes: Vec<String> = nets
            .iter()
            .take(NAMED)
            .map(|(net, sample, dev)| match on_link(*sample) {
                true => format!("remove the route that sends {net} through {dev} (`ip route get {sample}` names it)"),
                false => format!("`ip route add {net} via ROUTER dev {}`", g.iface),
            })
            .collect();
        let message = match code {
            Code::ReplyRoute => format!(
                "replies of grant {} on {} to {}{more} leave through another interface than {}: clients coming in through {} get no answer (asymmetric routing; the kernel refuses a loopback source there); route them back through {}: {} (ROUTER: the router on {}'s link the clients come through), or remove the route that takes them elsewhere",
                g.name, g.iface, named.join(", "), g.iface, g.iface, g.iface, fixes.join("; "), g.iface
            ),
            _ => format!(
                "grant {} on {} allows {}{more}, which the host routes through another interface than {}: packets from there arrive on that interface, where this grant does not apply; publish on that interface or correct --allow",
                g.name, g.iface, named.join(", "), g.iface
            ),
        };
        findings.push(Finding {
            severity: Severity::Warning,
            code,
            interface: Some(g.iface.clone()),
            message,
        });
    }
}

/// `blocked`: the guard's drop rules, summed per interface and kind, and an info
/// finding for each interface where they stopped anything.
/// What each guard drop rule of each interface has counted, summed per interface and
/// kind, from the counters of loopgate's table (rules of other kinds are left out).
pub(crate) fn blocked_of(counters: &[crate::kernel::nft::RuleCounter]) -> Vec<Blocked> {
    let mut sums: BTreeMap<(String, usize), (u64, u64)> = BTreeMap::new();
    for c in counters {
        let Some((iface, what)) = c.rule.split_once(" guard: ") else {
            continue;
        };
        let Some(kind) = crate::plan::GUARD_DROPS
            .iter()
            .position(|(w, _)| *w == what)
        else {
            continue;
        };
        let e = sums.entry((iface.to_string(), kind)).or_default();
        e.0 += c.packets;
        e.1 += c.bytes;
    }
    sums.into_iter()
        .map(|((interface, kind), (packets, bytes))| Blocked {
            interface,
            kind: crate::plan::GUARD_DROPS[kind].1,
            packets,
            bytes,
        })
        .collect()
}

fn blocked(observed: &Observed, findings: &mut Vec<Finding>) -> Vec<Blocked> {
    let blocked = blocked_of(&observed.counters);
    let mut per_iface: BTreeMap<&str, Vec<&Blocked>> = BTreeMap::new();
    for b in blocked.iter().filter(|b| b.packets > 0) {
        per_iface.entry(&b.interface).or_default().push(b);
    }
    for (iface, kinds) in per_iface {
        let total: u64 = kinds.iter().map(|b| b.packets).sum();
        let parts: Vec<String> = kinds
            .iter()
            .map(|b| format!("{} {}", b.packets, b.kind))
            .collect();
        findings.push(Finding {
            severity: Severity::Info,
            code: Code::Blocked,
            interface: Some(iface.to_string()),
            message: format!(
                "the guard of {iface} dropped {total} packet(s) since loopgate last wrote its table: {}",
                parts.join(", ")
            ),
        });
    }
    blocked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::assess;
    use crate::grant::Proto;
    use crate::kernel::host::{IfAddr, Listener};
    use crate::kernel::nft::RuleCounter;
    use crate::state::STATE_VERSION;

    const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

    fn grant(to: &str, allow: &[&str]) -> Grant {
        Grant {
            name: "g".into(),
            iface: "br0".into(),
            proto: Proto::Udp,
            listen: "192.0.2.1".parse().unwrap(),
            port: 53,
            to: to.parse().unwrap(),
            allow: allow.iter().map(|a| a.parse().unwrap()).collect(),
            network: None,
        }
    }

    fn listener(addr: Ipv4Addr, port: u16, device: Option<&str>) -> Listener {
        Listener {
            proto: Proto::Udp,
            addr,
            port,
            device: device.map(str::to_string),
        }
    }

    fn addr(iface: &str, a: &str, prefix: u8) -> IfAddr {
        IfAddr {
            iface: iface.into(),
            addr: a.parse().unwrap(),
            prefix,
        }
    }

    /// A host where grant `g` works: br0 192.0.2.1/24, the allowed networks routed
    /// through br0, something listening on the target.
    fn working(g: &Grant) -> Observed {
        let mut o = Observed {
            sysctls: vec![
                ("all".into(), Ok(0)),
                ("default".into(), Ok(0)),
                ("br0".into(), Ok(1)),
                ("br1".into(), Ok(0)),
            ],
            addresses: vec![
                addr("br0", "192.0.2.1", 24),
                addr("br1", "198.51.100.1", 24),
            ],
            loopback_listeners: vec![listener(*g.to.ip(), g.to.port(), None)],
            ..Default::default()
        };
        o.ifindexes.insert("br0".into(), 5);
        o.ifindexes.insert("br1".into(), 6);
        // The connected routes of the addresses, as the kernel has them.
        o.route_table = o
            .addresses
            .iter()
            .map(|a| {
                let net = Ipv4Network::new(a.addr, a.prefix).unwrap();
                (
                    Ipv4Network::new(net.network(), a.prefix).unwrap(),
                    a.iface.clone(),
                )
            })
            .collect();
        for p in probes(std::slice::from_ref(g)) {
            let r = if p == g.listen {
                RouteLookup::Local
            } else {
                RouteLookup::Out("br0".into())
            };
            o.routes.insert(p, r);
        }
        o
    }

    /// The codes of this module's findings for `g` over `o`, through `assess`.
    fn codes(o: &Observed, g: &Grant) -> Vec<(&'static str, Severity)> {
        let state = State {
            version: STATE_VERSION,
            grants: vec![g.clone()],
            ..Default::default()
        };
        let r = assess(o, &state, None);
        r.findings
            .iter()
            .filter(|f| {
                [
                    "not-listening",
                    "listener-bound-to-device",
                    "listen-address-gone",
                    "reply-route",
                    "allow-route",
                    "blocked",
                ]
                .contains(&f.code.as_str())
            })
            .map(|f| (f.code.as_str(), f.severity))
            .collect()
    }

    #[test]
    fn the_target_socket_must_take_packets_from_the_grants_interface() {
        let g = grant("127.0.0.53:53", &["192.0.2.0/25"]);
        let w = Severity::Warning;
        for (listeners, want) in [
            (
                vec![listener(Ipv4Addr::new(127, 0, 0, 53), 53, None)],
                vec![],
            ),
            (vec![listener(Ipv4Addr::UNSPECIFIED, 53, None)], vec![]),
            (
                vec![listener(Ipv4Addr::new(127, 0, 0, 53), 53, Some("br0"))],
                vec![],
            ),
            (vec![], vec![("not-listening", w)]),
            (
                vec![listener(Ipv4Addr::new(127, 0, 0, 54), 53, None)],
                vec![("not-listening", w)],
            ),
            (
                vec![listener(Ipv4Addr::new(127, 0, 0, 53), 5353, None)],
                vec![("not-listening", w)],
            ),
            (
                vec![listener(Ipv4Addr::new(127, 0, 0, 53), 53, Some("lo"))],
                vec![("listener-bound-to-device", w)],
            ),
            (
                vec![
                    listener(Ipv4Addr::new(127, 0, 0, 53), 53, Some("lo")),
                    listener(Ipv4Addr::UNSPECIFIED, 53, Some("eth9")),
                ],
                vec![("listener-bound-to-device", w)],
            ),
            (
                vec![
                    listener(Ipv4Addr::new(127, 0, 0, 53), 53, Some("lo")),
                    listener(Ipv4Addr::UNSPECIFIED, 53, None),
                ],
                vec![],
            ),
        ] {
            let mut o = working(&g);
            o.loopback_listeners = listeners.clone();
            assert_eq!(codes(&o, &g), want, "{listeners:?}");
        }
        let mut o = working(&g);
        o.loopback_listeners = vec![listener(Ipv4Addr::new(127, 0, 0, 53), 53, Some("lo"))];
        let r = assess(
            &o,
            &State {
                version: STATE_VERSION,
                grants: vec![g.clone()],
                ..Default::default()
            },
            None,
        );
        let f = r
            .findings
            .iter()
            .find(|f| f.code == "listener-bound-to-device")
            .unwrap();
        assert!(
            f.message.contains("device lo") && f.message.contains("127.0.0.54"),
            "{}",
            f.message
        );
        // A TCP listener does not serve a UDP grant.
        let mut o = working(&g);
        o.loopback_listeners[0].proto = Proto::Tcp;
        assert_eq!(codes(&o, &g), vec![("not-listening", w)]);
    }

    #[test]
    fn a_listen_address_the_interface_no_longer_has_is_named() {
        let g = grant("127.0.0.1:53", &["192.0.2.0/25"]);
        let w = Severity::Warning;
        for (addresses, want) in [
            (vec![addr("br0", "192.0.2.1", 24)], vec![]),
            (
                vec![addr("br0", "192.0.2.9", 24), addr("br0", "192.0.2.1", 32)],
                vec![],
            ),
            (
                vec![addr("br0", "192.0.2.9", 24)],
                vec![("listen-address-gone", w)],
            ),
            (vec![], vec![("listen-address-gone", w)]),
            // On another interface of the host: still the host's (Docker's host-gateway
            // is docker0's address, reached from another bridge).
            (vec![addr("br1", "192.0.2.1", 24)], vec![]),
        ] {
            let mut o = working(&g);
            o.addresses = addresses.clone();
            assert_eq!(codes(&o, &g), want, "{addresses:?}");
        }
        // A missing interface is `pending`, not this.
        let mut o = working(&g);
        o.addresses.clear();
        o.ifindexes.remove("br0");
        assert_eq!(codes(&o, &g), vec![]);
    }

    #[test]
    fn allowed_networks_routed_elsewhere_are_named_by_direction() {
        let w = Severity::Warning;
        let out = |d: &str| RouteLookup::Out(d.into());
        for (allow, routes, want) in [
            // On br0's link, routed through br0 (the host's own address is local).
            ("192.0.2.0/25", vec![], vec![]),
            // On br0's link, but a more specific route sends replies out through dum0.
            (
                "192.0.2.0/25",
                vec![("192.0.2.126", out("dum0"))],
                vec![("reply-route", w)],
            ),
            (
                "192.0.2.0/25",
                vec![("192.0.2.2", out("dum0"))],
                vec![("reply-route", w)],
            ),
            // Not on br0's link, routed through br1: the clients come in there.
            (
                "198.51.100.0/24",
                vec![
                    ("198.51.100.1", RouteLookup::Local),
                    ("198.51.100.2", out("br1")),
                    ("198.51.100.254", out("br1")),
                ],
                vec![("allow-route", w)],
            ),
            // Not on br0's link and reached only through a default route: clients
            // coming in on br0 get their replies elsewhere.
            (
                "203.0.113.0/24",
                vec![("203.0.113.1", out("br1"))],
                vec![("reply-route", w)],
            ),
            // Unroutable or local: not judged.
            (
                "203.0.113.0/24",
                vec![
                    ("203.0.113.1", RouteLookup::Unroutable("no route".into())),
                    ("203.0.113.2", RouteLookup::Local),
                    ("203.0.113.254", RouteLookup::Unroutable("x".into())),
                ],
                vec![],
            ),
            // Wider than /8: one address cannot tell.
            ("0.0.0.0/0", vec![], vec![]),
        ] {
            let g = grant("127.0.0.1:53", &[allow]);
            let mut o = working(&g);
            for (a, r) in &routes {
                o.routes.insert(a.parse().unwrap(), r.clone());
            }
            assert_eq!(codes(&o, &g), want, "{allow} {routes:?}");
        }
        let g = grant("127.0.0.1:53", &["192.0.2.0/25", "198.51.100.0/24"]);
        let mut o = working(&g);
        o.routes.insert("192.0.2.126".parse().unwrap(), out("dum0"));
        o.routes.insert("198.51.100.2".parse().unwrap(), out("br1"));
        let mut c = codes(&o, &g);
        c.sort();
        assert_eq!(c, vec![("allow-route", w), ("reply-route", w)]);
        let r = assess(
            &o,
            &State {
                version: STATE_VERSION,
                grants: vec![g],
                ..Default::default()
            },
            None,
        );
        let f = r.findings.iter().find(|f| f.code == "reply-route").unwrap();
        assert!(
            f.message
                .contains("192.0.2.0/25 through dum0 (`ip route get 192.0.2.126`)"),
            "{}",
            f.message
        );
    }

    #[test]
    fn a_network_routed_host_by_host_over_several_interfaces_is_judged_by_its_part_here() {
        let w = Severity::Warning;
        let net = |s: &str| s.parse::<Ipv4Network>().unwrap();
        // Calico: the pod network's samples go to other pods' veths, the pod on this
        // grant's interface has its /32 here.
        let g = grant("127.0.0.1:53", &["203.0.113.0/24"]);
        let mut o = working(&g);
        for (a, dev) in [
            ("203.0.113.1", "cali1"),
            ("203.0.113.2", "cali2"),
            ("203.0.113.254", "cali3"),
        ] {
            o.routes
                .insert(a.parse().unwrap(), RouteLookup::Out(dev.into()));
            o.route_table.push((net(&format!("{a}/32")), dev.into()));
        }
        o.route_table.push((net("203.0.113.7/32"), "br0".into()));
        assert_eq!(codes(&o, &g), vec![]);
        // Without the route here, the network lives behind those veths.
        o.route_table.pop();
        assert_eq!(codes(&o, &g), vec![("allow-route", w)]);
        // A default route is not the network's own: asymmetric replies.
        let mut o = working(&g);
        o.routes.insert(
            "203.0.113.1".parse().unwrap(),
            RouteLookup::Out("br1".into()),
        );
        o.route_table.push((net("0.0.0.0/0"), "br1".into()));
        assert_eq!(codes(&o, &g), vec![("reply-route", w)]);
        o.route_table.push((net("203.0.113.0/24"), "br1".into()));
        assert_eq!(codes(&o, &g), vec![("allow-route", w)]);
    }

    #[test]
    fn probes_cover_each_network_by_a_few_addresses_and_stop_at_the_cap() {
        let g = grant(
            "127.0.0.1:53",
            &["192.0.2.0/25", "198.51.100.7/32", "0.0.0.0/0"],
        );
        let p: Vec<String> = probes(&[g]).iter().map(|a| a.to_string()).collect();
        assert_eq!(p, ["192.0.2.1", "192.0.2.2", "192.0.2.126", "198.51.100.7"]);
        let nets: Vec<String> = (0..MAX_NETWORKS as u32 + 10)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
            .collect();
        let nets: Vec<&str> = nets.iter().map(String::as_str).collect();
        assert_eq!(
            probes(&[grant("127.0.0.1:53", &nets)]).len(),
            MAX_NETWORKS * 3
        );
    }

    #[test]
    fn the_guards_drops_are_reported_as_blocked_per_interface_and_kind() {
        let g = grant("127.0.0.1:53", &["192.0.2.0/25"]);
        let counter = |chain: &str, rule: &str, packets: u64| RuleCounter {
            chain: chain.into(),
            rule: rule.into(),
            packets,
            bytes: packets * 28,
        };
        let i = Severity::Info;
        for (counters, want, kinds) in [
            (vec![], vec![], vec![]),
            (
                vec![
                    counter("raw_if_br0", "br0 guard: no direct route to loopback", 0),
                    counter("nat_br0_192.0.2.1_tcp_53", "grant g", 9),
                ],
                vec![],
                vec![("br0", "direct-to-loopback", 0)],
            ),
            (
                vec![
                    counter("raw_if_br0", "br0 guard: no direct route to loopback", 100),
                    counter("raw_if_br0", "br0 guard: no spoofed loopback source", 3),
                    counter("post_if_br0", "br0 guard: no loopback source leaves", 1),
                    counter(
                        "input_if_br0",
                        "br0 guard: loopback only through published ports",
                        2,
                    ),
                    counter(
                        "input_if_br0",
                        "br0 guard: replies of flows the host opened",
                        50,
                    ),
                    counter("raw_if_br1", "br1 guard: no direct route to loopback", 0),
                ],
                vec![("blocked", i)],
                vec![
                    ("br0", "direct-to-loopback", 100),
                    ("br0", "spoofed-loopback-source", 3),
                    ("br0", "leaked-loopback-source", 1),
                    ("br0", "input-drop", 2),
                    ("br1", "direct-to-loopback", 0),
                ],
            ),
        ] {
            let mut o = working(&g);
            o.counters = counters;
            assert_eq!(codes(&o, &g), want);
            let r = assess(
                &o,
                &State {
                    version: STATE_VERSION,
                    grants: vec![g.clone()],
                    ..Default::default()
                },
                None,
            );
            let mut got: Vec<(&str, &str, u64)> = r
                .blocked
                .iter()
                .map(|b| (b.interface.as_str(), b.kind, b.packets))
                .collect();
            let mut kinds = kinds;
            got.sort();
            kinds.sort();
            assert_eq!(got, kinds);
            if let Some(f) = r.findings.iter().find(|f| f.code == "blocked") {
                assert!(
                    f.message.contains("dropped 106 packet(s)")
                        && f.message.contains("100 direct-to-loopback"),
                    "{}",
                    f.message
                );
            }
        }
    }

    #[test]
    fn listeners_on_any_address_are_exposed_by_an_unguarded_interface() {
        let o = Observed {
            sysctls: vec![
                ("all".into(), Ok(1)),
                ("default".into(), Ok(0)),
                ("vn".into(), Ok(0)),
            ],
            loopback_listeners: vec![
                listener(LO, 5353, None),
                listener(Ipv4Addr::UNSPECIFIED, 5400, None),
            ],
            ..Default::default()
        };
        let r = assess(
            &o,
            &State {
                version: STATE_VERSION,
                ..Default::default()
            },
            None,
        );
        let vn = r.interfaces.iter().find(|i| i.name == "vn").unwrap();
        assert_eq!(vn.exposed_sockets.len(), 2);
        assert!(r
            .findings
            .iter()
            .any(|f| f.code == "unguarded" && f.message.contains("2 socket(s)")));
    }
}
