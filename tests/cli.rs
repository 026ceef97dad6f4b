//! loopgate against the real kernel, in namespaces created per test, with real traffic.
//!
//! Each test builds a `Lab`: a host namespace with a bridge and services bound to
//! 127.0.0.1, an allowed "container" (192.0.2.10) and a disallowed neighbour
//! (192.0.2.200) on the bridge. Assertions are about what got through and what did not.

mod support;

// Topic modules; kept under tests/cli/ so Cargo does not build each as its own binary.
#[path = "cli/output_and_persist.rs"]
mod output_and_persist;
#[path = "cli/sysctl_values.rs"]
mod sysctl_values;
#[path = "cli/table_tamper.rs"]
mod table_tamper;

use std::net::Ipv4Addr;
use support::*;

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
    std::thread::sleep(std::time::Duration::from_millis(300));
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
    let out = lab.loopgate(&["audit"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("CRITICAL [unguarded]"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn expose_lets_only_the_allowed_subnet_reach_only_the_published_ports() {
    let (lab, services) = lab_with_services();
    let out = lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3306"]);
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
    std::thread::sleep(std::time::Duration::from_millis(300));
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

    let out = lab.loopgate(&["audit"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("br0: route_localnet=1 effective=1 open, guarded"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn expose_is_idempotent_and_a_new_allow_list_replaces_the_old() {
    let (lab, _services) = lab_with_services();
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3306"]);
    let before = lab.fingerprint();
    let out = lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3306"]);
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
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3306"]);
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
    assert_eq!(lab.loopgate(&["audit"]).status.code(), Some(0));
}

#[test]
fn revoke_restores_original_one_and_audit_then_flags_it() {
    let (lab, _services) = lab_with_services();
    // Docker with userland-proxy=false leaves route_localnet=1 on its bridge.
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "1");
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3306"]);
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
    let out = lab.loopgate(&["audit"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("CRITICAL [unguarded]"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn audit_flags_all_one_and_a_deleted_table_and_expose_repairs_it() {
    let (lab, _services) = lab_with_services();
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3306"]);
    assert_eq!(lab.loopgate(&["audit"]).status.code(), Some(0));

    lab.host.exec(&["nft", "delete", "table", "ip", "loopgate"]);
    let out = lab.loopgate(&["audit", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let codes: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["code"].as_str())
        .collect();
    assert!(
        codes.contains(&"table-tampered") && codes.contains(&"unguarded"),
        "{codes:?}"
    );
    assert_eq!(report["schema_version"], 2);

    // An edited rule counts as tampering too.
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3306"]);
    assert_eq!(
        lab.loopgate(&["audit"]).status.code(),
        Some(0),
        "expose repairs a deleted table"
    );
    lab.host
        .exec(&["nft", "flush", "chain", "ip", "loopgate", "raw_prerouting"]);
    let out = lab.loopgate(&["audit"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("table-tampered"), "{}", stdout(&out));
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3306"]);

    lab.host.set_sysctl("net.ipv4.conf.all.route_localnet", "1");
    let out = lab.loopgate(&["audit"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("CRITICAL [all-open]"),
        "{}",
        stdout(&out)
    );
    let out = lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3307"]);
    let _ = out;
    let warn = stderr(&lab.loopgate(&["expose", "br0", "--allow", ALLOWED, "--port", "3307"]));
    assert!(warn.contains("conf.all.route_localnet is 1"), "{warn}");
}

#[test]
fn state_of_two_namespaces_stays_separate() {
    let (a, _sa) = lab_with_services();
    // One state directory for both: separation must come from the namespace identity.
    let b = Lab::sharing_state_with(&a);
    a.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3306"]);
    let out = b.loopgate(&["audit", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["managed"] == false));
    b.ok(&["revoke", "--all"]);
    assert_eq!(
        tcp_request(&a.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    assert_eq!(a.loopgate(&["audit"]).status.code(), Some(0));
}

#[test]
fn concurrent_exposes_on_one_namespace_both_apply() {
    let (lab, _services) = lab_with_services();
    let lab = std::sync::Arc::new(lab);
    let handles: Vec<_> = ["3306", "3307"]
        .into_iter()
        .map(|port| {
            let lab = lab.clone();
            std::thread::spawn(move || {
                lab.loopgate(&["expose", "br0", "--allow", ALLOWED, "--port", port])
            })
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3307)).as_deref(),
        Some("tcp:3307")
    );
    assert_eq!(lab.loopgate(&["audit"]).status.code(), Some(0));
}

/// Runs `args` with a failpoint armed and checks the promise: exit 3, an error naming
/// the step and saying it was rolled back, and ruleset, sysctls and state exactly as
/// before.
fn assert_rolls_back(lab: &Lab, args: &[&str], failpoint: &str, step_text: &str) {
    if !cfg!(feature = "failpoints") {
        panic!("rollback tests need the test hook: run `cargo test --features failpoints` (scripts/test.sh does)");
    }
    let before = lab.fingerprint();
    let out = lab.loopgate_env(args, &[("LOOPGATE_FAILPOINT", failpoint)]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{failpoint}: {err}");
    assert!(
        err.contains(step_text) && err.contains("rolled back"),
        "{failpoint}: {err}"
    );
    assert_eq!(
        err.trim_end()
            .lines()
            .filter(|l| l.starts_with("loopgate: error"))
            .count(),
        1,
        "{err}"
    );
    assert_eq!(
        lab.fingerprint(),
        before,
        "{failpoint} left the host changed"
    );
}

#[test]
fn a_kernel_lacking_a_feature_is_refused_before_anything_changes() {
    let (lab, _services) = lab_with_services();
    let before = lab.fingerprint();
    let out = lab.loopgate_env(
        &["expose", "br0", "--allow", ALLOWED, "--port", "3306"],
        &[("LOOPGATE_FAILPOINT", "probe")],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("kernel feature check failed; nothing was changed"),
        "{err}"
    );
    assert!(
        err.contains("needs a set that does not exist"),
        "the missing feature is named: {err}"
    );
    assert_eq!(lab.fingerprint(), before);
    let known = lab.state_dir.join("kernel-features");
    assert!(!known.exists(), "a failed probe records nothing");

    // A passing probe is remembered for this boot, with the features it covered; the
    // next command does not probe again, unless the test hook asks.
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3306"]);
    let text = std::fs::read_to_string(&known).unwrap();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(text.lines().next(), Some(boot.trim()));
    assert!(
        text.lines().any(|l| l == "NAT chains, nft_chain_nat"),
        "{text}"
    );
    let out = lab.loopgate_env(
        &["expose", "br0", "--allow", ALLOWED, "--port", "3307"],
        &[("LOOPGATE_FAILPOINT", "probe")],
    );
    assert_eq!(out.status.code(), Some(3), "the hook still forces a probe");
}

/// The transaction steps, each of which can fail before it starts or after it finished.
const STEPS: [&str; 6] = [
    "journal",
    "sysctl-lower",
    "ruleset",
    "sysctl-raise",
    "conntrack",
    "commit",
];

#[test]
fn every_failpoint_of_expose_revoke_and_apply_rolls_back() {
    let (lab, _services) = lab_with_services();
    let policy = lab.policy(
        "p.yaml",
        "grants:\n  - interface: br0\n    allow: [192.0.2.0/25]\n    port: [3306, 3307]\n",
    );
    let mut exercised = 0;
    let expose = ["expose", "br0", "--allow", ALLOWED, "--port", "3306"];
    let revoke = ["revoke", "br0", "--port", "3306"];
    let apply = ["apply", policy.as_str()];
    // (command, set-up that puts the host in the state the command starts from, the
    // sysctl write the command makes)
    let revoke_all = ["revoke", "--all"];
    let cases: [(&[&str], &[&str], &str); 3] = [
        (&expose, &revoke_all, "br0-1"),
        (&revoke, &expose, "br0-0"),
        (&apply, &revoke_all, "br0-1"),
    ];
    for (args, setup, sysctl_write) in cases {
        lab.ok(setup);
        let mut points: Vec<(String, String)> = Vec::new();
        for step in STEPS {
            points.push((step.to_string(), format!("step {step}")));
            points.push((format!("after-{step}"), format!("step {step}")));
        }
        points.push(("ruleset-batch".into(), "injected failure rule".into()));
        points.push((
            format!("sysctl-write-{sysctl_write}"),
            "route_localnet".into(),
        ));
        for (fp, text) in &points {
            let audit_before = lab.loopgate(&["audit"]).status.code();
            assert_rolls_back(&lab, args, fp, text);
            assert_eq!(
                lab.loopgate(&["audit"]).status.code(),
                audit_before,
                "{args:?} {fp}: audit changed"
            );
            exercised += 1;
        }
        // Without a failpoint the command goes through.
        lab.ok(args);
        assert_eq!(lab.loopgate(&["audit"]).status.code(), Some(0));
    }
    println!("failpoints exercised: {exercised}");
    assert_eq!(exercised, 3 * (2 * STEPS.len() + 2));
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3307)).as_deref(),
        Some("tcp:3307")
    );
}

#[test]
fn a_failed_revoke_keeps_open_connections_alive() {
    let (lab, _services) = lab_with_services();
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3306"]);
    let mut conn = tcp_connect(&lab.container, sa(HOST_ADDR, 3306));
    for fp in ["sysctl-lower", "after-ruleset", "conntrack", "commit"] {
        assert_rolls_back(
            &lab,
            &["revoke", "br0", "--port", "3306"],
            fp,
            "rolled back",
        );
        assert_eq!(
            tcp_ping(&mut conn).as_deref(),
            Some("tcp:3306"),
            "{fp}: rollback must keep the grant"
        );
    }
}

#[test]
fn a_failure_on_the_second_interface_undoes_the_first_and_restores_a_tampered_table() {
    let (lab, _services) = lab_with_services();
    lab.host.ip("link add br1 type bridge");
    lab.host.ip("addr add 198.51.100.1/24 dev br1");
    lab.host.ip("link set br1 up");
    let policy = lab.policy("two.yaml", "grants:\n  - interface: br0\n    allow: [192.0.2.0/25]\n    port: 3306\n  - interface: br1\n    allow: 198.51.100.0/24\n    port: 3307\n");
    let policy = policy.as_str();
    assert_rolls_back(
        &lab,
        &["apply", policy],
        "sysctl-write-br1-1",
        "route_localnet=1 on br1",
    );
    assert_eq!(lab.host.sysctl("net.ipv4.conf.br0.route_localnet"), "0");

    // A table someone edited is put back as it was, edits included, but the interface
    // it no longer guards is not reopened: failing closed beats restoring a hole.
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3306"]);
    lab.host.exec(&[
        "nft",
        "delete",
        "rule",
        "ip",
        "loopgate",
        "post_if0",
        "handle",
        &postrouting_handle(&lab),
    ]);
    let tampered = stdout(
        &lab.host
            .exec(&["nft", "-s", "list", "table", "ip", "loopgate"]),
    );
    let out = lab.loopgate_env(
        &["apply", policy],
        &[("LOOPGATE_FAILPOINT", "sysctl-raise")],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("route_localnet stays 0")
            && stderr(&out).contains("step sysctl-raise"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        stdout(
            &lab.host
                .exec(&["nft", "-s", "list", "table", "ip", "loopgate"])
        ),
        tampered
    );
    assert_eq!(lab.host.sysctl("net.ipv4.conf.br0.route_localnet"), "0");
    assert_eq!(lab.host.sysctl("net.ipv4.conf.br1.route_localnet"), "0");
    // And without the failpoint the policy applies and both interfaces work.
    lab.ok(&["apply", policy]);
    assert_eq!(lab.loopgate(&["audit"]).status.code(), Some(0));
    assert_eq!(lab.host.sysctl("net.ipv4.conf.br1.route_localnet"), "1");
}

fn postrouting_handle(lab: &Lab) -> String {
    let out = stdout(
        &lab.host
            .exec(&["nft", "-a", "list", "chain", "ip", "loopgate", "post_if0"]),
    );
    out.lines()
        .find_map(|l| l.split("# handle ").nth(1).filter(|_| l.contains("drop")))
        .expect("a rule handle")
        .trim()
        .to_string()
}

/// One bad-input case: arguments (after `--netns <host>`) and text the error must contain.
struct BadCase {
    label: String,
    args: Vec<std::ffi::OsString>,
    expect: String,
}

/// The corpus under tests/corpus (CLI cases and policy files) plus hostile inputs too
/// large to keep in the repository, generated here.
fn bad_input_corpus(dir: &std::path::Path) -> Vec<BadCase> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut cases = Vec::new();
    let lines = std::fs::read_to_string(root.join("cli.jsonl")).unwrap();
    for (i, line) in lines
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("cli.jsonl:{}: {e}", i + 1));
        let args: Vec<std::ffi::OsString> = v["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().into())
            .collect();
        cases.push(BadCase {
            label: format!("cli.jsonl:{}", i + 1),
            args,
            expect: v["expect"].as_str().unwrap().to_string(),
        });
    }
    let mut files: Vec<_> = std::fs::read_dir(root.join("yaml"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .expect("first line: # expect: TEXT")
            .to_string();
        cases.push(BadCase {
            label: path.display().to_string(),
            args: vec!["apply".into(), path.clone().into()],
            expect,
        });
    }
    let mut generated = |name: &str, bytes: Vec<u8>, expect: &str| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        cases.push(BadCase {
            label: name.to_string(),
            args: vec!["apply".into(), path.into()],
            expect: expect.to_string(),
        });
    };
    // A file over the size limit is refused before parsing.
    let mut huge = b"grants: []\n".to_vec();
    huge.resize(65 << 20, b'#');
    generated("huge.yaml", huge, "larger than 64 MiB");
    // Deep nesting hits the parser's recursion limit, not the stack.
    generated(
        "deep.yaml",
        format!("grants: {}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        "deep.yaml",
    );
    // 100,000 allowed networks, the last one invalid: named among them.
    let mut cidrs: Vec<String> = (0..100_000u32)
        .map(|i| Ipv4Addr::from(0x0a00_0000 + i * 4).to_string() + "/30")
        .collect();
    cidrs.push("10.999.0.0/16".into());
    generated(
        "cidrs.yaml",
        format!(
            "grants:\n  - interface: br0\n    port: 1\n    allow: [{}]\n",
            cidrs.join(", ")
        )
        .into_bytes(),
        "10.999.0.0/16",
    );
    generated(
        "latin1.yaml",
        b"grants:\n  - interface: br\xe9\n    allow: 192.0.2.0/25\n    port: 1\n".to_vec(),
        "not UTF-8",
    );
    use std::os::unix::ffi::OsStringExt;
    cases.push(BadCase {
        label: "non-UTF-8 interface argument".into(),
        args: vec![
            "expose".into(),
            std::ffi::OsString::from_vec(b"br\xff0".to_vec()),
            "--allow".into(),
            ALLOWED.into(),
            "--port".into(),
            "1".into(),
        ],
        expect: "UTF-8".into(),
    });
    cases
}

#[test]
fn bad_input_is_refused_with_one_line_naming_the_value_and_changes_nothing() {
    let (lab, _services) = lab_with_services();
    lab.host.ip("link add bare0 type bridge");
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3306"]);
    let cases = bad_input_corpus(&lab.state_dir);
    assert!(cases.len() >= 60, "the corpus has {} cases", cases.len());
    for case in &cases {
        let before = lab.fingerprint();
        let out = std::process::Command::new(BIN)
            .arg("--netns")
            .arg(&lab.host.name)
            .args(&case.args)
            .env("LOOPGATE_STATE_DIR", &lab.state_dir)
            .output()
            .unwrap();
        let err = stderr(&out);
        let label = &case.label;
        assert_eq!(out.status.code(), Some(2), "{label}: {err}");
        assert!(
            err.contains(&case.expect),
            "{label}: error does not name {:?}: {err}",
            case.expect
        );
        assert!(!err.contains("os error"), "{label}: leaks an errno: {err}");
        assert_eq!(err.lines().count(), 1, "{label}: not one line: {err}");
        assert!(err.len() < 2000, "{label}: error of {} bytes", err.len());
        assert!(out.stdout.is_empty(), "{label}: wrote to stdout");
        assert_eq!(lab.fingerprint(), before, "{label} changed the host");
    }
    println!("bad-input corpus: {} cases", cases.len());
    // A namespace that does not exist is bad input too.
    let out = std::process::Command::new(BIN)
        .args(["--netns", "no-such-ns-xyz", "audit"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no-such-ns-xyz"));
}

#[test]
fn without_cap_net_admin_the_message_says_so_and_nothing_changes() {
    let (lab, _services) = lab_with_services();
    let before = lab.fingerprint();
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            BIN,
        ])
        .args([
            "--netns",
            &lab.host.name,
            "expose",
            "br0",
            "--allow",
            ALLOWED,
            "--port",
            "3306",
        ])
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("CAP_NET_ADMIN"), "{}", stderr(&out));
    assert_eq!(lab.fingerprint(), before);
}

/// Interfaces the example policies name, with the addresses they would have.
struct ExampleHost;

impl loopgate::input::Interfaces for ExampleHost {
    fn ipv4_addresses(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        let addr = match name {
            "docker0" => Ipv4Addr::new(172, 17, 0, 1),
            "br-apps" => Ipv4Addr::new(172, 18, 0, 1),
            "cni0" => Ipv4Addr::new(10, 244, 1, 1),
            "br0" => HOST_ADDR,
            "br1" => Ipv4Addr::new(198, 51, 100, 1),
            _ => return None,
        };
        Some(vec![addr])
    }
}

/// Loads the rendered table into a throwaway namespace with `nft -c` (check only).
fn nft_accepts(text: &str) {
    let ns = Netns::new("nftc");
    let path = std::env::temp_dir().join(format!("{}.nft", ns.name));
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", "-c", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "nft -c rejects the plan: {}\n{text}",
        stderr(&out)
    );
}

#[test]
fn every_example_policy_parses_plans_and_is_valid_nft() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let policy =
            loopgate::policy::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        let grants = loopgate::policy::grants(&policy, &ExampleHost)
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert!(!grants.is_empty(), "{}", path.display());
        let ruleset = loopgate::plan::ruleset(&grants).expect("a table");
        for g in &grants {
            assert!(ruleset
                .to_nft()
                .contains(&format!("comment \"grant {}\"", g.name)));
        }
        nft_accepts(&ruleset.to_nft());
        checked += 1;
    }
    assert!(
        checked >= 4,
        "expected the four example policies, found {checked}"
    );
}

#[test]
fn the_plan_matches_the_golden_file() {
    let policy = loopgate::policy::parse(
        "grants:
  - name: mysql
    interface: br0
    allow: [192.0.2.0/26, 192.0.2.64/26, 203.0.113.7]
    port: 3306
  - name: dns
    interface: br1
    allow: 198.51.100.0/24
    port: 53
    proto: both
    to: 127.0.0.53
",
        "golden",
    )
    .unwrap();
    let grants = loopgate::policy::grants(&policy, &ExampleHost).unwrap();
    let text = loopgate::plan::render(loopgate::plan::ruleset(&grants).as_ref());
    let golden =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/two-interfaces.nft");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &text).unwrap();
    }
    assert_eq!(
        text,
        std::fs::read_to_string(&golden).unwrap(),
        "set UPDATE_GOLDEN=1 to accept a deliberate change"
    );
    nft_accepts(&text);
}

#[test]
fn dry_run_and_plan_print_the_change_and_change_nothing() {
    let (lab, _services) = lab_with_services();
    let before = lab.fingerprint();
    let out = lab.ok(&[
        "expose",
        "br0",
        "--allow",
        ALLOWED,
        "--port",
        "3306",
        "--dry-run",
    ]);
    assert!(
        out.contains("net.ipv4.conf.br0.route_localnet: 0 -> 1"),
        "{out}"
    );
    let table = &out[out
        .find("\ntable ip loopgate {")
        .expect("the table in nft syntax")..];
    nft_accepts(table);
    assert_eq!(lab.fingerprint(), before);

    let policy = lab.policy(
        "p.yaml",
        &format!("grants:\n  - interface: br0\n    allow: {ALLOWED}\n    port: 3306\n"),
    );
    let policy = policy.as_str();
    let out = lab.ok(&["plan", policy]);
    assert!(out.contains("add grant") && out.contains("0 -> 1"), "{out}");
    assert_eq!(lab.fingerprint(), before);
    lab.ok(&["apply", policy]);
    assert!(lab.ok(&["plan", policy]).contains("nothing to do"));
    // apply revokes what the file no longer lists.
    std::fs::write(lab.state_dir.join("p.yaml"), "grants: []\n").unwrap();
    lab.ok(&["apply", policy]);
    assert_eq!(lab.host.sysctl("net.ipv4.conf.br0.route_localnet"), "0");
    assert_eq!(tcp_request(&lab.container, sa(HOST_ADDR, 3306)), None);
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
        let table =
            stdout(
                &lab.host
                    .exec(&["nft", "list", "set", "ip", "loopgate", "allow_0_hosts"]),
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
fn help_texts_name_every_verb_and_flag() {
    let help =
        |args: &[&str]| stdout(&std::process::Command::new(BIN).args(args).output().unwrap());
    let top = help(&["--help"]);
    for word in [
        "expose",
        "revoke",
        "audit",
        "apply",
        "plan",
        "--netns",
        "Exit codes",
        "route_localnet",
    ] {
        assert!(top.contains(word), "--help lacks {word}: {top}");
    }
    let expose = help(&["expose", "--help"]);
    for word in [
        "--allow",
        "--port",
        "--proto",
        "--to",
        "--listen",
        "--name",
        "--dry-run",
        "127.0.0.0/8",
    ] {
        assert!(expose.contains(word), "expose --help lacks {word}");
    }
    let revoke = help(&["revoke", "--help"]);
    for word in ["--port", "--proto", "--name", "--all"] {
        assert!(revoke.contains(word), "revoke --help lacks {word}");
    }
    assert!(help(&["audit", "--help"]).contains("--json"));
    assert!(help(&["apply", "--help"]).contains("--dry-run"));
    assert!(help(&["plan", "--help"]).contains("FILE"));
}

/// After a crash, no interface may have route_localnet=1 without loopgate's guard.
fn assert_never_open_without_guard(lab: &Lab, point: &str) {
    if lab.host.sysctl("net.ipv4.conf.br0.route_localnet") == "1" {
        let table = NftTable::read(&lab.host);
        let dispatch = |chain: &str, rule: &str| {
            table
                .chains
                .get(chain)
                .is_some_and(|rules| rules.iter().any(|r| r.starts_with(rule)))
        };
        let gated = |chain: &str, gate: &str, map: &str| dispatch(chain, &format!("{gate} {map}"));
        let guard = |map: &str, rule: &str| {
            table
                .via(map, "\"br0\"")
                .is_some_and(|rules| rules.iter().any(|r| r.starts_with(rule)))
        };
        for (ok, what) in [
            (
                gated(
                    "raw_prerouting",
                    "ip daddr 127.0.0.0/8",
                    "iifname vmap @raw_ifaces",
                ) && gated(
                    "raw_prerouting",
                    "ip saddr 127.0.0.0/8",
                    "iifname vmap @raw_ifaces",
                ) && guard("raw_ifaces", "ip daddr 127.0.0.0/8 counter")
                    && guard("raw_ifaces", "ip saddr 127.0.0.0/8 counter"),
                "the raw guard",
            ),
            (
                dispatch("input", "ip daddr 127.0.0.0/8 iifname vmap @input_ifaces")
                    && table
                        .via("input_ifaces", "\"br0\"")
                        .and_then(|rules| rules.last())
                        .is_some_and(|r| r.starts_with("counter packets") && r.contains(" drop ")),
                "the input guard",
            ),
            (
                gated(
                    "postrouting",
                    "ip saddr 127.0.0.0/8",
                    "oifname vmap @post_ifaces",
                ) && guard("post_ifaces", "ip saddr 127.0.0.0/8 counter"),
                "the postrouting guard",
            ),
        ] {
            assert!(
                ok,
                "crash {point}: route_localnet=1 without {what}:\n{}",
                stdout(&lab.host.exec(&["nft", "list", "ruleset"]))
            );
        }
    }
}

#[test]
fn after_a_crash_at_any_step_audit_reports_it_and_the_repeat_converges() {
    let (lab, _services) = lab_with_services();
    let policy = lab.policy(
        "p.yaml",
        "grants:\n  - interface: br0\n    allow: [192.0.2.0/25]\n    port: 3306\n",
    );
    let expose = ["expose", "br0", "--allow", ALLOWED, "--port", "3306"];
    let revoke = ["revoke", "br0", "--port", "3306"];
    let apply = ["apply", policy.as_str()];
    let mut crashes = 0;
    for step in &STEPS[..STEPS.len() - 1] {
        let point = format!("after-{step}");
        for (args, reachable) in [
            (&expose[..], true),
            (&revoke[..], false),
            (&apply[..], true),
            (&revoke[..], false),
        ] {
            let out = lab.loopgate_env(args, &[("LOOPGATE_CRASH", point.as_str())]);
            assert_eq!(
                out.status.code(),
                None,
                "{point} {args:?}: expected a SIGKILL, got {}",
                stderr(&out)
            );
            crashes += 1;
            assert_never_open_without_guard(&lab, &point);
            let audit = lab.loopgate(&["audit"]);
            assert_eq!(
                audit.status.code(),
                Some(1),
                "{point} {args:?}: audit must report it: {}",
                stdout(&audit)
            );
            assert!(
                stdout(&audit).contains("[interrupted]"),
                "{}",
                stdout(&audit)
            );
            lab.ok(args);
            assert_never_open_without_guard(&lab, &point);
            assert_eq!(
                lab.loopgate(&["audit"]).status.code(),
                Some(0),
                "{point} {args:?}: not repaired"
            );
            let got = tcp_request(&lab.container, sa(HOST_ADDR, 3306));
            assert_eq!(got.is_some(), reachable, "{point} {args:?}");
        }
    }
    println!("crash points exercised: {crashes}");
    assert_eq!(crashes, 4 * (STEPS.len() - 1));
}

/// Runs `threads` workers, each doing `ops` random expose/revoke operations on its own
/// two ports, all at once against one namespace. Returns the ports that must be
/// published at the end (from each worker's own sequence of successful operations) and
/// the number of operations.
fn random_ops(
    lab: &std::sync::Arc<Lab>,
    threads: u16,
    ops: usize,
    seed: u64,
) -> (std::collections::BTreeSet<u16>, usize) {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let lab = lab.clone();
            std::thread::spawn(move || {
                let mut rng = seed ^ (u64::from(t) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let mut open = std::collections::BTreeSet::new();
                for _ in 0..ops {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let port = 4000 + t * 2 + (rng % 2) as u16;
                    let p = port.to_string();
                    let expose = rng % 3 != 0;
                    let args: Vec<&str> = if expose {
                        vec!["expose", "br0", "--allow", ALLOWED, "--port", &p]
                    } else {
                        vec!["revoke", "br0", "--port", &p]
                    };
                    let out = lab.loopgate(&args);
                    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
                    if expose {
                        open.insert(port);
                    } else {
                        open.remove(&port);
                    }
                }
                open
            })
        })
        .collect();
    let mut all = std::collections::BTreeSet::new();
    for h in handles {
        all.extend(h.join().expect("worker"));
    }
    (all, usize::from(threads) * ops)
}

/// Checks that the host ends exactly as the successful operations imply.
fn assert_published_exactly(lab: &Lab, expected: &std::collections::BTreeSet<u16>) {
    let out = lab.loopgate(&["audit", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let published: std::collections::BTreeSet<u16> = report["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| {
            i["grants"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["port"].as_u64().unwrap() as u16)
        })
        .collect();
    assert_eq!(&published, expected);
    let want = if expected.is_empty() { "0" } else { "1" };
    assert_eq!(lab.host.sysctl("net.ipv4.conf.br0.route_localnet"), want);
    let table = NftTable::read(&lab.host);
    for port in 4000..4032u16 {
        let dnat = table
            .via(
                "nat_grants",
                &format!("\"br0\" . {HOST_ADDR} . tcp . {port}"),
            )
            .is_some_and(|rules| {
                rules
                    .iter()
                    .any(|r| r.contains(&format!("dnat to 127.0.0.1:{port} ")))
            });
        assert_eq!(
            dnat,
            expected.contains(&port),
            "port {port}: {:?}",
            table.maps
        );
    }
}

#[test]
fn sixteen_concurrent_processes_end_exactly_where_their_operations_lead() {
    let lab = std::sync::Arc::new(Lab::new());
    let (expected, ops) = random_ops(&lab, 16, 13, 0x5eed);
    println!("concurrent operations: {ops}, published at the end: {expected:?}");
    assert!(ops >= 200);
    assert_published_exactly(&lab, &expected);
}

#[test]
fn two_namespaces_worked_on_in_parallel_never_interfere() {
    let a = std::sync::Arc::new(Lab::new());
    let b = std::sync::Arc::new(Lab::sharing_state_with(&a));
    let (a2, b2) = (a.clone(), b.clone());
    let ta = std::thread::spawn(move || random_ops(&a2, 8, 8, 1).0);
    let tb = std::thread::spawn(move || random_ops(&b2, 8, 8, 2).0);
    let (ea, eb) = (ta.join().unwrap(), tb.join().unwrap());
    assert_published_exactly(&a, &ea);
    assert_published_exactly(&b, &eb);
}

#[test]
fn a_flooding_neighbour_gets_nothing_through_while_allowed_clients_keep_working() {
    let (lab, services) = lab_with_services();
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3306"]);
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
    std::thread::sleep(std::time::Duration::from_millis(300));

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
fn concurrent_conflicting_exposes_serialise_to_one_winner() {
    let lab = std::sync::Arc::new(Lab::new());
    let handles: Vec<_> = (0..8u8)
        .map(|t| {
            let lab = lab.clone();
            std::thread::spawn(move || {
                let target = format!("127.0.0.{}", 1 + t % 2);
                (0..5)
                    .map(|_| {
                        let out = lab.loopgate(&[
                            "expose", "br0", "--allow", ALLOWED, "--port", "4100", "--to", &target,
                        ]);
                        let code = out.status.code();
                        assert!(
                            code == Some(0) || code == Some(2),
                            "{target}: {}",
                            stderr(&out)
                        );
                        if code == Some(2) {
                            assert!(
                                stderr(&out).contains("already published"),
                                "{}",
                                stderr(&out)
                            );
                        }
                        (target.clone(), code == Some(0))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<(String, bool)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let winners: std::collections::BTreeSet<&String> = results
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(t, _)| t)
        .collect();
    let conflicts = results.iter().filter(|(_, ok)| !ok).count();
    println!(
        "conflicting operations: {}, refused as conflicts: {conflicts}",
        results.len()
    );
    assert_eq!(
        winners.len(),
        1,
        "every successful expose must agree on one target: {winners:?}"
    );
    assert_eq!(
        conflicts, 20,
        "the 20 exposes naming the other target are refused"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&lab.loopgate(&["audit", "--json"]).stdout).unwrap();
    let br0 = report["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "br0")
        .unwrap()
        .clone();
    assert_eq!(
        br0["grants"][0]["to"].as_str().unwrap(),
        format!("{}:4100", winners.iter().next().unwrap())
    );
    assert_eq!(lab.loopgate(&["audit"]).status.code(), Some(0));
}

#[test]
fn audit_for_monitoring_parses_as_prometheus_and_counts_traffic() {
    let (lab, _services) = lab_with_services();
    lab.ok(&[
        "expose", "br0", "--allow", ALLOWED, "--port", "3306", "--name", "mysql",
    ]);
    for _ in 0..3 {
        assert_eq!(
            tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
            Some("tcp:3306")
        );
    }
    let text = lab.ok(&["audit", "--format", "prometheus"]);
    // Debian's python3-prometheus-client: the reference parser of the text format.
    let parser = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nfor f in p(sys.stdin.read()):\n    for s in f.samples:\n        print(s.name, sorted(s.labels.items()), s.value)\n";
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args(["-c", parser])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (scripts/install-deps.sh installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus parser rejected the output: {}\n{text}",
        stderr(&out)
    );
    let samples = stdout(&out);
    assert!(
        samples.contains("loopgate_guarded [('interface', 'br0')] 1.0"),
        "{samples}"
    );
    assert!(
        samples.contains("loopgate_grants [('interface', 'br0')] 1.0"),
        "{samples}"
    );
    assert!(
        samples.contains("loopgate_findings [('severity', 'critical')] 0.0"),
        "{samples}"
    );
    let dnat = samples
        .lines()
        .find(|l| {
            l.starts_with("loopgate_rule_packets_total")
                && l.contains("'nat_g")
                && l.contains("grant mysql")
        })
        .expect("a counter for the grant's DNAT rule");
    assert!(
        dnat.ends_with(" 3.0"),
        "three connections were DNATed: {dnat}"
    );
    assert!(
        !samples.contains("published addresses and ports"),
        "dispatch rules count nothing, so they export no series"
    );
}

#[test]
fn completions_and_man_page_are_generated_from_the_cli() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = run(&["completions", shell]);
        assert!(
            script.contains("expose") && script.contains("allow"),
            "{shell}"
        );
    }
    let dir = std::env::temp_dir().join(format!("loopgate-completion-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bash = dir.join("loopgate.bash");
    std::fs::write(&bash, run(&["completions", "bash"])).unwrap();
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&bash)
        .output()
        .unwrap();
    assert!(check.status.success(), "bash -n: {}", stderr(&check));
    let man = run(&["man"]);
    assert!(
        man.contains(".TH loopgate 1") && man.contains("expose"),
        "{man}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The boot unit's command line, with the policy directory and binary of the test.
fn boot_command(config: &std::path::Path) -> Vec<String> {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/loopgate.service"),
    )
    .unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart in loopgate.service");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/bin/loopgate"));
    words
        .map(|w| {
            if w == "/etc/loopgate" {
                config.display().to_string()
            } else {
                w.to_string()
            }
        })
        .collect()
}

#[test]
fn a_persisted_policy_applied_as_at_boot_restores_the_traffic_matrix() {
    let config = std::env::temp_dir().join(format!("loopgate-etc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&config);
    std::fs::create_dir_all(&config).unwrap();
    // The admin's own file, and one for an interface that does not exist at boot.
    std::fs::write(config.join("admin.yaml"), "grants:\n  - name: dns\n    interface: br0\n    allow: 192.0.2.0/25\n    port: 5353\n    proto: udp\n  - interface: later0\n    allow: 192.0.2.0/25\n    port: 1\n").unwrap();
    let env = [("LOOPGATE_CONFIG_DIR", config.to_str().unwrap())];
    {
        let (lab, _services) = lab_with_services();
        let out = lab.loopgate_inside(
            &[
                "expose",
                "br0",
                "--allow",
                ALLOWED,
                "--port",
                "3306",
                "--persist",
            ],
            &env,
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let persisted = std::fs::read_to_string(config.join("loopgate.yaml")).unwrap();
        assert!(
            persisted.contains("port: 3306") && !persisted.contains("5353"),
            "{persisted}"
        );
    } // the "machine" goes down: namespaces and state are gone

    let (lab, services) = lab_with_services();
    let boot = boot_command(&config);
    let boot: Vec<&str> = boot.iter().map(String::as_str).collect();
    let out = lab.loopgate_env(&boot, &env);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("\"later0\" does not exist"),
        "{}",
        stderr(&out)
    );
    // The traffic matrix of the core tests holds after the "reboot".
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    assert_eq!(
        udp_request(&lab.container, sa(HOST_ADDR, 5353)).as_deref(),
        Some("udp:5353")
    );
    assert_eq!(tcp_request(&lab.neighbour, sa(HOST_ADDR, 3306)), None);
    assert_eq!(tcp_request(&lab.container, sa(HOST_ADDR, 3307)), None);
    Lab::route_loopback_via_host(&lab.container);
    let opens = passive_opens(&lab.host);
    fire_tcp(&lab.container, sa(LO, 3307));
    fire_udp(&lab.container, sa(LO, 5354));
    send_spoofed_udp(
        &lab.neighbour,
        Ipv4Addr::new(127, 0, 0, 2),
        sa(HOST_ADDR, 5400),
        b"forged",
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(passive_opens(&lab.host), opens);
    let seen = services.udp_seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(
            |(port, from)| *port == 5353 && from.ip().to_string() == CONTAINER_ADDR.to_string()
        ),
        "{seen:?}"
    );
    assert_eq!(lab.loopgate(&["audit"]).status.code(), Some(0));
    // Applying the same directory again changes nothing.
    assert!(stdout(&lab.loopgate_env(&boot, &env)).contains("nothing to do"));

    // revoke --persist drops it from loopgate.yaml; a grant kept by the admin's file is
    // named in a warning.
    let out = lab.loopgate_inside(&["revoke", "br0", "--all", "--persist"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("grant dns is still defined in another file"),
        "{}",
        stderr(&out)
    );
    let persisted = std::fs::read_to_string(config.join("loopgate.yaml")).unwrap();
    assert!(persisted.contains("grants: []"), "{persisted}");
    let _ = std::fs::remove_dir_all(&config);
}

/// Kernel image of loopgate's table in `ns`, read with the library from a thread in it.
fn table_image(ns: &Netns) -> Option<loopgate::kernel::nft::TableImage> {
    ns.enter(|| loopgate::kernel::nft::snapshot(None).unwrap().image())
}

#[test]
fn watch_restores_a_flushed_ruleset_within_a_second() {
    let (lab, _services) = lab_with_services();
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3306"]);
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
    assert_eq!(lab.loopgate(&["audit"]).status.code(), Some(0));
}

#[test]
fn watch_reopens_a_recreated_interface_only_after_its_guard_is_verified() {
    let (lab, _services) = lab_with_services();
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3306"]);
    let want = table_image(&lab.host).expect("table");
    let _watch = Watch::start(&lab);
    // Sample every 10 ms from inside the namespace: route_localnet of br0 and the table.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (stop2, host, want2) = (stop.clone(), lab.host.handle(), want.clone());
    let sampler = std::thread::spawn(move || {
        host.enter(move || {
            let (mut samples, mut unguarded) = (0, 0);
            while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
                // The table is read before and after the sysctl: only if it is wrong on
                // both sides of a route_localnet=1 reading was the interface open unguarded.
                let before = loopgate::kernel::nft::snapshot(None).unwrap().image();
                let open = std::fs::read_to_string("/proc/sys/net/ipv4/conf/br0/route_localnet")
                    .is_ok_and(|v| v.trim() == "1");
                let after = loopgate::kernel::nft::snapshot(None).unwrap().image();
                samples += 1;
                if open && before.as_ref() != Some(&want2) && after.as_ref() != Some(&want2) {
                    unguarded += 1;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            (samples, unguarded)
        })
    });
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
    std::thread::sleep(std::time::Duration::from_millis(200));
    lab.host
        .ip(&format!("link add br0 address {mac} type bridge"));
    lab.host.ip(&format!("addr add {HOST_ADDR}/24 dev br0"));
    lab.host.ip("link set vc master br0");
    lab.host.ip("link set vn master br0");
    lab.host.ip("link set br0 up");
    let took = time_until(|| lab.host.sysctl("net.ipv4.conf.br0.route_localnet") == "1")
        .expect("route_localnet restored");
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (samples, unguarded) = sampler.join().unwrap();
    println!("watch: re-created br0 reopened after {} ms; {samples} samples, {unguarded} with route_localnet=1 and no guard", took.as_millis());
    assert_eq!(unguarded, 0);
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
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3306"]);
    let watch = Watch::start(&lab);
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "0");
    let took = time_until(|| lab.host.sysctl("net.ipv4.conf.br0.route_localnet") == "1")
        .expect("restored");
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
        format!("grants:\n  - interface: br0\n    allow: [{ALLOWED}]\n    port: 3306\n"),
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
    // watch runs: a flush is repaired.
    let want = table_image(&lab.host).unwrap();
    lab.host.exec(&["nft", "flush", "ruleset"]);
    time_until(|| table_image(&lab.host).as_ref() == Some(&want))
        .expect("watch restored the table");
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
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3306"]);
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    let audit = lab.loopgate(&["audit"]);
    assert!(
        stdout(&audit).contains("[interface-missing]"),
        "{}",
        stdout(&audit)
    );
    lab.ok(&["revoke", "br1", "--all"]);
    assert_eq!(lab.loopgate(&["audit"]).status.code(), Some(0));
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
    for (i, (iface, _, client)) in nets.iter().enumerate() {
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
    }
    lab.ok(&["apply", &lab.policy("many.yaml", &policy)]);
    assert_eq!(lab.loopgate(&["audit"]).status.code(), Some(0));
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

    lab.ok(&["revoke", "br1", "--all"]);
    assert_eq!(tcp_request(&c1, sa(nets[1].1, 4000)), None);
    assert_eq!(lab.host.sysctl("net.ipv4.conf.br1.route_localnet"), "0");
    for ((iface, addr, _), client) in [(nets[0], clients[0]), (nets[2], clients[2])] {
        assert_eq!(
            tcp_request(client, sa(addr, 4099)).as_deref(),
            Some("tcp:5009"),
            "{iface} after revoking br1"
        );
    }
    assert_eq!(lab.loopgate(&["audit"]).status.code(), Some(0));
}

/// `audit` skips reading a large set back only while the nftables generation has not
/// moved since loopgate wrote it; any commit anywhere makes it read every element, and
/// an element added by hand is found.
#[test]
fn audit_trusts_unread_elements_only_while_the_nftables_generation_stands_still() {
    let (lab, _services) = lab_with_services();
    let many: Vec<String> = (0..2000u32)
        .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
        .chain([ALLOWED.to_string()])
        .collect();
    let allow = many.join(",");
    lab.ok(&["expose", "br0", "--allow", &allow, "--port", "3306"]);
    let audit = |args: &[&str]| {
        let out = lab.loopgate(&[&["audit", "--json"], args].concat());
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            out.status.code(),
            report["table"]["elements_read_back"].as_bool().unwrap(),
            report["table"]["differences"].to_string(),
        )
    };
    assert_eq!(audit(&[]), (Some(0), false, "[]".into()), "vouched");
    assert_eq!(audit(&["--deep"]), (Some(0), true, "[]".into()), "--deep");

    // Any commit, even to another table, moves the generation: everything is read.
    lab.host.exec(&["nft", "add", "table", "ip", "other"]);
    assert_eq!(audit(&[]), (Some(0), true, "[]".into()), "generation moved");
    // A command that finds the table intact vouches for it again.
    assert!(lab
        .ok(&["expose", "br0", "--allow", &allow, "--port", "3306"])
        .contains("nothing to do"));
    assert_eq!(audit(&[]), (Some(0), false, "[]".into()), "vouched again");

    lab.host.exec(&[
        "nft",
        "add",
        "element",
        "ip",
        "loopgate",
        "allow_0",
        "{ 203.0.113.99 }",
    ]);
    let (code, read_back, differences) = audit(&[]);
    assert_eq!((code, read_back), (Some(1), true));
    assert!(
        differences.contains("unexpected element in allow_0: cb007163"),
        "{differences}"
    );
    // Repaired by the next expose, which writes (and vouches for) the table anew.
    lab.ok(&["expose", "br0", "--allow", &allow, "--port", "3306"]);
    assert_eq!(audit(&[]), (Some(0), false, "[]".into()), "repaired");
    assert!(tcp_request(&lab.container, sa(HOST_ADDR, 3306)).is_some());
}
