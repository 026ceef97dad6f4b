//! Topic: `loopgate watch`, and the DaemonSet entry point that runs it, putting back a
//! flushed table, a re-created interface and a sysctl changed by hand.

use super::*;

#[test]
fn watch_restores_a_flushed_ruleset_within_a_second() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    let want = table_image(&lab.host).expect("table");
    let mut watch = Watch::start(&lab);
    let mut worst = std::time::Duration::ZERO;
    for _ in 0..3 {
        lab.host.exec(&["nft", "flush", "ruleset"]);
        let took =
            time_until(|| table_image(&lab.host).as_ref() == Some(&want)).expect("table restored");
        worst = worst.max(took);
    }
    println!(
        "watch: flush ruleset -> table back in at most {} ms",
        worst.as_millis()
    );
    assert!(worst < std::time::Duration::from_secs(1), "took {worst:?}");
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    assert_eq!(tcp_request(&lab.neighbour, sa(HOST_ADDR, 3306)), None);
    // The line is written after the read-back, so it may trail the table by a moment.
    time_until(|| {
        watch
            .log()
            .matches("was missing or altered; restored")
            .count()
            == 3
    })
    .unwrap_or_else(|| panic!("one repair line per flush: {}", watch.log()));
    // After a commit elsewhere, watch reads the table back once and vouches for it
    // again, so neither its next ticks nor audit read every element.
    lab.host.exec(&["nft", "add", "table", "ip", "other"]);
    time_until(|| {
        let out = lab.loopgate(&["audit", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        report["table"]["elements_read_back"] == false
    })
    .expect("watch vouches for the intact table again");
    // SIGTERM: a clean exit, and the policy stays in place.
    assert_eq!(watch.stop(), Some(0), "{}", watch.log());
    assert!(watch.log().contains("stopped; the policy stays in place"));
    lab.assert_audit(0, &[]);
}

#[test]
fn watch_reopens_a_recreated_interface_only_after_its_guard_is_verified() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    let watch = Watch::start(&lab);
    // Every few ms: no device open (route_localnet != 0) without its whole guard.
    let sampler = GuardSampler::start(&lab.host);
    // Delete the bridge, and while it is gone the table too (a foreign flush); then bring
    // the bridge back, as dockerd does. The new br0 starts with route_localnet=0.
    // dockerd gives a re-created bridge the same MAC (derived from its address); keeping
    // it also keeps the clients' ARP entries valid, which this test is not about.
    let link = stdout(&lab.host.exec(&["ip", "-br", "link", "show", "br0"]));
    let mac = link
        .split_whitespace()
        .nth(2)
        .expect("br0's MAC")
        .to_string();
    lab.host.ip("link del br0");
    lab.host.exec(&["nft", "delete", "table", "ip", "loopgate"]);
    // Bring the bridge back only after watch has put the table back without it.
    time_until(|| {
        watch
            .log()
            .contains("table ip loopgate was missing or altered; restored")
    })
    .unwrap_or_else(|| {
        panic!(
            "watch restores the table while br0 is gone: {}",
            watch.log()
        )
    });
    lab.host
        .ip(&format!("link add br0 address {mac} type bridge"));
    lab.host.ip(&format!("addr add {HOST_ADDR}/24 dev br0"));
    lab.host.ip("link set vc master br0");
    lab.host.ip("link set vn master br0");
    lab.host.ip("link set br0 up");
    let took = time_until(|| lab.host.sysctl("net.ipv4.conf.br0.route_localnet") == "1")
        .expect("route_localnet restored");
    // Kept on purpose: the sampler goes on for 300 ms after the reopen, so a guard that
    // went missing again just after it would be caught (proving an absence takes time).
    std::thread::sleep(std::time::Duration::from_millis(300));
    let seen = sampler.finish();
    println!(
        "watch: re-created br0 reopened after {} ms; {} samples, open without guard: {:?}",
        took.as_millis(),
        seen.samples,
        seen.violations
    );
    assert!(seen.violations.is_empty(), "{seen:?}\n{}", watch.log());
    assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    assert_eq!(tcp_request(&lab.neighbour, sa(HOST_ADDR, 3306)), None);
}

