//! Turns raw user input (CLI arguments or policy entries) into validated [`Grant`]s.
//!
//! Everything here runs before the first system call that changes anything, so that bad
//! input ends with exit 2 and an untouched host. Each error names the offending value in
//! one line. The only thing looked up on the host is the interface list, behind the
//! [`Interfaces`] trait so the checks stay testable without a kernel.

use crate::bad_input;
use crate::grant::{Grant, GrantKey, Proto};
use anyhow::Result;
use ipnetwork::Ipv4Network;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

// Re-exported: validation, `txn` and `audit` have always reached it here.
pub use crate::grant::loopback;
// The host facts validation asks for are the kernel's to define (it answers them).
pub use crate::kernel::host::Interfaces;

const IPV6_REFUSAL: &str =
    "IPv6 has no route_localnet (the kernel drops ::1 on every non-loopback device), so loopgate cannot publish over IPv6";

/// What `--listen host-gateway` (policy `listen: host-gateway`) is written as.
pub const HOST_GATEWAY: &str = "host-gateway";

/// One grant request as the user wrote it, on the command line or in a policy file.
#[derive(Debug, Clone, Default)]
pub struct GrantRequest {
    /// `--name` / `name:`; `None` for the default name ([`Grant::default_name`]).
    pub name: Option<String>,
    /// The interface, checked by [`parse_iface`]; it must exist on the host.
    pub iface: String,
    /// `--allow` values: IPv4 CIDRs or addresses, each possibly comma-separated; at
    /// least one is required.
    pub allow: Vec<String>,
    /// `--port` values, each possibly comma-separated; at least one is required.
    pub ports: Vec<String>,
    /// `tcp`, `udp` or `both`; `None` means `tcp`.
    pub proto: Option<String>,
    /// `ADDR[:PORT]` in 127.0.0.0/8; `None` means 127.0.0.1 and the published port.
    pub to: Option<String>,
    /// An IPv4 address of the host, or `host-gateway`; `None` means the interface's
    /// primary address (a runtime network's gateway with `network`).
    pub listen: Option<String>,
    /// A container runtime's network by name (`--docker-network`, `docker_network:`),
    /// instead of an interface: its bridge, subnets (the default `allow`) and gateway
    /// (the default listen address) are asked of the runtime when the grant resolves.
    pub network: Option<(crate::kernel::runtime::Runtime, String)>,
}

/// Checks an interface name the way the kernel would, and refuses the names loopgate
/// must never manage (`lo`, and the `all`/`default` sysctl pseudo-interfaces).
pub fn parse_iface(name: &str) -> Result<String> {
    if name.is_empty() {
        bad_input!("interface name is empty");
    }
    if name.len() > 15 {
        bad_input!("interface name {name:?} is longer than 15 bytes");
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        bad_input!("interface name {name:?} contains the invalid character {c:?}");
    }
    match name {
        "." | ".." => bad_input!("interface name {name:?} is not valid"),
        "lo" => bad_input!("interface \"lo\" is the loopback itself; loopgate publishes loopback services on other interfaces"),
        "all" | "default" => bad_input!(
            "interface {name:?} is a sysctl pseudo-interface; loopgate only ever changes one real interface"
        ),
        _ => Ok(name.to_string()),
    }
}

/// Parses an allowed source network: an IPv4 CIDR or a single address (/32).
pub fn parse_cidr(text: &str) -> Result<Ipv4Network> {
    let text = text.trim();
    let (addr_part, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let addr: IpAddr = match addr_part.parse() {
        Ok(a) => a,
        Err(_) => bad_input!("invalid CIDR {text:?}: {addr_part:?} is not an IP address"),
    };
    let addr = match addr {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => bad_input!("allowed CIDR {text:?} is IPv6: {IPV6_REFUSAL}"),
    };
    let prefix = match prefix {
        None => 32,
        Some(p) => match p.parse::<u8>() {
            Ok(p) if p <= 32 => p,
            _ => bad_input!("invalid CIDR {text:?}: prefix length {p:?} is not 0..=32"),
        },
    };
    if prefix == 0 {
        bad_input!(
            "allowed CIDR {text:?} allows the whole Internet; name the networks that need access"
        );
    }
    let net = Ipv4Network::new(addr, prefix)?;
    if net.network() != addr {
        bad_input!(
            "allowed CIDR {text:?} has host bits set; did you mean {}/{prefix}?",
            net.network()
        );
    }
    if net.overlaps(loopback()) {
        bad_input!("allowed CIDR {text:?} overlaps 127.0.0.0/8; loopback sources are always dropped on other interfaces");
    }
    Ok(net)
}

/// Parses a port number 1..=65535.
pub fn parse_port(text: &str) -> Result<u16> {
    match text.trim().parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => bad_input!("invalid port {text:?}: must be a number from 1 to 65535"),
    }
}

