//! Topic: one owner per grant (issue 19, sections 1 and 2). A grant a policy file asks
//! for belongs to that file: `revoke` or `expose` that would change it without
//! `--persist` is refused (exit 2, one line naming the file and the grant), instead of
//! a success a following watch undoes 100 ms later; with `--persist` the file changes,
//! so the change lasts, with a watch and without. `apply` of another policy while a
//! watch follows one is refused. `--persist` records what was asked for, and `plan`
//! of the directory right after has nothing to do.
//!
//! `--persist` is refused with `--netns`, so the persisting commands run inside the
//! lab's host namespace (`Lab::loopgate_inside`) with `LOOPGATE_CONFIG_DIR` at a policy
//! directory in the lab's state directory.

use super::*;

/// A policy directory in the lab's state directory holding `mysql.yaml` (the admin's,
/// with comments) publishing br0:3306 and br0:5353/udp; returns its path.
fn policy_dir(lab: &Lab) -> std::path::PathBuf {
    let dir = lab.state_dir.join("etc-loopgate");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("mysql.yaml"),
        format!(
            "# the admin's own file\ngrants:\n  # the database\n  - name: mysql-br0\n    interface: br0\n    allow: {ALLOWED}   # the app\n    port: 3306\n\n  # dns\n  - name: dns\n    interface: br0\n    allow: {ALLOWED}\n    port: 5353\n    proto: udp\n"
        ),
    )
    .unwrap();
    dir
}

fn config_env(dir: &std::path::Path) -> [(&'static str, &str); 1] {
    [("LOOPGATE_CONFIG_DIR", dir.to_str().unwrap())]
}

/// Exactly one `loopgate: error:` line on stderr; returns it.
fn the_error(out: &std::process::Output) -> String {
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    lines[0].to_string()
}

/// A refusal: exit 2, one line naming `needles`, nothing changed.
#[track_caller]
fn assert_refused(lab: &Lab, out: std::process::Output, before: &str, needles: &[&str]) {
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let line = the_error(&out);
    for n in needles {
        assert!(line.contains(n), "{n:?} not in {line}");
    }
    assert_eq!(
        lab.fingerprint(),
        before,
        "a refused command changed nothing"
    );
}

#[test]
fn changing_a_policy_grant_without_persist_is_refused_naming_its_file() {
    let (lab, _services) = lab_with_services();
    let dir = policy_dir(&lab);
    let file = std::fs::canonicalize(dir.join("mysql.yaml")).unwrap();
    let file = file.to_str().unwrap();
    lab.ok(&["apply", dir.to_str().unwrap()]);
    let works = || tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref() == Some("tcp:3306");
    assert!(works(), "control: the policy's grant carries traffic");
    let other = lab.policy(
        "other.yaml",
        &format!("grants:\n  - interface: br0\n    allow: {ALLOWED}\n    port: 3307\n"),
    );
    for watching in [false, true] {
        let _watch = watching
            .then(|| Watch::start_with(&lab, &["--no-hold", "--policy", dir.to_str().unwrap()]));
        let before = lab.fingerprint();
        for args in [
            vec!["revoke", "br0", "--port", "3306"],
            vec!["revoke", "br0", "--name", "mysql-br0"],
            vec!["revoke", "br0", "--all"],
            // A different allow list for the policy's publication.
            vec!["expose", "br0", "--allow", "192.0.2.0/26", "--port", "3306"],
        ] {
            let out = lab.loopgate(&args);
            assert_refused(
                &lab,
                out,
                &before,
                &["grant mysql-br0 on br0 is kept by", file, "--persist"],
            );
            assert!(works(), "{args:?} cut nothing");
        }
        // Asking again for exactly what the policy asks for changes nothing.
        lab.ok(&[
            "expose",
            "br0",
            "--name",
            "mysql-br0",
            "--allow",
            ALLOWED,
            "--port",
            "3306",
        ]);
        if watching {
            // The watch is the one owner of the policy in force.
            let out = lab.loopgate(&["apply", &other]);
            assert_refused(
                &lab,
                out,
                &before,
                &["follows", dir.to_str().unwrap(), "other.yaml"],
            );
            // Its plan shows the change, and that apply of it would be refused.
            let plan = lab.ok(&["plan", &other]);
            assert!(
                plan.contains("# note: `apply ")
                    && plan.contains("would be refused while loopgate watch")
                    && plan.contains("3307"),
                "{plan}"
            );
            // A dry run of a refused change shows the refusal.
            let out = lab.loopgate(&["revoke", "br0", "--port", "3306", "--dry-run"]);
            assert_refused(&lab, out, &before, &["is kept by", file]);
            let out = lab.loopgate(&["revoke", "--all"]);
            assert_refused(&lab, out, &before, &["follows", "--persist"]);
            // The directory it follows is applied as ever.
            lab.ok(&["apply", dir.to_str().unwrap()]);
        }
        assert!(works());
    }
}

#[test]
fn revoke_persist_takes_the_entry_out_of_its_file_and_the_revocation_lasts() {
    for watching in [false, true] {
        let (lab, _services) = lab_with_services();
        let dir = policy_dir(&lab);
        let env = config_env(&dir);
        lab.ok(&["apply", dir.to_str().unwrap()]);
        let watch = watching
            .then(|| Watch::start_with(&lab, &["--no-hold", "--policy", dir.to_str().unwrap()]));
        assert_eq!(
            tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
            Some("tcp:3306"),
            "control"
        );
        let out = lab.loopgate_inside(&["revoke", "br0", "--port", "3306", "--persist"], &env);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stdout(&out).contains("mysql.yaml"), "{}", stdout(&out));
        let text = std::fs::read_to_string(dir.join("mysql.yaml")).unwrap();
        assert!(
            !text.contains("mysql-br0") && !text.contains("3306"),
            "{text}"
        );
        // Only that entry went: the admin's comments and the other entry stay.
        assert!(
            text.starts_with("# the admin's own file\n")
                && text.contains("# dns\n")
                && text.contains("name: dns"),
            "{text}"
        );
        assert!(!dir.join("loopgate.yaml").exists());
        if let Some(w) = &watch {
            // The watch reads the changed file; the grant does not come back.
            time_until(|| w.log().contains("changed; applying it"))
                .unwrap_or_else(|| panic!("watch saw no change: {}", w.log()));
            let table = stdout(&lab.host.exec(&["nft", "list", "table", "ip", "loopgate"]));
            assert!(!table.contains("3306") && table.contains("5353"), "{table}");
        }
        assert_eq!(tcp_request(&lab.container, sa(HOST_ADDR, 3306)), None);
        assert_eq!(
            udp_request(&lab.container, sa(HOST_ADDR, 5353)).as_deref(),
            Some("udp:5353")
        );
        let plan = lab.ok(&["plan", dir.to_str().unwrap()]);
        assert!(plan.contains("nothing to do"), "{plan}");
        lab.assert_audit(0, &[]);
    }
}

