//! Container runtimes and what loopgate needs of one of their networks, as values: the
//! bridge, IPv4 subnets and gateway of a Docker or Podman network. Asking a runtime is
//! [`crate::runtime`]'s (above this layer: it checks the answer as user input); these
//! values are what the host-facts traits (`spec::Host`) and a grant request speak.

use ipnetwork::Ipv4Network;
use std::net::Ipv4Addr;

pub use crate::grant::Runtime;

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
