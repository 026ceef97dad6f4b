//! What the user asked for, kept apart from what is in force now.
//!
//! A [`Spec`] is one published port as requested: its interface may be a name or a
//! glob pattern (`br-*`, `veth*`), its listen address may be left to "the interface's
//! primary address". Interfaces come and go (dockerd, compose, CNI, libvirt re-create
//! them), so loopgate keeps the specs (in the state file and in policy files) and
//! [`resolve`]s them against the interfaces that exist at each moment into concrete
//! [`Grant`]s, which the engine installs. A spec with no interface to serve now is
//! *pending*: kept, reported, and served as soon as a matching interface appears.

use crate::bad_input;
use crate::grant::{Grant, GrantKey, Proto};
use crate::input::{self, GrantRequest, Interfaces};
use anyhow::Result;
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Where a spec came from: what may replace or remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `loopgate expose` without `--persist`: stays until `revoke`, across `apply`.
    Cli,
    /// A policy file (`apply`, `watch --policy`, `expose --persist`): replaced whole
    /// each time the policy is applied.
    Policy,
}

/// A container runtime's network, named instead of an interface.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSelector {
    /// Whose network.
    pub runtime: crate::kernel::runtime::Runtime,
    /// Its name, as `docker network ls` / `podman network ls` show it.
    pub name: String,
}

/// One requested publication: `listen:port/proto` on every interface `interface`
/// names or matches, DNATed to `to`, for `allow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// What may replace or remove it.
    pub source: Source,
    /// The grant name asked for (`--name`); `None`: each grant gets its default name
    /// ([`Grant::default_name`]) from the interface it resolves on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An interface name, or a glob pattern over names (`*`, `?`, `[...]`; see
    /// [`is_pattern`]). `lo`, `all` and `default` never match. Empty with `network`.
    pub interface: String,
    /// A runtime's network instead of an interface: resolved to its bridge, subnets
    /// and gateway (see [`crate::kernel::runtime`]) each time the spec resolves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSelector>,
    /// The transport protocol.
    pub proto: Proto,
    /// The published port, host byte order.
    pub port: u16,
    /// The loopback target, in 127.0.0.0/8.
    pub to: SocketAddrV4,
    /// The address clients connect to; `None`: the primary IPv4 address of each
    /// interface it resolves on, looked up again every time it resolves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<Ipv4Addr>,
    /// `--listen host-gateway`: the listen address is the one Docker gives
    /// `host.docker.internal`, looked up whenever the spec resolves.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_gateway: bool,
    /// Allowed source networks, validated (host bits clear, no 127/8, not /0).
    #[serde(serialize_with = "crate::grant::serialize_networks")]
    pub allow: Vec<Ipv4Network>,
}

/// What identifies a spec: a second spec with the same key replaces it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpecKey {
    /// The interface name or pattern, as written.
    pub interface: String,
    /// The runtime network, if one is named instead.
    pub network: Option<NetworkSelector>,
    /// The explicit listen address, if any.
    pub listen: Option<Ipv4Addr>,
    /// Whether the listen address is host-gateway's.
    pub host_gateway: bool,
    /// Protocol.
    pub proto: Proto,
    /// Published port.
    pub port: u16,
}

impl Spec {
    /// This spec's key.
    pub fn key(&self) -> SpecKey {
        SpecKey {
            interface: self.interface.clone(),
            network: self.network.clone(),
            listen: self.listen,
            host_gateway: self.host_gateway,
            proto: self.proto,
            port: self.port,
        }
    }

    /// The spec that stands for one concrete grant (its interface and listen address
    /// pinned): how state written before specs existed is carried over.
    pub fn of_grant(g: &Grant, source: Source) -> Spec {
        Spec {
            source,
            name: Some(g.name.clone()),
            interface: g.iface.clone(),
            network: None,
            proto: g.proto,
            port: g.port,
            to: g.to,
            listen: Some(g.listen),
            host_gateway: false,
            allow: g.allow.clone(),
        }
    }

