//! Container runtimes' networks by name: the bridge, IPv4 subnets and gateway of a
//! Docker or Podman network, asked of the runtime itself.
//!
//! Users name a network (`--docker-network myproj_default`); the bridge behind it is
//! `br-` + 12 hex digits of a network ID that changes with every `compose down/up`, and
//! its subnet may change too. loopgate asks the runtime's own command-line client
//! (`docker network inspect`, `podman network inspect`) each time it resolves the grant:
//! the CLI is each runtime's supported interface, honours `DOCKER_HOST`, contexts and
//! `CONTAINER_HOST` / podman's configuration as the user's own commands do, and needs
//! no HTTP client in loopgate. The JSON it prints is parsed here; only the fields named
//! below are read.

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::process::Command;

/// A container runtime loopgate can ask about networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// Docker (dockerd), through the `docker` CLI.
    Docker,
    /// Podman (netavark), through the `podman` CLI.
    Podman,
}

impl Runtime {
    /// The runtime's CLI, and its name in messages.
    pub fn cli(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
        }
    }
}

/// What loopgate needs of a runtime's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeNet {
    /// The Linux bridge the network's containers are behind.
    pub bridge: String,
    /// The network's IPv4 subnets (the default allowed sources).
    pub subnets: Vec<Ipv4Network>,
    /// The network's IPv4 gateway: the host's address on the bridge (the default
    /// listen address).
    pub gateway: Option<Ipv4Addr>,
}

/// Why a network cannot be used (the message names the network and says why).
pub type Refusal = String;

