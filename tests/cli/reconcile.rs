//! Topic: the policy is the truth. Pending grants served when their interface appears,
//! interface patterns following veth devices as they come and go, listen addresses
//! resolved again, labelled addresses, and watch following the policy directory.

use super::*;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn a(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

fn rl(lab: &Lab, iface: &str) -> String {
    lab.host
        .sysctl(&format!("net.ipv4.conf.{iface}.route_localnet"))
}

/// Samples every 5 ms whether `iface` is open (route_localnet != 0) while loopgate's
/// raw guard map has no entry for it; returns (samples, unguarded) after `stop`.
fn sampler(
    host: Netns,
    iface: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u32, u32)> {
    std::thread::spawn(move || {
        let (mut samples, mut bad) = (0, 0);
        let guarded = |host: &Netns| {
            let out = std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &host.name,
                    "nft",
                    "list",
                    "map",
                    "ip",
                    "loopgate",
                    "raw_ifaces",
                ])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains(&format!("\"{iface}\""))
        };
        let path = format!("/proc/sys/net/ipv4/conf/{iface}/route_localnet");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            let before = guarded(&host);
            let open = host.enter({
                let path = path.clone();
                move || {
                    std::fs::read_to_string(&path)
                        .map(|v| v.trim() != "0")
                        .unwrap_or(false)
                }
            });
            let after = guarded(&host);
            samples += 1;
            if open && !before && !after {
                bad += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (samples, bad)
    })
}

/// A client namespace behind a new veth `name` on the host (host side `name`, with
/// `host_addr`/24), routed through it. Returns the client.
fn veth_client(lab: &Lab, name: &str, host_addr: &str, client_addr: &str) -> Netns {
    let client = Netns::new(&format!("c{name}"));
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
            &client.name,
        ],
    );
    lab.host.ip(&format!("addr add {host_addr}/28 dev {name}"));
    lab.host.ip(&format!("link set {name} up"));
    lab.host
        .set_sysctl(&format!("net.ipv4.conf.{name}.rp_filter"), "0");
    client.ip(&format!("addr add {client_addr}/28 dev eth0"));
    client.ip("link set eth0 up");
    client.ip(&format!("route add default via {host_addr}"));
    client
}

#[test]
fn a_grant_applied_before_its_interface_exists_is_served_when_it_appears_guard_first() {
    let (lab, _services) = lab_with_services();
    let policy = lab.policy(
        "late.yaml",
        "grants:\n  - interface: br9\n    allow: 198.51.100.0/24\n    port: 3306\n",
    );
    let out = lab.loopgate(&["apply", &policy]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("is pending"), "{}", stderr(&out));
    let (code, text) = lab.audit();
    assert_eq!(code, Some(0), "pending is info: {text}");
    assert!(
        text.contains("info [pending]") && text.contains("br9"),
        "{text}"
    );
    let plan = lab.ok(&["plan", &policy]);
    assert!(plan.contains("# pending:"), "{plan}");

    let watch = Watch::start(&lab);
    let stop = Arc::new(AtomicBool::new(false));
    let samples = sampler(lab.host.handle(), "br9".into(), stop.clone());
    let client = lab.add_bridge_with_client("br9", a("198.51.100.1"), a("198.51.100.10"));
    let took = time_until(|| rl(&lab, "br9") == "1")
        .unwrap_or_else(|| panic!("watch opens br9: {}", watch.log()));
    // Let the sampler see the steady state too.
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    let (n, bad) = samples.join().unwrap();
    println!(
        "br9 served {} ms after it appeared; {n} samples, {bad} open without guard",
        took.as_millis()
    );
    assert_eq!(bad, 0, "{}", watch.log());
    assert_eq!(
        tcp_request(&client, sa(a("198.51.100.1"), 3306)).as_deref(),
        Some("tcp:3306")
    );
    Lab::route_loopback_via(&client, a("198.51.100.1"));
    let before = passive_opens(&lab.host);
    fire_tcp(&client, sa(LO, 3307));
    assert_eq!(passive_opens(&lab.host), before, "the guard stands");
    lab.assert_audit(0, &["br9: route_localnet=1 effective=1 open, guarded"]);
}

