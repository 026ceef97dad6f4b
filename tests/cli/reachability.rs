//! Topic: audit says whether each grant in place can actually work (issue 13, items 3
//! to 7). Each case first shows with real traffic that the grant cannot work (or that
//! the path is real), then that audit names it.

use super::*;

/// A TCP socket listening on `addr` in `ns`, bound to device `dev` with
/// SO_BINDTODEVICE before bind, as systemd-resolved binds `127.0.0.53%lo`.
fn listen_bound_to_device(
    ns: &Netns,
    addr: std::net::SocketAddrV4,
    dev: &'static str,
) -> std::net::TcpListener {
    ns.enter(move || {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscalls on a socket created here; every buffer outlives its
        // call, and the fd is handed to the TcpListener, which closes it.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0, "socket");
            let rc = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                dev.as_ptr().cast(),
                dev.len() as u32,
            );
            assert_eq!(
                rc,
                0,
                "SO_BINDTODEVICE: {}",
                std::io::Error::last_os_error()
            );
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as u16;
            sa.sin_port = addr.port().to_be();
            sa.sin_addr.s_addr = u32::from_ne_bytes(addr.ip().octets());
            let rc = libc::bind(
                fd,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            assert_eq!(libc::listen(fd, 16), 0, "listen");
            std::net::TcpListener::from_raw_fd(fd)
        }
    })
}

#[test]
fn a_target_nobody_listens_on_is_named() {
    let (lab, _services) = lab_with_services();
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3399"]);
    assert_eq!(tcp_request(&lab.container, sa(HOST_ADDR, 3399)), None);
    let text = lab.assert_audit(1, &["WARNING [not-listening]", "127.0.0.1:3399/tcp"]);
    assert!(!text.contains("[listener-bound-to-device]"), "{text}");
}

#[test]
fn a_target_bound_to_another_device_is_named() {
    let (lab, _services) = lab_with_services();
    let stub = Ipv4Addr::new(127, 0, 0, 53);
    let _listener = listen_bound_to_device(&lab.host, sa(stub, 53), "lo");
    // The socket is alive: the host itself connects to it.
    assert!(lab
        .host
        .enter(move || std::net::TcpStream::connect_timeout(&sa(stub, 53).into(), TIMEOUT))
        .is_ok());
    lab.ok(&[
        "expose",
        "br0",
        "--allow",
        ALLOWED,
        "--port",
        "53",
        "--to",
        "127.0.0.53",
    ]);
    // A DNATed connection arrives on br0, which a socket bound to lo ignores.
    assert_eq!(tcp_request(&lab.container, sa(HOST_ADDR, 53)), None);
    let text = lab.assert_audit(1, &["WARNING [listener-bound-to-device]", "device lo"]);
    assert!(!text.contains("[not-listening]"), "{text}");
}

#[test]
fn replies_routed_through_another_interface_are_named() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    lab.assert_audit(0, &[]);
    // A more specific route to the allowed network through another interface: the
    // container's packets still arrive on br0, the replies leave through dum0.
    lab.host.ip("link add dum0 type veth peer name dum1");
    lab.host.ip("link set dum1 up");
    lab.host.ip("addr add 198.51.100.1/24 dev dum0");
    lab.host.ip("link set dum0 up");
    lab.host.ip("route add 192.0.2.0/25 dev dum0");
    assert_eq!(tcp_request(&lab.container, sa(HOST_ADDR, 3306)), None);
    lab.assert_audit(1, &["WARNING [reply-route]", "192.0.2.0/25 through dum0"]);
}

#[test]
fn an_allowed_network_behind_another_interface_is_named() {
    let (lab, _services) = lab_with_services();
    let client = lab.add_bridge_with_client(
        "br1",
        Ipv4Addr::new(198, 51, 100, 1),
        Ipv4Addr::new(198, 51, 100, 10),
    );
    lab.ok(&[
        "expose",
        "br0",
        "--allow",
        "198.51.100.0/24",
        "--port",
        "3306",
    ]);
    // Its packets arrive on br1, where the grant does not apply.
    assert_eq!(tcp_request(&client, sa(HOST_ADDR, 3306)), None);
    lab.assert_audit(1, &["WARNING [allow-route]", "198.51.100.0/24 through br1"]);
}

#[test]
fn a_listen_address_gone_from_the_interface_is_named() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    assert!(tcp_request(&lab.container, sa(HOST_ADDR, 3306)).is_some());
    // The bridge now has another address; the grant's DNAT still names the old one.
    lab.host.ip(&format!("addr del {HOST_ADDR}/24 dev br0"));
    lab.host.ip("addr add 192.0.2.2/24 dev br0");
    // A re-created bridge has a new MAC address too: the container's ARP entry for the
    // old address is gone, and nobody answers for it any more.
    lab.container.ip("neigh flush all");
    assert_eq!(tcp_request(&lab.container, sa(HOST_ADDR, 3306)), None);
    lab.assert_audit(
        1,
        &[
            "WARNING [listen-address-gone]",
            "no interface of the host has 192.0.2.1 now",
        ],
    );
    // The same with a pinned --listen.
    let (lab, _services) = lab_with_services();
    lab.ok(&[
        "expose",
        "br0",
        "--allow",
        ALLOWED,
        "--port",
        "3306",
        "--listen",
        "192.0.2.1",
    ]);
    lab.host.ip(&format!("addr del {HOST_ADDR}/24 dev br0"));
    lab.host.ip("addr add 192.0.2.2/24 dev br0");
    // A re-created bridge has a new MAC address too: the container's ARP entry for the
    // old address is gone, and nobody answers for it any more.
    lab.container.ip("neigh flush all");
    assert_eq!(tcp_request(&lab.container, sa(HOST_ADDR, 3306)), None);
    lab.assert_audit(1, &["WARNING [listen-address-gone]"]);
}

