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

/// A transport protocol loopgate can publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
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

/// One published port: `listen:port/proto` on `iface`, DNATed to `to`, for `allow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub name: String,
    pub iface: String,
    pub proto: Proto,
    pub listen: Ipv4Addr,
    pub port: u16,
    pub to: SocketAddrV4,
    /// Allowed source networks as given (validated, host bits clear); merged only when
    /// the set is built.
    pub allow: Vec<Ipv4Network>,
}

/// What identifies a grant: two grants with the same key are the same publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantKey {
    pub listen: Ipv4Addr,
    pub proto: Proto,
    pub port: u16,
}

impl Grant {
    pub fn key(&self) -> GrantKey {
        GrantKey {
            listen: self.listen,
            proto: self.proto,
            port: self.port,
        }
    }

    /// Sort order used everywhere a ruleset is generated, so plans are deterministic.
    pub fn sort_key(&self) -> (&str, Ipv4Addr, Proto, u16) {
        (&self.iface, self.listen, self.proto, self.port)
    }

    /// The default name of a grant: `<iface>-<proto>-<port>`.
    pub fn default_name(iface: &str, proto: Proto, port: u16) -> String {
        format!("{iface}-{proto}-{port}")
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let allow: Vec<String> = self.allow.iter().map(|n| n.to_string()).collect();
        write!(
            f,
            "{} on {}: {}:{}/{} -> {} from {}",
            self.name,
            self.iface,
            self.listen,
            self.port,
            self.proto,
            self.to,
            allow.join(",")
        )
    }
}

/// Sorts grants into the canonical order and checks they do not conflict.
pub fn normalize(mut grants: Vec<Grant>) -> Vec<Grant> {
    grants.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    grants
}
