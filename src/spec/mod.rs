//! What the user asked for, kept apart from what is in force now.
//!
//! A [`Spec`] is one published port as requested: its interface may be a name or a
//! glob pattern (`br-*`, `veth*`), its listen address may be left to "the interface's
//! primary address". Interfaces come and go (dockerd, compose, CNI, libvirt re-create
//! them), so loopgate keeps the specs (in the state file and in policy files) and
//! [`resolve`]s them against the interfaces that exist at each moment into concrete
//! [`Grant`]s, which the engine installs. A spec with no interface to serve now is
//! *pending*: kept, reported, and served as soon as a matching interface appears.
//!
//! This file holds the specs themselves (their keys, parsing, merging, conflicts);
//! `resolve` turns them into grants against the host; `guards` holds the guards
//! kept without a grant: a pending spec's, and `loopgate guard`'s.

mod guards;
mod resolve;

pub use guards::{resolve_guards, GuardSpec};
pub use resolve::{resolve, resolve_keeping, Host, Pending, PendingKind, Resolved};

use crate::bad_input;
use crate::grant::{Grant, Proto};
use crate::input::{self, GrantRequest};
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

pub use crate::grant::NetworkSelector;

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
    /// The policy file that asks for it (its real path), for a spec of a policy: the
    /// one owner that may change it. `None` for the command line's, and for policy
    /// specs recorded before loopgate kept their file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
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
            origin: None,
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

    /// The name its grant on `iface` gets when none was asked for: from the runtime
    /// network's name for a network's spec (`myproj_default-tcp-5432`, the same after
    /// every `docker compose down/up`), else from the interface ([`Grant::default_name`]).
    ///
    /// A network's name never carries the listen address: a network's spec resolves to
    /// one bridge and one address, so there is nothing to tell apart, and the address
    /// (its gateway, or host-gateway's docker0 address) may change while the name must
    /// not. Refusals, audit, plan and Prometheus then all say `NETWORK-PROTO-PORT`.
    pub fn default_name(&self, iface: &str, secondary_listen: Option<Ipv4Addr>) -> String {
        match &self.network {
            Some(n) => Grant::default_name(&n.name, None, self.proto, self.port),
            None => Grant::default_name(iface, secondary_listen, self.proto, self.port),
        }
    }

    /// The name people know it by: the one asked for, or its default name on the
    /// interface (or network) it names.
    pub fn shown_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.default_name(&self.interface, None))
    }

    /// Where it publishes, as the user named it: `docker0`, `br-*` or `docker network
    /// myproj_default`.
    pub fn on(&self) -> String {
        match &self.network {
            Some(n) => n.to_string(),
            None => self.interface.clone(),
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
                origin: None,
            });
        }
    }
    Ok(out)
}

/// Refuses two specs with the same key (the same interface or pattern, listen
/// address, protocol and port) in one policy: to two targets, or twice.
///
/// Errors (bad input): names the publication (as the user named it: interface,
/// pattern or runtime network), and both grants with the files that ask for them.
pub fn check_conflicts(specs: &[Spec]) -> Result<()> {
    let mut seen: BTreeMap<SpecKey, &Spec> = BTreeMap::new();
    for s in specs {
        if let Some(other) = seen.insert(s.key(), s) {
            let listen = match (s.listen, s.host_gateway) {
                (Some(l), _) => format!(" on {l}"),
                (None, true) => " on host-gateway".to_string(),
                (None, false) => String::new(),
            };
            let at = format!("{} {}/{}{listen}", s.on(), s.proto, s.port);
            let who = |x: &Spec| match &x.origin {
                Some(o) => format!("grant {} in {o}", x.shown_name()),
                None => format!("grant {}", x.shown_name()),
            };
            if other.to != s.to {
                bad_input!(
                    "{at} is published to both {} ({}) and {} ({}); keep one target per published port",
                    other.to,
                    who(other),
                    s.to,
                    who(s)
                );
            }
            bad_input!(
                "{at} is published twice: by {} and by {}; keep one of them",
                who(other),
                who(s)
            );
        }
    }
    Ok(())
}

/// Adds `new` to `specs`, replacing specs with the same key.
///
/// By a map of keys, each built once: watch merges every policy spec on every pass
/// that changes something, and a search per spec (two keys built per comparison) was
/// a tenth of its reaction to a new interface at 1,000 grants.
pub fn merge(specs: &mut Vec<Spec>, new: Vec<Spec>) {
    let mut at: std::collections::BTreeMap<SpecKey, usize> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.key(), i))
        .rev()
        .collect();
    for n in new {
        match at.entry(n.key()) {
            std::collections::btree_map::Entry::Occupied(e) => specs[*e.get()] = n,
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(specs.len());
                specs.push(n);
            }
        }
    }
}

#[cfg(test)]
mod tests;