/// Parses `tcp`, `udp` or `both`.
pub fn parse_proto(text: &str) -> Result<Vec<Proto>> {
    match text {
        "tcp" => Ok(vec![Proto::Tcp]),
        "udp" => Ok(vec![Proto::Udp]),
        "both" => Ok(vec![Proto::Tcp, Proto::Udp]),
        _ => bad_input!("invalid protocol {text:?}: expected tcp, udp or both"),
    }
}

fn parse_ipv4(what: &str, text: &str) -> Result<Ipv4Addr> {
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Ok(a),
        Ok(IpAddr::V6(_)) => bad_input!("{what} {text:?} is IPv6: {IPV6_REFUSAL}"),
        Err(_) => bad_input!("invalid {what} {text:?}: not an IPv4 address"),
    }
}

/// Parses `--to ADDR[:PORT]`; the address must lie in 127.0.0.0/8.
pub fn parse_to(text: &str) -> Result<(Ipv4Addr, Option<u16>)> {
    let text = text.trim();
    if text.starts_with('[') || text.matches(':').count() > 1 {
        bad_input!("target {text:?} is IPv6: {IPV6_REFUSAL}");
    }
    let (addr_text, port) = match text.split_once(':') {
        Some((a, p)) => (a, Some(parse_port(p)?)),
        None => (text, None),
    };
    let addr = parse_ipv4("target address", addr_text)?;
    if !loopback().contains(addr) {
        bad_input!(
            "target {text:?} is outside 127.0.0.0/8; loopgate only publishes loopback services"
        );
    }
    Ok((addr, port))
}

/// Parses a grant name: 1-64 characters from `[A-Za-z0-9_.-]`, starting alphanumeric.
pub fn parse_name(text: &str) -> Result<String> {
    let ok_start = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok_start || !ok_rest || text.len() > 64 {
        bad_input!("invalid grant name {text:?}: use 1-64 characters from A-Z a-z 0-9 _ . - starting with a letter or digit");
    }
    Ok(text.to_string())
}

/// The parts of a request that do not depend on the host, checked.
#[derive(Debug, Clone)]
pub struct Parts {
    /// The grant name asked for, checked by [`parse_name`].
    pub name: Option<String>,
    /// Allowed source networks, at least one.
    pub allow: Vec<Ipv4Network>,
    /// Published ports, at least one.
    pub ports: Vec<u16>,
    /// Protocols (one, or tcp and udp for `both`).
    pub protos: Vec<Proto>,
    /// Target address in 127.0.0.0/8.
    pub to_addr: Ipv4Addr,
    /// Target port; `None`: the published port.
    pub to_port: Option<u16>,
    /// Explicit listen address; `None`: the interface's primary address (or the
    /// host-gateway address, with `host_gateway`).
    pub listen: Option<Ipv4Addr>,
    /// `--listen host-gateway`: the address Docker gives `host.docker.internal`,
    /// looked up whenever the grant is resolved.
    pub host_gateway: bool,
}

