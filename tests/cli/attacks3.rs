//! Review 3 attacks: guard, runtime networks, host-gateway, audit's firewall findings.

use super::*;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;

/// Writes a fake `docker` CLI into the lab's state dir that prints `json` for
/// `network inspect`; returns a PATH with it first.
fn fake_docker(lab: &Lab, json: &str) -> String {
    let dir = lab.state_dir.join("fakebin");
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("docker");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ncat <<'JSON'\n{json}\nJSON\n"),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A runtime network whose bridge is `lo` (podman `--interface-name lo`, or a Docker
/// `com.docker.network.bridge.name=lo` option) must not make loopgate guard or
/// publish on the loopback itself: `expose lo` is refused as bad input, and the guard
/// on lo drops every 127/8 packet of the host.
#[test]
fn a_runtime_network_whose_bridge_is_lo_is_not_published_on_lo() {
    let (lab, _services) = lab_with_services();
    let path = fake_docker(
        &lab,
        r#"[{"Name":"evil","Id":"0123456789abcdef","Driver":"bridge","Options":{"com.docker.network.bridge.name":"lo"},"IPAM":{"Config":[{"Subnet":"192.0.2.0/25","Gateway":"192.0.2.1"}]}}]"#,
    );
    assert_eq!(
        tcp_request(&lab.host, sa(LO, 3306)).as_deref(),
        Some("tcp:3306"),
        "the host reaches its own service before"
    );
    let out = lab.loopgate_env(
        &["expose", "--docker-network", "evil", "--port", "3307"],
        &[("PATH", &path)],
    );
    let table = stdout(&lab.host.exec(&["nft", "list", "table", "ip", "loopgate"]));
    let host_ok = tcp_request(&lab.host, sa(LO, 3306)).as_deref() == Some("tcp:3306");
    assert!(
        host_ok && !table.contains("\"lo\""),
        "expose exit {:?} stderr {}\nhost reaches 127.0.0.1:3306: {host_ok}\n{table}",
        out.status.code(),
        stderr(&out)
    );
}
