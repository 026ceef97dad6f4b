//! Topic: another tool's forward to loopback on an interface loopgate guards (issue 20,
//! part 2). The Amazon ECS agent DNATs its credentials address to `127.0.0.1:51679`
//! and turns `route_localnet` on; an operator keeps a hand-made `dnat to 127.0.0.1`.
//! Guarding that interface (`loopgate guard`, or an unrelated `expose`) must keep the
//! forward working, keep every direct or spoofed way to loopback closed, and audit
//! must list the forward as an exposure (`foreign-forward`), critical while any source
//! may use it. Each attack is shown to work first, without the guard.

use super::*;
use std::net::Ipv4Addr;

fn a(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

/// Stands for the ECS agent's credentials address 169.254.170.2 (tests use
/// documentation addresses only); the rules are otherwise the agent's.
const CREDS: &str = "203.0.113.2";
/// The agent's credentials endpoint on the host's loopback.
const CREDS_PORT: u16 = 51679;

/// The Amazon ECS agent's rules, loaded with iptables (iptables-nft, as on Amazon
/// Linux 2023), as ecs-init installs them: github.com/aws/amazon-ecs-agent,
/// ecs-init/exec/iptables/iptables.go (v1.105, getPreroutingChainArgs,
/// getLocalhostTrafficFilterInputChainArgs, getOutputChainArgs), and
/// ecs-init/exec/sysctl/sysctl.go (Enable: `net.ipv4.conf.all.route_localnet=1`).
fn ecs_agent(lab: &Lab) {
    let creds_to = format!("127.0.0.1:{CREDS_PORT}");
    let port = CREDS_PORT.to_string();
    for args in [
        // nat PREROUTING: tasks' requests to the credentials address.
        vec![
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "-d",
            CREDS,
            "--dport",
            "80",
            "-j",
            "DNAT",
            "--to-destination",
            &creds_to,
        ],
        // filter INPUT: the agent's own guard of 127/8.
        vec![
            "-t",
            "filter",
            "-I",
            "INPUT",
            "--dst",
            "127.0.0.0/8",
            "!",
            "--src",
            "127.0.0.0/8",
            "-m",
            "conntrack",
            "!",
            "--ctstate",
            "RELATED,ESTABLISHED,DNAT",
            "-j",
            "DROP",
        ],
        // nat OUTPUT: the host's own requests.
        vec![
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            CREDS,
            "--dport",
            "80",
            "-j",
            "REDIRECT",
            "--to-ports",
            &port,
        ],
    ] {
        let mut cmd = vec!["iptables-nft"];
        cmd.extend(args);
        lab.host.exec(&cmd);
    }
    lab.host.set_sysctl("net.ipv4.conf.all.route_localnet", "1");
}

/// A task's request for its credentials.
fn creds(ns: &Netns) -> Option<String> {
    tcp_request(ns, sa(a(CREDS), 80))
}

/// The `foreign-forward` lines of audit's text report.
fn forward_lines(report: &str) -> Vec<String> {
    report
        .lines()
        .filter(|l| l.contains("[foreign-forward]"))
        .map(str::to_string)
        .collect()
}

/// A SYN from `client` straight to 127.0.0.1:`port` through the host: accepted by the
/// host's loopback listener?
fn loopback_reachable(lab: &Lab, client: &Netns, port: u16) -> bool {
    let before = passive_opens(&lab.host);
    fire_tcp(client, sa(LO, port));
    passive_opens(&lab.host) > before
}

/// A datagram "from 127.0.0.2" sent by `client` to `to`: did a host service see it?
fn spoof_reaches(services: &Services, client: &Netns, to: std::net::SocketAddrV4) -> bool {
    services.udp_seen.lock().unwrap().clear();
    send_spoofed_udp(client, a("127.0.0.2"), to, b"forged");
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

/// The ECS host: tasks on docker0 fetch their credentials; audit's remedy for the
/// open `all` (`loopgate guard --all-interfaces`) guards docker0, and the tasks keep
/// their credentials; audit names the agent's rule as a critical exposure; the printed
/// remedy (name the sources in the rule) turns it into info.
#[test]
fn ecs_tasks_keep_their_credentials_under_the_guard_and_audit_names_the_forward() {
    let lab = Lab::new();
    let _creds = start_services(&lab.host, &[sa(LO, CREDS_PORT)], &[]);
    let task = lab.add_bridge_with_client("docker0", a("198.51.100.1"), a("198.51.100.10"));
    ecs_agent(&lab);
    assert_eq!(
        creds(&task).as_deref(),
        Some("tcp:51679"),
        "control: the agent's forward works"
    );
    let report = lab.assert_audit(1, &["CRITICAL [all-open]"]);
    assert!(report.contains("loopgate guard"), "{report}");
    lab.ok(&["guard", "--all-interfaces"]);
    NftTable::read(&lab.host).guard_of("docker0").unwrap();
    assert_eq!(
        creds(&task).as_deref(),
        Some("tcp:51679"),
        "the guard breaks the tasks' credentials"
    );
    assert_eq!(
        creds(&lab.container).as_deref(),
        Some("tcp:51679"),
        "br0's clients too: the agent's rule names no interface"
    );
    let report = lab.loopgate(&["audit"]);
    let text = stdout(&report);
    let lines = forward_lines(&text);
    let docker0 = lines
        .iter()
        .find(|l| l.contains(" on docker0 "))
        .unwrap_or_else(|| panic!("no foreign-forward on docker0:\n{text}"));
    assert!(
        docker0
            .starts_with("CRITICAL [foreign-forward] table ip nat chain PREROUTING rule handle ")
            && docker0.contains(&format!(
                "DNATs ip daddr {CREDS} tcp dport 80 on docker0 to 127.0.0.1:51679 from any source"
            )),
        "{docker0}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&lab.loopgate(&["audit", "--json"]).stdout).unwrap();
    assert!(
        json["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["code"] == "foreign-forward"
                && f["severity"] == "critical"
                && f["interface"] == "docker0"),
        "{json}"
    );
    // The agent's endpoint is among what docker0 exposes.
    let docker0 = json["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "docker0")
        .unwrap();
    assert_eq!(
        docker0["exposed_sockets"],
        serde_json::json!([{ "proto": "tcp", "addr": "127.0.0.1", "port": 51679 }]),
        "{docker0}"
    );

    // The remedy: name the sources in the rule (iptables: -s CIDR).
    lab.host.exec(&[
        "iptables-nft",
        "-t",
        "nat",
        "-R",
        "PREROUTING",
        "1",
        "-s",
        "198.51.100.0/24",
        "-p",
        "tcp",
        "-d",
        CREDS,
        "--dport",
        "80",
        "-j",
        "DNAT",
        "--to-destination",
        "127.0.0.1:51679",
    ]);
    assert_eq!(
        creds(&task).as_deref(),
        Some("tcp:51679"),
        "tasks still served"
    );
    assert_eq!(
        creds(&lab.container),
        None,
        "br0's clients are no longer forwarded"
    );
    let text = stdout(&lab.loopgate(&["audit"]));
    let lines = forward_lines(&text);
    assert!(
        !lines.is_empty()
            && lines.iter().all(|l| l.starts_with("info [foreign-forward]")
                && l.contains("for 198.51.100.0/24 only")),
        "{text}"
    );
}

/// An operator's hand-made forward on br0 (nft), and an unrelated grant on the same
/// bridge: the forward keeps working for TCP and UDP, while a SYN to 127.0.0.1, a
/// spoofed 127/8 source through the forward, and a neighbour reaching 127.0.0.1 stay
/// blocked; each attack works without the guard first. Then the printed remedy (name
/// the sources) brings audit to exit 0.
#[test]
fn a_hand_made_forward_survives_an_unrelated_expose_and_opens_nothing_else() {
    let (lab, services) = lab_with_services();
    let _forwarded = start_services(&lab.host, &[sa(LO, 18080)], &[]);
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "1");
    let rules = "table ip hand {\n\
         chain pre { type nat hook prerouting priority dstnat;\n\
           iifname \"br0\" ip daddr 192.0.2.1 tcp dport 8080 dnat to 127.0.0.1:18080\n\
           iifname \"br0\" ip daddr 192.0.2.1 udp dport 5401 dnat to 127.0.0.1:5354; }\n\
         }\n";
    lab.host
        .exec(&["nft", "-f", &lab.policy("hand.nft", rules)]);
    Lab::route_loopback_via_host(&lab.neighbour);
    let forward = sa(HOST_ADDR, 8080);
    assert_eq!(
        tcp_request(&lab.container, forward).as_deref(),
        Some("tcp:18080")
    );
    assert_eq!(
        udp_request(&lab.container, sa(HOST_ADDR, 5401)).as_deref(),
        Some("udp:5354")
    );
    // Controls: without loopgate, the neighbour reaches 127.0.0.1 directly and a
    // spoofed 127/8 source gets through the forward.
    assert!(
        loopback_reachable(&lab, &lab.neighbour, 3307),
        "control: direct"
    );
    assert!(
        spoof_reaches(&services, &lab.neighbour, sa(HOST_ADDR, 5401)),
        "control: spoofed"
    );

    lab.expose_default();
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306"),
        "the grant"
    );
    assert_eq!(
        tcp_request(&lab.container, forward).as_deref(),
        Some("tcp:18080"),
        "the operator's forward works beside loopgate's grant"
    );
    assert_eq!(
        udp_request(&lab.container, sa(HOST_ADDR, 5401)).as_deref(),
        Some("udp:5354")
    );
    assert!(
        !loopback_reachable(&lab, &lab.neighbour, 3307),
        "direct SYN"
    );
    assert!(
        !loopback_reachable(&lab, &lab.neighbour, 18080),
        "direct SYN to the forward's target"
    );
    assert!(
        !spoof_reaches(&services, &lab.neighbour, sa(HOST_ADDR, 5401)),
        "a spoofed 127/8 source through the forward"
    );
    let report = lab.assert_audit(1, &["CRITICAL [foreign-forward] table ip hand chain pre"]);
    assert_eq!(forward_lines(&report).len(), 2, "{report}");

    // The remedy: name the sources in the rules (nft: ip saddr CIDR).
    lab.host
        .exec(&["nft", "flush", "chain", "ip", "hand", "pre"]);
    lab.host.exec(&[
        "nft", "add rule ip hand pre iifname \"br0\" ip saddr 192.0.2.0/25 ip daddr 192.0.2.1 tcp dport 8080 dnat to 127.0.0.1:18080",
    ]);
    assert_eq!(
        tcp_request(&lab.container, forward).as_deref(),
        Some("tcp:18080")
    );
    assert_eq!(
        tcp_request(&lab.neighbour, forward),
        None,
        "not for the neighbour"
    );
    let report = lab.assert_audit(0, &["info [foreign-forward] table ip hand chain pre"]);
    assert!(report.contains("for 192.0.2.0/25 only"), "{report}");
}

/// A foreign forward to a grant's own target is a flow loopgate did not DNAT for that
/// grant: the grant's chain drops it (so it can never borrow the grant's accept, nor a
/// grant's flow the foreign accept), and audit warns that the forward is broken; the
/// remedy (point the forward at another port) makes it work.
#[test]
fn a_forward_to_a_grant_target_is_dropped_and_named() {
    let (lab, _services) = lab_with_services();
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "1");
    let rules = "table ip hand {\n\
         chain pre { type nat hook prerouting priority dstnat;\n\
           iifname \"br0\" tcp dport 3390 dnat to 127.0.0.1:3306; }\n\
         }\n";
    lab.host
        .exec(&["nft", "-f", &lab.policy("hand.nft", rules)]);
    let forward = sa(HOST_ADDR, 3390);
    assert_eq!(
        tcp_request(&lab.neighbour, forward).as_deref(),
        Some("tcp:3306"),
        "control: the forward works without loopgate"
    );
    lab.expose_default();
    assert_eq!(tcp_request(&lab.neighbour, forward), None, "neighbour");
    assert_eq!(
        tcp_request(&lab.container, forward),
        None,
        "allowed, other port"
    );
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    assert_eq!(tcp_request(&lab.neighbour, sa(HOST_ADDR, 3306)), None);
    lab.assert_audit(
        1,
        &[
            "WARNING [foreign-forward]",
            "that is the target of grant br0-tcp-3306",
        ],
    );
    // The remedy: another loopback port.
    lab.host
        .exec(&["nft", "flush", "chain", "ip", "hand", "pre"]);
    lab.host.exec(&[
        "nft",
        "add rule ip hand pre iifname \"br0\" tcp dport 3390 dnat to 127.0.0.1:3307",
    ]);
    assert_eq!(
        tcp_request(&lab.neighbour, forward).as_deref(),
        Some("tcp:3307")
    );
    let report = lab.assert_audit(1, &["CRITICAL [foreign-forward]"]);
    assert!(!report.contains("target of grant"), "{report}");
}

/// A `redirect` at prerouting sends to the interface's own address, never to 127/8:
/// a service on 127.0.0.1 is not reached through it, with or without loopgate, and
/// audit does not list it; one on the interface address is.
#[test]
fn a_redirect_goes_to_the_interface_address_not_to_loopback() {
    let lab = Lab::new();
    let _svc = start_services(&lab.host, &[sa(LO, 18082), sa(HOST_ADDR, 18083)], &[]);
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "1");
    let rules = "table ip hand {\n\
         chain pre { type nat hook prerouting priority dstnat;\n\
           iifname \"br0\" tcp dport 8082 redirect to :18082\n\
           iifname \"br0\" tcp dport 8083 redirect to :18083; }\n\
         }\n";
    lab.host
        .exec(&["nft", "-f", &lab.policy("hand.nft", rules)]);
    for guarded in [false, true] {
        if guarded {
            lab.ok(&["guard", "br0"]);
        }
        assert_eq!(
            tcp_request(&lab.container, sa(HOST_ADDR, 8083)).as_deref(),
            Some("tcp:18083"),
            "the redirect works (guarded: {guarded})"
        );
        assert_eq!(
            tcp_request(&lab.container, sa(HOST_ADDR, 8082)),
            None,
            "a redirect never reaches 127.0.0.1 (guarded: {guarded})"
        );
    }
    let (_, report) = lab.audit();
    assert!(forward_lines(&report).is_empty(), "{report}");
}