/// Asks `runtime` about network `name`: `Ok(None)` when the runtime says it does not
/// exist (yet), `Err` (one line) when its CLI is missing or fails otherwise, or the
/// network is not a bridge network or has no IPv4 subnet.
pub fn inspect(runtime: Runtime, name: &str) -> Result<Option<RuntimeNet>, Refusal> {
    if name.starts_with('-') {
        return Err(format!("invalid {} network name {name:?}", runtime.cli()));
    }
    let out = Command::new(runtime.cli())
        // `--`: a name is never read as an option of the runtime's CLI.
        .args(["network", "inspect", "--", name])
        .output()
        .map_err(|e| {
            format!(
                "cannot run `{} network inspect` ({}): is {} installed?",
                runtime.cli(),
                crate::error::plain_io(&e),
                runtime.cli()
            )
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let lower = stderr.to_lowercase();
        if lower.contains("no such network")
            || lower.contains("not found")
            || lower.contains("unable to find network")
        {
            return Ok(None);
        }
        return Err(format!(
            "`{} network inspect {name}` failed: {}",
            runtime.cli(),
            stderr.lines().next().unwrap_or("no message").trim()
        ));
    }
    parse(runtime, name, &out.stdout)
}

/// Parses `network inspect` output (a JSON array with one network).
pub fn parse(runtime: Runtime, name: &str, json: &[u8]) -> Result<Option<RuntimeNet>, Refusal> {
    let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| {
        format!(
            "{} network {name}: cannot read its description: {e}",
            runtime.cli()
        )
    })?;
    let Some(net) = value.as_array().and_then(|a| a.first()) else {
        return Ok(None);
    };
    let str_at =
        |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let (driver, bridge, pairs) = match runtime {
        Runtime::Docker => {
            let id = str_at(net, "Id").unwrap_or_default();
            let bridge = net
                .get("Options")
                .and_then(|o| o.get("com.docker.network.bridge.name"))
                .and_then(|b| b.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| format!("br-{}", id.get(..12).unwrap_or(&id)));
            let pairs: Vec<(Option<String>, Option<String>)> = net
                .pointer("/IPAM/Config")
                .and_then(|c| c.as_array())
                .map(|c| {
                    c.iter()
                        .map(|e| (str_at(e, "Subnet"), str_at(e, "Gateway")))
                        .collect()
                })
                .unwrap_or_default();
            (str_at(net, "Driver"), bridge, pairs)
        }
        Runtime::Podman => {
            let bridge = str_at(net, "network_interface").unwrap_or_default();
            let pairs: Vec<(Option<String>, Option<String>)> = net
                .get("subnets")
                .and_then(|s| s.as_array())
                .map(|s| {
                    s.iter()
                        .map(|e| (str_at(e, "subnet"), str_at(e, "gateway")))
                        .collect()
                })
                .unwrap_or_default();
            (str_at(net, "driver"), bridge, pairs)
        }
    };
    let driver = driver.unwrap_or_default();
    if driver != "bridge" {
        return Err(format!(
            "{} network {name} uses the {driver:?} driver; loopgate serves bridge networks only (a macvlan, host or none network has no bridge on the host to guard)",
            runtime.cli()
        ));
    }
    if bridge.is_empty() {
        return Err(format!("{} network {name} names no bridge", runtime.cli()));
    }
    // What the runtime says is checked as if the user had typed it: a bridge called
    // `lo` (or a pattern) would put the guard on the host's own loopback, and a subnet
    // of 0.0.0.0/0 or inside 127/8 would widen who gets in.
    if crate::spec::is_pattern(&bridge) {
        return Err(format!(
            "{} network {name} names the bridge {bridge:?}, which is not an interface name",
            runtime.cli()
        ));
    }
    crate::input::parse_iface(&bridge).map_err(|e| {
        format!(
            "{} network {name} names the bridge {bridge:?}, which loopgate will not use: {e:#}",
            runtime.cli()
        )
    })?;
    let mut subnets = Vec::new();
    let mut gateway = None;
    for (subnet, gw) in pairs {
        let Some(text) = subnet else { continue };
        if text.contains(':') {
            continue; // IPv6: route_localnet is IPv4 only
        }
        let n = crate::input::parse_cidr(&text).map_err(|e| {
            format!(
                "{} network {name} has the subnet {text:?}, which loopgate will not allow in: {e:#}",
                runtime.cli()
            )
        })?;
        subnets.push(n);
        if gateway.is_none() {
            gateway = gw.and_then(|g| g.parse().ok());
        }
    }
    if subnets.is_empty() {
        return Err(format!(
            "{} network {name} has no IPv4 subnet (IPv6 only?); route_localnet is IPv4 only",
            runtime.cli()
        ));
    }
    Ok(Some(RuntimeNet {
        bridge,
        subnets,
        gateway,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compose_network_is_its_br_bridge_with_its_subnet_and_gateway() {
        let json = br#"[{"Name":"myproj_default","Id":"0123456789abcdef0123","Driver":"bridge",
            "IPAM":{"Config":[{"Subnet":"203.0.113.32/27","Gateway":"203.0.113.33"}]},"Options":{}}]"#;
        let net = parse(Runtime::Docker, "myproj_default", json)
            .unwrap()
            .unwrap();
        assert_eq!(net.bridge, "br-0123456789ab");
        assert_eq!(net.subnets, vec!["203.0.113.32/27".parse().unwrap()]);
        assert_eq!(net.gateway, Some("203.0.113.33".parse().unwrap()));
        // The default network names its bridge.
        let json = br#"[{"Name":"bridge","Id":"ff","Driver":"bridge","Options":{"com.docker.network.bridge.name":"docker0"},
            "IPAM":{"Config":[{"Subnet":"198.51.100.0/26","Gateway":"198.51.100.1"}]}}]"#;
        assert_eq!(
            parse(Runtime::Docker, "bridge", json)
                .unwrap()
                .unwrap()
                .bridge,
            "docker0"
        );
    }

    #[test]
    fn a_podman_network_names_its_interface() {
        let json = br#"[{"name":"lgpod","driver":"bridge","network_interface":"podman1",
            "subnets":[{"subnet":"fd00::/64","gateway":"fd00::1"},{"subnet":"203.0.113.64/27","gateway":"203.0.113.65"}]}]"#;
        let net = parse(Runtime::Podman, "lgpod", json).unwrap().unwrap();
        assert_eq!(net.bridge, "podman1");
        assert_eq!(net.subnets, vec!["203.0.113.64/27".parse().unwrap()]);
        assert_eq!(net.gateway, Some("203.0.113.65".parse().unwrap()));
    }

    #[test]
    fn other_drivers_and_ipv6_only_networks_are_refused_by_name() {
        let macvlan = br#"[{"Name":"mv","Id":"ab","Driver":"macvlan","IPAM":{"Config":[{"Subnet":"203.0.113.0/24"}]}}]"#;
        let e = parse(Runtime::Docker, "mv", macvlan).unwrap_err();
        assert!(e.contains("mv") && e.contains("macvlan"), "{e}");
        let v6 = br#"[{"Name":"six","Id":"ab","Driver":"bridge","IPAM":{"Config":[{"Subnet":"fd00::/64"}]}}]"#;
        let e = parse(Runtime::Docker, "six", v6).unwrap_err();
        assert!(e.contains("six") && e.contains("IPv6"), "{e}");
        assert_eq!(parse(Runtime::Docker, "x", b"[]").unwrap(), None);
    }
}
