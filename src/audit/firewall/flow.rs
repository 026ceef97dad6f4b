//! A grant's flow through the host: the packets followed (first, later, replies), the
//! packet each base chain sees at its hook and priority, and [`evaluate`], which runs
//! the other tables' base chains over them in the kernel's order.

use super::packet::{addr_bytes, known, Packet, RouteBack};
use super::walk::base_verdict;
use super::Verdict;
use crate::grant::Grant;
use crate::kernel::firewall::{Chain, Foreign, Hook};
use crate::kernel::host::RouteLookup;
use ipnetwork::Ipv4Network;
use std::net::Ipv4Addr;

/// conntrack's own priority at prerouting: chains before it see untracked packets.
pub(super) const PRIORITY_CONNTRACK: i32 = -200;
/// loopgate's DNAT (and every nat chain's destination NAT) at prerouting.
pub(super) const PRIORITY_DSTNAT: i32 = -100;
/// Where the source of a DNATed flow's replies is translated back, at postrouting.
pub(super) const PRIORITY_SRCNAT: i32 = 100;

/// The flow of one grant from one allowed network.
#[derive(Debug, Clone)]
pub struct Flow {
    /// The grant's interface.
    pub iface: String,
    /// Its ifindex, when known.
    pub ifindex: Option<u32>,
    /// The allowed network the client is in.
    pub src: Ipv4Network,
    /// The address and port clients connect to.
    pub listen: (Ipv4Addr, u16),
    /// The target after DNAT.
    pub to: (Ipv4Addr, u16),
    /// IP protocol number.
    pub proto: u8,
    /// What a reverse path check finds for the clients of `src` (see [`route_back`]).
    pub route_back: RouteBack,
}

/// The routes audit read: the lookups of a few addresses of each allowed network and
/// the unicast routes through one interface (see `audit::reachability`).
#[derive(Debug, Clone, Copy)]
pub struct Routes<'a> {
    /// The route to each sampled address.
    pub lookups: &'a std::collections::BTreeMap<Ipv4Addr, RouteLookup>,
    /// (destination, interface) of the unicast routes.
    pub table: &'a [(Ipv4Network, String)],
}

/// What a reverse path check (`rpfilter`, `fib saddr . iif oif`) finds for clients of
/// `net` coming in through `iface`: the lookup of the client's address as the kernel
/// makes it for the check is the lookup audit made (`ip route get`), as long as the
/// policy routing rules are the kernel's defaults (`plain_routing`), so that the mark,
/// source and interface of the check's lookup change nothing.
///
/// Strict passes when the network's sampled addresses route back through `iface`, or
/// a part of it does (a CNI's /32 per pod: the clients that come in there are the ones
/// routed there, as `audit::reachability` judges); it fails when none does. Loose
/// passes when every sample has a unicast route, fails when none has any route. Else
/// (and for a network too wide to sample) it is not known.
pub fn route_back(
    plain_routing: Option<bool>,
    routes: &Routes,
    net: Ipv4Network,
    iface: &str,
) -> RouteBack {
    let samples = crate::audit::reachability::samples(net);
    let found: Option<Vec<&RouteLookup>> = samples.iter().map(|s| routes.lookups.get(s)).collect();
    let found = match found {
        Some(f) if plain_routing == Some(true) && !f.is_empty() => f,
        _ => return RouteBack::default(),
    };
    let part_here = routes.table.iter().any(|(dst, dev)| {
        dev == iface && dst.prefix() >= net.prefix() && net.contains(dst.network())
    });
    let here = |l: &&RouteLookup| matches!(l, RouteLookup::Out(d) if d == iface);
    let strict = if part_here || found.iter().all(here) {
        Some(true)
    } else if !found.iter().any(here) {
        Some(false)
    } else {
        None
    };
    let loose = if found.iter().all(|l| matches!(l, RouteLookup::Out(_))) {
        Some(true)
    } else if found
        .iter()
        .all(|l| matches!(l, RouteLookup::Unroutable(_)))
    {
        Some(false)
    } else {
        None
    };
    RouteBack { strict, loose }
}

/// The stages of the flow: (hook, which packet) and the packet each base chain sees.
pub(super) fn packet_at(
    flow: &Flow,
    hook: Hook,
    priority: i32,
    first: bool,
    after_dnat: bool,
) -> Option<Packet> {
    let iface = Some((flow.iface.clone(), flow.ifindex));
    let client = addr_bytes(flow.src);
    let base = Packet {
        iif: None,
        oif: None,
        saddr: client.clone(),
        daddr: known(&flow.listen.0.octets()),
        proto: flow.proto,
        sport: None,
        dport: Some(flow.listen.1),
        tracked: true,
        first,
        reply: false,
        dnat: !first || after_dnat,
        orig_src: client.clone(),
        orig_dst: flow.listen.0,
        orig_dport: flow.listen.1,
        reply_src: flow.to.0,
        reply_sport: flow.to.1,
        route_back: flow.route_back,
    };
    match hook {
        Hook::Prerouting | Hook::Input => {
            let to = after_dnat || hook == Hook::Input;
            Some(Packet {
                iif: iface,
                daddr: known(&if to { flow.to.0 } else { flow.listen.0 }.octets()),
                dport: Some(if to { flow.to.1 } else { flow.listen.1 }),
                tracked: hook == Hook::Input || priority > PRIORITY_CONNTRACK,
                dnat: base.dnat || to,
                ..base
            })
        }
        Hook::Output | Hook::Postrouting if !first => {
            let translated = hook == Hook::Postrouting && after_dnat;
            let (src, sport) = if translated { flow.listen } else { flow.to };
            Some(Packet {
                oif: iface,
                tracked: hook == Hook::Postrouting || priority > PRIORITY_CONNTRACK,
                saddr: known(&src.octets()),
                daddr: client,
                sport: Some(sport),
                dport: None,
                reply: true,
                dnat: true,
                ..base
            })
        }
        _ => None,
    }
}