/// Sends one Ethernet frame from `ns`'s eth0 to the MAC address `dst`, carrying a UDP
/// datagram from `src` to `to`.
fn send_frame(ns: &Netns, dst: [u8; 6], src: Ipv4Addr, to: std::net::SocketAddrV4) {
    ns.enter(move || {
        let payload = b"frame\n";
        let mut ip = vec![0u8; 20 + 8 + payload.len()];
        let total = ip.len() as u16;
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&to.ip().octets());
        let mut sum: u32 = ip[..20]
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        ip[20..22].copy_from_slice(&40000u16.to_be_bytes());
        ip[22..24].copy_from_slice(&to.port().to_be_bytes());
        ip[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        ip[28..].copy_from_slice(payload);
        let mut frame = dst.to_vec();
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00]);
        frame.extend_from_slice(&ip);
        // SAFETY: plain syscalls on a packet socket created here; buffers outlive them.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "packet socket");
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = libc::if_nametoindex(c"eth0".as_ptr()) as i32;
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&dst);
            let rc = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert!(rc > 0, "sendto: {}", std::io::Error::last_os_error());
            libc::close(fd);
        }
    })
}

/// Issue 13 asked that bridge ports be left out of `unguarded` under
/// `conf.all.route_localnet=1`, as if they never did IP input. They do: the bridge hands
/// frames sent to an IEEE 802.1D link-local group address (01:80:C2:00:00:0X, LLDP's
/// ...0E here) that it does not forward to the port's own IP stack, and with `all` on,
/// a raw frame reaches 127.0.0.1 through the port. So they stay critical; and a listener
/// on 0.0.0.0 is listed among what an unguarded interface exposes.
#[test]
fn bridge_ports_under_conf_all_are_real_paths_and_any_address_listeners_are_exposed() {
    let (lab, services) = lab_with_services();
    lab.host.set_sysctl("net.ipv4.conf.all.route_localnet", "1");
    // Proof of the path taken: a counter on packets to 127.0.0.1 coming in on the port.
    let probe = lab.policy(
        "probe.nft",
        "table ip probe {\n chain pre {\n type filter hook prerouting priority -400; policy accept;\n iifname \"vn\" ip daddr 127.0.0.1 counter\n }\n}\n",
    );
    lab.host.exec(&["nft", "-f", &probe]);
    send_frame(
        &lab.neighbour,
        [0x01, 0x80, 0xc2, 0, 0, 0x0e],
        NEIGHBOUR_ADDR,
        sa(LO, 5353),
    );
    assert!(
        time_until(|| {
            services
                .udp_seen
                .lock()
                .unwrap()
                .iter()
                .any(|(port, from)| {
                    *port == 5353 && from.ip() == std::net::IpAddr::V4(NEIGHBOUR_ADDR)
                })
        })
        .is_some(),
        "the frame reached 127.0.0.1:5353"
    );
    let counted = stdout(&lab.host.exec(&["nft", "list", "table", "ip", "probe"]));
    assert!(counted.contains("counter packets 1 "), "{counted}");
    let text = lab.assert_audit(
        1,
        &[
            "CRITICAL [all-open]",
            "vn: route_localnet=0 effective=1 OPEN, UNGUARDED",
        ],
    );
    for iface in ["br0", "vn", "vc"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("CRITICAL [unguarded]")
                    && l.contains(&format!("for {iface} "))),
            "{iface}: {text}"
        );
    }
    assert!(text.contains("exposes 0.0.0.0:5400/udp"), "{text}");
}

#[test]
fn the_guards_drops_are_reported_as_blocked() {
    let (lab, services) = lab_with_services();
    lab.expose_default();
    let text = lab.assert_audit(0, &[]);
    assert!(!text.contains("[blocked]"), "{text}");
    Lab::route_loopback_via_host(&lab.neighbour);
    let opens = passive_opens(&lab.host);
    for _ in 0..3 {
        fire_tcp(&lab.neighbour, sa(LO, 3307));
    }
    flood_udp(
        &lab.neighbour,
        NEIGHBOUR_ADDR,
        sa(LO, 5353),
        b"direct\n",
        200,
    );
    flood_udp(
        &lab.neighbour,
        Ipv4Addr::new(127, 0, 0, 2),
        sa(HOST_ADDR, 5400),
        b"spoofed\n",
        50,
    );
    // The attacks got nothing.
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(passive_opens(&lab.host), opens);
    assert!(services.udp_seen.lock().unwrap().is_empty());

    let text = lab.assert_audit(
        0,
        &[
            "info [blocked]",
            "direct-to-loopback",
            "spoofed-loopback-source",
        ],
    );
    assert!(text.contains("the guard of br0 dropped"), "{text}");
    let out = lab.loopgate(&["audit", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packets = |kind: &str| {
        report["blocked"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["interface"] == "br0" && b["kind"] == kind)
            .and_then(|b| b["packets"].as_u64())
            .unwrap_or_else(|| panic!("{kind} in {}", report["blocked"]))
    };
    assert!(
        packets("direct-to-loopback") >= 203,
        "{}",
        report["blocked"]
    );
    assert_eq!(packets("spoofed-loopback-source"), 50);
    assert_eq!(packets("leaked-loopback-source"), 0);
    assert!(report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["code"] == "blocked" && f["severity"] == "info"));
    let prom = lab.ok(&["audit", "--format", "prometheus"]);
    assert!(
        prom.contains(
            "loopgate_blocked_packets_total{interface=\"br0\",kind=\"spoofed-loopback-source\"} 50"
        ),
        "{prom}"
    );
}