/// The foreign rule removed while a flow is up: the flow keeps its NAT binding (the
/// kernel binds NAT at a flow's first packet) and the guard keeps letting it through
/// until it ends, as without loopgate; new flows are not forwarded, and audit no longer
/// lists the forward.
#[test]
fn removing_the_foreign_rule_ends_new_flows_not_the_open_one() {
    let lab = Lab::new();
    let _forwarded = start_services(&lab.host, &[sa(LO, 18080)], &[]);
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "1");
    let rules = "table ip hand {\n\
         chain pre { type nat hook prerouting priority dstnat;\n\
           iifname \"br0\" tcp dport 8080 dnat to 127.0.0.1:18080; }\n\
         }\n";
    lab.host
        .exec(&["nft", "-f", &lab.policy("hand.nft", rules)]);
    lab.ok(&["guard", "br0"]);
    let forward = sa(HOST_ADDR, 8080);
    let mut open = tcp_connect(&lab.container, forward);
    assert_eq!(tcp_ping(&mut open).as_deref(), Some("tcp:18080"));
    lab.assert_audit(1, &["CRITICAL [foreign-forward]"]);
    lab.host.exec(&["nft", "delete", "table", "ip", "hand"]);
    assert_eq!(
        tcp_ping(&mut open).as_deref(),
        Some("tcp:18080"),
        "the open flow keeps its binding"
    );
    assert_eq!(tcp_request(&lab.container, forward), None, "a new flow");
    let (code, report) = lab.audit();
    assert!(forward_lines(&report).is_empty(), "{report}");
    assert_eq!(code, Some(0), "{report}");
}