#[test]
fn a_pattern_serves_each_matching_veth_while_it_exists_and_closes_it_when_gone() {
    let (lab, _services) = lab_with_services();
    let out = lab.loopgate(&[
        "expose",
        "lgv*",
        "--allow",
        "203.0.113.0/24",
        "--port",
        "3306",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("pending"), "{}", stderr(&out));
    let watch = Watch::start(&lab);
    let mut clients = Vec::new();
    for i in 1..=3 {
        let name = format!("lgv{i}");
        let client = veth_client(
            &lab,
            &name,
            &format!("203.0.113.{}", 16 * i + 1),
            &format!("203.0.113.{}", 16 * i + 2),
        );
        time_until(|| rl(&lab, &name) == "1")
            .unwrap_or_else(|| panic!("watch opens {name}: {}", watch.log()));
        assert_eq!(
            tcp_request(&client, sa(a(&format!("203.0.113.{}", 16 * i + 1)), 3306)).as_deref(),
            Some("tcp:3306"),
            "{name}"
        );
        clients.push((name, client));
    }
    // Another name does not match; lo never does.
    assert_eq!(rl(&lab, "br0"), "0");
    // The second veth goes away: its grant goes with it, the others stay.
    lab.host.ip("link del lgv2");
    time_until(|| {
        !stdout(
            &lab.host
                .exec(&["nft", "list", "map", "ip", "loopgate", "raw_ifaces"]),
        )
        .contains("\"lgv2\"")
    })
    .unwrap_or_else(|| panic!("lgv2's grant removed: {}", watch.log()));
    assert_eq!(
        tcp_request(&clients[2].1, sa(a("203.0.113.49"), 3306)).as_deref(),
        Some("tcp:3306")
    );
    // Back with another address: served again, on the new address.
    let again = veth_client(&lab, "lgv2", "203.0.113.81", "203.0.113.82");
    time_until(|| rl(&lab, "lgv2") == "1")
        .unwrap_or_else(|| panic!("watch reopens lgv2: {}", watch.log()));
    time_until(|| tcp_request(&again, sa(a("203.0.113.81"), 3306)).as_deref() == Some("tcp:3306"))
        .unwrap_or_else(|| panic!("served on the new address: {}", watch.log()));
    // Revoking the pattern closes every match.
    lab.ok(&["revoke", "lgv*", "--all"]);
    for name in ["lgv1", "lgv2", "lgv3"] {
        assert_eq!(rl(&lab, name), "0", "{name}");
    }
}

#[test]
fn a_defaulted_listen_address_follows_a_recreated_interface_and_a_pinned_one_stays() {
    let (lab, _services) = lab_with_services();
    let client = lab.add_bridge_with_client("br9", a("198.51.100.1"), a("198.51.100.10"));
    lab.ok(&[
        "expose",
        "br9",
        "--allow",
        "198.51.100.0/24",
        "--port",
        "3306",
    ]);
    let watch = Watch::start(&lab);
    // The runtime re-creates br9 with another address.
    lab.host.ip("link del br9");
    lab.host.ip("link add br9 type bridge");
    lab.host.ip("addr add 198.51.100.2/24 dev br9");
    lab.host.ip("link set vbr9 master br9");
    lab.host.ip("link set br9 up");
    lab.host.set_sysctl("net.ipv4.conf.br9.rp_filter", "0");
    client.ip("route replace default via 198.51.100.2");
    time_until(|| tcp_request(&client, sa(a("198.51.100.2"), 3306)).as_deref() == Some("tcp:3306"))
        .unwrap_or_else(|| panic!("served on the new address: {}", watch.log()));
    assert_eq!(tcp_request(&client, sa(a("198.51.100.1"), 3306)), None);
    // A pinned address that is gone is pending, not moved.
    lab.ok(&[
        "expose",
        "br9",
        "--allow",
        "198.51.100.0/24",
        "--port",
        "3307",
        "--listen",
        "198.51.100.2",
    ]);
    lab.host.ip("addr del 198.51.100.2/24 dev br9");
    lab.host.ip("addr add 198.51.100.3/24 dev br9");
    time_until(|| {
        lab.audit()
            .1
            .contains("198.51.100.2 is not an address of br9 now")
    })
    .unwrap_or_else(|| panic!("the pinned grant is pending: {}", lab.audit().1));
}

#[test]
fn an_address_with_a_label_belongs_to_its_device() {
    let (lab, _services) = lab_with_services();
    lab.host.ip("addr add 192.0.2.77/24 dev br0 label br0:pub");
    lab.ok(&[
        "expose",
        "br0",
        "--allow",
        ALLOWED,
        "--port",
        "3306",
        "--listen",
        "192.0.2.77",
    ]);
    assert_eq!(
        tcp_request(&lab.container, sa(a("192.0.2.77"), 3306)).as_deref(),
        Some("tcp:3306")
    );
    // A label is not an interface.
    let out = lab.loopgate(&["expose", "br0:pub", "--allow", ALLOWED, "--port", "3307"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn watch_follows_the_policy_directory_and_keeps_grants_made_on_the_command_line() {
    let (lab, _services) = lab_with_services();
    let dir = lab.state_dir.join("policy");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("a.yaml"),
        "grants:\n  - interface: br0\n    allow: 192.0.2.0/25\n    port: 3306\n",
    )
    .unwrap();
    lab.ok(&["apply", dir.to_str().unwrap()]);
    lab.ok(&[
        "expose", "br0", "--allow", ALLOWED, "--port", "5353", "--proto", "udp",
    ]);
    let log = lab.state_dir.join("watch-policy.log");
    let mut child = std::process::Command::new(BIN)
        .args([
            "--netns",
            &lab.host.name,
            "watch",
            "--policy",
            dir.to_str().unwrap(),
        ])
        .env("LOOPGATE_STATE_DIR", &lab.state_dir)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    time_until(|| read_log().contains("started")).expect("watch started");
    // The admin adds a port to the policy and removes the old one.
    std::fs::write(
        dir.join("a.yaml"),
        "grants:\n  - interface: br0\n    allow: 192.0.2.0/25\n    port: [3307]\n",
    )
    .unwrap();
    let served = |port| tcp_request(&lab.container, sa(HOST_ADDR, port)).is_some();
    let ok = time_until(|| !served(3306) && served(3307));
    let _ = child.kill();
    let _ = child.wait();
    ok.unwrap_or_else(|| panic!("watch applied the changed policy: {}", read_log()));
    assert_eq!(
        udp_request(&lab.container, sa(HOST_ADDR, 5353)).as_deref(),
        Some("udp:5353"),
        "the command-line grant stays"
    );
    assert!(!read_log().contains("missing or altered"), "{}", read_log());
}
