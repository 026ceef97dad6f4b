//! Topic: a listen address that belongs to another interface of the host, and Docker's
//! `host-gateway` (docker0's address, reached from a user-defined network's bridge).

use super::*;
use std::net::Ipv4Addr;

fn a(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

#[test]
fn a_grant_can_listen_on_another_interfaces_address_including_host_gateway() {
    let (lab, _services) = lab_with_services();
    // docker0, as dockerd creates it; the container sits on br0 (a compose network).
    lab.host.ip("link add docker0 type bridge");
    lab.host.ip("addr add 198.51.100.1/24 dev docker0");
    lab.host.ip("link set docker0 up");
    // Before: nothing answers the container at docker0's address.
    assert_eq!(
        tcp_request(&lab.container, sa(a("198.51.100.1"), 3306)),
        None
    );
    let out = lab.loopgate(&[
        "expose",
        "br0",
        "--allow",
        ALLOWED,
        "--port",
        "3306",
        "--listen",
        "host-gateway",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("198.51.100.1:3306/tcp"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        tcp_request(&lab.container, sa(a("198.51.100.1"), 3306)).as_deref(),
        Some("tcp:3306")
    );
    assert_eq!(
        tcp_request(&lab.neighbour, sa(a("198.51.100.1"), 3306)),
        None
    );
    // The ingress interface still scopes the grant: docker0 itself is not opened.
    assert_eq!(lab.host.sysctl("net.ipv4.conf.docker0.route_localnet"), "0");
    // An explicit address of another interface works the same way.
    lab.ok(&[
        "expose",
        "br0",
        "--allow",
        ALLOWED,
        "--port",
        "3307",
        "--listen",
        "198.51.100.1",
    ]);
    assert_eq!(
        tcp_request(&lab.container, sa(a("198.51.100.1"), 3307)).as_deref(),
        Some("tcp:3307")
    );
    lab.assert_audit(0, &["guarded"]);
    // Refused, with nothing changed: an address the host does not own, and loopback.
    let before = lab.fingerprint();
    for (listen, says) in [
        ("203.0.113.99", "not an address of this host"),
        ("127.0.0.1", "127.0.0.0/8"),
    ] {
        let out = lab.loopgate(&[
            "expose", "br0", "--allow", ALLOWED, "--port", "5353", "--listen", listen,
        ]);
        assert_eq!(out.status.code(), Some(2), "{listen}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(says) && stderr(&out).contains(listen),
            "{}",
            stderr(&out)
        );
        assert_eq!(stderr(&out).lines().count(), 1);
    }
    assert_eq!(lab.fingerprint(), before);
}

#[test]
fn host_gateway_without_docker0_is_refused_on_the_command_line_and_pending_in_a_policy() {
    let (lab, _services) = lab_with_services();
    let out = lab.loopgate(&[
        "expose",
        "br0",
        "--allow",
        ALLOWED,
        "--port",
        "3306",
        "--listen",
        "host-gateway",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("docker0"), "{}", stderr(&out));
    let policy = lab.policy(
        "hg.yaml",
        "grants:\n  - interface: br0\n    allow: 192.0.2.0/25\n    port: 3306\n    listen: host-gateway\n",
    );
    let watch = Watch::start(&lab);
    let _ = lab.loopgate(&["apply", &policy]);
    // docker0 appears (dockerd starts): watch serves the grant on its address.
    lab.host.ip("link add docker0 type bridge");
    lab.host.ip("addr add 198.51.100.1/24 dev docker0");
    lab.host.ip("link set docker0 up");
    time_until(|| {
        tcp_request(&lab.container, sa(a("198.51.100.1"), 3306)).as_deref() == Some("tcp:3306")
    })
    .unwrap_or_else(|| panic!("served when docker0 appeared: {}", watch.log()));
}