/// The agent's rule loaded through iptables-legacy (a host on the legacy backend) is
/// read through the legacy interface, with its DNAT target, and the forward works under
/// the guard.
#[test]
fn the_agents_rule_through_iptables_legacy_is_read_too() {
    let lab = Lab::new();
    let _creds = start_services(&lab.host, &[sa(LO, CREDS_PORT)], &[]);
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "1");
    let creds_to = format!("127.0.0.1:{CREDS_PORT}");
    lab.host.exec(&[
        "iptables-legacy",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-p",
        "tcp",
        "-d",
        CREDS,
        "--dport",
        "80",
        "-j",
        "DNAT",
        "--to-destination",
        &creds_to,
    ]);
    lab.ok(&["guard", "br0"]);
    assert_eq!(creds(&lab.container).as_deref(), Some("tcp:51679"));
    lab.assert_audit(
        1,
        &[&format!(
            "CRITICAL [foreign-forward] table iptables-legacy nat chain PREROUTING rule handle 1 DNATs ip daddr {CREDS} tcp dport 80 on br0 to 127.0.0.1:51679 from any source"
        )],
    );
}

/// A veth `name` in the host with `host_addr`/28 and its peer in a new namespace at
/// `client_addr`, as a CNI plugin sets up a pod (the host side addressed, as the ptp
/// plugin does, so that a grant can publish on it).
fn pod_veth(lab: &Lab, name: &str, host_addr: &str, client_addr: &str) -> Netns {
    let pod = Netns::new(&format!("p{name}"));
    run(
        "ip",
        &[
            "-n",
            &lab.host.name,
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pod.name,
        ],
    );
    lab.host.ip(&format!("addr add {host_addr}/28 dev {name}"));
    lab.host.ip(&format!("link set {name} up"));
    lab.host
        .set_sysctl(&format!("net.ipv4.conf.{name}.rp_filter"), "0");
    pod.ip(&format!("addr add {client_addr}/28 dev eth0"));
    pod.ip("link set eth0 up");
    pod.ip(&format!("route add default via {host_addr}"));
    pod
}