/// What the other tables' base chains do with `flow`: the first chain, in hook and
/// priority order, that drops it, else the first that may, else [`Verdict::Passes`].
pub fn evaluate(ruleset: &Foreign, flow: &Flow) -> Verdict {
    let mut bases: Vec<&Chain> = ruleset.chains.iter().filter(|c| c.base.is_some()).collect();
    bases.sort_by_key(|c| {
        let b = c.base.as_ref().expect("filtered to base chains");
        (b.hook, b.priority)
    });
    let mut maybe = None;
    // The first packet, then the later ones, then the replies.
    for (first, hooks) in [
        (true, &[Hook::Prerouting, Hook::Input][..]),
        (
            false,
            &[
                Hook::Prerouting,
                Hook::Input,
                Hook::Output,
                Hook::Postrouting,
            ][..],
        ),
    ] {
        for chain in &bases {
            let b = chain.base.as_ref().expect("filtered to base chains");
            if !hooks.contains(&b.hook) || (b.nat && !first) {
                continue;
            }
            let edge = match b.hook {
                Hook::Prerouting => PRIORITY_DSTNAT,
                Hook::Postrouting => PRIORITY_SRCNAT,
                _ => i32::MIN,
            };
            // At the very priority of the translation, the order is not fixed: both.
            let sides: &[bool] = match b.priority.cmp(&edge) {
                std::cmp::Ordering::Less => &[false],
                std::cmp::Ordering::Equal => &[false, true],
                std::cmp::Ordering::Greater => &[true],
            };
            // The nat chains of prerouting all run from netfilter's one NAT hook at
            // dstnat (their priorities only order them), on the flow's first packet,
            // until one translates the destination: one before loopgate's sees the
            // original tuple; once loopgate's DNAT is done, no other runs. So a nat
            // chain never sees the translated packet, and one after loopgate's never
            // runs for the grant's flow.
            let (sides, priority): (&[bool], i32) = match (b.nat, b.hook) {
                (true, Hook::Prerouting) if b.priority > PRIORITY_DSTNAT => continue,
                (true, Hook::Prerouting) => (&[false], PRIORITY_DSTNAT),
                _ => (sides, b.priority),
            };
            for &after in sides {
                let Some(pkt) = packet_at(flow, b.hook, priority, first, after) else {
                    continue;
                };
                // conntrack runs at -200 at prerouting and at output: a chain before it
                // sees packets not yet tracked, where `notrack` takes effect.
                let before_conntrack = matches!(b.hook, Hook::Prerouting | Hook::Output)
                    && priority <= PRIORITY_CONNTRACK;
                match base_verdict(ruleset, chain, &pkt, before_conntrack) {
                    Verdict::Passes => {}
                    d @ Verdict::Drops { .. } => return d,
                    m @ Verdict::MayDrop { .. } => {
                        maybe.get_or_insert(m);
                    }
                }
            }
        }
    }
    if let Some(m) = maybe {
        return m;
    }
    if let Some((table, chain, why)) = ruleset.unjudged.first() {
        return Verdict::MayDrop {
            table: table.clone(),
            chain: chain.clone(),
            why: why.clone(),
            stop: None,
        };
    }
    if let Some(why) = ruleset.unreadable.first() {
        return Verdict::MayDrop {
            table: "iptables-legacy".into(),
            chain: "INPUT".into(),
            why: why.clone(),
            stop: None,
        };
    }
    Verdict::Passes
}

/// The flows of `grant`: one per allowed network, with what a reverse path check finds
/// for it (see [`route_back`]).
pub fn flows(
    grant: &Grant,
    ifindex: Option<u32>,
    plain_routing: Option<bool>,
    routes: &Routes,
) -> Vec<Flow> {
    grant
        .allow
        .iter()
        .map(|net| Flow {
            route_back: route_back(plain_routing, routes, *net, &grant.iface),
            iface: grant.iface.clone(),
            ifindex,
            src: *net,
            listen: (grant.listen, grant.port),
            to: (*grant.to.ip(), grant.to.port()),
            proto: grant.proto.number(),
        })
        .collect()
}
