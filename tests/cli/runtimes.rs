//! Topic: the lab for real container runtimes (tests/support/runtimes.rs). Smoke tests
//! that prove the harness: Debian's dockerd and rootful podman run inside a lab host
//! namespace, containers built from the local lab image answer real traffic, and the
//! machine's own namespace, files and cgroups are left as they were, also when a test
//! panics. They never skip: a missing runtime fails them (scripts/install-deps.sh
//! installs the runtimes).

use super::*;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};
use support::runtimes::{self, podman_cli, Dockerd, DockerdOpts, Podman, RootSnapshot};

/// Asks `to` from inside `ns` until it answers (the container's server may still be
/// starting) or 10 s pass.
fn answer(ns: &Netns, to: std::net::SocketAddrV4) -> Option<String> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Some(reply) = tcp_request(ns, to) {
            return Some(reply);
        }
        // The polling interval of this bounded wait.
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn ipv4_of(ns: &Netns, dev: &str) -> String {
    stdout(&ns.exec(&["ip", "-o", "-4", "addr", "show", "dev", dev]))
}

/// Inode of a network namespace, to find the processes still in it.
fn netns_inode(path: &str) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
}

/// PIDs of the processes whose network namespace is `ino`.
fn processes_in(ino: u64) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(m) = std::fs::metadata(format!("/proc/{name}/ns/net")) {
            if std::os::unix::fs::MetadataExt::ino(&m) == ino {
                let comm =
                    std::fs::read_to_string(format!("/proc/{name}/comm")).unwrap_or_default();
                found.push(format!("{name} {}", comm.trim()));
            }
        }
    }
    found
}

