//! Topic: loopgate's grants against the real runtimes of tests/support/runtimes.rs
//! (issue 12, "Tests against the real runtimes"). Real dockerd and podman run inside the
//! lab's host namespace; containers built from the lab image send real traffic to the
//! lab's services on the host's 127.0.0.1. Every check that something is blocked has a
//! control that shows the same traffic getting through without loopgate (or before it).
//!
//! loopgate runs `docker` from PATH with `DOCKER_HOST` (and a private `DOCKER_CONFIG`)
//! pointing at the lab's dockerd; when it calls podman it runs inside the podman
//! holder's namespaces (`Podman::command`), without `--netns`: the holder's network
//! namespace is the lab's host, so both ways share the lab's state directory.

use super::*;
use std::net::Ipv4Addr;
use std::process::Output;
use std::time::{Duration, Instant};
use support::runtimes::{self, Dockerd, DockerdOpts, Podman, RootSnapshot, DOCKER0_ADDR};

/// docker0's subnet (the harness's `--bip`).
const DOCKER0_NET: &str = "198.51.100.0/26";

/// What loopgate needs to reach the lab's dockerd with the `docker` on PATH.
fn docker_env(d: &Dockerd) -> Vec<(String, String)> {
    let mut env = d.client_env();
    env.push((
        "DOCKER_CONFIG".into(),
        d.dir.join("cli").display().to_string(),
    ));
    env
}

/// loopgate in the lab's host namespace, with the dockerd's client environment.
fn lg(lab: &Lab, d: &Dockerd, args: &[&str]) -> Output {
    let env = docker_env(d);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    lab.loopgate_env(args, &env)
}

#[track_caller]
fn lg_ok(lab: &Lab, d: &Dockerd, args: &[&str]) -> String {
    let out = lg(lab, d, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "loopgate {args:?}: stdout {} stderr {}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// loopgate inside the podman holder (it runs `podman network inspect` there).
fn lg_pod(lab: &Lab, p: &Podman, args: &[&str]) -> Output {
    p.command(BIN)
        .args(args)
        .env("LOOPGATE_STATE_DIR", &lab.state_dir)
        .env_remove("LOOPGATE_FAILPOINT")
        .output()
        .expect("running loopgate in the podman holder")
}

#[track_caller]
fn lg_pod_ok(lab: &Lab, p: &Podman, args: &[&str]) -> String {
    let out = lg_pod(lab, p, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "loopgate {args:?} (in the podman holder): stdout {} stderr {}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn rl(lab: &Lab, iface: &str) -> String {
    lab.host
        .sysctl(&format!("net.ipv4.conf.{iface}.route_localnet"))
}

fn ifindex(lab: &Lab, iface: &str) -> String {
    stdout(
        &lab.host
            .exec(&["cat", &format!("/sys/class/net/{iface}/ifindex")]),
    )
    .trim()
    .to_string()
}

/// Whether loopgate guards `iface` (every guard map and chain, as the sampler checks).
fn guarded(lab: &Lab, iface: &str) -> bool {
    NftTable::read_or_empty(&lab.host).guard_of(iface).is_ok()
}

/// Whether any of loopgate's guard maps still names `iface`.
fn named_in_a_guard_map(lab: &Lab, iface: &str) -> bool {
    NftTable::read_or_empty(&lab.host).names_in_any_guard_map(iface)
}

/// The reply a container gets from `lab-req PROTO HOST PORT` (None: no answer in 2 s).
fn req(exec: &dyn Fn(&[&str]) -> Output, proto: &str, host: &str, port: u16) -> Option<String> {
    let out = exec(&["lab-req", proto, host, &port.to_string()]);
    out.status
        .success()
        .then(|| stdout(&out).trim().to_string())
}

/// Asks until the answer is `want` or `limit` passes; returns how long it took.
fn until_answer(
    exec: &dyn Fn(&[&str]) -> Output,
    proto: &str,
    host: &str,
    port: u16,
    want: &str,
    limit: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if req(exec, proto, host, port).as_deref() == Some(want) {
            return Some(start.elapsed());
        }
        // The polling interval of this bounded wait.
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// Polls `cond` every 50 ms for up to `limit`.
fn until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Some(start.elapsed());
        }
        // The polling interval of this bounded wait.
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn docker_bridges(name: &str) -> bool {
    name == "docker0" || name.starts_with("br-")
}

fn podman_bridges(name: &str) -> bool {
    name.starts_with("podman")
}

/// A python program for the lab image: sends 3 hand-made Ethernet frames out of eth0
/// through an AF_PACKET socket (CAP_NET_RAW, which Docker gives by default) to
/// `argv[1]` (a MAC address) carrying a UDP datagram from `argv[2]`:41234 to
/// 127.0.0.1:`argv[3]` (the CVE-2020-8558 technique).
const RAW_FRAME: &str = r#"
import socket, struct, sys
dst_mac = bytes.fromhex(sys.argv[1].replace(':', ''))
src_ip, dport = sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(('eth0', 0))
src_mac = s.getsockname()[4]
def csum(b):
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while t >> 16:
        t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
payload = b'raw-frame\n'
udp = struct.pack('!HHHH', 41234, dport, 8 + len(payload), 0) + payload
ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                 socket.inet_aton(src_ip), socket.inet_aton('127.0.0.1'))
ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
for _ in range(3):
    s.send(dst_mac + src_mac + b'\x08\x00' + ip + udp)
print('sent')
"#;

/// Datagrams the lab's UDP service on 127.0.0.1:`port` got from `from`:41234 (the raw
/// frames' source).
fn raw_frames_seen(services: &Services, port: u16, from: Ipv4Addr) -> usize {
    services
        .udp_seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, src)| *p == port && *src == sa(from, 41234).into())
        .count()
}

