//! Topic: what gets through and what does not. Allowed clients reach published ports
//! only; 127.0.0.1 addressed directly (the CVE-2020-8558 class) and spoofed 127/8
//! sources are dropped; revoke cuts open connections. The first test is the control:
//! without the guard, the same attacks succeed.

use super::*;

#[test]
fn the_lab_can_detect_an_unguarded_exposure() {
    // Control for every traffic test below: with route_localnet=1 set by hand and no
    // guard, the attacks these tests block do succeed, so their assertions can fail.
    let (lab, services) = lab_with_services();
    Lab::route_loopback_via_host(&lab.container);
    let opens = passive_opens(&lab.host);
    fire_tcp(&lab.container, sa(LO, 3307));
    assert_eq!(
        passive_opens(&lab.host),
        opens,
        "route_localnet=0 already blocks"
    );
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "1");
    fire_tcp(&lab.container, sa(LO, 3307));
    assert!(
        passive_opens(&lab.host) > opens,
        "a SYN to 127.0.0.1 reaches the loopback listener"
    );
    fire_udp(&lab.container, sa(LO, 5354));
    send_spoofed_udp(
        &lab.neighbour,
        Ipv4Addr::new(127, 0, 0, 2),
        sa(HOST_ADDR, 5400),
        b"forged",
    );
    // Both datagrams reach the service thread a moment later: wait for them, up to
    // time_until's bound (the assertions below then say which one is missing).
    let _ = time_until(|| {
        let seen = services.udp_seen.lock().unwrap();
        seen.iter().any(|(port, _)| *port == 5354)
            && seen.iter().any(|(_, s)| s.ip().to_string() == "127.0.0.2")
    });
    let seen = services.udp_seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|(port, _)| *port == 5354),
        "a datagram to 127.0.0.1 reaches the service: {seen:?}"
    );
    assert!(
        seen.iter().any(|(_, s)| s.ip().to_string() == "127.0.0.2"),
        "a spoofed 127.0.0.2 source reaches an unguarded host: {seen:?}"
    );
    // And audit calls it what it is.
    lab.assert_audit(1, &["CRITICAL [unguarded]"]);
}

#[test]
fn expose_lets_only_the_allowed_subnet_reach_only_the_published_ports() {
    let (lab, services) = lab_with_services();
    let out = lab.expose_default();
    assert!(out.contains("route_localnet: 0 -> 1"), "{out}");
    lab.ok(&[
        "expose", "br0", "--allow", ALLOWED, "--port", "5353", "--proto", "udp",
    ]);
    assert_eq!(lab.host.sysctl("net.ipv4.conf.br0.route_localnet"), "1");
    assert_eq!(
        lab.host.sysctl("net.ipv4.conf.all.route_localnet"),
        "0",
        "never writes all"
    );
    assert_eq!(
        lab.host.sysctl("net.ipv4.conf.default.route_localnet"),
        "0",
        "never writes default"
    );

    // Allowed client, published ports: TCP and UDP land on the loopback services.
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    assert_eq!(
        udp_request(&lab.container, sa(HOST_ADDR, 5353)).as_deref(),
        Some("udp:5353")
    );
    // Disallowed neighbour on the same link: nothing.
    assert_eq!(tcp_request(&lab.neighbour, sa(HOST_ADDR, 3306)), None);
    assert_eq!(udp_request(&lab.neighbour, sa(HOST_ADDR, 5353)), None);
    // Allowed client, unpublished loopback ports: nothing via the published address...
    assert_eq!(tcp_request(&lab.container, sa(HOST_ADDR, 3307)), None);
    assert_eq!(udp_request(&lab.container, sa(HOST_ADDR, 5354)), None);
    // ...and nothing by sending to 127.0.0.1 directly (CVE-2020-8558 class), not even
    // to the published port: counted at the services.
    Lab::route_loopback_via_host(&lab.container);
    let opens = passive_opens(&lab.host);
    fire_tcp(&lab.container, sa(LO, 3307));
    fire_tcp(&lab.container, sa(LO, 3306));
    fire_udp(&lab.container, sa(LO, 5354));
    fire_udp(&lab.container, sa(LO, 5353));
    assert_eq!(
        passive_opens(&lab.host),
        opens,
        "a SYN to 127.0.0.1 reached a listener"
    );
    // The published path still works with that route in place.
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    // Spoofed loopback source: dropped.
    for _ in 0..3 {
        send_spoofed_udp(
            &lab.neighbour,
            Ipv4Addr::new(127, 0, 0, 2),
            sa(HOST_ADDR, 5400),
            b"forged",
        );
        send_spoofed_udp(
            &lab.container,
            Ipv4Addr::new(127, 0, 0, 1),
            sa(HOST_ADDR, 5400),
            b"forged",
        );
    }
    // The absence of these packets at the services proves something only once they
    // have met the guard: wait until its drop counters account for every one (the two
    // SYNs and two datagrams to 127.0.0.1, the six forged sources).
    time_until(|| {
        counted(&lab, "guard: no direct route to loopback") >= 4
            && counted(&lab, "guard: no spoofed loopback source") >= 6
    })
    .expect("the guard counted every packet to or from 127/8");
    let seen = services.udp_seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|(_, s)| !s.ip().to_string().starts_with("127.")),
        "spoofed sources got through: {seen:?}"
    );
    assert!(
        !seen.iter().any(|(port, _)| *port == 5354),
        "direct datagram to 127.0.0.1:5354 arrived: {seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|(port, _)| *port == 5353).count(),
        1,
        "only the one published request: {seen:?}"
    );

    lab.assert_audit(0, &["br0: route_localnet=1 effective=1 open, guarded"]);
}

