//! Topic: files loopgate reads and writes as root (issue 17 item 7) and the empty
//! policy that would revoke every policy grant (item 5): what another user could have
//! written is refused in one line with nothing changed, state directories are private
//! whatever the umask, links planted in them are never followed, and an empty apply
//! needs `--allow-empty`.

use super::*;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

fn grant_policy() -> String {
    format!("grants:\n  - interface: br0\n    allow: {ALLOWED}\n    port: 3306\n")
}

fn chmod(path: impl AsRef<Path>, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Exit 2, exactly one line on stderr, holding every one of `needles`.
fn refused(out: &std::process::Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "stderr: {err} stdout: {}",
        stdout(out)
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err}");
    }
}

#[test]
fn policy_files_and_directories_others_could_write_are_refused() {
    let (lab, _services) = lab_with_services();
    let file = lab.policy("p.yaml", &grant_policy());
    let before = lab.fingerprint();

    std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
    refused(
        &lab.loopgate(&["apply", &file]),
        &[&file, "owned by uid 65534", "0644"],
    );
    // watch's follower and plan read the same way.
    refused(&lab.loopgate(&["plan", &file]), &[&file, "uid 65534"]);
    std::os::unix::fs::chown(&file, Some(0), None).unwrap();

    chmod(&file, 0o664);
    refused(
        &lab.loopgate(&["apply", &file]),
        &[&file, "mode 0664 (group-writable)"],
    );
    chmod(&file, 0o646);
    refused(
        &lab.loopgate(&["apply", &file]),
        &[&file, "mode 0646 (world-writable)"],
    );
    chmod(&file, 0o644);

    // A directory of policies that anyone can add files to.
    let dir = lab.state_dir.join("policy.d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(&file, dir.join("a.yaml")).unwrap();
    chmod(&dir, 0o777);
    let shown = dir.display().to_string();
    refused(
        &lab.loopgate(&["apply", &shown]),
        &[&shown, "mode 0777 (group- and world-writable)"],
    );
    chmod(&dir, 0o755);
    // A link in it to a file another user owns: checked where it leads.
    let foreign = lab.state_dir.join("foreign.yaml");
    std::fs::write(&foreign, grant_policy()).unwrap();
    std::os::unix::fs::chown(&foreign, Some(65534), None).unwrap();
    symlink(&foreign, dir.join("b.yaml")).unwrap();
    refused(
        &lab.loopgate(&["apply", &shown]),
        &["b.yaml", "foreign.yaml", "uid 65534"],
    );
    assert_eq!(lab.fingerprint(), before, "a refusal changes nothing");
    assert_eq!(tcp_request(&lab.container, sa(HOST_ADDR, 3306)), None);

    std::fs::remove_file(dir.join("b.yaml")).unwrap();
    lab.ok(&["apply", &shown]);
    assert!(tcp_request(&lab.container, sa(HOST_ADDR, 3306)).is_some());

    // A pipe is the caller's own input: read as it is.
    let piped = Command::new("sh")
        .args([
            "-c",
            &format!(
                "cat {file} | {BIN} --netns {} apply /dev/stdin",
                lab.host.name
            ),
        ])
        .env("LOOPGATE_STATE_DIR", &lab.state_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(piped.status.code(), Some(0), "{}", stderr(&piped));
}

/// Runs loopgate under `umask 000` with its state in `base` (not there yet).
fn with_umask_000(lab: &Lab, base: &Path, args: &str) -> std::process::Output {
    Command::new("sh")
        .args([
            "-c",
            &format!("umask 000; exec {BIN} --netns {} {args}", lab.host.name),
        ])
        .env("LOOPGATE_STATE_DIR", base)
        .output()
        .unwrap()
}

#[test]
fn state_directories_are_private_whatever_the_umask() {
    let (lab, _services) = lab_with_services();
    let file = lab.policy("p.yaml", &grant_policy());
    let base = lab.state_dir.join("fresh/run");
    let out = with_umask_000(&lab, &base, &format!("apply {file}"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ns = std::fs::read_dir(&base)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("netns-"))
        .expect("the namespace's directory")
        .path();
    for dir in [lab.state_dir.join("fresh"), base.clone(), ns.clone()] {
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }
    for f in std::fs::read_dir(&ns).unwrap().flatten() {
        let mode = f.metadata().unwrap().mode() & 0o7777;
        assert_eq!(
            mode & 0o077,
            0,
            "{} has mode {mode:04o}",
            f.path().display()
        );
    }

    // A state directory someone else can write is refused, naming it.
    chmod(&ns, 0o777);
    let before = lab.fingerprint();
    let out = lab.loopgate_env(
        &["revoke", "--all"],
        &[("LOOPGATE_STATE_DIR", base.to_str().unwrap())],
    );
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains(&ns.display().to_string()) && err.contains("0777"),
        "{err}"
    );
    assert_eq!(lab.fingerprint(), before);
    assert!(tcp_request(&lab.container, sa(HOST_ADDR, 3306)).is_some());
}

#[test]
fn links_planted_in_the_state_directory_are_never_followed() {
    let (lab, _services) = lab_with_services();
    let file = lab.policy("p.yaml", &grant_policy());
    lab.ok(&["apply", &file]);
    let ns = std::fs::read_dir(&lab.state_dir)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("netns-"))
        .unwrap()
        .path();
    let expose = ["expose", "br0", "--allow", ALLOWED, "--port", "3307"];

    // The lock, aimed at a file that does not exist: root must not create it.
    let target = lab.state_dir.join("created-by-root");
    std::fs::remove_file(ns.join("lock")).unwrap();
    symlink(&target, ns.join("lock")).unwrap();
    let before = lab.fingerprint();
    let out = lab.loopgate(&expose);
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("lock") && err.contains("symbolic link"),
        "{err}"
    );
    assert!(!target.exists(), "the lock was created through the link");
    assert_eq!(lab.fingerprint(), before);
    std::fs::remove_file(ns.join("lock")).unwrap();

    // The state file, aimed at a copy of itself: neither read nor written through.
    let victim = lab.state_dir.join("victim.json");
    std::fs::rename(ns.join("state.json"), &victim).unwrap();
    let kept = std::fs::read(&victim).unwrap();
    symlink(&victim, ns.join("state.json")).unwrap();
    let before = lab.fingerprint();
    let out = lab.loopgate(&expose);
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("state.json") && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), kept);
    assert_eq!(lab.fingerprint(), before);
    assert_eq!(tcp_request(&lab.container, sa(HOST_ADDR, 3307)), None);
}