    /// True when the interface is a pattern, not a name.
    pub fn is_pattern(&self) -> bool {
        self.network.is_none() && is_pattern(&self.interface)
    }

    /// True when this spec applies to the interface called `iface`.
    pub fn matches(&self, iface: &str) -> bool {
        if matches!(iface, "lo" | "all" | "default") {
            return false;
        }
        if self.network.is_some() {
            false
        } else if self.is_pattern() {
            glob::Pattern::new(&self.interface).is_ok_and(|p| p.matches(iface))
        } else {
            self.interface == iface
        }
    }

    /// How people refer to it: its name, or `IFACE proto/port`.
    pub fn label(&self) -> String {
        let on = match &self.network {
            Some(n) => format!("{} network {}", n.runtime.cli(), n.name),
            None => self.interface.clone(),
        };
        match &self.name {
            Some(n) => format!("{n} ({on} {}/{})", self.proto, self.port),
            None => format!("{on} {}/{}", self.proto, self.port),
        }
    }
}

/// True when `text` is a glob pattern (contains `*`, `?` or `[`) rather than a name.
/// Linux allows these characters in names; an interface literally called `br*` cannot
/// be named exactly, which no runtime does.
pub fn is_pattern(text: &str) -> bool {
    text.contains(['*', '?', '['])
}

/// Checks an `IFACE` argument or `interface:` value: a valid interface name, or a
/// valid glob pattern (same character rules, at most 15 bytes).
///
/// Errors (bad input): as [`input::parse_iface`], or a pattern glob cannot parse.
pub fn parse_interface(text: &str) -> Result<String> {
    if !is_pattern(text) {
        return input::parse_iface(text);
    }
    // The same character rules as a name, with the pattern characters allowed.
    let plain: String = text
        .chars()
        .map(|c| {
            if matches!(c, '*' | '?' | '[' | ']' | '!') {
                'x'
            } else {
                c
            }
        })
        .collect();
    input::parse_iface(&plain).map_err(|_| {
        anyhow::Error::new(crate::error::BadInput(format!(
            "interface pattern {text:?} is not valid: at most 15 bytes, no '/', ':' or whitespace"
        )))
    })?;
    if let Err(e) = glob::Pattern::new(text) {
        bad_input!("interface pattern {text:?} is not valid: {}", e.msg);
    }
    Ok(text.to_string())
}

/// Turns one request (command line or policy entry) into specs, one per (protocol,
/// port). Checks everything that does not depend on the host's interfaces.
///
/// Errors (bad input, naming the value): as [`input::validate`].
pub fn from_request(req: &GrantRequest, source: Source) -> Result<Vec<Spec>> {
    let (interface, network) = match &req.network {
        Some((runtime, name)) => {
            if name.is_empty() || name.len() > 255 || name.contains(['/', '\0']) {
                bad_input!("invalid {} network name {name:?}", runtime.cli());
            }
            (
                String::new(),
                Some(NetworkSelector {
                    runtime: *runtime,
                    name: name.clone(),
                }),
            )
        }
        None => (parse_interface(&req.iface)?, None),
    };
    let shown = match &network {
        Some(n) => format!("{} network {}", n.runtime.cli(), n.name),
        None => interface.clone(),
    };
    let parts = input::parse_parts(req, &shown)?;
    let mut out = Vec::new();
    for &proto in &parts.protos {
        for &port in &parts.ports {
            out.push(Spec {
                source,
                name: parts.name.clone(),
                interface: interface.clone(),
                network: network.clone(),
                proto,
                port,
                to: SocketAddrV4::new(parts.to_addr, parts.to_port.unwrap_or(port)),
                listen: parts.listen,
                host_gateway: parts.host_gateway,
                allow: parts.allow.clone(),
            });
        }
    }
    Ok(out)
}