#[test]
fn expose_is_idempotent_and_a_new_allow_list_replaces_the_old() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    let before = lab.fingerprint();
    let out = lab.expose_default();
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(
        lab.fingerprint(),
        before,
        "second identical expose changed something"
    );
    assert_eq!(tcp_request(&lab.neighbour, sa(HOST_ADDR, 3306)), None);

    lab.ok(&[
        "expose",
        "br0",
        "--allow",
        "192.0.2.128/25,198.51.100.0/24",
        "--port",
        "3306",
    ]);
    assert_eq!(
        tcp_request(&lab.neighbour, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)),
        None,
        "old allow list must be gone"
    );
}

#[test]
fn revoke_cuts_open_connections_and_restores_original_zero() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    let mut conn = tcp_connect(&lab.container, sa(HOST_ADDR, 3306));
    assert_eq!(tcp_ping(&mut conn).as_deref(), Some("tcp:3306"));
    let out = lab.ok(&["revoke", "br0", "--port", "3306"]);
    assert!(out.contains("cut 1 tracked connection"), "{out}");
    assert_eq!(
        tcp_ping(&mut conn),
        None,
        "the open connection must die on revoke"
    );
    assert_eq!(tcp_request(&lab.container, sa(HOST_ADDR, 3306)), None);
    assert_eq!(lab.host.sysctl("net.ipv4.conf.br0.route_localnet"), "0");
    assert!(!stdout(&lab.host.exec(&["nft", "list", "tables"])).contains("loopgate"));
    lab.assert_audit(0, &[]);
}

#[test]
fn revoke_restores_original_one_and_audit_then_flags_it() {
    let (lab, _services) = lab_with_services();
    // Docker with userland-proxy=false leaves route_localnet=1 on its bridge.
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "1");
    lab.expose_default();
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    let out = lab.loopgate(&["audit", "--json"]);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("audit --json is JSON");
    let br0 = report["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "br0")
        .unwrap()
        .clone();
    assert_eq!(br0["original"], 1);
    assert_eq!(br0["set_by_loopgate"], false);
    assert_eq!(br0["guarded"], true);
    let mut conn = tcp_connect(&lab.container, sa(HOST_ADDR, 3306));
    assert_eq!(tcp_ping(&mut conn).as_deref(), Some("tcp:3306"));

    lab.ok(&["revoke", "br0", "--name", "br0-tcp-3306"]);
    assert_eq!(
        lab.host.sysctl("net.ipv4.conf.br0.route_localnet"),
        "1",
        "restored to the recorded 1"
    );
    // With route_localnet still 1, only the conntrack deletion can end this flow.
    assert_eq!(
        tcp_ping(&mut conn),
        None,
        "the open connection must die on revoke"
    );
    assert_eq!(tcp_request(&lab.container, sa(HOST_ADDR, 3306)), None);
    lab.assert_audit(1, &["CRITICAL [unguarded]"]);
}

