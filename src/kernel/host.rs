//! Read-only facts about the host: interfaces and their IPv4 addresses, sockets listening
//! on loopback, and whether the caller may change the network at all.

use crate::grant::Proto;
use crate::input::Interfaces;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;

/// The interfaces of the current network namespace, read once through getifaddrs(3).
pub struct HostInterfaces {
    addrs: BTreeMap<String, Vec<Ipv4Addr>>,
}

impl HostInterfaces {
    /// Lists every interface and its IPv4 addresses (getifaddrs(3), through `nix`).
    ///
    /// Errors: the kernel refused the listing.
    pub fn read() -> Result<Self> {
        let mut addrs: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
        for ifa in nix::ifaddrs::getifaddrs().context("listing interfaces")? {
            let entry = addrs.entry(ifa.interface_name).or_default();
            if let Some(sin) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
                entry.push(sin.ip());
            }
        }
        Ok(HostInterfaces { addrs })
    }

    /// Every interface name, sorted, including ones without an IPv4 address.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.addrs.keys()
    }
}

/// True when the interface exists, even without addresses (if_nametoindex).
fn exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

impl Interfaces for HostInterfaces {
    fn ipv4_addresses(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        match self.addrs.get(name) {
            Some(a) => Some(a.clone()),
            None if exists(name) => Some(vec![]),
            None => None,
        }
    }
}

/// An IPv4 socket waiting for clients in the current network namespace: a TCP socket in
/// LISTEN or an unconnected (bound) UDP socket. Read by [`listeners`] from the kernel's
/// socket table through sock_diag (`inet_diag`), or from /proc/net/tcp and
/// /proc/net/udp where the diag modules are missing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listener {
    /// TCP or UDP.
    pub proto: Proto,
    /// The local address it is bound to; 0.0.0.0 for every address.
    pub addr: Ipv4Addr,
    /// The local port, host byte order.
    pub port: u16,
}

/// TCP sockets in LISTEN and bound UDP sockets, IPv4 only.
///
/// Asks the kernel through sock_diag, which filters by state itself: a busy host can
/// have tens of thousands of connections in /proc/net/tcp and only a few listeners.
/// Falls back to /proc/net/{tcp,udp} when the dump fails (the diag modules are missing,
/// for one). Sorted by protocol, address and port, without duplicates.
///
/// Errors: both the dump and the /proc file failed for one protocol.
pub fn listeners() -> Result<Vec<Listener>> {
    let mut out = Vec::new();
    for (proto, file, state) in [
        (Proto::Tcp, "/proc/net/tcp", TCP_LISTEN),
        (Proto::Udp, "/proc/net/udp", TCP_CLOSE),
    ] {
        match diag_listeners(proto, state) {
            Ok(found) => out.extend(found),
            Err(_) => out.extend(proc_listeners(proto, file)?),
        }
    }
    out.sort_by_key(|l| (l.proto, l.addr, l.port));
    out.dedup();
    Ok(out)
}

const TCP_LISTEN: u32 = 10;
/// An unconnected UDP socket reports the TCP_CLOSE state.
const TCP_CLOSE: u32 = 7;
const SOCK_DIAG_BY_FAMILY: u16 = 20;

/// Dumps sockets of one protocol in one state with an `inet_diag_req_v2`.
fn diag_listeners(proto: Proto, state: u32) -> Result<Vec<Listener>> {
    let mut sock = super::netlink::NlSocket::open(mnl::Bus::SockDiag)?;
    let mut req = vec![0u8; 16 + 56];
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // struct inet_diag_req_v2: family, protocol, ext, pad, states, then a zeroed sockid.
    req[16] = libc::AF_INET as u8;
    req[17] = proto.number();
    req[20..24].copy_from_slice(&(1u32 << state).to_ne_bytes());
    let mut out = Vec::new();
    for msg in sock.dump(&req)? {
        // struct inet_diag_msg after the 16-byte header: family, state, timer, retrans,
        // then sockid { be16 sport; be16 dport; be32 src[4]; ... }.
        let Some(body) = msg.get(16..16 + 24) else {
            continue;
        };
        let port = u16::from_be_bytes([body[4], body[5]]);
        let addr = Ipv4Addr::new(body[8], body[9], body[10], body[11]);
        out.push(Listener { proto, addr, port });
    }
    Ok(out)
}

fn proc_listeners(proto: Proto, file: &str) -> Result<Vec<Listener>> {
    let mut out = Vec::new();
    let text = fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state)) = (cols.get(1), cols.get(3)) else {
            continue;
        };
        // 0A = TCP_LISTEN; 07 = TCP_CLOSE, which is how an unconnected UDP socket shows.
        let wanted = match proto {
            Proto::Tcp => *state == "0A",
            Proto::Udp => *state == "07",
        };
        let Some((addr, port)) = local.split_once(':') else {
            continue;
        };
        let (Ok(addr), Ok(port)) = (u32::from_str_radix(addr, 16), u16::from_str_radix(port, 16))
        else {
            continue;
        };
        if wanted {
            // /proc prints the network-order address as a native-endian u32.
            let addr = Ipv4Addr::from(addr.to_ne_bytes());
            out.push(Listener { proto, addr, port });
        }
    }
    Ok(out)
}

/// True when something listens on `addr:port` (or on 0.0.0.0:port).
pub fn is_listening(listeners: &[Listener], proto: Proto, addr: Ipv4Addr, port: u16) -> bool {
    listeners
        .iter()
        .any(|l| l.proto == proto && l.port == port && (l.addr == addr || l.addr.is_unspecified()))
}

/// Refuses to go on without CAP_NET_ADMIN, with a message a person can act on instead
/// of a netlink errno halfway through.
pub fn require_net_admin() -> Result<()> {
    const CAP_NET_ADMIN: u32 = 12;
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    if eff & (1 << CAP_NET_ADMIN) == 0 {
        crate::bad_input!("loopgate needs root (CAP_NET_ADMIN) to read and change the firewall and sysctls; run it with sudo");
    }
    Ok(())
}
