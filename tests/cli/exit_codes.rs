//! Topic: exit codes a script can rely on. A `revoke` or `unguard` that matches
//! nothing exits 1 with one line saying so (and changes nothing); what does match
//! still exits 0.

use super::*;

/// Runs loopgate; insists on exit `code`, nothing on stdout, one line on stderr that
/// contains every one of `needles` and does not suggest `--all`, and no change to the
/// host. Returns that line.
#[track_caller]
fn refused(lab: &Lab, args: &[&str], code: i32, needles: &[&str]) -> String {
    let before = lab.fingerprint();
    let out = lab.loopgate(args);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "loopgate {args:?}: stdout {} stderr {err}",
        stdout(&out)
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("loopgate: error: "), "{err}");
    assert!(!err.contains("loopgate: loopgate:"), "{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?} does not say {n:?}: {err}");
    }
    assert!(!err.contains("--all"), "suggests --all: {err}");
    assert_eq!(stdout(&out), "", "{args:?}");
    assert_eq!(lab.fingerprint(), before, "{args:?} changed the host");
    err
}

#[test]
fn revoke_that_matches_nothing_exits_1_and_changes_nothing() {
    let lab = Lab::new();
    // Nothing at all yet.
    refused(
        &lab,
        &["revoke", "br0", "--port", "3306"],
        1,
        &["nothing matched", "br0", "3306", "no grants"],
    );
    lab.expose_default();
    for (args, says) in [
        // A port that is not published.
        (
            vec!["revoke", "br0", "--port", "5432"],
            vec!["nothing matched", "5432", "br0 tcp/3306"],
        ),
        // The right port, the other protocol.
        (
            vec!["revoke", "br0", "--port", "3306", "--proto", "udp"],
            vec!["nothing matched", "3306/udp"],
        ),
        // An unknown name.
        (
            vec!["revoke", "br0", "--name", "nosuch"],
            vec!["nothing matched", "\"nosuch\""],
        ),
        // An interface that does not exist, or has no grants.
        (
            vec!["revoke", "br9", "--port", "3306"],
            vec!["nothing matched", "br9"],
        ),
        (
            vec!["revoke", "br9", "--all"],
            vec!["nothing matched", "br9"],
        ),
        // A runtime network without grants.
        (
            vec!["revoke", "--docker-network", "myproj_default", "--all"],
            vec!["nothing matched", "docker network myproj_default"],
        ),
    ] {
        refused(&lab, &args, 1, &says);
    }
    // Control: what matches is revoked, exit 0.
    lab.ok(&["revoke", "br0", "--port", "3306"]);
    assert_eq!(lab.host.sysctl("net.ipv4.conf.br0.route_localnet"), "0");
    // And revoking it twice is a match no more.
    refused(
        &lab,
        &["revoke", "br0", "--port", "3306"],
        1,
        &["nothing matched"],
    );
    // `revoke --all` alone takes back whatever there is, nothing included: exit 0.
    lab.ok(&["revoke", "--all"]);
}

#[test]
fn a_grant_served_by_a_pattern_is_named_when_its_interface_is_revoked() {
    let lab = Lab::new();
    lab.ok(&["expose", "br*", "--allow", ALLOWED, "--port", "3306"]);
    let line = refused(
        &lab,
        &["revoke", "br0", "--port", "3306"],
        1,
        &["nothing matched", "pattern \"br*\""],
    );
    println!("{line}");
}

#[test]
fn unguard_that_matches_nothing_exits_1_and_changes_nothing() {
    let lab = Lab::new();
    refused(
        &lab,
        &["unguard", "br0"],
        1,
        &["nothing matched", "br0", "nothing is guarded"],
    );
    lab.ok(&["guard", "br*"]);
    refused(
        &lab,
        &["unguard", "br0"],
        1,
        &["nothing matched", "pattern \"br*\""],
    );
    refused(&lab, &["unguard", "eth7"], 1, &["nothing matched", "eth7"]);
    // Control: the pattern itself is unguarded, exit 0.
    lab.ok(&["unguard", "br*"]);
}

/// A fake `docker` that knows the networks `names` (no bridge of its own behind them:
/// only the names matter here) and says "No such network" of any other, as dockerd
/// does.
fn docker_knowing(lab: &Lab, names: &[&str]) -> String {
    lab.fake_cli_script(
        "docker",
        &format!(
            "case \"$2\" in\n\
             ls) printf '%s\\n' {list} ;;\n\
             inspect) echo \"Error response from daemon: network $4 not found\" >&2; exit 1 ;;\n\
             esac\n",
            list = names.join(" ")
        ),
    )
}