#[test]
fn large_allow_lists_span_several_netlink_pages_in_one_batch() {
    let (lab, _services) = lab_with_services();
    // 20,000 disjoint /32s (a hash set of their own) plus the allowed client, first as
    // one more address, then inside a network (the interval set): several batch pages,
    // applied as one transaction each time.
    let hosts: Vec<String> = (0..20_000u32)
        .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + i * 2).to_string())
        .collect();
    for client in [CONTAINER_ADDR.to_string(), "192.0.2.0/28".to_string()] {
        let policy = lab.policy(
            "big.yaml",
            &format!(
                "grants:\n  - interface: br0\n    allow: [{}, {client}]\n    port: 3306\n",
                hosts.join(", ")
            ),
        );
        let policy = policy.as_str();
        lab.ok(&["apply", policy]);
        let sets = NftTable::read(&lab.host).sets;
        let hosts = sets
            .iter()
            .find(|s| s.starts_with("allow_") && s.ends_with("_hosts"))
            .unwrap_or_else(|| panic!("no hash set: {sets:?}"));
        let table = stdout(
            &lab.host
                .exec(&["nft", "list", "set", "ip", "loopgate", hosts]),
        );
        assert!(
            table.contains("10.0.156.62") && !table.contains("flags interval"),
            "a hash set of the single addresses"
        );
        assert_eq!(
            tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
            Some("tcp:3306"),
            "allowed as {client}"
        );
        assert_eq!(tcp_request(&lab.neighbour, sa(HOST_ADDR, 3306)), None);
        assert!(lab.ok(&["plan", policy]).contains("nothing to do"));
        assert_eq!(
            lab.loopgate(&["audit", "--deep"]).status.code(),
            Some(0),
            "every element read back matches"
        );
    }
}

#[test]
fn a_flooding_neighbour_gets_nothing_through_while_allowed_clients_keep_working() {
    let (lab, services) = lab_with_services();
    lab.expose_default();
    lab.ok(&[
        "expose", "br0", "--allow", ALLOWED, "--port", "5353", "--proto", "udp",
    ]);
    Lab::route_loopback_via_host(&lab.neighbour);
    let opens_before = passive_opens(&lab.host);

    // The allowed client runs a request loop during the whole flood.
    let container = lab.container.handle();
    let client = std::thread::spawn(move || {
        let mut ok = 0;
        for _ in 0..200 {
            if tcp_request(&container, sa(HOST_ADDR, 3306)).as_deref() == Some("tcp:3306") {
                ok += 1;
            }
        }
        ok
    });
    let neighbour = &lab.neighbour;
    let direct = flood_udp(neighbour, NEIGHBOUR_ADDR, sa(LO, 5354), b"flood", 40_000)
        + flood_udp(neighbour, NEIGHBOUR_ADDR, sa(LO, 5353), b"flood", 10_000);
    let spoofed = flood_udp(
        neighbour,
        Ipv4Addr::new(127, 0, 0, 1),
        sa(HOST_ADDR, 5400),
        b"flood",
        25_000,
    ) + flood_udp(
        neighbour,
        Ipv4Addr::new(127, 0, 0, 9),
        sa(HOST_ADDR, 5353),
        b"flood",
        25_000,
    );
    let ok = client.join().unwrap();
    // Nothing more can be on its way to a service once the guard's counters account
    // for every flood packet; the assertions below check the exact counts.
    let _ = time_until(|| {
        counted(&lab, "guard: no direct route to loopback")
            + counted(&lab, "guard: no spoofed loopback source")
            >= (direct + spoofed) as u64
    });

    let seen = services.udp_seen.lock().unwrap().clone();
    let leaked = seen
        .iter()
        .filter(|(_, from)| from.ip().to_string() != CONTAINER_ADDR.to_string())
        .count();
    let dropped_direct = counted(&lab, "guard: no direct route to loopback");
    let dropped_spoofed = counted(&lab, "guard: no spoofed loopback source");
    println!(
        "flood: sent {} ({direct} to 127.0.0.1, {spoofed} with 127.x sources), leaked {leaked}; dropped by the guard: {dropped_direct} + {dropped_spoofed}; allowed requests ok: {ok}/200",
        direct + spoofed
    );
    assert_eq!(
        direct + spoofed,
        100_000,
        "the sender could not send every packet"
    );
    assert_eq!(
        leaked,
        0,
        "flood packets reached a service: {:?}",
        &seen[..seen.len().min(5)]
    );
    assert_eq!(
        passive_opens(&lab.host) - opens_before,
        200,
        "only the allowed client's connections were accepted"
    );
    assert_eq!(
        ok, 200,
        "the allowed client's loop must complete without errors"
    );
    assert_eq!(
        dropped_direct, direct as u64,
        "every packet to 127.0.0.1 is counted by the guard"
    );
    assert_eq!(
        dropped_spoofed, spoofed as u64,
        "every spoofed packet is counted by the guard"
    );
}