#[test]
fn an_empty_policy_revokes_policy_grants_only_with_allow_empty() {
    let (lab, _services) = lab_with_services();
    let empty = lab.policy("empty.yaml", "grants: []\n");
    // Nothing of a policy in force (a first boot): an empty policy is fine.
    lab.ok(&["apply", &empty]);
    let file = lab.policy("p.yaml", &grant_policy());
    lab.ok(&["apply", &file]);
    assert!(tcp_request(&lab.container, sa(HOST_ADDR, 3306)).is_some());

    let before = lab.fingerprint();
    for args in [vec!["apply", &empty], vec!["apply", "--dry-run", &empty]] {
        refused(
            &lab.loopgate(&args),
            &[&empty, "1 grant(s)", "--allow-empty"],
        );
    }
    // A pipe emptied before loopgate read it is the same case.
    let drained = Command::new("sh")
        .args([
            "-c",
            &format!(
                "{BIN} --netns {} apply /dev/stdin < /dev/null",
                lab.host.name
            ),
        ])
        .env("LOOPGATE_STATE_DIR", &lab.state_dir)
        .output()
        .unwrap();
    refused(&drained, &["--allow-empty"]);
    let plan = lab.ok(&["plan", &empty]);
    assert!(
        plan.starts_with("# apply refuses this without --allow-empty") && plan.lines().count() > 1,
        "{plan}"
    );
    assert_eq!(lab.fingerprint(), before, "a refusal changes nothing");
    assert!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).is_some(),
        "the grant still works"
    );

    lab.ok(&["apply", "--allow-empty", &empty]);
    assert_eq!(tcp_request(&lab.container, sa(HOST_ADDR, 3306)), None);
    assert_eq!(lab.host.sysctl("net.ipv4.conf.br0.route_localnet"), "0");
}