/// Cgroup folders named `name` anywhere in the first levels of the hierarchies.
fn cgroups_named(name: &str) -> Vec<String> {
    fn walk(dir: &Path, name: &str, depth: u32, found: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name().to_string_lossy() == name {
                found.push(e.path().display().to_string());
            } else if depth > 0 {
                walk(&e.path(), name, depth - 1, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), name, 3, &mut found);
    found
}

/// (a) dockerd in the lab host namespace: docker0 there with the chosen address,
/// Docker's own rules there, and a container on the default bridge answering TCP and
/// UDP from the host namespace.
#[test]
fn dockerd_default_bridge_answers_from_the_lab_host() {
    let before = RootSnapshot::take();
    let t = Instant::now();
    runtimes::lab_image();
    runtimes::report("lab image ready (built or cached)", t.elapsed());
    let lab = Lab::new();
    let t = Instant::now();
    let docker = Dockerd::start(&lab.host, DockerdOpts::default());
    runtimes::report("dockerd start + image import", t.elapsed());

    let docker0 = ipv4_of(&lab.host, "docker0");
    assert!(
        docker0.contains(&format!("inet {}", runtimes::DOCKER_BIP)),
        "docker0 in the lab namespace: {docker0}"
    );
    let ruleset = stdout(&lab.host.exec(&["nft", "list", "ruleset"]));
    assert!(
        ruleset.contains("chain DOCKER") && ruleset.contains("198.51.100.0/26"),
        "Docker's rules are not in the lab namespace:\n{ruleset}"
    );
    assert_eq!(lab.host.sysctl("net.ipv4.conf.docker0.route_localnet"), "0");

    let t = Instant::now();
    docker.run("web", None, &["lab-serve", "tcp", "8080"]);
    docker.run("dns", None, &["lab-serve", "udp", "5353"]);
    docker.run(
        "bb",
        None,
        &["nc", "-ll", "-p", "8081", "-e", "echo", "busybox"],
    );
    runtimes::report("three docker run", t.elapsed());
    let web = docker.container_ip("web", "bridge");
    assert_eq!(web.octets()[..3], [198, 51, 100], "web's address {web}");
    assert_eq!(
        answer(&lab.host, sa(web, 8080)).as_deref(),
        Some("tcp:8080 from 198.51.100.1"),
        "the container did not answer from the lab host"
    );
    let bb = docker.container_ip("bb", "bridge");
    assert_eq!(
        answer(&lab.host, sa(bb, 8081)).as_deref(),
        Some("busybox"),
        "busybox nc did not answer"
    );
    let dns = docker.container_ip("dns", "bridge");
    assert_eq!(
        udp_request(&lab.host, sa(dns, 5353)).as_deref(),
        Some("udp:5353 from 198.51.100.1")
    );
    // Container to container through docker0, with the image's client.
    let out = docker.exec("bb", &["lab-req", "tcp", &web.to_string(), "8080"]);
    assert_eq!(
        stdout(&out).trim(),
        format!("tcp:8080 from {bb}"),
        "{out:?}"
    );
    // Docker's default capabilities include CAP_NET_RAW: the image's python can open
    // the AF_PACKET socket a CVE-2020-8558 probe needs.
    let out = docker.exec(
        "web",
        &[
            "python3",
            "-c",
            "import socket; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); \
             s.bind(('eth0', 0)); print(s.getsockname()[0])",
        ],
    );
    assert_eq!(stdout(&out).trim(), "eth0", "{out:?}");

    drop(docker);
    drop(lab);
    before.assert_unchanged();
}

/// (b) A user-defined network gets a `br-<12 hex>` bridge in the lab namespace, a
/// subnet from the lab's pool, and host-gateway resolves to docker0's address.
#[test]
fn dockerd_user_network_gets_a_br_bridge() {
    let before = RootSnapshot::take();
    let lab = Lab::new();
    let docker = Dockerd::start(&lab.host, DockerdOpts::default());
    let id = docker.docker_ok(&["network", "create", "lgnet"]);
    let bridge = docker.bridge_of("lgnet");
    assert_eq!(bridge, format!("br-{}", &id[..12]));
    assert!(bridge[3..].bytes().all(|b| b.is_ascii_hexdigit()));
    let ipam = docker.network_ipam("lgnet");
    assert_eq!(ipam.len(), 1, "{ipam:?}");
    let (subnet, gateway) = &ipam[0];
    assert!(
        subnet.starts_with("203.0.113.") && subnet.ends_with("/27"),
        "{subnet}"
    );
    assert!(
        ipv4_of(&lab.host, &bridge).contains(&format!("inet {gateway}/27")),
        "{bridge} lacks {gateway}"
    );

    // A client outside the sandbox (as loopgate will be) with DOCKER_HOST alone. The
    // docker on PATH may be a newer CLI than Debian's; both speak to dockerd 20.10.
    let out = std::process::Command::new("docker")
        .args(["network", "inspect", "--format", "{{.Id}}", "lgnet"])
        .envs(docker.client_env())
        .env("DOCKER_CONFIG", docker.dir.join("cli"))
        .output()
        .unwrap();
    assert_eq!(stdout(&out).trim(), id, "{out:?}");
    docker.run_with(
        "app",
        &[
            "--network",
            "lgnet",
            "--add-host",
            "host.docker.internal:host-gateway",
        ],
        &["lab-serve", "tcp", "8080"],
    );
    let app = docker.container_ip("app", "lgnet");
    let gw: Ipv4Addr = gateway.parse().unwrap();
    assert_eq!(
        answer(&lab.host, sa(app, 8080)),
        Some(format!("tcp:8080 from {gw}"))
    );
    let hosts = stdout(&docker.exec("app", &["cat", "/etc/hosts"]));
    assert!(
        hosts.contains(&format!("{}\thost.docker.internal", runtimes::DOCKER0_ADDR)),
        "host-gateway is not docker0's address:\n{hosts}"
    );

    // rm + create: a new bridge name (the feature's stale-grant case).
    docker.docker_ok(&["rm", "-f", "app"]);
    docker.docker_ok(&["network", "rm", "lgnet"]);
    docker.docker_ok(&["network", "create", "lgnet"]);
    let again = docker.bridge_of("lgnet");
    assert_ne!(again, bridge);
    assert!(
        lab.host
            .exec_status(&["ip", "link", "show", &bridge])
            .status
            .code()
            != Some(0)
    );

    drop(docker);
    drop(lab);
    before.assert_unchanged();
}

/// `Dockerd::restart`: dockerd deletes docker0 and creates it again (a new interface
/// index, route_localnet back at 0), and a container with a restart policy answers
/// again at its address.
#[test]
fn dockerd_restart_recreates_docker0() {
    let before = RootSnapshot::take();
    let lab = Lab::new();
    let mut docker = Dockerd::start(&lab.host, DockerdOpts::default());
    docker.run_with(
        "web",
        &["--restart", "always"],
        &["lab-serve", "tcp", "8080"],
    );
    let ip = docker.container_ip("web", "bridge");
    assert!(answer(&lab.host, sa(ip, 8080)).is_some());
    let index = || stdout(&lab.host.exec(&["cat", "/sys/class/net/docker0/ifindex"]));
    let first = index();
    lab.host
        .set_sysctl("net.ipv4.conf.docker0.route_localnet", "1");
    let t = Instant::now();
    docker.restart();
    runtimes::report("dockerd restart", t.elapsed());
    assert_ne!(index(), first, "docker0 was not re-created");
    assert_eq!(lab.host.sysctl("net.ipv4.conf.docker0.route_localnet"), "0");
    let ip = docker.container_ip("web", "bridge");
    assert_eq!(
        answer(&lab.host, sa(ip, 8080)).as_deref(),
        Some("tcp:8080 from 198.51.100.1")
    );
    drop(docker);
    drop(lab);
    before.assert_unchanged();
}

/// (c) Rootful podman with netavark: a container on a user network with a port
/// mapping answers through the mapping (from the lab host and from a client on br0)
/// and directly; netavark set route_localnet=1 on its bridge.
#[test]
fn podman_port_mapping_answers() {
    let before = RootSnapshot::take();
    let lab = Lab::new();
    let t = Instant::now();
    let podman = Podman::start(&lab.host);
    runtimes::report("podman holder start + image import", t.elapsed());
    podman.podman_ok(&["network", "create", "lgpod"]);
    let t = Instant::now();
    podman.run_with(
        "web",
        &["--network", "lgpod", "-p", "8080:8080"],
        &["lab-serve", "tcp", "8080"],
    );
    runtimes::report("podman run", t.elapsed());
    let bridge = podman.bridge_of("lgpod");
    let ip = podman.container_ip("web", "lgpod");
    assert_eq!(ip.octets()[..3], [203, 0, 113], "{ip}");
    assert!(ip.octets()[3] >= 128, "{ip} outside podman's pool");
    let reply = answer(&lab.host, sa(ip, 8080)).expect("direct request");
    assert!(reply.starts_with("tcp:8080 from 203.0.113."), "{reply}");
    // Through the port mapping, from the container namespace on br0 (192.0.2.10).
    let reply = answer(&lab.container, sa(HOST_ADDR, 8080)).expect("port mapping");
    assert_eq!(reply, format!("tcp:8080 from {CONTAINER_ADDR}"));
    // And from the lab host itself to its own address.
    assert!(answer(&lab.host, sa(HOST_ADDR, 8080)).is_some());
    assert_eq!(
        lab.host
            .sysctl(&format!("net.ipv4.conf.{bridge}.route_localnet")),
        "1",
        "netavark sets route_localnet=1 on a bridge with a port mapping"
    );
    // Another program run through `Podman::command` (as loopgate will be) calls
    // podman with the instance's configuration alone.
    let out = podman
        .command(&podman_cli())
        .args([
            "network",
            "inspect",
            "--format",
            "{{.NetworkInterface}} {{range .Subnets}}{{.Subnet}} {{.Gateway}}{{end}}",
            "lgpod",
        ])
        .output()
        .unwrap();
    assert_eq!(
        stdout(&out).trim(),
        format!("{bridge} 203.0.113.128/27 203.0.113.129"),
        "{out:?}"
    );
    // netavark deletes the bridge with its last container and creates it again.
    let t = Instant::now();
    podman.podman_ok(&["stop", "web"]);
    runtimes::report("podman stop", t.elapsed());
    assert!(
        lab.host
            .exec_status(&["ip", "link", "show", &bridge])
            .status
            .code()
            != Some(0)
    );
    podman.podman_ok(&["start", "web"]);
    assert!(answer(&lab.container, sa(HOST_ADDR, 8080)).is_some());
    // The default network is on its own subnet.
    podman.run("plain", None, &["sleep", "600"]);
    let plain = podman.container_ip("plain", "podman");
    assert_eq!(plain.octets()[..3], [198, 51, 100], "{plain}");
    assert!(plain.octets()[3] >= 128, "{plain}");

    drop(podman);
    drop(lab);
    before.assert_unchanged();
}

/// (d) Both runtimes in one lab namespace; then nothing of them is left: no process
/// in the lab namespace, no cgroup folder, no data folder, and the machine's
/// namespace (ruleset, links, addresses, routes, sysctls) and files unchanged.
#[test]
fn runtimes_leave_nothing_behind() {
    let before = RootSnapshot::take();
    let lab = Lab::new();
    let ino = netns_inode(&format!("/run/netns/{}", lab.host.name));
    let docker = Dockerd::start(
        &lab.host,
        DockerdOpts {
            userland_proxy: false,
            ..DockerdOpts::default()
        },
    );
    let podman = Podman::start(&lab.host);
    docker.run_with(
        "pub",
        &["-p", "127.0.0.1:9090:8080"],
        &["lab-serve", "tcp", "8080"],
    );
    podman.run_with("pweb", &["-p", "8082:8080"], &["lab-serve", "tcp", "8080"]);
    // userland-proxy=false: Docker's hairpin to 127.0.0.1 works through its own
    // route_localnet=1 on docker0.
    assert_eq!(
        answer(&lab.host, sa(LO, 9090)).as_deref(),
        Some("tcp:8080 from 198.51.100.1")
    );
    assert_eq!(lab.host.sysctl("net.ipv4.conf.docker0.route_localnet"), "1");
    assert!(answer(&lab.host, sa(HOST_ADDR, 8082)).is_some());
    assert!(
        processes_in(ino).len() >= 4,
        "expected dockerd, containerd, shims, conmon in the lab namespace: {:?}",
        processes_in(ino)
    );
    let dirs = [docker.dir.clone(), podman.dir.clone()];
    let parents = [docker.cgroup_parent.clone(), podman.cgroup_parent.clone()];
    assert!(
        !cgroups_named(&parents[0]).is_empty(),
        "docker's cgroup parent"
    );
    assert!(
        !cgroups_named(&parents[1]).is_empty(),
        "podman's cgroup parent"
    );

    let t = Instant::now();
    drop(podman);
    drop(docker);
    runtimes::report("teardown of dockerd and podman", t.elapsed());
    assert_eq!(
        processes_in(ino),
        Vec::<String>::new(),
        "left in the lab namespace"
    );
    for p in &parents {
        assert_eq!(cgroups_named(p), Vec::<String>::new(), "cgroups left");
    }
    for d in &dirs {
        assert!(!d.exists(), "{} left", d.display());
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains("lgrt-") && !dirs.iter().any(|d| mounts.contains(d.to_str().unwrap())),
        "mounts leaked into the machine's mount namespace:\n{mounts}"
    );
    drop(lab);
    before.assert_unchanged();
}

/// A test that panics while dockerd runs a container still leaves nothing behind.
#[test]
fn dockerd_is_cleaned_up_when_a_test_panics() {
    let before = RootSnapshot::take();
    let lab = Lab::new();
    let ino = netns_inode(&format!("/run/netns/{}", lab.host.name));
    let host = lab.host.handle();
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let docker = Dockerd::start(&host, DockerdOpts::default());
        docker.run("web", None, &["sleep", "600"]);
        tx.send((docker.dir.clone(), docker.cgroup_parent.clone()))
            .unwrap();
        panic!("a failing runtime test");
    })
    .join();
    assert!(result.is_err());
    let (dir, parent) = rx.recv().unwrap();
    assert_eq!(processes_in(ino), Vec::<String>::new());
    assert_eq!(cgroups_named(&parent), Vec::<String>::new());
    assert!(!dir.exists(), "{} left", dir.display());
    drop(lab);
    before.assert_unchanged();
}
