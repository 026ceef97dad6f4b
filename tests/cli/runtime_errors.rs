//! Topic: what loopgate refuses about a runtime's network before changing anything: a
//! runtime CLI that is not installed, a network of another driver, an IPv6-only
//! network, an unknown runtime in a policy. Each refusal is one line naming the value,
//! exit 2, and the ruleset, every route_localnet and the state stay exactly as they
//! were. The runtime's answers come from a fake CLI (the real runtimes are exercised in
//! `runtime_grants`); a network that does not exist yet is pending with `--pending-ok`
//! (refused without it: see `exit_codes`).

use super::*;

/// Runs `args` with `path` as PATH and checks the refusal: exit 2, one line that names
/// every needle, and nothing changed.
fn refused(lab: &Lab, args: &[&str], path: &str, needles: &[&str]) {
    let before = lab.fingerprint();
    let out = lab.loopgate_env(args, &[("PATH", path)]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: one line: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "{args:?}: {n:?} not in {err}");
    }
    assert_eq!(lab.fingerprint(), before, "{args:?} changed the system");
}

#[test]
fn a_runtime_network_loopgate_cannot_serve_is_refused_by_name_and_changes_nothing() {
    let (lab, _services) = lab_with_services();
    // Something in force first, so that "nothing changed" covers a real table.
    lab.ok(&["expose", "br0", "--allow", "192.0.2.0/25", "--port", "3306"]);

    let empty = lab.state_dir.join("no-runtime-here");
    std::fs::create_dir_all(&empty).unwrap();
    let no_cli = empty.display().to_string();
    refused(
        &lab,
        &[
            "expose",
            "--docker-network",
            "myproj_default",
            "--port",
            "5432",
        ],
        &no_cli,
        &["docker", "installed"],
    );
    refused(
        &lab,
        &["expose", "--podman-network", "lgpod", "--port", "5432"],
        &no_cli,
        &["podman", "installed"],
    );

    let macvlan = lab.fake_cli(
        "docker",
        r#"[{"Name":"mv","Id":"0123456789abcdef","Driver":"macvlan","IPAM":{"Config":[{"Subnet":"203.0.113.0/24"}]}}]"#,
    );
    refused(
        &lab,
        &["expose", "--docker-network", "mv", "--port", "5432"],
        &macvlan,
        &["mv", "macvlan"],
    );

    let six = lab.fake_cli(
        "podman",
        r#"[{"name":"six","driver":"bridge","network_interface":"podman9","subnets":[{"subnet":"2001:db8::/64","gateway":"2001:db8::1"}]}]"#,
    );
    refused(
        &lab,
        &["expose", "--podman-network", "six", "--port", "5432"],
        &six,
        &["six", "IPv6"],
    );

    let path = std::env::var("PATH").unwrap_or_default();
    let policy = lab.policy(
        "lxc.yaml",
        "grants:\n  - lxc_network: mynet\n    port: 5432\n",
    );
    refused(&lab, &["apply", &policy], &path, &["lxc_network"]);
}

#[test]
fn a_runtime_network_that_does_not_exist_yet_is_pending_when_asked_for() {
    let (lab, _services) = lab_with_services();
    let none = lab.fake_cli("docker", "[]");
    let out = lab.loopgate_env(
        &[
            "expose",
            "--docker-network",
            "later_default",
            "--pending-ok",
            "--port",
            "5432",
        ],
        &[("PATH", &none)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (code, audit) = {
        let out = lab.loopgate_env(&["audit"], &[("PATH", &none)]);
        (out.status.code(), stdout(&out))
    };
    assert!(
        audit.contains("later_default") && audit.contains("does not list it now"),
        "audit shows the pending grant (exit {code:?}):\n{audit}"
    );
    assert!(
        !lab.host
            .exec_status(&["nft", "list", "table", "ip", "loopgate"])
            .status
            .success()
            || !stdout(&lab.host.exec(&["nft", "list", "table", "ip", "loopgate"]))
                .contains("5432"),
        "nothing is published for a network that does not exist"
    );
}