/// Checks everything in `req` that does not depend on the host; `iface` (already
/// checked) only names the interface in messages.
///
/// Errors (bad input, naming the value): no or invalid allowed networks, ports,
/// protocol, target, listen address or name.
pub fn parse_parts(req: &GrantRequest, iface: &str) -> Result<Parts> {
    if req.allow.is_empty() && req.network.is_none() {
        bad_input!("no allowed source networks for {iface:?}: give at least one --allow CIDR");
    }
    let allow = req
        .allow
        .iter()
        .flat_map(|a| a.split(','))
        .filter(|a| !a.trim().is_empty())
        .map(parse_cidr)
        .collect::<Result<Vec<_>>>()?;
    if allow.is_empty() && req.network.is_none() {
        bad_input!("no allowed source networks for {iface:?}: give at least one --allow CIDR");
    }
    let ports = req
        .ports
        .iter()
        .flat_map(|p| p.split(','))
        .map(parse_port)
        .collect::<Result<Vec<_>>>()?;
    if ports.is_empty() {
        bad_input!("no port to publish on {iface:?}: give at least one --port");
    }
    let protos = parse_proto(req.proto.as_deref().unwrap_or("tcp"))?;
    let (to_addr, to_port) = match &req.to {
        Some(t) => parse_to(t)?,
        None => (Ipv4Addr::LOCALHOST, None),
    };
    if to_port.is_some() && ports.len() > 1 {
        bad_input!(
            "target {:?} names one port but {} ports are published; give one --port per target port",
            req.to.as_deref().unwrap_or_default(),
            ports.len()
        );
    }
    let host_gateway = req.listen.as_deref() == Some(HOST_GATEWAY);
    let listen = match req.listen.as_deref() {
        None | Some(HOST_GATEWAY) => None,
        Some(t) => {
            let addr = parse_ipv4("listen address", t)?;
            if loopback().contains(addr) {
                bad_input!("listen address {t:?} is in 127.0.0.0/8; clients connect to an address of the host they can route to");
            }
            Some(addr)
        }
    };
    let name = req.name.as_deref().map(parse_name).transpose()?;
    Ok(Parts {
        name,
        allow,
        ports,
        protos,
        to_addr,
        to_port,
        listen,
        host_gateway,
    })
}

/// Validates one request into one grant per (protocol, port), for an interface that
/// must exist now (a name, not a pattern).
///
/// Errors (bad input, naming the value): as [`parse_parts`]; the interface does not
/// exist or has no IPv4 address; the listen address is not one of the interface's.
pub fn validate(req: &GrantRequest, host: &dyn Interfaces) -> Result<Vec<Grant>> {
    let iface = parse_iface(&req.iface)?;
    let Some(addresses) = host.ipv4_addresses(&iface) else {
        bad_input!("interface {iface:?} does not exist");
    };
    let parts = parse_parts(req, &iface)?;
    let listen = match parts.listen {
        Some(addr) => {
            if !addresses.contains(&addr) && !host.owns(addr) {
                bad_input!(
                    "listen address {:?} is not an address of this host",
                    req.listen.as_deref().unwrap_or_default()
                );
            }
            addr
        }
        None if parts.host_gateway => match host.host_gateway() {
            Some(a) if a.is_loopback() => bad_input!(
                "--listen host-gateway is {a} (host-gateway-ip in /etc/docker/daemon.json), in 127.0.0.0/8; clients connect to an address of the host they can route to"
            ),
            Some(a) if !addresses.contains(&a) && !host.owns(a) => bad_input!(
                "--listen host-gateway is {a} (host-gateway-ip in /etc/docker/daemon.json), which is not an address of this host"
            ),
            Some(a) => a,
            None => bad_input!("--listen host-gateway: there is no docker0 (and no host-gateway-ip in /etc/docker/daemon.json) to take the address from"),
        },
        None => match addresses.first() {
            Some(a) => *a,
            None => bad_input!("interface {iface:?} has no IPv4 address; give --listen"),
        },
    };
    // Default names carry the listen address unless it is the primary one, so two
    // default-named grants never share a name (the key is unique; the name follows it).
    let secondary = (addresses.first() != Some(&listen)).then_some(listen);
    let mut grants = Vec::new();
    for &proto in &parts.protos {
        for &port in &parts.ports {
            grants.push(Grant {
                name: parts
                    .name
                    .clone()
                    .unwrap_or_else(|| Grant::default_name(&iface, secondary, proto, port)),
                iface: iface.clone(),
                proto,
                listen,
                port,
                to: SocketAddrV4::new(parts.to_addr, parts.to_port.unwrap_or(port)),
                allow: parts.allow.clone(),
                network: None,
            });
        }
    }
    Ok(grants)
}

