//! Topic: what the command line shows: help, completions, the man page, the golden
//! plan loading in nft, and `--dry-run` / `plan` changing nothing.

use super::*;

/// The golden plan (compared with what loopgate plans by the unit test
/// `policy::tests::the_plan_matches_the_golden_file`, without root) is one nft loads.
#[test]
fn the_golden_plan_loads_in_nft() {
    let golden =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/two-interfaces.nft");
    nft_accepts(&std::fs::read_to_string(&golden).unwrap());
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
    lab.ok(&["apply", "--allow-empty", policy]);
    assert_eq!(lab.host.sysctl("net.ipv4.conf.br0.route_localnet"), "0");
    assert_eq!(tcp_request(&lab.container, sa(HOST_ADDR, 3306)), None);
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
    // Removed: a missing interface is always pending; the flag said nothing.
    for verb in ["apply", "plan"] {
        assert!(!help(&[verb, "--help"]).contains("--skip-missing"));
        let out = std::process::Command::new(BIN)
            .args([verb, "--skip-missing", "/nonexistent/loopgate.yaml"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("--skip-missing"), "{}", stderr(&out));
    }
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