#[test]
fn listeners_are_found_through_sock_diag_among_many_connections() {
    let (lab, _services) = lab_with_services();
    // Many finished connections (TIME_WAIT) must not hide or slow down the listeners.
    for _ in 0..50 {
        assert_eq!(tcp_request(&lab.container, sa(HOST_ADDR, 1)), None);
    }
    let found = lab
        .host
        .enter(|| loopgate::kernel::host::listeners().unwrap());
    let has = |proto: loopgate::grant::Proto, addr: Ipv4Addr, port: u16| {
        found
            .iter()
            .any(|l| l.proto == proto && l.addr == addr && l.port == port)
    };
    use loopgate::grant::Proto;
    assert!(
        has(Proto::Tcp, LO, 3306) && has(Proto::Tcp, LO, 3307),
        "{found:?}"
    );
    assert!(
        has(Proto::Udp, LO, 5353) && has(Proto::Udp, Ipv4Addr::UNSPECIFIED, 5400),
        "{found:?}"
    );
    assert_eq!(
        found.iter().filter(|l| l.proto == Proto::Tcp).count(),
        2,
        "only listening TCP sockets: {found:?}"
    );
}

#[test]
fn a_vanished_managed_interface_does_not_block_changes_elsewhere() {
    let (lab, _services) = lab_with_services();
    lab.host.ip("link add br1 type bridge");
    lab.host.ip("addr add 198.51.100.1/24 dev br1");
    lab.host.ip("link set br1 up");
    lab.ok(&[
        "expose",
        "br1",
        "--allow",
        "198.51.100.0/24",
        "--port",
        "3307",
    ]);
    lab.host.ip("link del br1"); // as dockerd does with its bridge
    lab.expose_default();
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    let (_, text) = lab.audit();
    assert!(
        text.contains("info [pending]") && text.contains("its guard stays in place"),
        "{text}"
    );
    lab.ok(&["revoke", "br1", "--all"]);
    lab.assert_audit(0, &[]);
}