fn rl(lab: &Lab, iface: &str) -> String {
    lab.host
        .sysctl(&format!("net.ipv4.conf.{iface}.route_localnet"))
}

/// The original route_localnet watch records for a veth a pattern matches is its
/// owner's: a CNI that writes its own `route_localnet=1` right after creating the veth
/// (Calico does), here once loopgate's guard for it is already in the table, keeps it
/// after the grant is revoked, and audit reports that interface truthfully as open
/// without loopgate's guard, with the remedy (`loopgate guard`), which is run. Control:
/// a veth whose owner writes nothing is closed again.
#[test]
fn a_cni_written_route_localnet_on_a_new_veth_survives_revoke() {
    let (lab, _services) = lab_with_services();
    let dir = lab.state_dir.join("policy");
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("pods.yaml");
    std::fs::write(
        &policy,
        "grants:\n  - interface: 'cali*'\n    allow: 203.0.113.0/24\n    port: 3306\n",
    )
    .unwrap();
    lab.ok(&["apply", dir.to_str().unwrap()]);
    let watch = Watch::start_with(&lab, &["--policy", dir.to_str().unwrap()]);
    let pod = pod_veth(&lab, "cali1", "203.0.113.1", "203.0.113.2");
    let plain = pod_veth(&lab, "cali2", "203.0.113.17", "203.0.113.18");
    time_until(|| NftTable::read_or_empty(&lab.host).guard_of("cali1").is_ok())
        .unwrap_or_else(|| panic!("watch guards cali1: {}", watch.log()));
    // The CNI's own write, right after (Calico: right after creating the veth).
    lab.host
        .set_sysctl("net.ipv4.conf.cali1.route_localnet", "1");
    for (ns, addr) in [(&pod, "203.0.113.1"), (&plain, "203.0.113.17")] {
        time_until(|| tcp_request(ns, sa(a(addr), 3306)).as_deref() == Some("tcp:3306"))
            .unwrap_or_else(|| panic!("served on {addr}: {}", watch.log()));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&lab.loopgate(&["audit", "--json"]).stdout).unwrap();
    let original = |name: &str| {
        json["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .map(|i| i["original"].clone())
    };
    assert_eq!(original("cali1"), Some(serde_json::json!(1)), "{json}");
    assert_eq!(original("cali2"), Some(serde_json::json!(0)), "{json}");

    // Revoke: the policy no longer has the grant.
    std::fs::write(&policy, "grants: []\n").unwrap();
    time_until(|| !NftTable::read_or_empty(&lab.host).names_in_any_guard_map("cali1"))
        .unwrap_or_else(|| panic!("watch revokes: {}", watch.log()));
    time_until(|| rl(&lab, "cali2") == "0").unwrap_or_else(|| {
        panic!(
            "control: loopgate's own opening is taken back: {}",
            watch.log()
        )
    });
    assert_eq!(
        rl(&lab, "cali1"),
        "1",
        "the CNI's route_localnet is kept: {}",
        watch.log()
    );
    lab.assert_audit(
        1,
        &[
            "CRITICAL [unguarded] route_localnet is effectively on for cali1 (route_localnet=1) without loopgate's guard",
            "loopgate guard cali1",
        ],
    );
    // The printed remedy.
    lab.ok(&["guard", "cali1"]);
    lab.assert_audit(
        0,
        &["info [guarded] cali1 is guarded (opened by another tool)"],
    );
}

/// A forward to 127/8 on an interface whose route_localnet was 0 never worked (the
/// kernel drops it as a martian). Exposing an unrelated grant there opens the interface
/// for the grant only: the forward stays dead, whatever form its target takes (a plain
/// address, a map audit cannot read), and audit says why. (Found by review: the guard
/// let every such forward through, and audit saw none whose target it could not read.)
#[test]
fn a_forward_that_never_worked_is_not_opened_by_an_unrelated_expose() {
    let (lab, _services) = lab_with_services();
    let _ssh = start_services(&lab.host, &[sa(LO, 2222)], &[]);
    let rules = "table ip other {\n\
         chain pre { type nat hook prerouting priority dstnat;\n\
           ip daddr 192.0.2.1 tcp dport 2222 dnat ip to tcp dport map { 2222 : 127.0.0.1 . 2222 }\n\
           ip daddr 192.0.2.1 tcp dport 2223 dnat to 127.0.0.1:2222; }\n\
         }\n";
    lab.host
        .exec(&["nft", "-f", &lab.policy("other.nft", rules)]);
    let (mapped, plain) = (sa(HOST_ADDR, 2222), sa(HOST_ADDR, 2223));
    assert_eq!(tcp_request(&lab.neighbour, mapped), None, "dead before");
    assert_eq!(tcp_request(&lab.neighbour, plain), None, "dead before");
    // Control: with br0 open by someone else, the same forwards work (so "dead" below
    // is the guard's doing, not the lab's).
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "1");
    assert_eq!(
        tcp_request(&lab.neighbour, mapped).as_deref(),
        Some("tcp:2222"),
        "control: the map forward works where br0 was open"
    );
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "0");

    lab.expose_default();
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306"),
        "the grant"
    );
    for (what, to) in [("map", mapped), ("plain", plain)] {
        assert_eq!(
            tcp_request(&lab.neighbour, to),
            None,
            "{what} forward, neighbour"
        );
        assert_eq!(
            tcp_request(&lab.container, to),
            None,
            "{what} forward, container"
        );
    }
    let report = lab.assert_audit(1, &["WARNING [foreign-forward]", "loopgate opened br0"]);
    assert!(!report.contains("CRITICAL"), "{report}");
}
