//! Topic: `loopgate guard`, closing what other tools opened. Docker's
//! userland-proxy=false hairpin, netavark's localhost port forwarding and a
//! kube-proxy-style localhost NodePort keep working through the guard, while raw
//! packets to 127.0.0.1 and spoofed 127/8 sources from the guarded interfaces get
//! nothing; each attack is shown to work first, without the guard.

use super::*;
use std::net::Ipv4Addr;
use std::time::Duration;

fn a(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

/// A SYN from `client` straight to 127.0.0.1:3307 through the host: accepted by the
/// host's loopback listener?
fn loopback_reachable(lab: &Lab, client: &Netns) -> bool {
    let before = passive_opens(&lab.host);
    fire_tcp(client, sa(LO, 3307));
    passive_opens(&lab.host) > before
}

/// A datagram "from 127.0.0.2" sent by `client` to the host's 0.0.0.0:5400 service:
/// did the service see it?
fn spoof_reaches(services: &Services, client: &Netns, host_addr: Ipv4Addr) -> bool {
    services.udp_seen.lock().unwrap().clear();
    send_spoofed_udp(client, a("127.0.0.2"), sa(host_addr, 5400), b"forged");
    time_until(|| {
        services
            .udp_seen
            .lock()
            .unwrap()
            .iter()
            .any(|(_, s)| s.ip() == std::net::IpAddr::V4(a("127.0.0.2")))
    })
    .is_some()
}

/// The rules another tool adds for a host-local port forward to `to` on `oif`: DNAT of
/// 127.0.0.1:`port` in output, masquerade of 127/8 sources leaving `oif` (what Docker
/// with userland-proxy=false, netavark's localhost mapping and kube-proxy's localhost
/// NodePort all do), in a table of its own.
fn foreign_forward(lab: &Lab, table: &str, port: u16, to: &str, oif: &str) {
    let rules = format!(
        "table ip {table} {{\n\
         chain out {{ type nat hook output priority -100; ip daddr 127.0.0.1 tcp dport {port} dnat to {to}; }}\n\
         chain post {{ type nat hook postrouting priority 100; ip saddr 127.0.0.0/8 oifname \"{oif}\" masquerade; }}\n\
         }}\n"
    );
    let file = lab.policy(&format!("{table}.nft"), &rules);
    lab.host.exec(&["nft", "-f", &file]);
}

/// A request from the host itself to 127.0.0.1:`port`: the other tool's forward.
fn hairpin(lab: &Lab, port: u16) -> Option<String> {
    tcp_request(&lab.host, sa(LO, port))
}

#[test]
fn docker_userland_proxy_false_keeps_its_hairpin_while_the_guard_stops_raw_packets() {
    let (lab, services) = lab_with_services();
    let _app = start_services(&lab.container, &[sa(CONTAINER_ADDR, 80)], &[]);
    // dockerd with --userland-proxy=false: its own 1 on the bridge and its forward.
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "1");
    foreign_forward(&lab, "dockerlike", 8080, "192.0.2.10:80", "br0");
    Lab::route_loopback_via_host(&lab.container);
    assert_eq!(
        hairpin(&lab, 8080).as_deref(),
        Some("tcp:80"),
        "the hairpin works"
    );
    // Control: unguarded, a container reaches loopback and a spoofed source gets in.
    assert!(loopback_reachable(&lab, &lab.container), "control: open");
    assert!(
        spoof_reaches(&services, &lab.neighbour, HOST_ADDR),
        "control: spoof"
    );
    let (code, text) = lab.audit();
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("loopgate guard br0"),
        "audit suggests the remedy: {text}"
    );

    let out = lab.ok(&["guard", "br0"]);
    assert!(out.contains("guard br0"), "{out}");
    assert_eq!(
        lab.host.sysctl("net.ipv4.conf.br0.route_localnet"),
        "1",
        "untouched"
    );
    assert_eq!(
        hairpin(&lab, 8080).as_deref(),
        Some("tcp:80"),
        "hairpin still works"
    );
    assert!(
        !loopback_reachable(&lab, &lab.container),
        "raw SYN to 127.0.0.1 stopped"
    );
    assert!(
        !spoof_reaches(&services, &lab.neighbour, HOST_ADDR),
        "spoof stopped"
    );
    lab.assert_audit(
        0,
        &["br0: route_localnet=1 effective=1 open, guarded (opened by another tool)"],
    );

    // unguard: the guard goes, route_localnet stays the other tool's.
    lab.ok(&["unguard", "br0"]);
    assert_eq!(lab.host.sysctl("net.ipv4.conf.br0.route_localnet"), "1");
    assert!(
        loopback_reachable(&lab, &lab.container),
        "open again without the guard"
    );
    lab.assert_audit(1, &["CRITICAL [unguarded]"]);
}

