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
    // Named once: not "docker network X tcp/5432 on docker network X".
    assert!(
        err.contains("docker network myproj_defualt tcp/5432 is pending"),
        "{err}"
    );
    assert!(
        !err.contains(" on  ") && !err.contains(" on docker network"),
        "{err}"
    );
    let audit = stdout(&lab.loopgate_env(&["audit"], &env));
    assert!(
        audit.contains("docker network myproj_defualt tcp/5432 is pending")
            && audit.contains("closest first: myproj_default")
            && !audit.contains(" on docker network"),
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
            "case \"$4\" in\n myproj_default) cat <<'JSON'\n{net}\nJSON\n;;\n '{{{{.Name}}}}') echo other_net; echo myproj_default ;;\n *) echo \"Error response from daemon: network $4 not found\" >&2; exit 1 ;;\nesac\n"
        ),
    );
    let policy = lab.policy(
        "compose.yaml",
        "grants:\n  - docker_network: myproj_default\n    port: 3306\n  - docker_network: myproj_defualt\n    port: 3307\n",
    );
    let out = lab.loopgate_env(&["apply", &policy], &[("PATH", &up)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Said once (not "... on docker network myproj_defualt"), with the names that exist.
    assert!(
        stderr(&out).contains(
            "docker network myproj_defualt tcp/3307 is pending: `docker network ls` does not list it now (those that exist, closest first: myproj_default, other_net)"
        ),
        "{}",
        stderr(&out)
    );
    let plan = lab.loopgate_env(&["plan", &policy], &[("PATH", &up)]);
    assert!(
        stdout(&plan).contains("closest first: myproj_default"),
        "{}",
        stdout(&plan)
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
    // It may as well be a project that is down (what was served is forgotten at
    // reboot); a policy's grant is corrected in its file, not revoked.
    let line = text
        .lines()
        .find(|l| l.contains("WARNING [pending] docker network myproj_defualt"))
        .unwrap();
    assert!(
        line.contains("(a typo, or the project is down)")
            && line.contains("closest first: myproj_default, other_net")
            && line.contains(&format!("correct it in {policy}"))
            && !line.contains("revoke"),
        "{line}"
    );
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

/// watch following a policy with a typo'd network logs it: once when it becomes
/// pending (with why), once when the grace period is over (a warning), never again on
/// later passes.
#[test]
fn watch_logs_a_pending_grant_once_and_warns_once_after_the_grace() {
    let lab = Lab::new();
    let path = docker_knowing(&lab, &["bridge", "myproj_default"]);
    let dir = lab.state_dir.join("policy");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("a.yaml"),
        "grants:\n  - docker_network: myproj_defualt\n    port: 5432\n",
    )
    .unwrap();
    let env = vec![
        ("PATH".to_string(), path.clone()),
        ("LOOPGATE_PENDING_GRACE".to_string(), "1".to_string()),
    ];
    let watch = Watch::start_env(
        &lab,
        &["--no-hold", "--policy", dir.to_str().unwrap()],
        &env,
    );
    let pending = "docker network myproj_defualt tcp/5432 is pending: `docker network ls` does not list it now";
    let warned = "warning: docker network myproj_defualt tcp/5432 has been pending for";
    let wait = |needle: &str| {
        let start = std::time::Instant::now();
        while !watch.log().contains(needle) {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "{needle:?} not logged: {}",
                watch.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    wait(pending);
    wait(warned);
    let log = watch.log();
    assert!(log.contains("(a typo, or the project is down)"), "{log}");
    // Later passes (a second file, pending too) do not repeat the first grant's lines.
    std::fs::write(
        dir.join("b.yaml"),
        "grants:\n  - docker_network: other_typo\n    port: 5433\n",
    )
    .unwrap();
    wait("docker network other_typo tcp/5433 has been pending for");
    let log = watch.log();
    assert_eq!(log.matches(pending).count(), 1, "{log}");
    assert_eq!(log.matches(warned).count(), 1, "{log}");
}

/// What a command prints says what changed in the user's terms, pending grants
/// included; `revoke --name N` alone revokes N wherever it is (exit 1 when nothing is
/// called N).
#[test]
fn pending_grants_added_and_removed_are_named_and_revoke_by_name_alone_works() {
    let lab = Lab::new();
    let path = docker_knowing(&lab, &["bridge", "myproj_default"]);
    let env = [("PATH", path.as_str())];
    let run = |args: &[&str]| {
        let out = lab.loopgate_env(args, &env);
        (out.status.code(), stdout(&out), stderr(&out))
    };
    for port in ["5432", "5433", "5434"] {
        let (code, out, err) = run(&[
            "expose",
            "--docker-network",
            "myproj_defualt",
            "--port",
            port,
            "--pending-ok",
        ]);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(
            out.trim(),
            format!("add pending grant docker network myproj_defualt tcp/{port} (served once it can be)"),
            "one port asked, one named"
        );
    }
    let before = lab.fingerprint();
    let (code, out, err) = run(&["revoke", "--name", "nosuch"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("nothing matched") && err.contains("\"nosuch\""),
        "{err}"
    );
    assert_eq!(lab.fingerprint(), before);
    let (code, out, err) = run(&["revoke", "--name", "myproj_defualt-tcp-5433"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out.trim(),
        "remove pending grant docker network myproj_defualt tcp/5433"
    );
    let (code, out, err) = run(&[
        "revoke",
        "--docker-network",
        "myproj_defualt",
        "--port",
        "5432",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out.trim(),
        "remove pending grant docker network myproj_defualt tcp/5432"
    );
    let (code, out, err) = run(&["revoke", "--all"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out.trim(),
        "remove pending grant docker network myproj_defualt tcp/5434"
    );
}

/// A pending network grant in `audit --json` carries its `network` object, as grants do.
#[test]
fn a_pending_network_grant_has_its_network_in_json() {
    let lab = Lab::new();
    let path = docker_knowing(&lab, &["bridge"]);
    let env = [("PATH", path.as_str())];
    let out = lab.loopgate_env(
        &[
            "expose",
            "--docker-network",
            "myproj_default",
            "--port",
            "5432",
            "--pending-ok",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = lab.loopgate_env(&["audit", "--json"], &env);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &report["pending"][0];
    assert_eq!(p["network"]["runtime"], "docker", "{p}");
    assert_eq!(p["network"]["name"], "myproj_default", "{p}");
    assert_eq!(p["interface"], "docker network myproj_default", "{p}");
}
