//! Read-only facts about the host: interfaces and their IPv4 addresses, sockets listening
//! on loopback, and whether the caller may change the network at all.

use crate::grant::Proto;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;

/// What validation needs to know about the host's interfaces (`crate::input`).
pub trait Interfaces {
    /// The interface's IPv4 addresses, primary first; `None` when it does not exist.
    fn ipv4_addresses(&self, name: &str) -> Option<Vec<Ipv4Addr>>;

    /// True when some interface of the host has `addr`: a listen address need not be
    /// the ingress interface's own (Docker's host-gateway is docker0's address, reached
    /// from a user-defined network's bridge).
    fn owns(&self, _addr: Ipv4Addr) -> bool {
        false
    }

    /// The address Docker gives `host.docker.internal` (`host-gateway`): the daemon's
    /// `host-gateway-ip`, else docker0's primary address; `None` when neither exists.
    fn host_gateway(&self) -> Option<Ipv4Addr> {
        None
    }
}

/// The interfaces of the current network namespace with their IPv4 addresses, read
/// once: names from if_nameindex(3), addresses from an rtnetlink `RTM_GETADDR` dump
/// keyed by ifindex. Not getifaddrs(3): it reports an address carrying a label
/// (`ip addr add ... label br0:1`) under the label, as if `br0:1` were a device.
///
/// Specs resolve against it with the container runtimes asked each time: that
/// `spec::Host` impl is in [`crate::runtime`], the layer that asks them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostInterfaces {
    addrs: BTreeMap<String, Vec<Ipv4Addr>>,
}

impl HostInterfaces {
    /// Lists every interface and its IPv4 addresses, primary ones first.
    ///
    /// Errors: the kernel refused the listing.
    pub fn read() -> Result<Self> {
        let names: BTreeMap<u32, String> = nix::net::if_::if_nameindex()
            .context("listing interfaces")?
            .iter()
            .map(|i| (i.index(), i.name().to_string_lossy().into_owned()))
            .collect();
        let mut addrs: BTreeMap<String, Vec<Ipv4Addr>> =
            names.values().map(|n| (n.clone(), Vec::new())).collect();
        // (ifindex, secondary, address), in the kernel's order.
        let mut found = ipv4_addresses().context("listing IPv4 addresses")?;
        found.sort_by_key(|(index, secondary, _, _)| (*index, *secondary));
        for (index, _, addr, _) in found {
            if let Some(name) = names.get(&index) {
                addrs.entry(name.clone()).or_default().push(addr);
            }
        }
        Ok(HostInterfaces { addrs })
    }

    /// Every interface name.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.addrs.keys()
    }
}

/// True when the interface exists, even without addresses (if_nametoindex).
fn exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

/// The ifindexes of the devices that have at least one IPv4 address now.
///
/// Errors: the kernel refused the address dump.
pub fn addressed_ifindexes() -> Result<std::collections::BTreeSet<u32>> {
    Ok(ipv4_addresses()
        .context("listing IPv4 addresses")?
        .into_iter()
        .map(|(index, ..)| index)
        .collect())
}

/// Every IPv4 address of the namespace as (ifindex, secondary, address, prefix length),
/// from an `RTM_GETADDR` dump. The kernel keeps a device's primary addresses before
/// its secondary ones (`IFA_F_SECONDARY`); the stable sort by that flag keeps their
/// order.
fn ipv4_addresses() -> Result<Vec<(u32, bool, Ipv4Addr, u8)>> {
    const RTM_GETADDR: u16 = 22;
    const IFA_ADDRESS: u16 = 1;
    const IFA_LOCAL: u16 = 2;
    const IFA_F_SECONDARY: u8 = 0x01;
    const IFADDRMSG_LEN: usize = 8;
    let mut sock = super::netlink::NlSocket::open_small(mnl::Bus::Route)?;
    // nlmsghdr, then struct ifaddrmsg { family, prefixlen, flags, scope, index }.
    let mut req = vec![0u8; 16 + IFADDRMSG_LEN];
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETADDR.to_ne_bytes());
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req[16] = libc::AF_INET as u8;
    let mut out = Vec::new();
    for msg in sock.dump(&req)? {
        let Some(head) = msg.get(16..16 + IFADDRMSG_LEN) else {
            continue;
        };
        if head[0] != libc::AF_INET as u8 {
            continue;
        }
        let prefix = head[1];
        let secondary = head[2] & IFA_F_SECONDARY != 0;
        let index = u32::from_ne_bytes([head[4], head[5], head[6], head[7]]);
        let (mut local, mut address) = (None, None);
        for (ty, value) in super::netlink::attrs(&msg[16 + IFADDRMSG_LEN..]) {
            let Ok(octets) = <[u8; 4]>::try_from(value) else {
                continue;
            };
            match ty {
                IFA_LOCAL => local = Some(Ipv4Addr::from(octets)),
                IFA_ADDRESS => address = Some(Ipv4Addr::from(octets)),
                _ => {}
            }
        }
        // IFA_LOCAL is the host's own address; IFA_ADDRESS is the peer's on
        // point-to-point links and equal to it elsewhere.
        if let Some(addr) = local.or(address) {
            out.push((index, secondary, addr, prefix));
        }
    }
    Ok(out)
}

