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