/// Refuses two grants that publish the same address, protocol and port (to different
/// targets, or twice in one policy).
pub fn check_conflicts(grants: &[Grant]) -> Result<()> {
    let mut seen: BTreeMap<GrantKey, &Grant> = BTreeMap::new();
    for g in grants {
        if let Some(other) = seen.insert(g.key(), g) {
            if other.to != g.to {
                bad_input!(
                    "{}:{}/{} is published to both {} and {}; revoke the first grant before changing its target",
                    g.listen, g.port, g.proto, other.to, g.to
                );
            }
            bad_input!(
                "{}:{}/{} is published twice (grants {:?} and {:?})",
                g.listen,
                g.port,
                g.proto,
                other.name,
                g.name
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeHost;
    impl Interfaces for FakeHost {
        fn ipv4_addresses(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
            match name {
                "docker0" => Some(vec![
                    Ipv4Addr::new(172, 17, 0, 1),
                    Ipv4Addr::new(172, 17, 0, 2),
                ]),
                "bare0" => Some(vec![]),
                _ => None,
            }
        }
    }

    /// FakeHost, whose daemon.json says `host-gateway-ip` is the given address.
    struct GatewayAt(Ipv4Addr);
    impl Interfaces for GatewayAt {
        fn ipv4_addresses(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
            FakeHost.ipv4_addresses(name)
        }
        fn host_gateway(&self) -> Option<Ipv4Addr> {
            Some(self.0)
        }
    }

    #[test]
    fn a_host_gateway_ip_in_loopback_or_not_of_this_host_is_refused_by_value() {
        let mut r = req(&["172.17.0.0/16"], &["3306"]);
        r.listen = Some(HOST_GATEWAY.into());
        let e = err(validate(&r, &GatewayAt(Ipv4Addr::new(127, 0, 0, 1))));
        assert!(e.contains("127.0.0.1") && e.contains("127.0.0.0/8"), "{e}");
        let e = err(validate(&r, &GatewayAt(Ipv4Addr::new(192, 0, 2, 9))));
        assert!(
            e.contains("192.0.2.9") && e.contains("not an address"),
            "{e}"
        );
        let g = validate(&r, &GatewayAt(Ipv4Addr::new(172, 17, 0, 2))).unwrap();
        assert_eq!(g[0].listen, Ipv4Addr::new(172, 17, 0, 2));
    }

    fn req(allow: &[&str], ports: &[&str]) -> GrantRequest {
        GrantRequest {
            iface: "docker0".into(),
            allow: allow.iter().map(|s| s.to_string()).collect(),
            ports: ports.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn err(r: Result<impl std::fmt::Debug>) -> String {
        let e = r.unwrap_err();
        assert!(e.is::<crate::error::BadInput>(), "not BadInput: {e:#}");
        format!("{e:#}")
    }

    #[test]
    fn defaults_listen_to_primary_address_and_target_to_localhost() {
        let g = validate(&req(&["172.17.0.0/16"], &["3306"]), &FakeHost).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].name, "docker0-tcp-3306");
        assert_eq!(g[0].listen, Ipv4Addr::new(172, 17, 0, 1));
        assert_eq!(g[0].to, "127.0.0.1:3306".parse().unwrap());
    }

    #[test]
    fn comma_lists_and_both_protocols_expand() {
        let mut r = req(&["172.17.0.0/16,192.0.2.0/24"], &["53,5353"]);
        r.proto = Some("both".into());
        r.to = Some("127.0.0.53".into());
        let g = validate(&r, &FakeHost).unwrap();
        assert_eq!(g.len(), 4);
        assert!(g.iter().all(|g| g.allow.len() == 2));
        assert!(g.iter().any(|g| g.proto == Proto::Udp && g.port == 5353));
        assert_eq!(g[0].to.ip(), &Ipv4Addr::new(127, 0, 0, 53));
    }

    #[test]
    fn bad_cidrs_are_named() {
        assert!(err(parse_cidr("300.1.2.3/8")).contains("300.1.2.3/8"));
        assert!(err(parse_cidr("0.0.0.0/0")).contains("whole Internet"));
        assert!(err(parse_cidr("127.0.0.0/16")).contains("127.0.0.0/8"));
        assert!(err(parse_cidr("96.0.0.0/3")).contains("127.0.0.0/8"));
        assert!(err(parse_cidr("fd00::/64")).contains("IPv6"));
        assert!(err(parse_cidr("10.0.0.1/8")).contains("host bits"));
        assert!(err(parse_cidr("10.0.0.0/33")).contains("10.0.0.0/33"));
        assert_eq!(parse_cidr("192.0.2.7").unwrap().prefix(), 32);
    }

    #[test]
    fn bad_interfaces_are_named() {
        for name in ["lo", "all", "default", "a/b", "a b", "abcdefghijklmnop", ""] {
            err(parse_iface(name));
        }
        assert!(err(validate(
            &GrantRequest {
                iface: "nope0".into(),
                ..req(&["192.0.2.0/24"], &["1"])
            },
            &FakeHost
        ))
        .contains("nope0"));
        assert!(err(validate(
            &GrantRequest {
                iface: "bare0".into(),
                ..req(&["192.0.2.0/24"], &["1"])
            },
            &FakeHost
        ))
        .contains("--listen"));
    }

    #[test]
    fn bad_ports_targets_and_listen_addresses_are_named() {
        assert!(err(parse_port("0")).contains("\"0\""));
        assert!(err(parse_port("65536")).contains("65536"));
        assert!(err(parse_port("http")).contains("http"));
        assert!(err(parse_to("10.0.0.1")).contains("outside 127.0.0.0/8"));
        assert!(err(parse_to("::1")).contains("IPv6"));
        assert_eq!(
            parse_to("127.0.0.2:8080").unwrap(),
            (Ipv4Addr::new(127, 0, 0, 2), Some(8080))
        );
        let mut r = req(&["192.0.2.0/24"], &["80"]);
        r.listen = Some("192.0.2.1".into());
        assert!(err(validate(&r, &FakeHost)).contains("192.0.2.1"));
        r.listen = Some("fe80::1".into());
        assert!(err(validate(&r, &FakeHost)).contains("IPv6"));
        r.listen = Some("172.17.0.2".into());
        assert_eq!(validate(&r, &FakeHost).unwrap()[0].listen.octets()[3], 2);
    }

    #[test]
    fn default_names_follow_the_key() {
        // Primary address, given or defaulted: the short name.
        let mut r = req(&["192.0.2.0/24"], &["80"]);
        assert_eq!(validate(&r, &FakeHost).unwrap()[0].name, "docker0-tcp-80");
        r.listen = Some("172.17.0.1".into());
        assert_eq!(validate(&r, &FakeHost).unwrap()[0].name, "docker0-tcp-80");
        // Secondary address: the address is in the name, which stays a valid name.
        r.listen = Some("172.17.0.2".into());
        let second = validate(&r, &FakeHost).unwrap();
        assert_eq!(second[0].name, "docker0-172.17.0.2-tcp-80");
        parse_name(&second[0].name).unwrap();
        // Longest interface and address still fit a name.
        let longest = Grant::default_name(
            "abcdefghijklmno",
            Some(Ipv4Addr::new(255, 255, 255, 255)),
            Proto::Tcp,
            65535,
        );
        parse_name(&longest).unwrap();
        // An explicit --name wins.
        r.name = Some("web".into());
        assert_eq!(validate(&r, &FakeHost).unwrap()[0].name, "web");
    }

    #[test]
    fn the_key_includes_the_interface() {
        let a = validate(&req(&["192.0.2.0/24"], &["80"]), &FakeHost).unwrap();
        let mut b = a.clone();
        b[0].iface = "docker1".into();
        assert_ne!(a[0].key(), b[0].key());
        let both: Vec<Grant> = a.into_iter().chain(b).collect();
        check_conflicts(&both).unwrap();
    }

    #[test]
    fn conflicting_targets_are_refused() {
        let a = validate(&req(&["192.0.2.0/24"], &["80"]), &FakeHost).unwrap();
        let mut r = req(&["192.0.2.0/24"], &["80"]);
        r.to = Some("127.0.0.2".into());
        let b = validate(&r, &FakeHost).unwrap();
        let both: Vec<Grant> = a.into_iter().chain(b).collect();
        assert!(err(check_conflicts(&both)).contains("127.0.0.2:80"));
    }
}