impl Interfaces for HostInterfaces {
    fn owns(&self, addr: Ipv4Addr) -> bool {
        self.addrs.values().any(|a| a.contains(&addr))
    }

    fn host_gateway(&self) -> Option<Ipv4Addr> {
        // dockerd's own setting first, as Docker resolves host-gateway.
        let configured = std::fs::read_to_string("/etc/docker/daemon.json")
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("host-gateway-ip")?.as_str()?.parse().ok());
        configured.or_else(|| self.addrs.get("docker0")?.first().copied())
    }

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
    /// The device the socket is bound to (`SO_BINDTODEVICE`, or an address with a
    /// `%dev` scope such as systemd-resolved's `127.0.0.53%lo`), as sock_diag reports
    /// it; `None` when unbound or unknown (the /proc fallback cannot tell).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
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
        // sockid continues { be32 dst[4]; u32 if; u32 cookie[2] }: `if` is the bound
        // device (sk_bound_dev_if), 0 when unbound.
        let device = msg
            .get(16 + 40..16 + 44)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .filter(|&i| i != 0)
            .map(|i| {
                nix::net::if_::if_indextoname(i)
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| format!("ifindex {i}"))
            });
        out.push(Listener {
            proto,
            addr,
            port,
            device,
        });
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
            out.push(Listener {
                proto,
                addr,
                port,
                device: None,
            });
        }
    }
    Ok(out)
}

/// One IPv4 address of an interface with its prefix length, as `ip -4 addr` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    /// The interface's name.
    pub iface: String,
    /// The host's own address (`IFA_LOCAL`).
    pub addr: Ipv4Addr,
    /// The prefix length: the on-link network is `addr/prefix`.
    pub prefix: u8,
}

/// Every IPv4 address of the current network namespace with its interface and prefix.
///
/// Errors: the kernel refused the listing.
pub fn addresses() -> Result<Vec<IfAddr>> {
    let mut out = Vec::new();
    for (index, _, addr, prefix) in ipv4_addresses().context("listing IPv4 addresses")? {
        if let Ok(name) = nix::net::if_::if_indextoname(index) {
            out.push(IfAddr {
                iface: name.to_string_lossy().into_owned(),
                addr,
                prefix,
            });
        }
    }
    Ok(out)
}

/// Where the host sends a packet to one destination, as `ip route get DST` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteLookup {
    /// Out through this interface (a unicast route).
    Out(String),
    /// The destination is the host itself, or a broadcast or multicast address: not a
    /// place a reply goes to through one interface.
    Local,
    /// No usable route (the kernel answered with this reason: unreachable, prohibited,
    /// blackhole, no route at all).
    Unroutable(String),
}

