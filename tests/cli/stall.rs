//! watch is never stalled by a runtime CLI that hangs.
//!
//! watch asks `docker network inspect` for the grants that name a Docker network.
//! That call used to run inside watch's only loop, without a bound: with a docker CLI
//! that hung for 20 s, a bridge another tool opened under a guard pattern stayed
//! unguarded and every datagram to 127.0.0.1 through it got in. Now every runtime call
//! is bounded and watch asks in a worker thread, going on with the last answers.

use super::*;

/// A fake `docker` that answers `network inspect` for a network on br0, and hangs for
/// 20 s once `hang` exists in the lab's state directory.
fn hanging_docker(lab: &Lab) -> (String, std::path::PathBuf) {
    let flag = lab.state_dir.join("hang");
    let path = lab.fake_cli_script(
        "docker",
        &format!(
            "[ -e '{flag}' ] && exec sleep 20\ncat <<'JSON'\n[{{\"Name\":\"app_default\",\"Id\":\"0123456789abcdef\",\"Driver\":\"bridge\",\"Options\":{{\"com.docker.network.bridge.name\":\"br0\"}},\"IPAM\":{{\"Config\":[{{\"Subnet\":\"{ALLOWED}\",\"Gateway\":\"{HOST_ADDR}\"}}]}}}}]\nJSON\n",
            flag = flag.display()
        ),
    );
    (path, flag)
}

#[test]
fn a_hung_runtime_cli_does_not_hold_up_guarding_a_new_interface() {
    let (lab, _services) = lab_with_services();
    let (path, flag) = hanging_docker(&lab);
    let policy = lab.policy(
        "policy.yaml",
        "grants:\n  - docker_network: app_default\n    port: 3306\nguard: ['lgr*']\n",
    );
    let out = lab.loopgate_env(&["apply", &policy], &[("PATH", &path)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let watch = Watch::start_env(
        &lab,
        &["--policy", &policy],
        &[("PATH".to_string(), path.clone())],
    );
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    // From now on every `docker network inspect` hangs for 20 s.
    std::fs::write(&flag, "").unwrap();
    // Another tool creates a bridge and opens it to 127.0.0.0/8, as dockerd with
    // userland-proxy=false does; a client on it routes 127.0.0.0/8 through the host.
    let client = lab.add_bridge_with_client(
        "lgr1",
        Ipv4Addr::new(198, 51, 100, 1),
        Ipv4Addr::new(198, 51, 100, 10),
    );
    Lab::route_loopback_via(&client, Ipv4Addr::new(198, 51, 100, 1));
    let guarded = || {
        NftTable::read(&lab.host)
            .via("raw_ifaces", "\"lgr1\"")
            .is_some()
    };
    let took = time_until(guarded);
    lab.host
        .set_sysctl("net.ipv4.conf.lgr1.route_localnet", "1");
    assert!(
        took.is_some(),
        "lgr1 was not guarded within 3 s while the runtime CLI hung: {}",
        watch.log()
    );
    println!("new interface under a guard pattern guarded after {took:?} with a hung runtime CLI");
    assert_eq!(
        tcp_request(&client, sa(Ipv4Addr::LOCALHOST, 3306)),
        None,
        "the guard blocks 127.0.0.1 through lgr1"
    );
    // The runtime's grant kept its last answer meanwhile: still served.
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    // Control: a bridge outside the pattern, opened the same way, lets the same client
    // traffic reach 127.0.0.1 (no guard): the attack works where nothing guards.
    let other = lab.add_bridge_with_client(
        "xyz1",
        Ipv4Addr::new(203, 0, 113, 1),
        Ipv4Addr::new(203, 0, 113, 10),
    );
    Lab::route_loopback_via(&other, Ipv4Addr::new(203, 0, 113, 1));
    lab.host
        .set_sysctl("net.ipv4.conf.xyz1.route_localnet", "1");
    assert_eq!(
        tcp_request(&other, sa(Ipv4Addr::LOCALHOST, 3306)).as_deref(),
        Some("tcp:3306")
    );
}

/// A command (not watch) asking a hung runtime gives up after the bound, in one line,
/// with nothing changed.
#[test]
fn a_command_asking_a_hung_runtime_gives_up_in_one_line() {
    let (lab, _services) = lab_with_services();
    let (path, flag) = hanging_docker(&lab);
    std::fs::write(&flag, "").unwrap();
    let before = lab.fingerprint();
    let started = std::time::Instant::now();
    let out = lab.loopgate_env(
        &[
            "expose",
            "--docker-network",
            "app_default",
            "--port",
            "3306",
        ],
        &[("PATH", &path)],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("did not answer within 5 s"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "not bounded: {:?}",
        started.elapsed()
    );
    assert_eq!(lab.fingerprint(), before);
}
