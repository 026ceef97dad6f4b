//! Specs resolved against the host at one moment: each spec on each interface it names
//! or matches, with its listen address looked up now, into concrete grants; what
//! cannot be served now is [`Pending`], and a grant in force is kept while its
//! interface is briefly gone.

use super::guards::keep_guard;
use super::Spec;
use crate::grant::{Grant, GrantKey};
use crate::input::Interfaces;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Why a spec serves no interface now, as commands decide on it; the words are in
/// [`Pending::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingKind {
    /// The interface or a runtime network's bridge does not exist now, or no interface
    /// matches the pattern: served when it appears.
    Missing,
    /// The runtime says the network does not exist (a project that is down, or a
    /// typo): served when it appears.
    NoNetwork,
    /// The interface has no usable address now (none at all, not the pinned one, or
    /// host-gateway is unusable): served when it has.
    Unaddressed,
    /// The runtime could not be asked about its network.
    RuntimeUnknown,
    /// The runtime could not be asked, but the network's grant stays in force on the
    /// bridge it last resolved to: not pending, unconfirmed (a dockerd outage must not
    /// read as a grant that is not served).
    Unconfirmed,
    /// Another spec already publishes the same address, protocol and port on the
    /// interface to another target: a conflict, which `expose` and `apply` refuse.
    Conflict,
}

/// A spec, or part of one, that serves no interface now, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pending {
    /// The spec's label ([`Spec::label`]).
    pub spec: String,
    /// The interface (name, or pattern when nothing matches), or `docker network NAME`
    /// when the runtime network itself is not there.
    pub interface: String,
    /// Why it is not served, in words.
    pub reason: String,
    /// Why it is not served, as a value to decide on.
    #[serde(skip)]
    pub kind: PendingKind,
    /// The runtime network it was asked for by, as grants carry it: `interface` is then
    /// `docker network NAME` or the bridge, and this the network by itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::grant::NetworkSelector>,
}

impl Pending {
    /// `SPEC on IFACE`, with `on IFACE` left out when the spec's label already says
    /// where (`docker network myproj_default tcp/5432`).
    pub fn subject(&self) -> String {
        let named = self.spec.starts_with(&format!("{} ", self.interface))
            || self.spec.contains(&format!("({} ", self.interface));
        match named {
            true => self.spec.clone(),
            false => format!("{} on {}", self.spec, self.interface),
        }
    }

    /// `SPEC on IFACE is pending: REASON` (see [`Pending::subject`]); for a grant in
    /// force that the runtime could not confirm, `SPEC: REASON` (the reason says so).
    pub fn what(&self) -> String {
        match self.kind {
            PendingKind::Unconfirmed => format!("{}: {}", self.spec, self.reason),
            _ => format!("{} is pending: {}", self.subject(), self.reason),
        }
    }
}

/// Specs resolved against the interfaces of one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// The concrete grants to install, in spec order.
    pub grants: Vec<Grant>,
    /// What cannot be served now.
    pub pending: Vec<Pending>,
}

/// What resolution needs to know of the host: names and IPv4 addresses.
pub trait Host: Interfaces {
    /// Every interface name of the namespace.
    fn interface_names(&self) -> Vec<String>;

    /// What a runtime says of its network `name` (see
    /// [`crate::runtime::inspect`]); none known by default.
    fn runtime_network(
        &self,
        _runtime: crate::kernel::runtime::Runtime,
        _name: &str,
    ) -> std::result::Result<Option<crate::kernel::runtime::RuntimeNet>, String> {
        Ok(None)
    }

    /// Runtime bridges that were re-created since the runtime last described them, as
    /// the [`runtime_network`](Host::runtime_network) answers given so far saw them:
    /// their grants stand and guard them, but they are not opened until the runtime
    /// describes them again. None by default: a host that asks the runtime each time
    /// always has its latest word.
    fn unsettled(&self) -> std::collections::BTreeSet<String> {
        std::collections::BTreeSet::new()
    }
}

/// Resolves `specs` against `host`: each spec on each interface it names or matches
/// now, with its listen address (explicit, or the interface's primary one, looked up
/// now). Pure apart from `host`. A spec whose interface is missing, whose pattern
/// matches nothing, whose interface has no IPv4 address, or whose explicit listen
/// address is not on the interface, is [`Pending`].
///
/// A spec naming one interface (not a pattern) that is missing now keeps the grant it
/// had in `previous` (the committed grants), or one built from its pinned listen
/// address: a runtime that deletes and re-creates its bridge finds the guard already in
/// place for the new copy, which may come up open (`conf.default.route_localnet`). A
/// pattern's grants go with their interfaces (veth devices come and go by thousands).
///
/// When two specs would publish the same address, protocol and port on one interface
/// to different targets, the first one wins and the other is pending (`expose` and
/// `apply` refuse such specs up front; this only happens when a new interface matches
/// two patterns).
pub fn resolve_keeping(specs: &[Spec], host: &dyn Host, previous: &[Grant]) -> Resolved {
    resolve_with(specs, host, previous)
}

