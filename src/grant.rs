//! The validated vocabulary: what a grant is once input has been checked.
//!
//! A [`Grant`] publishes exactly one listen address, protocol and port on one interface,
//! to one loopback target, for a list of allowed source networks. Multi-port or
//! `proto: both` requests become several grants sharing a name, which keeps the rule
//! generation, the conflict checks and `revoke --port` one-to-one with kernel rules.

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

/// The loopback network that `route_localnet` opens: 127.0.0.0/8.
///
/// It is part of the vocabulary, not of validation: input checks that a grant's target
/// lies inside it, the planner guards it on every managed interface, and audit and the
/// transaction look for it. Defined here so the pure planner needs nothing from `input`.
pub fn loopback() -> Ipv4Network {
    Ipv4Network::new(Ipv4Addr::new(127, 0, 0, 0), 8).expect("127.0.0.0/8 is a valid network")
}

/// A transport protocol loopgate can publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP, IP protocol 6.
    Tcp,
    /// UDP, IP protocol 17.
    Udp,
}

impl Proto {
    /// The IP protocol number, as matched by `meta l4proto`.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    /// The lowercase name, `tcp` or `udp`, as policy files, the state file and messages
    /// spell it.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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

/// A container runtime's network, named instead of an interface: what the user called
/// it (`--docker-network myproj_default`), which outlives the bridge it resolves to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSelector {
    /// Whose network.
    pub runtime: Runtime,
    /// Its name, as `docker network ls` / `podman network ls` show it.
    pub name: String,
}

impl fmt::Display for NetworkSelector {
    /// `docker network myproj_default`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} network {}", self.runtime.cli(), self.name)
    }
}

/// One published port: `listen:port/proto` on `iface`, DNATed to `to`, for `allow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The label `revoke --name` matches: given by the user (1-64 characters of
    /// `[A-Za-z0-9_.-]`) or [`Grant::default_name`]. Not unique: the grants of one
    /// multi-port or `proto: both` request share it.
    pub name: String,
    /// The interface the allowed clients are behind, matched by name (`iifname`) in the
    /// kernel; never `lo`, `all` or `default`, at most 15 bytes.
    pub iface: String,
    /// The transport protocol published.
    pub proto: Proto,
    /// The address clients connect to: an IPv4 address the interface had when the grant
    /// was validated (its primary one unless `--listen` / `listen:` chose another).
    pub listen: Ipv4Addr,
    /// The port clients connect to, 1-65535.
    pub port: u16,
    /// Where the DNAT sends accepted flows: an address in 127.0.0.0/8 (default
    /// 127.0.0.1) and a port (default: `port`).
    pub to: SocketAddrV4,
    /// Allowed source networks as given (validated, host bits clear); merged only when
    /// the set is built.
    #[serde(serialize_with = "serialize_networks")]
    pub allow: Vec<Ipv4Network>,
    /// The runtime network the grant was asked for by (`--docker-network`), when it
    /// was: `iface` is the bridge it resolved to now, which changes with every `docker
    /// compose down/up`; names, labels and remedies use this instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSelector>,
}

/// What identifies a grant: two grants with the same key are the same publication.
///
/// The interface is part of it, as it is of the kernel's DNAT key (`iifname . ip daddr
/// . meta l4proto . th dport`): the same address may sit on two interfaces, and the
/// grants behind each are two publications, not one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantKey {
    /// As [`Grant::iface`].
    pub iface: String,
    /// As [`Grant::listen`].
    pub listen: Ipv4Addr,
    /// As [`Grant::proto`].
    pub proto: Proto,
    /// As [`Grant::port`].
    pub port: u16,
}

impl Grant {
    /// The publication this grant makes: interface, listen address, protocol, port.
    pub fn key(&self) -> GrantKey {
        GrantKey {
            iface: self.iface.clone(),
            listen: self.listen,
            proto: self.proto,
            port: self.port,
        }
    }

    /// Sort order used everywhere a ruleset is generated, so plans are deterministic.
    pub fn sort_key(&self) -> (&str, Ipv4Addr, Proto, u16) {
        (&self.iface, self.listen, self.proto, self.port)
    }

    /// The default name of a grant: `<iface>-<proto>-<port>`, or
    /// `<iface>-<listen>-<proto>-<port>` when it listens on an address other than the
    /// interface's primary one (`secondary_listen`). Without the address, grants of one
    /// port on two addresses of one interface shared a name, and `revoke --name` took
    /// both.
    pub fn default_name(
        iface: &str,
        secondary_listen: Option<Ipv4Addr>,
        proto: Proto,
        port: u16,
    ) -> String {
        match secondary_listen {
            None => format!("{iface}-{proto}-{port}"),
            Some(listen) => format!("{iface}-{listen}-{proto}-{port}"),
        }
    }
}