/// The container sends the raw frames to docker0's MAC; returns how many of them
/// the service on 127.0.0.1:`port` received (after a settling pause).
fn send_raw_frames(
    lab: &Lab,
    d: &Dockerd,
    services: &Services,
    container: &str,
    port: u16,
) -> usize {
    let mac = stdout(&lab.host.exec(&["cat", "/sys/class/net/docker0/address"]))
        .trim()
        .to_string();
    let ip = d.container_ip(container, "bridge");
    let before = raw_frames_seen(services, port, ip);
    let out = d.exec(
        container,
        &[
            "python3",
            "-c",
            RAW_FRAME,
            &mac,
            &ip.to_string(),
            &port.to_string(),
        ],
    );
    assert_eq!(stdout(&out).trim(), "sent", "{out:?}");
    // The service thread polls every 20 ms; give the frames time to arrive.
    std::thread::sleep(Duration::from_millis(300));
    raw_frames_seen(services, port, ip) - before
}

/// Scenarios 1-5 of issue 12 on one dockerd (userland-proxy on, Docker's default, so
/// Docker itself never raises route_localnet): the default bridge; a compose-style
/// network by name; host-gateway from it; `network rm` + `create` with watch running;
/// dockerd restart with watch running.
#[test]
fn docker_networks_by_name_follow_rm_create_and_dockerd_restart_guard_first() {
    let before = RootSnapshot::take();
    let (lab, _services) = lab_with_services();
    let t = Instant::now();
    let mut docker = Dockerd::start(&lab.host, DockerdOpts::default());
    runtimes::report("dockerd start + image import", t.elapsed());
    let gw0 = DOCKER0_ADDR.to_string();

    // 1. The default bridge, by interface name.
    let t = Instant::now();
    docker.run_with("c0", &["--restart", "always"], &["sleep", "3600"]);
    let c0 = |args: &[&str]| docker.exec("c0", args);
    assert_eq!(
        req(&c0, "tcp", &gw0, 3306),
        None,
        "control: nothing answers at docker0's address before loopgate"
    );
    assert_eq!(rl(&lab, "docker0"), "0");
    lg_ok(
        &lab,
        &docker,
        &[
            "expose",
            "docker0",
            "--allow",
            DOCKER0_NET,
            "--port",
            "3306",
        ],
    );
    assert_eq!(req(&c0, "tcp", &gw0, 3306).as_deref(), Some("tcp:3306"));
    assert_eq!(
        req(&c0, "tcp", &gw0, 3307),
        None,
        "an unpublished port stays closed"
    );
    runtimes::report("1. default bridge", t.elapsed());

    // 2. A compose-style user network, selected by name: no --allow, no --listen.
    let t = Instant::now();
    docker.docker_ok(&["network", "create", "lgnet"]);
    let bridge = docker.bridge_of("lgnet");
    let (subnet, gw) = docker.network_ipam("lgnet")[0].clone();
    docker.run_with(
        "c1",
        &[
            "--network",
            "lgnet",
            "--add-host",
            "host.docker.internal:host-gateway",
        ],
        &["sleep", "3600"],
    );
    let c1 = |args: &[&str]| docker.exec("c1", args);
    assert_eq!(
        req(&c1, "tcp", &gw, 3306),
        None,
        "control: lgnet's gateway answers nothing before loopgate"
    );
    let out = lg_ok(
        &lab,
        &docker,
        &["expose", "--docker-network", "lgnet", "--port", "3306"],
    );
    assert!(out.contains(&format!("{gw}:3306")), "{out}");
    assert_eq!(req(&c1, "tcp", &gw, 3306).as_deref(), Some("tcp:3306"));
    let nft = stdout(&lab.host.exec(&["nft", "list", "table", "ip", "loopgate"]));
    assert!(
        nft.contains(&subnet) && nft.contains(&format!("\"{bridge}\"")),
        "the grant allows {subnet} on {bridge}:\n{nft}"
    );
    let audit = lg(&lab, &docker, &["audit"]);
    assert_eq!(audit.status.code(), Some(0), "audit:\n{}", stdout(&audit));
    runtimes::report("2. user network by name", t.elapsed());

    // 3. host-gateway from the user network: docker0's address, arriving on br-<id>.
    let t = Instant::now();
    let hgw = "host.docker.internal";
    assert_eq!(
        req(&c1, "tcp", hgw, 3307),
        None,
        "control: host-gateway:3307 answers nothing before the grant"
    );
    let out = lg_ok(
        &lab,
        &docker,
        &[
            "expose",
            "--docker-network",
            "lgnet",
            "--listen",
            "host-gateway",
            "--port",
            "3307",
        ],
    );
    assert!(
        out.contains(&format!("{DOCKER0_ADDR}:3307")),
        "--listen host-gateway is docker0's address, not lgnet's gateway {gw}:\n{out}"
    );
    assert_eq!(
        req(&c1, "tcp", hgw, 3307).as_deref(),
        Some("tcp:3307"),
        "host-gateway from lgnet; loopgate's table:\n{}",
        stdout(&lab.host.exec(&["nft", "list", "table", "ip", "loopgate"]))
    );
    // The ingress interface scopes it: the default bridge's container does not get
    // 3307 at the same address, and lgnet does not get docker0's 3306 grant.
    assert_eq!(req(&c0, "tcp", &gw0, 3307), None);
    assert_eq!(req(&c1, "tcp", hgw, 3306), None);
    runtimes::report("3. host-gateway from a user network", t.elapsed());

    // 4. `docker network rm` + `create` with watch running: access returns by itself,
    // and no Docker bridge is ever open without loopgate's guard.
    let t = Instant::now();
    let watch = Watch::start_env(&lab, &["--no-hold"], &docker_env(&docker));
    let sampler = GuardSampler::start_watching(&lab.host, docker_bridges);
    docker.docker_ok(&["rm", "-f", "c1"]);
    docker.docker_ok(&["network", "rm", "lgnet"]);
    docker.docker_ok(&["network", "create", "lgnet"]);
    let bridge2 = docker.bridge_of("lgnet");
    assert_ne!(bridge2, bridge, "a new network, a new bridge");
    let (_, gw2) = docker.network_ipam("lgnet")[0].clone();
    docker.run_with(
        "c1b",
        &[
            "--restart",
            "always",
            "--network",
            "lgnet",
            "--add-host",
            "host.docker.internal:host-gateway",
        ],
        &["sleep", "3600"],
    );
    let c1b = |args: &[&str]| docker.exec("c1b", args);
    let back = until_answer(&c1b, "tcp", &gw2, 3306, "tcp:3306", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("access to {gw2}:3306 did not return: {}", watch.log()));
    let back_hg = until_answer(&c1b, "tcp", hgw, 3307, "tcp:3307", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("host-gateway:3307 did not return: {}", watch.log()));
    std::thread::sleep(Duration::from_millis(100));
    let Sampled {
        samples: n,
        violations: bad,
    } = sampler.finish();
    println!(
        "rm+create: {bridge} -> {bridge2} (gateway {gw} -> {gw2}); access back {back:?} \
         after the container started, host-gateway {back_hg:?} later; {n} samples, \
         unguarded: {bad:?}"
    );
    assert!(n > 20, "too few samples: {n}");
    assert!(
        bad.is_empty(),
        "open without guard: {bad:?}\n{}",
        watch.log()
    );
    assert_eq!(rl(&lab, &bridge2), "1");
    let audit = lg(&lab, &docker, &["audit"]);
    assert_eq!(audit.status.code(), Some(0), "audit:\n{}", stdout(&audit));
    runtimes::report("4. network rm + create with watch", t.elapsed());

    // 5. dockerd restart: docker0 is deleted and re-created at route_localnet 0; watch
    // serves the grant on the new device, guard first.
    let t = Instant::now();
    let index = ifindex(&lab, "docker0");
    let sampler = GuardSampler::start_watching(&lab.host, docker_bridges);
    docker.restart();
    assert_ne!(ifindex(&lab, "docker0"), index, "docker0 was re-created");
    let c0 = |args: &[&str]| docker.exec("c0", args);
    let back = until_answer(&c0, "tcp", &gw0, 3306, "tcp:3306", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("docker0's grant did not return: {}", watch.log()));
    let c1b = |args: &[&str]| docker.exec("c1b", args);
    let back_net = until_answer(&c1b, "tcp", &gw2, 3306, "tcp:3306", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("lgnet's grant did not return: {}", watch.log()));
    std::thread::sleep(Duration::from_millis(100));
    let Sampled {
        samples: n,
        violations: bad,
    } = sampler.finish();
    println!(
        "dockerd restart: docker0 {index} -> {}; back {back:?} / {back_net:?} after the \
         restart; {n} samples, unguarded: {bad:?}",
        ifindex(&lab, "docker0")
    );
    assert!(n > 20, "too few samples: {n}");
    assert!(
        bad.is_empty(),
        "open without guard: {bad:?}\n{}",
        watch.log()
    );
    assert_eq!(rl(&lab, "docker0"), "1");
    runtimes::report("5. dockerd restart with watch", t.elapsed());
    drop(watch);

    drop(docker);
    drop(lab);
    before.assert_unchanged();
}