/// Why a spec serves no interface now, as commands decide on it; the words are in
/// [`Pending::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingKind {
    /// The interface, runtime network or bridge does not exist now, or no interface
    /// matches the pattern: served when it appears.
    Missing,
    /// The interface has no usable address now (none at all, not the pinned one, or
    /// host-gateway is unusable): served when it has.
    Unaddressed,
    /// The runtime could not be asked about its network.
    RuntimeUnknown,
    /// Another spec already publishes the same address, protocol and port on the
    /// interface to another target: a conflict, which `expose` and `apply` refuse.
    Conflict,
}

/// A spec, or part of one, that serves no interface now, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pending {
    /// The spec's label ([`Spec::label`]).
    pub spec: String,
    /// The interface (name, or pattern when nothing matches).
    pub interface: String,
    /// Why it is not served, in words.
    pub reason: String,
    /// Why it is not served, as a value to decide on.
    #[serde(skip)]
    pub kind: PendingKind,
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

fn resolve_with(specs: &[Spec], host: &dyn Host, previous: &[Grant]) -> Resolved {
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
                    let why = format!(
                        "{} network {} does not exist now",
                        sel.runtime.cli(),
                        sel.name
                    );
                    out.pending.push(Pending {
                        spec: spec.label(),
                        interface: String::new(),
                        reason: why,
                        kind: PendingKind::Missing,
                    });
                    continue;
                }
                Err(why) => {
                    out.pending.push(Pending {
                        spec: spec.label(),
                        interface: String::new(),
                        reason: why,
                        kind: PendingKind::RuntimeUnknown,
                    });
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
            });
            out.pending.push(Pending {
                spec: spec.label(),
                interface: spec.interface.clone(),
                reason: match kept {
                    Some(_) => "the interface does not exist now; its guard stays in place".into(),
                    None => "the interface does not exist now".into(),
                },
                kind: PendingKind::Missing,
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
                        });
                        continue;
                    }
                    None => {
                        out.pending.push(Pending {
                            spec: spec.label(),
                            interface: iface.clone(),
                            reason: "host-gateway has no address now (no docker0)".into(),
                            kind: PendingKind::Unaddressed,
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
                name: spec.name.clone().unwrap_or_else(|| {
                    Grant::default_name(iface, secondary, spec.proto, spec.port)
                }),
                iface: iface.clone(),
                proto: spec.proto,
                listen,
                port: spec.port,
                to: spec.to,
                allow: allow.clone(),
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
fn keep_guard(
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
                    .unwrap_or_else(|| Grant::default_name(iface, None, spec.proto, spec.port)),
                iface: iface.to_string(),
                proto: spec.proto,
                listen,
                port: spec.port,
                to: spec.to,
                allow: allow.to_vec(),
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
    });
}

/// Refuses two specs with the same key (the same interface or pattern, listen
/// address, protocol and port) in one policy: to two targets, or twice.
///
/// Errors (bad input): names the publication and both targets or names.
pub fn check_conflicts(specs: &[Spec]) -> Result<()> {
    let mut seen: BTreeMap<SpecKey, &Spec> = BTreeMap::new();
    for s in specs {
        if let Some(other) = seen.insert(s.key(), s) {
            let at = match s.listen {
                Some(l) => format!("{l}:{}/{} on {}", s.port, s.proto, s.interface),
                None => format!("{} {}/{}", s.interface, s.proto, s.port),
            };
            if other.to != s.to {
                bad_input!(
                    "{at} is published to both {} and {}; keep one target per published port",
                    other.to,
                    s.to
                );
            }
            bad_input!(
                "{at} is published twice ({} and {})",
                other.label(),
                s.label()
            );
        }
    }
    Ok(())
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

/// Adds `new` to `specs`, replacing specs with the same key.
pub fn merge(specs: &mut Vec<Spec>, new: Vec<Spec>) {
    for n in new {
        match specs.iter_mut().find(|s| s.key() == n.key()) {
            Some(s) => *s = n,
            None => specs.push(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for (name, says) in [("gone", "does not exist now"), ("mv", "macvlan")] {
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
}
