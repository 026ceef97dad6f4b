//! Guards kept without a grant: the guard a pending spec keeps on an interface that is
//! missing or has no address yet ([`keep_guard`]), and the interfaces `loopgate guard`
//! asks to guard ([`GuardSpec`], [`resolve_guards`]).

use super::{is_pattern, Host, Pending, PendingKind, Resolved, Source, Spec};
use crate::grant::{Grant, GrantKey, Proto};
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

/// The guard a spec keeps on `iface` while the interface is missing or has no IPv4
/// address at all, so that a device re-created under the same name finds its guard in
/// place: netavark deletes its bridge with the last container, and brings the new one
/// up with route_localnet=1 before it adds the address. A kept grant on a missing
/// device publishes nothing.
///
/// - A runtime network's spec (`net`: what the runtime reports now) keeps the grant it
///   would make on the network's bridge now: the runtime's current subnets (or the
///   spec's allow list) and its gateway (or the spec's listen address), never what an
///   earlier grant allowed.
/// - Any other spec keeps the committed grant in `previous` on that interface with the
///   same protocol, port, target, name, allow list and listen address: the very grant
///   it made, not one another spec made.
///
/// Nothing is kept once the interface has some address (then the address was
/// changed, not not-yet-added). Pushes one [`Pending`] with `why` either way.
#[allow(clippy::too_many_arguments)]
pub(super) fn keep_guard(
    spec: &Spec,
    iface: &str,
    net: Option<(
        &crate::kernel::runtime::RuntimeNet,
        &[Ipv4Network],
        Option<Ipv4Addr>,
    )>,
    addresses: &[Ipv4Addr],
    previous: &[Grant],
    (kind, why): (PendingKind, String),
    seen: &mut BTreeMap<GrantKey, (SocketAddrV4, String)>,
    out: &mut Resolved,
) {
    let kept: Option<Grant> = match net {
        _ if !addresses.is_empty() => None,
        Some((n, allow, host_gateway)) => spec
            .listen
            .or(if spec.host_gateway {
                host_gateway
            } else {
                n.gateway
            })
            .map(|listen| Grant {
                name: spec
                    .name
                    .clone()
                    .unwrap_or_else(|| spec.default_name(iface, None)),
                iface: iface.to_string(),
                proto: spec.proto,
                listen,
                port: spec.port,
                to: spec.to,
                allow: allow.to_vec(),
                network: spec.network.clone(),
            }),
        None => previous
            .iter()
            .find(|g| {
                g.iface == iface
                    && g.proto == spec.proto
                    && g.port == spec.port
                    && g.to == spec.to
                    && spec.name.as_ref().is_none_or(|n| *n == g.name)
                    && spec.allow == g.allow
                    && spec.listen.is_none_or(|l| l == g.listen)
            })
            .cloned(),
    };
    let kept = kept.filter(|g| match seen.entry(g.key()) {
        std::collections::btree_map::Entry::Vacant(e) => {
            e.insert((g.to, spec.label()));
            true
        }
        _ => false,
    });
    out.pending.push(Pending {
        spec: spec.label(),
        interface: iface.to_string(),
        reason: match kept {
            Some(g) => {
                out.grants.push(g);
                format!("{why}; its guard stays in place")
            }
            None => why,
        },
        kind,
        network: spec.network.clone(),
    });
}

/// An interface to guard without publishing anything on it (`loopgate guard`): its
/// route_localnet belongs to another tool (Docker, netavark, kube-proxy, a CNI plugin),
/// which opened it; loopgate adds the guard chains so that nothing reaches 127.0.0.0/8
/// through it except what that tool forwards (replies of flows the host opened).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardSpec {
    /// What may replace or remove it.
    pub source: Source,
    /// An interface name or a glob pattern (`*` for every interface but `lo`).
    pub interface: String,
}

/// The interfaces `guards` name or match now, sorted: a pattern's matches among
/// `host`'s interfaces (never `lo`), and a name even while it does not exist (the
/// guard is a name match; a re-created device finds it in place).
pub fn resolve_guards(guards: &[GuardSpec], host: &dyn Host) -> Vec<String> {
    let names = host.interface_names();
    let mut out: Vec<String> = Vec::new();
    for g in guards {
        if is_pattern(&g.interface) {
            let probe = Spec {
                source: g.source,
                name: None,
                interface: g.interface.clone(),
                network: None,
                proto: Proto::Tcp,
                port: 1,
                to: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1),
                listen: None,
                host_gateway: false,
                allow: vec![],
                origin: None,
            };
            out.extend(names.iter().filter(|n| probe.matches(n)).cloned());
        } else {
            out.push(g.interface.clone());
        }
    }
    out.sort();
    out.dedup();
    out
}