/// Scenarios 6 and 8 on a dockerd with userland-proxy=false (Docker sets
/// route_localnet=1 on docker0 itself for the host's 127.0.0.1:PORT hairpin): the
/// hairpin keeps working while loopgate guards docker0 (a grant, then `guard`), Docker's
/// 1 survives revoke on the same device, and a raw frame to 127.0.0.1 from a
/// default-capability container reaches the host's service without loopgate's guard
/// (the control) and not while a grant or guard exists.
#[test]
fn docker_hairpin_and_raw_frames_with_userland_proxy_off() {
    let before = RootSnapshot::take();
    let (lab, services) = lab_with_services();
    let t = Instant::now();
    let docker = Dockerd::start(
        &lab.host,
        DockerdOpts {
            userland_proxy: false,
            ..DockerdOpts::default()
        },
    );
    runtimes::report("dockerd (userland-proxy=false) start + import", t.elapsed());
    let t = Instant::now();
    docker.run_with(
        "pub",
        &["-p", "127.0.0.1:9090:8080"],
        &["lab-serve", "tcp", "8080"],
    );
    docker.run("raw", None, &["sleep", "3600"]);
    let hairpin = || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(r) = tcp_request(&lab.host, sa(LO, 9090)) {
                return Some(r);
            }
            // The polling interval of this bounded wait (the server may be starting).
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    };
    let via_docker0 = Some(format!("tcp:8080 from {DOCKER0_ADDR}"));
    assert_eq!(hairpin(), via_docker0, "Docker's hairpin, before loopgate");
    assert_eq!(rl(&lab, "docker0"), "1", "Docker's own route_localnet");
    let index = ifindex(&lab, "docker0");
    let raw_ip = docker.container_ip("raw", "bridge");

    // 8, control: without loopgate's guard, Docker's route_localnet=1 lets the frame
    // through to the service on 127.0.0.1.
    let got = send_raw_frames(&lab, &docker, &services, "raw", 5353);
    assert!(
        got > 0,
        "control: the raw frame to 127.0.0.1:5353 should reach the service without \
         loopgate's guard (Docker's route_localnet=1)"
    );
    runtimes::report("8. control (no loopgate)", t.elapsed());

    // 8 and 6 with a grant on docker0: the container reaches the published port at
    // docker0's address, the raw frame gets nothing (also to a published port), and
    // Docker's hairpin still works.
    let t = Instant::now();
    lg_ok(
        &lab,
        &docker,
        &[
            "expose",
            "docker0",
            "--allow",
            DOCKER0_NET,
            "--port",
            "5353",
            "--proto",
            "udp",
        ],
    );
    let raw = |args: &[&str]| docker.exec("raw", args);
    assert_eq!(
        req(&raw, "udp", &DOCKER0_ADDR.to_string(), 5353).as_deref(),
        Some("udp:5353")
    );
    assert_eq!(
        send_raw_frames(&lab, &docker, &services, "raw", 5353),
        0,
        "the raw frame to 127.0.0.1:5353 got through while a grant guards docker0"
    );
    assert_eq!(send_raw_frames(&lab, &docker, &services, "raw", 5354), 0);
    assert_eq!(
        hairpin(),
        via_docker0,
        "the hairpin, with a grant on docker0"
    );
    runtimes::report("6/8. grant on docker0", t.elapsed());

    // 6: revoke leaves Docker's 1 on the same device; audit reports the open,
    // unguarded docker0.
    let t = Instant::now();
    lg_ok(&lab, &docker, &["revoke", "docker0", "--all"]);
    assert_eq!(ifindex(&lab, "docker0"), index, "the same docker0");
    assert_eq!(
        rl(&lab, "docker0"),
        "1",
        "Docker's route_localnet=1 was kept"
    );
    assert!(!named_in_a_guard_map(&lab, "docker0"));
    assert_eq!(hairpin(), via_docker0, "the hairpin, after revoke");
    let audit = lg(&lab, &docker, &["audit"]);
    assert_eq!(audit.status.code(), Some(1), "{}", stdout(&audit));
    assert!(
        stdout(&audit).contains("docker0: route_localnet=1 effective=1 OPEN, UNGUARDED")
            && stdout(&audit).contains("[unguarded]"),
        "audit reports docker0 open without guard:\n{}",
        stdout(&audit)
    );
    assert!(
        send_raw_frames(&lab, &docker, &services, "raw", 5353) > 0,
        "control again: without the guard the frame gets through"
    );

    // 6 and 8 with `loopgate guard docker0`: nothing published, Docker's 1 untouched.
    lg_ok(&lab, &docker, &["guard", "docker0"]);
    assert_eq!(rl(&lab, "docker0"), "1");
    assert_eq!(send_raw_frames(&lab, &docker, &services, "raw", 5353), 0);
    assert_eq!(hairpin(), via_docker0, "the hairpin, with `guard docker0`");
    lg_ok(&lab, &docker, &["unguard", "docker0"]);
    assert_eq!(rl(&lab, "docker0"), "1");
    assert_eq!(ifindex(&lab, "docker0"), index);
    println!("raw frames from {raw_ip}: blocked under grant and guard, through without");
    runtimes::report("6/8. revoke, guard, unguard", t.elapsed());

    drop(docker);
    drop(lab);
    before.assert_unchanged();
}