/// Hundreds of grants over three interfaces, as on a busy container host: each client
/// reaches exactly what its own interface publishes to it, at the right target, and
/// nothing else; revoking one interface leaves the others working.
#[test]
fn many_grants_on_several_interfaces_reach_only_their_own_services() {
    let lab = Lab::new();
    let nets = [
        ("br0", HOST_ADDR, CONTAINER_ADDR),
        (
            "br1",
            Ipv4Addr::new(198, 51, 100, 1),
            Ipv4Addr::new(198, 51, 100, 10),
        ),
        (
            "br2",
            Ipv4Addr::new(203, 0, 113, 1),
            Ipv4Addr::new(203, 0, 113, 10),
        ),
    ];
    let c1 = lab.add_bridge_with_client(nets[1].0, nets[1].1, nets[1].2);
    let c2 = lab.add_bridge_with_client(nets[2].0, nets[2].1, nets[2].2);
    let clients = [&lab.container, &c1, &c2];
    let tcp: Vec<_> = (0..10).map(|i| sa(LO, 5000 + i)).collect();
    let _services = start_services(&lab.host, &tcp, &[sa(LO, 5100)]);

    // Per interface, ports 4000-4099 each go to 127.0.0.1:(5000 + port % 10) for the
    // lower half of that interface's subnet, plus DNS over UDP: 303 grants. On br0,
    // port 4010 shares 4000's target but admits only the neighbour.
    let mut policy = String::from("grants:\n");
    // The same without br1's grants, to take them away later: they are the policy's.
    let mut without_br1 = String::from("grants:\n");
    for (i, (iface, _, client)) in nets.iter().enumerate() {
        let start = policy.len();
        let subnet = format!("{}/25", Ipv4Addr::from(u32::from(*client) & !0x7f));
        for port in 4000..4100u16 {
            let allow = if *iface == "br0" && port == 4010 {
                format!("{NEIGHBOUR_ADDR}/32")
            } else {
                subnet.clone()
            };
            policy.push_str(&format!(
                "  - name: g{i}-{port}\n    interface: {iface}\n    allow: [{allow}]\n    port: {port}\n    to: 127.0.0.1:{}\n",
                5000 + port % 10
            ));
        }
        policy.push_str(&format!(
            "  - name: dns{i}\n    interface: {iface}\n    allow: [{subnet}]\n    port: 53\n    proto: udp\n    to: 127.0.0.1:5100\n"
        ));
        if *iface != "br1" {
            without_br1.push_str(&policy[start..]);
        }
    }
    lab.ok(&["apply", &lab.policy("many.yaml", &policy)]);
    lab.assert_audit(0, &[]);
    let table = NftTable::read(&lab.host);
    assert_eq!(table.maps["nat_grants"].len(), 303);
    assert_eq!(table.maps["raw_ifaces"].len(), 3);

    let opens = passive_opens(&lab.host);
    let mut accepted = 0;
    for ((iface, addr, _), client) in nets.iter().zip(clients) {
        for port in [4000u16, 4001, 4057, 4099] {
            assert_eq!(
                tcp_request(client, sa(*addr, port)),
                Some(format!("tcp:{}", 5000 + port % 10)),
                "{iface} port {port}"
            );
            accepted += 1;
        }
        assert_eq!(
            udp_request(client, sa(*addr, 53)).as_deref(),
            Some("udp:5100"),
            "{iface} dns"
        );
        assert_eq!(
            tcp_request(client, sa(*addr, 4100)),
            None,
            "{iface}: an unpublished port"
        );
    }
    // Another interface's published address is not a way in: the key holds the interface.
    assert_eq!(tcp_request(&c1, sa(HOST_ADDR, 4000)), None);
    assert_eq!(tcp_request(&lab.container, sa(nets[2].1, 4000)), None);
    // Two grants sharing one target keep their own allow lists.
    assert_eq!(tcp_request(&lab.container, sa(HOST_ADDR, 4010)), None);
    assert_eq!(
        tcp_request(&lab.neighbour, sa(HOST_ADDR, 4010)).as_deref(),
        Some("tcp:5000")
    );
    accepted += 1;
    assert_eq!(tcp_request(&lab.neighbour, sa(HOST_ADDR, 4000)), None);
    // Loopback addressed directly from an allowed client stays closed, and so does a
    // DNAT to loopback that some other table adds, as a hand-written rule would.
    Lab::route_loopback_via(&c2, nets[2].1);
    fire_tcp(&c2, sa(LO, 5000));
    lab.host.exec(&[
        "nft",
        "add table ip other; add chain ip other pre { type nat hook prerouting priority dstnat - 1; }; add rule ip other pre iifname br2 tcp dport 4200 dnat to 127.0.0.1:5001",
    ]);
    assert_eq!(tcp_request(&c2, sa(nets[2].1, 4200)), None);
    lab.host.exec(&["nft", "delete table ip other"]);
    assert_eq!(
        passive_opens(&lab.host) - opens,
        accepted,
        "only the answered requests reached a service"
    );

    lab.ok(&["apply", &lab.policy("many.yaml", &without_br1)]);
    assert_eq!(tcp_request(&c1, sa(nets[1].1, 4000)), None);
    assert_eq!(lab.host.sysctl("net.ipv4.conf.br1.route_localnet"), "0");
    for ((iface, addr, _), client) in [(nets[0], clients[0]), (nets[2], clients[2])] {
        assert_eq!(
            tcp_request(client, sa(addr, 4099)).as_deref(),
            Some("tcp:5009"),
            "{iface} after revoking br1"
        );
    }
    lab.assert_audit(0, &[]);
}