/// Looks up the route to each of `dsts` with `RTM_GETROUTE` (a get with a destination,
/// as `ip route get` does, policy rules included), over one rtnetlink socket.
///
/// Errors: the socket could not be opened, or a lookup failed for another reason than
/// the route itself.
pub fn routes(dsts: &[Ipv4Addr]) -> Result<Vec<(Ipv4Addr, RouteLookup)>> {
    const RTM_GETROUTE: u16 = 26;
    const RTA_DST: u16 = 1;
    const RTA_OIF: u16 = 4;
    const RTN_UNICAST: u8 = 1;
    const RTMSG_LEN: usize = 12;
    if dsts.is_empty() {
        return Ok(vec![]);
    }
    let mut sock = super::netlink::NlSocket::open(mnl::Bus::Route)?;
    let mut out = Vec::with_capacity(dsts.len());
    for &dst in dsts {
        // nlmsghdr, struct rtmsg { family, dst_len, src_len, tos, table, protocol,
        // scope, type, u32 flags }, then RTA_DST. NLM_F_ACK: the answer ends with an ACK.
        let mut req = vec![0u8; 16 + RTMSG_LEN];
        req[4..6].copy_from_slice(&RTM_GETROUTE.to_ne_bytes());
        req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
        req[16] = libc::AF_INET as u8;
        req[17] = 32;
        super::netlink::put_attr(&mut req, RTA_DST, &dst.octets());
        let len = req.len() as u32;
        req[0..4].copy_from_slice(&len.to_ne_bytes());
        let lookup = match sock.dump(&req) {
            Ok(msgs) => {
                let mut found = RouteLookup::Unroutable("no answer".into());
                for msg in msgs {
                    let Some(head) = msg.get(16..16 + RTMSG_LEN) else {
                        continue;
                    };
                    if head[7] != RTN_UNICAST {
                        found = RouteLookup::Local;
                        continue;
                    }
                    let oif = super::netlink::attrs(&msg[16 + RTMSG_LEN..])
                        .find(|(ty, v)| *ty == RTA_OIF && v.len() == 4)
                        .map(|(_, v)| u32::from_ne_bytes([v[0], v[1], v[2], v[3]]));
                    found = match oif.map(nix::net::if_::if_indextoname) {
                        Some(Ok(name)) => RouteLookup::Out(name.to_string_lossy().into_owned()),
                        Some(Err(_)) | None => {
                            RouteLookup::Unroutable("no output interface".into())
                        }
                    };
                }
                found
            }
            Err(e) => match e
                .downcast_ref::<std::io::Error>()
                .and_then(|e| e.raw_os_error())
            {
                Some(code) => {
                    RouteLookup::Unroutable(std::io::Error::from_raw_os_error(code).to_string())
                }
                None => return Err(e.context(format!("looking up the route to {dst}"))),
            },
        };
        out.push((dst, lookup));
    }
    Ok(out)
}

/// The unicast routes of every table but `local` that leave through one interface:
/// (destination network, interface). Audit uses them to tell a network the host
/// routes host by host over several interfaces (a CNI's /32 per pod) from one it
/// routes elsewhere as a whole, and a default route from a route to the network.
///
/// Errors: the socket could not be opened, or the dump failed.
pub fn route_table() -> Result<Vec<(ipnetwork::Ipv4Network, String)>> {
    const RTM_GETROUTE: u16 = 26;
    const RTA_DST: u16 = 1;
    const RTA_OIF: u16 = 4;
    const RTA_TABLE: u16 = 15;
    const RTN_UNICAST: u8 = 1;
    const RT_TABLE_LOCAL: u32 = 255;
    const RTMSG_LEN: usize = 12;
    let mut sock = super::netlink::NlSocket::open(mnl::Bus::Route)?;
    let mut req = vec![0u8; 16 + RTMSG_LEN];
    req[4..6].copy_from_slice(&RTM_GETROUTE.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP | libc::NLM_F_ACK) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[16] = libc::AF_INET as u8;
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    let mut names: std::collections::BTreeMap<u32, Option<String>> = Default::default();
    let mut out = Vec::new();
    for msg in sock.dump(&req)? {
        let Some(head) = msg.get(16..16 + RTMSG_LEN) else {
            continue;
        };
        if head[0] != libc::AF_INET as u8 || head[7] != RTN_UNICAST || head[1] > 32 {
            continue;
        }
        let (mut dst, mut oif, mut table) = (Ipv4Addr::UNSPECIFIED, None, u32::from(head[4]));
        for (ty, v) in super::netlink::attrs(&msg[16 + RTMSG_LEN..]) {
            match (ty, v.len()) {
                (RTA_DST, 4) => dst = Ipv4Addr::new(v[0], v[1], v[2], v[3]),
                (RTA_OIF, 4) => oif = Some(u32::from_ne_bytes([v[0], v[1], v[2], v[3]])),
                (RTA_TABLE, 4) => table = u32::from_ne_bytes([v[0], v[1], v[2], v[3]]),
                _ => {}
            }
        }
        let (Some(oif), true) = (oif, table != RT_TABLE_LOCAL) else {
            continue;
        };
        let name = names.entry(oif).or_insert_with(|| {
            nix::net::if_::if_indextoname(oif)
                .ok()
                .map(|n| n.to_string_lossy().into_owned())
        });
        if let (Some(name), Ok(net)) = (name, ipnetwork::Ipv4Network::new(dst, head[1])) {
            out.push((net, name.clone()));
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