/// `a.b.c.d/n` without the formatting machinery: the state file of a 100,000-network
/// allow list is written on every change, and `Display` made that a tenth of `apply`.
pub fn network_text(n: &Ipv4Network) -> String {
    fn push_u8(out: &mut String, v: u8) {
        if v >= 100 {
            out.push(char::from(b'0' + v / 100));
        }
        if v >= 10 {
            out.push(char::from(b'0' + v / 10 % 10));
        }
        out.push(char::from(b'0' + v % 10));
    }
    let mut out = String::with_capacity(18);
    for (i, octet) in n.ip().octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_u8(&mut out, octet);
    }
    out.push('/');
    push_u8(&mut out, n.prefix());
    out
}

pub(crate) fn serialize_networks<S: serde::Serializer>(
    nets: &[Ipv4Network],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(nets.iter().map(network_text))
}

/// Allow lists longer than this are abbreviated in messages (`audit --json` has them all).
const SHOWN_NETWORKS: usize = 8;

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut allow: Vec<String> = self
            .allow
            .iter()
            .take(SHOWN_NETWORKS)
            .map(|n| n.to_string())
            .collect();
        if self.allow.len() > SHOWN_NETWORKS {
            allow.push(format!("... ({} networks in all)", self.allow.len()));
        }
        let on = match &self.network {
            Some(n) => format!("{} ({n})", self.iface),
            None => self.iface.clone(),
        };
        write!(
            f,
            "{} on {}: {}:{}/{} -> {} from {}",
            self.name,
            on,
            self.listen,
            self.port,
            self.proto,
            self.to,
            allow.join(",")
        )
    }
}

/// Sorts grants into the canonical order of [`Grant::sort_key`] (interface, listen
/// address, protocol, port), so two lists of the same grants compare equal. Checks
/// nothing: conflicts are refused earlier, by [`crate::input::check_conflicts`].
pub fn normalize(mut grants: Vec<Grant>) -> Vec<Grant> {
    grants.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    grants
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(iface: &str, listen: [u8; 4], proto: Proto, port: u16) -> Grant {
        Grant {
            name: Grant::default_name(iface, None, proto, port),
            iface: iface.into(),
            proto,
            listen: Ipv4Addr::from(listen),
            port,
            to: std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            allow: vec!["192.0.2.0/25".parse().unwrap()],
            network: None,
        }
    }

    #[test]
    fn default_names_tell_a_secondary_listen_address_apart() {
        assert_eq!(
            Grant::default_name("br0", None, Proto::Tcp, 5432),
            "br0-tcp-5432"
        );
        assert_eq!(
            Grant::default_name("br0", Some(Ipv4Addr::new(192, 0, 2, 5)), Proto::Udp, 53),
            "br0-192.0.2.5-udp-53"
        );
    }

    #[test]
    fn network_text_matches_display_for_every_shape() {
        for text in [
            "0.0.0.0/0",
            "192.0.2.0/24",
            "198.51.100.128/25",
            "203.0.113.255/32",
            "10.0.0.0/8",
            "100.64.9.10/31",
        ] {
            let n: Ipv4Network = text.parse().unwrap();
            assert_eq!(network_text(&n), n.to_string());
        }
    }

    #[test]
    fn normalize_orders_by_interface_address_protocol_and_port_whatever_the_input() {
        let a = g("br0", [192, 0, 2, 1], Proto::Tcp, 3306);
        let b = g("br0", [192, 0, 2, 1], Proto::Udp, 53);
        let c = g("br0", [192, 0, 2, 9], Proto::Tcp, 80);
        let d = g("br1", [198, 51, 100, 1], Proto::Tcp, 22);
        let sorted = vec![a.clone(), b.clone(), c.clone(), d.clone()];
        for perm in [
            vec![d.clone(), c.clone(), b.clone(), a.clone()],
            vec![b.clone(), d.clone(), a.clone(), c.clone()],
            vec![c, a, d, b],
        ] {
            assert_eq!(normalize(perm), sorted);
        }
    }

    #[test]
    fn the_key_ignores_name_target_and_allow_list() {
        let a = g("br0", [192, 0, 2, 1], Proto::Tcp, 3306);
        let mut b = a.clone();
        b.name = "other".into();
        b.to = std::net::SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 1);
        b.allow = vec![];
        assert_eq!(a.key(), b.key());
        let mut c = a.clone();
        c.proto = Proto::Udp;
        assert_ne!(a.key(), c.key());
    }

    #[test]
    fn long_allow_lists_are_abbreviated_in_messages() {
        let mut a = g("br0", [192, 0, 2, 1], Proto::Tcp, 3306);
        a.allow = (0..20u8)
            .map(|i| Ipv4Network::new(Ipv4Addr::new(198, 51, 100, i), 32).unwrap())
            .collect();
        let text = a.to_string();
        assert!(text.contains("... (20 networks in all)"), "{text}");
        assert_eq!(
            text.matches("198.51.100.").count(),
            SHOWN_NETWORKS,
            "{text}"
        );
    }

    #[test]
    fn protocols_have_their_iana_numbers() {
        assert_eq!((Proto::Tcp.number(), Proto::Udp.number()), (6, 17));
        assert_eq!(
            (Proto::Tcp.name(), Proto::Udp.to_string().as_str()),
            ("tcp", "udp")
        );
        assert!(loopback().contains(Ipv4Addr::new(127, 255, 0, 1)));
    }
}