/// Scenario 7: a podman network with a port mapping (netavark sets route_localnet=1 on
/// its bridge); a grant by `--podman-network`; the last container stops (netavark
/// deletes the bridge) and a new one starts (re-created) while watch runs; revoke
/// keeps netavark's 1. No sampled moment has the bridge open without loopgate's guard
/// while the grant exists.
#[test]
fn podman_network_grant_follows_netavark_recreating_the_bridge() {
    let before = RootSnapshot::take();
    let (lab, _services) = lab_with_services();
    let t = Instant::now();
    let podman = Podman::start(&lab.host);
    runtimes::report("podman holder start + import", t.elapsed());
    let t = Instant::now();
    podman.podman_ok(&["network", "create", "lgpod"]);
    podman.run_with(
        "web",
        &["--network", "lgpod", "-p", "8080:8080"],
        &["lab-serve", "tcp", "8080"],
    );
    let bridge = podman.bridge_of("lgpod");
    let gw = podman.podman_ok(&[
        "network",
        "inspect",
        "--format",
        "{{range .Subnets}}{{.Gateway}}{{end}}",
        "lgpod",
    ]);
    assert_eq!(rl(&lab, &bridge), "1", "netavark's route_localnet");
    let web = |args: &[&str]| podman.exec("web", args);
    assert_eq!(
        req(&web, "tcp", &gw, 3306),
        None,
        "control: the gateway answers nothing on 3306 before loopgate"
    );
    let mapping = || {
        until(Duration::from_secs(10), || {
            tcp_request(&lab.container, sa(HOST_ADDR, 8080)).is_some()
        })
        .is_some()
    };
    assert!(mapping(), "podman's port mapping answers");

    let out = lg_pod_ok(
        &lab,
        &podman,
        &["expose", "--podman-network", "lgpod", "--port", "3306"],
    );
    assert!(out.contains(&format!("{gw}:3306")), "{out}");
    assert_eq!(req(&web, "tcp", &gw, 3306).as_deref(), Some("tcp:3306"));
    assert!(guarded(&lab, &bridge));
    assert!(mapping(), "the port mapping, with the grant");
    runtimes::report("7. podman grant by network name", t.elapsed());

    // netavark deletes the bridge with its last container and re-creates it with the
    // next one; watch (run inside the holder: it calls podman) serves the grant again.
    let t = Instant::now();
    let mut watch_cmd = podman.command(BIN);
    watch_cmd.args(["watch", "--no-hold"]);
    let mut watch = Watch::spawn(&lab, watch_cmd);
    let sampler = GuardSampler::start_watching(&lab.host, podman_bridges);
    let old_index = ifindex(&lab, &bridge);
    podman.podman_ok(&["stop", "web"]);
    assert!(
        lab.host
            .exec_status(&["ip", "link", "show", &bridge])
            .status
            .code()
            != Some(0),
        "netavark deleted {bridge}"
    );
    // While the bridge is gone the grant still stands (pending): its guard should stay,
    // as it does for a grant on a named interface ("its guard stays in place"), so
    // that netavark's re-created bridge, which netavark opens itself, is guarded from
    // its first moment.
    // Watched for half a second (watch reacts to the deletion within milliseconds):
    // the guard must be there at every look, not merely at the last one.
    let guard_kept_while_gone = (0..25).all(|_| {
        std::thread::sleep(Duration::from_millis(20));
        guarded(&lab, &bridge)
    });
    podman.run_with(
        "web2",
        &["--network", "lgpod", "-p", "8080:8080"],
        &["lab-serve", "tcp", "8080"],
    );
    let new_index = ifindex(&lab, &bridge);
    assert_ne!(new_index, old_index, "{bridge} was re-created");
    let web2 = |args: &[&str]| podman.exec("web2", args);
    let back = until_answer(&web2, "tcp", &gw, 3306, "tcp:3306", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("access did not return: {}", watch.log()));
    std::thread::sleep(Duration::from_millis(100));
    let Sampled {
        samples: n,
        violations: bad,
    } = sampler.finish();
    println!(
        "netavark re-created {bridge} ({old_index} -> {new_index}); access back {back:?} \
         after the container started; {n} samples, unguarded: {bad:?}"
    );
    assert!(n > 20, "too few samples: {n}");
    // Checked at the end, so that revoke below is exercised too: failures found here
    // are product bugs (see the messages).
    let mut failures = Vec::new();
    if !bad.is_empty() || !guard_kept_while_gone {
        failures.push(format!(
            "{bridge} was open (netavark's 1) without loopgate's guard while the grant \
             stood: {bad:?}; guard kept while the bridge was gone: {guard_kept_while_gone} \
             (a grant on a named interface keeps it)"
        ));
    }
    assert!(mapping(), "the port mapping after re-creation");
    // SIGTERM reaches watch through `timeout` (its process group), which may exit
    // before watch does: watch's own word is its log.
    watch.stop();
    assert!(
        time_until(|| watch.log().contains("loopgate watch: stopped")).is_some(),
        "{}",
        watch.log()
    );
    // No other process touched loopgate's table: watch, running in the holder's PID
    // namespace, must recognise its own commits.
    if watch
        .log()
        .contains("another process changed table ip loopgate")
    {
        failures.push(
            "watch took its own commits for another process's and closed the bridge \
             (NFTA_GEN_PROC_PID is the pid in the initial PID namespace, loopgate compares \
             it with its pid in its own PID namespace)"
                .into(),
        );
    }
    let watch_log = watch.log();
    runtimes::report("7. netavark re-creates the bridge with watch", t.elapsed());

    // revoke: netavark's 1 stays on the same device instance; the guard goes.
    let t = Instant::now();
    lg_pod_ok(
        &lab,
        &podman,
        &["revoke", "--podman-network", "lgpod", "--all"],
    );
    assert_eq!(ifindex(&lab, &bridge), new_index, "the same device");
    assert_eq!(
        rl(&lab, &bridge),
        "1",
        "netavark's route_localnet=1 was kept"
    );
    assert!(!named_in_a_guard_map(&lab, &bridge));
    assert_eq!(req(&web2, "tcp", &gw, 3306), None, "revoked");
    assert!(mapping(), "the port mapping after revoke");
    let audit = lg_pod(&lab, &podman, &["audit"]);
    println!("audit after revoke:\n{}", stdout(&audit));
    assert_eq!(audit.status.code(), Some(1), "{}", stdout(&audit));
    assert!(
        stdout(&audit).contains(&format!(
            "{bridge}: route_localnet=1 effective=1 OPEN, UNGUARDED"
        )),
        "audit reports {bridge} open without guard:\n{}",
        stdout(&audit)
    );
    runtimes::report("7. revoke", t.elapsed());

    drop(podman);
    drop(lab);
    before.assert_unchanged();
    assert!(
        failures.is_empty(),
        "{}\nwatch's log:\n{watch_log}",
        failures.join("\n")
    );
}