#[test]
fn expose_persist_records_what_was_asked_and_plan_has_nothing_to_do() {
    for watching in [false, true] {
        let (lab, _services) = lab_with_services();
        let dir = policy_dir(&lab);
        let env = config_env(&dir);
        lab.ok(&["apply", dir.to_str().unwrap()]);
        let _watch = watching
            .then(|| Watch::start_with(&lab, &["--no-hold", "--policy", dir.to_str().unwrap()]));
        // A new grant without --listen: loopgate.yaml does not pin br0's address.
        let out = lab.loopgate_inside(
            &[
                "expose",
                "br0",
                "--allow",
                ALLOWED,
                "--port",
                "3307",
                "--persist",
            ],
            &env,
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let own = std::fs::read_to_string(dir.join("loopgate.yaml")).unwrap();
        assert!(
            own.contains("port: 3307") && !own.contains("listen"),
            "{own}"
        );
        assert!(
            !own.contains("3306"),
            "the admin's grant stays in their file: {own}"
        );
        let plan = lab.ok(&["plan", dir.to_str().unwrap()]);
        assert!(plan.contains("nothing to do"), "{plan}");
        // The policy's own grant, changed with --persist: changed in its file.
        let out = lab.loopgate_inside(
            &[
                "expose",
                "br0",
                "--allow",
                "192.0.2.0/26",
                "--port",
                "3306",
                "--persist",
            ],
            &env,
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let text = std::fs::read_to_string(dir.join("mysql.yaml")).unwrap();
        assert!(
            text.contains("192.0.2.0/26") && text.contains("# dns"),
            "{text}"
        );
        let plan = lab.ok(&["plan", dir.to_str().unwrap()]);
        assert!(
            plan.contains("nothing to do"),
            "watching: {watching}: {plan}\n{}",
            lab.fingerprint()
        );
        // Both in force, and they stay after the watch's next passes.
        assert_eq!(
            tcp_request(&lab.container, sa(HOST_ADDR, 3307)).as_deref(),
            Some("tcp:3307")
        );
        assert_eq!(
            tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
            Some("tcp:3306")
        );
        lab.assert_audit(0, &[]);
    }
}

/// A grant whose interface or pinned address is not there at boot is pending; the
/// other files' grants are applied all the same.
#[test]
fn a_grant_that_cannot_resolve_at_boot_is_pending_and_the_rest_is_applied() {
    let (lab, _services) = lab_with_services();
    let dir = policy_dir(&lab);
    // As `expose br0 ... --listen 198.51.100.1 --persist` wrote it on a machine where
    // br0 had that address.
    std::fs::write(
        dir.join("loopgate.yaml"),
        format!("grants:\n  - interface: br0\n    allow: {ALLOWED}\n    port: 3307\n    listen: 198.51.100.1\n"),
    )
    .unwrap();
    let out = lab.loopgate(&["apply", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is pending") && stderr(&out).contains("198.51.100.1"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306"),
        "the other file's grant is in force"
    );
    let plan = lab.ok(&["plan", dir.to_str().unwrap()]);
    assert!(plan.contains("# pending:"), "{plan}");
}
