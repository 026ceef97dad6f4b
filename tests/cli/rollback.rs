//! Topic: a failure at any step of a transaction (failpoints), a kernel lacking a
//! feature, or a missing capability leaves ruleset, sysctls and state exactly as they were.

use super::*;

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
    let out = lab.loopgate_env(&EXPOSE_DEFAULT, &[("LOOPGATE_FAILPOINT", "probe")]);
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
    lab.expose_default();
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

#[test]
fn every_failpoint_of_expose_revoke_and_apply_rolls_back() {
    let (lab, _services) = lab_with_services();
    let policy = lab.policy(
        "p.yaml",
        "grants:\n  - interface: br0\n    allow: [192.0.2.0/25]\n    port: [3306, 3307]\n",
    );
    let mut exercised = 0;
    let expose = EXPOSE_DEFAULT;
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
        lab.assert_audit(0, &[]);
    }
    println!("failpoints exercised: {exercised}");
    assert_eq!(exercised, 3 * (2 * STEPS.len() + 2));
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3307)).as_deref(),
        Some("tcp:3307")
    );
}

/// A long allow list lives in a file of its own (state format 3). A change of it that
/// fails at any step, after its commit too, puts the state file back byte for byte,
/// and the list that file refers to is still there (audit reads it); the old list's
/// file goes with the change that commits.
#[test]
fn a_failed_change_of_a_long_allow_list_leaves_a_state_that_reads() {
    let (lab, _services) = lab_with_services();
    let old = lab.long_list_policy("a.yaml", 0);
    let new = lab.long_list_policy("b.yaml", 1);
    lab.ok(&["apply", &old]);
    let committed = lab.allow_list_files();
    assert_eq!(committed.len(), 1, "{committed:?}");
    for step in STEPS {
        for fp in [step.to_string(), format!("after-{step}")] {
            assert_rolls_back(&lab, &["apply", &new], &fp, &format!("step {step}"));
            assert!(
                lab.allow_list_files().contains(&committed[0]),
                "{fp}: {:?}",
                lab.allow_list_files()
            );
            lab.assert_audit(0, &[]);
        }
    }
    lab.ok(&["apply", &new]);
    let now = lab.allow_list_files();
    assert_eq!(
        now.len(),
        1,
        "the old list and the rollbacks' leftovers go: {now:?}"
    );
    assert_ne!(now, committed);
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
}

#[test]
fn a_failed_revoke_keeps_open_connections_alive() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
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
    lab.expose_default();
    lab.host.exec(&[
        "nft",
        "delete",
        "rule",
        "ip",
        "loopgate",
        "post_if_br0",
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
    lab.assert_audit(0, &[]);
    assert_eq!(lab.host.sysctl("net.ipv4.conf.br1.route_localnet"), "1");
}

fn postrouting_handle(lab: &Lab) -> String {
    let out = stdout(&lab.host.exec(&[
        "nft",
        "-a",
        "list",
        "chain",
        "ip",
        "loopgate",
        "post_if_br0",
    ]));
    out.lines()
        .find_map(|l| l.split("# handle ").nth(1).filter(|_| l.contains("drop")))
        .expect("a rule handle")
        .trim()
        .to_string()
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