#[test]
fn a_mistyped_runtime_network_is_refused_naming_those_that_exist() {
    let lab = Lab::new();
    let path = docker_knowing(&lab, &["bridge", "host", "none", "myproj_default"]);
    let env = [("PATH", path.as_str())];
    let before = lab.fingerprint();
    let args = [
        "expose",
        "--docker-network",
        "myproj_defualt",
        "--port",
        "5432",
    ];
    let out = lab.loopgate_env(&args, &env);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    for n in [
        "\"myproj_defualt\" does not exist",
        "closest first: myproj_default, ",
        "--pending-ok",
    ] {
        assert!(err.contains(n), "{n:?} not in {err}");
    }
    assert_eq!(lab.fingerprint(), before, "a refusal changes nothing");
    // Asked for explicitly: pending, and audit names it (never a blank name).
    let mut pending = args.to_vec();
    pending.push("--pending-ok");
    let out = lab.loopgate_env(&pending, &env);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("on docker network myproj_defualt is pending"),
        "{err}"
    );
    assert!(!err.contains(" on  "), "{err}");
    let audit = stdout(&lab.loopgate_env(&["audit"], &env));
    assert!(
        audit.contains("on docker network myproj_defualt is pending"),
        "{audit}"
    );
}

/// `audit` with `LOOPGATE_PENDING_GRACE=grace` (and `env`): exit code and report.
fn audit_with_grace(lab: &Lab, grace: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut env = env.to_vec();
    env.push(("LOOPGATE_PENDING_GRACE", grace));
    let out = lab.loopgate_env(&["audit"], &env);
    (out.status.code(), stdout(&out))
}

/// A grant whose pinned `--listen` address is gone cannot work: after the grace
/// period it is a warning (exit 1), never info for ever.
#[test]
fn a_grant_whose_pinned_address_is_gone_is_a_warning_after_the_grace_period() {
    let (lab, _services) = lab_with_services();
    lab.ok(&[
        "expose",
        "br0",
        "--allow",
        ALLOWED,
        "--port",
        "3306",
        "--listen",
        "192.0.2.1",
    ]);
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3307"]);
    // br0 re-created with another address, as a runtime may do.
    lab.host.ip("addr del 192.0.2.1/24 dev br0");
    lab.host.ip("addr add 192.0.2.2/24 dev br0");
    // Any later command resolves the pinned grant again: pending.
    lab.ok(&["revoke", "br0", "--port", "3307"]);
    // Within the grace period: info, exit 0.
    let (code, text) = audit_with_grace(&lab, "60", &[]);
    assert!(text.contains("info [pending]"), "{text}");
    assert!(
        text.contains("192.0.2.1 is not an address of br0"),
        "{text}"
    );
    assert_eq!(code, Some(0), "{text}");
    // Past it: a warning, exit 1, saying what to do.
    let (code, text) = audit_with_grace(&lab, "0", &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("WARNING [pending]"), "{text}");
    assert!(text.contains("cannot work as asked"), "{text}");
    // The grace runs from the first audit that saw it pending: waited out for real
    // with a grace of 1 s.
    assert!(
        time_until(|| audit_with_grace(&lab, "1", &[]).0 == Some(1)).is_some(),
        "pending since the first audit above, for more than 1 s"
    );
}

/// A policy's runtime network that was never there (a typo) is a warning after the
/// grace period; one that was served and is gone (a project that is down) stays info.
#[test]
fn a_mistyped_network_in_a_policy_is_a_warning_after_the_grace_period() {
    let (lab, _services) = lab_with_services();
    let net = r#"[{"Name":"myproj_default","Id":"0123456789abcdef0123","Driver":"bridge","Options":{"com.docker.network.bridge.name":"br0"},"IPAM":{"Config":[{"Subnet":"192.0.2.0/24","Gateway":"192.0.2.1"}]}}]"#;
    let up = lab.fake_cli_script(
        "docker",
        &format!(
            "case \"$4\" in\n myproj_default) cat <<'JSON'\n{net}\nJSON\n;;\n *) echo \"Error response from daemon: network $4 not found\" >&2; exit 1 ;;\nesac\n"
        ),
    );
    let policy = lab.policy(
        "compose.yaml",
        "grants:\n  - docker_network: myproj_default\n    port: 3306\n  - docker_network: myproj_defualt\n    port: 3307\n",
    );
    let out = lab.loopgate_env(&["apply", &policy], &[("PATH", &up)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("on docker network myproj_defualt is pending"),
        "{}",
        stderr(&out)
    );
    // Within the grace period: info.
    let (code, text) = audit_with_grace(&lab, "60", &[("PATH", &up)]);
    assert_eq!(code, Some(0), "{text}");
    // Past it: the typo is a warning, exit 1.
    let (code, text) = audit_with_grace(&lab, "0", &[("PATH", &up)]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("WARNING [pending] myproj_defualt")
            || text.contains("WARNING [pending] docker network myproj_defualt"),
        "{text}"
    );
    assert!(text.contains("a typo?"), "{text}");
    assert!(
        !text.contains("WARNING [pending] docker network myproj_default "),
        "{text}"
    );
    // The project goes down: its network is gone. That is waiting, not a typo.
    let down = lab.fake_cli_script(
        "docker",
        "echo \"Error response from daemon: network $4 not found\" >&2\nexit 1\n",
    );
    let (_, text) = audit_with_grace(&lab, "0", &[("PATH", &down)]);
    let line = text
        .lines()
        .find(|l| l.contains("docker network myproj_default tcp/3306") && l.contains("[pending]"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.starts_with("info [pending]"), "{line}");
}