#[test]
fn netavark_style_localhost_forwarding_on_a_pattern_of_bridges_keeps_working() {
    let (lab, services) = lab_with_services();
    let pod = lab.add_bridge_with_client("podman1", a("203.0.113.1"), a("203.0.113.10"));
    let _app = start_services(&pod, &[sa(a("203.0.113.10"), 80)], &[]);
    // netavark: route_localnet=1 on a bridge with a port mapping, and its forward.
    lab.host
        .set_sysctl("net.ipv4.conf.podman1.route_localnet", "1");
    foreign_forward(&lab, "netavarklike", 8081, "203.0.113.10:80", "podman1");
    Lab::route_loopback_via(&pod, a("203.0.113.1"));
    assert_eq!(hairpin(&lab, 8081).as_deref(), Some("tcp:80"));
    assert!(loopback_reachable(&lab, &pod), "control: open");
    assert!(
        spoof_reaches(&services, &pod, a("203.0.113.1")),
        "control: spoof"
    );

    lab.ok(&["guard", "podman*"]);
    assert_eq!(lab.host.sysctl("net.ipv4.conf.podman1.route_localnet"), "1");
    assert_eq!(hairpin(&lab, 8081).as_deref(), Some("tcp:80"));
    assert!(!loopback_reachable(&lab, &pod));
    assert!(!spoof_reaches(&services, &pod, a("203.0.113.1")));
    // A grant elsewhere is unaffected, and both are guarded.
    lab.expose_default();
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    assert_eq!(hairpin(&lab, 8081).as_deref(), Some("tcp:80"));
    lab.assert_audit(
        0,
        &["podman1: route_localnet=1 effective=1 open, guarded (opened by another tool)"],
    );
}

#[test]
fn kube_proxy_style_localhost_nodeport_with_conf_all_is_guarded_on_every_interface() {
    let (lab, services) = lab_with_services();
    let _pod = start_services(&lab.container, &[sa(CONTAINER_ADDR, 80)], &[]);
    // kube-proxy sets conf.all, which opens every interface at once.
    lab.host.set_sysctl("net.ipv4.conf.all.route_localnet", "1");
    foreign_forward(&lab, "kubelike", 30080, "192.0.2.10:80", "br0");
    Lab::route_loopback_via_host(&lab.container);
    assert_eq!(hairpin(&lab, 30080).as_deref(), Some("tcp:80"));
    assert!(loopback_reachable(&lab, &lab.container), "control: open");
    assert!(
        spoof_reaches(&services, &lab.neighbour, HOST_ADDR),
        "control: spoof"
    );

    lab.ok(&["guard", "--all-interfaces"]);
    assert_eq!(
        lab.host.sysctl("net.ipv4.conf.all.route_localnet"),
        "1",
        "untouched"
    );
    assert_eq!(hairpin(&lab, 30080).as_deref(), Some("tcp:80"));
    assert!(!loopback_reachable(&lab, &lab.container));
    assert!(!spoof_reaches(&services, &lab.neighbour, HOST_ADDR));
    let (_, text) = lab.audit();
    assert!(!text.contains("[unguarded]"), "{text}");
    // A new interface is guarded by watch as it appears.
    let watch = Watch::start(&lab);
    let late = lab.add_bridge_with_client("br7", a("198.51.100.1"), a("198.51.100.10"));
    Lab::route_loopback_via(&late, a("198.51.100.1"));
    time_until(|| NftTable::read_or_empty(&lab.host).guard_of("br7").is_ok())
        .unwrap_or_else(|| panic!("watch guards br7: {}", watch.log()));
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !loopback_reachable(&lab, &late),
        "the new interface is guarded"
    );
}

#[test]
fn a_policy_guard_entry_is_applied_and_followed_by_watch() {
    let (lab, _services) = lab_with_services();
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "1");
    Lab::route_loopback_via_host(&lab.container);
    assert!(loopback_reachable(&lab, &lab.container), "control: open");
    let dir = lab.state_dir.join("policy");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("g.yaml"), "guard: [br0]\n").unwrap();
    lab.ok(&["apply", dir.to_str().unwrap()]);
    assert!(
        !loopback_reachable(&lab, &lab.container),
        "guarded by the policy"
    );
    assert_eq!(lab.host.sysctl("net.ipv4.conf.br0.route_localnet"), "1");
    // watch follows the file: the guard entry removed, the guard goes.
    let watch = Watch::start_with(&lab, &["--no-hold", "--policy", dir.to_str().unwrap()]);
    std::fs::write(dir.join("g.yaml"), "guard: []\n").unwrap();
    time_until(|| loopback_reachable(&lab, &lab.container))
        .unwrap_or_else(|| panic!("watch removed the guard: {}", watch.log()));
}

/// The invariant sampler can fail: a device opened by hand with route_localnet=2 (a
/// value other than 1) and no guard is reported by the one-shot check and by the
/// background sampler, and so is a guard that lost one of its maps.
#[test]
fn the_guard_sampler_reports_a_device_open_without_its_guard() {
    let lab = Lab::new();
    assert_eq!(GuardSampler::check(&lab.host), Vec::<String>::new());
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "2");
    let seen = GuardSampler::check(&lab.host);
    assert!(seen.len() == 1 && seen[0].starts_with("br0=2"), "{seen:?}");
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "0");
    // In the background: open for 100 ms, between two closed moments.
    let sampler = GuardSampler::start(&lab.host);
    std::thread::sleep(Duration::from_millis(50));
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "2");
    std::thread::sleep(Duration::from_millis(100));
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "0");
    std::thread::sleep(Duration::from_millis(50));
    let sampled = sampler.finish();
    assert!(
        !sampled.violations.is_empty() && sampled.violations.iter().all(|v| v.starts_with("br0=2")),
        "{sampled:?}"
    );
    // Guarded by loopgate, a hand-set 2 is fine; without one guard map it is not.
    lab.expose_default();
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "2");
    assert_eq!(GuardSampler::check(&lab.host), Vec::<String>::new());
    lab.host.exec(&[
        "nft",
        "delete",
        "element",
        "ip",
        "loopgate",
        "post_ifaces",
        "{ \"br0\" }",
    ]);
    let seen = GuardSampler::check(&lab.host);
    assert!(
        seen.len() == 1 && seen[0].starts_with("br0=2") && seen[0].contains("post_ifaces"),
        "{seen:?}"
    );
}