/// [`resolve_keeping`] without committed grants to keep.
pub fn resolve(specs: &[Spec], host: &dyn Host) -> Resolved {
    resolve_with(specs, host, &[])
}

pub(super) fn resolve_with(specs: &[Spec], host: &dyn Host, previous: &[Grant]) -> Resolved {
    let names = host.interface_names();
    let mut out = Resolved::default();
    let mut seen: BTreeMap<GrantKey, (SocketAddrV4, String)> = BTreeMap::new();
    for spec in specs {
        // A runtime's network: ask the runtime where it is now.
        let net = match &spec.network {
            None => None,
            Some(sel) => match host.runtime_network(sel.runtime, &sel.name) {
                Ok(Some(net)) => Some(net),
                Ok(None) => {
                    let why = format!("`{} network ls` does not list it now", sel.runtime.cli());
                    out.pending.push(Pending {
                        spec: spec.label(),
                        interface: format!("{} network {}", sel.runtime.cli(), sel.name),
                        reason: why,
                        kind: PendingKind::NoNetwork,
                        network: spec.network.clone(),
                    });
                    continue;
                }
                Err(why) => {
                    // The grant in force stays as last resolved: the runtime's silence
                    // says nothing about its network.
                    let kept: Vec<&Grant> = previous
                        .iter()
                        .filter(|g| {
                            g.network.as_ref() == Some(sel)
                                && g.proto == spec.proto
                                && g.port == spec.port
                                && g.to == spec.to
                                && spec.listen.is_none_or(|l| l == g.listen)
                        })
                        .collect();
                    if kept.is_empty() {
                        out.pending.push(Pending {
                            spec: spec.label(),
                            interface: format!("{} network {}", sel.runtime.cli(), sel.name),
                            reason: why.clone(),
                            kind: PendingKind::RuntimeUnknown,
                            network: spec.network.clone(),
                        });
                    }
                    for g in kept {
                        if let std::collections::btree_map::Entry::Vacant(e) = seen.entry(g.key()) {
                            e.insert((g.to, spec.label()));
                            out.grants.push(g.clone());
                        }
                        out.pending.push(Pending {
                            spec: spec.label(),
                            interface: g.iface.clone(),
                            reason: format!(
                                "in force on {} as last resolved; {} does not answer: {why}",
                                g.iface,
                                sel.runtime.cli()
                            ),
                            kind: PendingKind::Unconfirmed,
                            network: spec.network.clone(),
                        });
                    }
                    continue;
                }
            },
        };
        let allow = match &net {
            Some(n) if spec.allow.is_empty() => n.subnets.clone(),
            _ => spec.allow.clone(),
        };
        if let Some(n) = &net {
            if !names.contains(&n.bridge) {
                let why = format!("its bridge {} does not exist now", n.bridge);
                let n = (n, allow.as_slice(), host.host_gateway());
                keep_guard(
                    spec,
                    &n.0.bridge,
                    Some(n),
                    &[],
                    previous,
                    (PendingKind::Missing, why),
                    &mut seen,
                    &mut out,
                );
                continue;
            }
        }
        let ifaces: Vec<&String> = if let Some(n) = &net {
            names.iter().filter(|x| **x == n.bridge).collect()
        } else if spec.is_pattern() {
            names.iter().filter(|n| spec.matches(n)).collect()
        } else {
            names.iter().filter(|n| **n == spec.interface).collect()
        };
        if ifaces.is_empty() && !spec.is_pattern() {
            // Keep the guard for a missing interface: the committed grant of this spec,
            // or one from its pinned address.
            let prev = previous.iter().find(|g| {
                g.iface == spec.interface
                    && g.proto == spec.proto
                    && g.port == spec.port
                    && spec.listen.is_none_or(|l| l == g.listen)
            });
            let kept = match (prev, spec.listen) {
                (Some(p), _) => Some((p.listen, p.name.clone())),
                (None, Some(listen)) => Some((
                    listen,
                    Grant::default_name(&spec.interface, None, spec.proto, spec.port),
                )),
                (None, None) => None,
            }
            .map(|(listen, default_name)| Grant {
                name: spec.name.clone().unwrap_or(default_name),
                iface: spec.interface.clone(),
                proto: spec.proto,
                listen,
                port: spec.port,
                to: spec.to,
                allow: spec.allow.clone(),
                network: spec.network.clone(),
            });
            out.pending.push(Pending {
                spec: spec.label(),
                interface: spec.interface.clone(),
                reason: match kept {
                    Some(_) => "the interface does not exist now; its guard stays in place".into(),
                    None => "the interface does not exist now".into(),
                },
                kind: PendingKind::Missing,
                network: spec.network.clone(),
            });
            if let Some(g) = kept {
                if let std::collections::btree_map::Entry::Vacant(e) = seen.entry(g.key()) {
                    e.insert((g.to, spec.label()));
                    out.grants.push(g);
                }
            }
            continue;
        }
        if ifaces.is_empty() {
            out.pending.push(Pending {
                spec: spec.label(),
                interface: spec.interface.clone(),
                reason: match spec.is_pattern() {
                    true => "no interface matches the pattern now".into(),
                    false => "the interface does not exist now".into(),
                },
                kind: PendingKind::Missing,
                network: spec.network.clone(),
            });
            continue;
        }
        for iface in ifaces {
            let addresses = host.ipv4_addresses(iface).unwrap_or_default();
            let listen = match spec.listen {
                Some(a) if addresses.contains(&a) || host.owns(a) => a,
                Some(a) => {
                    let why = format!("{a} is not an address of {iface} now");
                    let n = net
                        .as_ref()
                        .map(|n| (n, allow.as_slice(), host.host_gateway()));
                    keep_guard(
                        spec,
                        iface,
                        n,
                        &addresses,
                        previous,
                        (PendingKind::Unaddressed, why),
                        &mut seen,
                        &mut out,
                    );
                    continue;
                }
                None if !spec.host_gateway
                    && net
                        .as_ref()
                        .and_then(|n| n.gateway)
                        .is_some_and(|g| addresses.contains(&g) || host.owns(g)) =>
                {
                    net.as_ref()
                        .and_then(|n| n.gateway)
                        .unwrap_or(Ipv4Addr::UNSPECIFIED)
                }
                None if spec.host_gateway => match host.host_gateway() {
                    Some(a) if !a.is_loopback() && (addresses.contains(&a) || host.owns(a)) => a,
                    Some(a) => {
                        out.pending.push(Pending {
                            spec: spec.label(),
                            interface: iface.clone(),
                            reason: format!(
                                "host-gateway is {a} now, which is not a usable address of this host"
                            ),
                            kind: PendingKind::Unaddressed,
                            network: spec.network.clone(),
                        });
                        continue;
                    }
                    None => {
                        out.pending.push(Pending {
                            spec: spec.label(),
                            interface: iface.clone(),
                            reason: "host-gateway has no address now (no docker0)".into(),
                            kind: PendingKind::Unaddressed,
                            network: spec.network.clone(),
                        });
                        continue;
                    }
                },
                None => match addresses.first() {
                    Some(a) => *a,
                    None => {
                        let why = format!("{iface} has no IPv4 address now");
                        let n = net
                            .as_ref()
                            .map(|n| (n, allow.as_slice(), host.host_gateway()));
                        keep_guard(
                            spec,
                            iface,
                            n,
                            &addresses,
                            previous,
                            (PendingKind::Unaddressed, why),
                            &mut seen,
                            &mut out,
                        );
                        continue;
                    }
                },
            };
            let secondary = (addresses.first() != Some(&listen)).then_some(listen);
            let grant = Grant {
                name: spec
                    .name
                    .clone()
                    .unwrap_or_else(|| spec.default_name(iface, secondary)),
                iface: iface.clone(),
                proto: spec.proto,
                listen,
                port: spec.port,
                to: spec.to,
                allow: allow.clone(),
                network: spec.network.clone(),
            };
            match seen.get(&grant.key()) {
                Some((to, _)) if *to == grant.to => {
                    // The same publication twice (two patterns): once is enough.
                }
                Some((_, first)) => out.pending.push(Pending {
                    spec: spec.label(),
                    interface: iface.clone(),
                    reason: format!(
                        "{listen}:{}/{} on {iface} is already published by {first}",
                        spec.port, spec.proto
                    ),
                    kind: PendingKind::Conflict,
                    network: spec.network.clone(),
                }),
                None => {
                    seen.insert(grant.key(), (grant.to, spec.label()));
                    out.grants.push(grant);
                }
            }
        }
    }
    out
}