#[test]
fn watch_restores_route_localnet_changed_by_hand_and_logs_it_once() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    let watch = Watch::start(&lab);
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "0");
    let took = time_until(|| lab.host.sysctl("net.ipv4.conf.br0.route_localnet") == "1")
        .expect("restored");
    // The log line is written after the write; wait for it...
    time_until(|| watch.log().contains("route_localnet on br0 was 0"))
        .unwrap_or_else(|| panic!("no log line: {}", watch.log()));
    // ...and then, on purpose, for more than two of watch's 250 ms ticks: "once" means
    // no second line appears, and an absence can only be shown by waiting.
    std::thread::sleep(std::time::Duration::from_millis(600));
    println!(
        "watch: route_localnet restored after {} ms",
        took.as_millis()
    );
    assert!(took < std::time::Duration::from_secs(1));
    assert_eq!(
        watch.log().matches("route_localnet on br0 was 0").count(),
        1,
        "{}",
        watch.log()
    );
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
}

#[test]
fn the_daemonset_entry_point_applies_exports_and_watches() {
    let (lab, _services) = lab_with_services();
    let policy = lab.state_dir.join("policy");
    let textfile = lab.state_dir.join("textfile");
    std::fs::create_dir_all(&policy).unwrap();
    std::fs::create_dir_all(&textfile).unwrap();
    std::fs::write(
        policy.join("policy.yaml"),
        // As the shipped DaemonSet: a grant on cni0, which appears with the first pod.
        format!("grants:\n  - interface: br0\n    allow: [{ALLOWED}]\n    port: 3306\n  - interface: cni0\n    allow: 198.51.100.0/24\n    port: 3307\n"),
    )
    .unwrap();
    let entry =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/entrypoint.sh");
    let log = lab.state_dir.join("entrypoint.log");
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.host.name, "sh"])
        .arg(&entry)
        .env("LOOPGATE", BIN)
        .env("LOOPGATE_POLICY_DIR", &policy)
        .env("LOOPGATE_TEXTFILE_DIR", &textfile)
        .env("LOOPGATE_AUDIT_INTERVAL", "1")
        .env("LOOPGATE_STATE_DIR", &lab.state_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let prom = textfile.join("loopgate.prom");
    time_until(|| {
        std::fs::read_to_string(&prom)
            .is_ok_and(|t| t.contains("loopgate_guarded{interface=\"br0\"} 1"))
    })
    .unwrap_or_else(|| {
        panic!(
            "no metrics: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    assert_eq!(tcp_request(&lab.neighbour, sa(HOST_ADDR, 3306)), None);
    // watch runs (and holds the table where the kernel can): a flush is skipped or
    // repaired.
    time_until(|| {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("loopgate watch: started"))
    })
    .expect("watch started");
    let want = table_image(&lab.host).unwrap();
    lab.host.exec(&["nft", "flush", "ruleset"]);
    time_until(|| table_image(&lab.host).as_ref() == Some(&want))
        .expect("watch restored the table");
    // cni0 appears late (the first pod): watch serves its grant, guard first.
    let pod = lab.add_bridge_with_client(
        "cni0",
        "198.51.100.1".parse().unwrap(),
        "198.51.100.10".parse().unwrap(),
    );
    // route_localnet is raised last, after the guard and DNAT read back.
    time_until(|| lab.host.sysctl("net.ipv4.conf.cni0.route_localnet") == "1").unwrap_or_else(
        || {
            panic!(
                "cni0 opened by watch: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        },
    );
    assert_eq!(
        tcp_request(&pod, sa("198.51.100.1".parse().unwrap(), 3307)).as_deref(),
        Some("tcp:3307"),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // SIGTERM (as the kubelet sends) ends it; the policy stays.
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status:?}: {text}");
    assert!(
        text.contains("stopped; the policy stays in place"),
        "{text}"
    );
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
}
