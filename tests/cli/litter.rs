//! Topic: no litter. The state of a network namespace that no longer exists is removed
//! by the next command; the state of every namespace that still exists stays.

use super::*;

/// The `netns-*` directories in `dir`.
fn state_dirs(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("netns-"))
        .collect()
}

/// Runs `loopgate audit` in `ns` with the lab's state directory (its exit code says
/// what audit found in an empty namespace, which does not matter here).
fn audit_in(lab: &Lab, ns: &Netns) {
    audit_at(lab, &ns.name);
}

/// As [`audit_in`], for `--netns NAME|PATH`.
fn audit_at(lab: &Lab, netns: &str) {
    let out = std::process::Command::new(BIN)
        .args(["--netns", netns, "audit"])
        .env("LOOPGATE_STATE_DIR", &lab.state_dir)
        .env_remove("LOOPGATE_FAILPOINT")
        .output()
        .expect("running loopgate");
    assert!(
        matches!(out.status.code(), Some(0..=2)),
        "audit in {netns}: {}",
        stderr(&out)
    );
}

#[test]
fn the_state_of_deleted_namespaces_is_swept_by_the_next_command_and_the_living_keep_theirs() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    let host_dirs = state_dirs(&lab.state_dir);
    assert_eq!(host_dirs.len(), 1, "{host_dirs:?}");

    let living: Vec<Netns> = (0..3).map(|_| Netns::new("live")).collect();
    for ns in &living {
        audit_in(&lab, ns);
    }
    let kept = state_dirs(&lab.state_dir);
    assert_eq!(kept.len(), 4, "{kept:?}");

    // Namespaces held by a process alone (no /run/netns bind mount): they end with it.
    // A named namespace would live on in any mount namespace another test copies while
    // it exists (the runtime tests' `unshare -m`), and rightly keep its state.
    let mut short_lived: Vec<std::process::Child> = (0..20)
        .map(|_| {
            std::process::Command::new("unshare")
                .args(["--net", "sleep", "60"])
                .spawn()
                .unwrap()
        })
        .collect();
    for child in &short_lived {
        let path = format!("/proc/{}/ns/net", child.id());
        // `unshare` execs sleep once the namespace is made: wait for that (bounded).
        assert!(
            time_until(
                || std::fs::read_link(&path).ok() != std::fs::read_link("/proc/self/ns/net").ok()
            )
            .is_some(),
            "{path} never left this namespace"
        );
        audit_at(&lab, &path);
    }
    let all = state_dirs(&lab.state_dir);
    assert_eq!(all.len(), 24, "one directory per namespace: {all:?}");
    for child in &mut short_lived {
        let _ = child.kill();
        let _ = child.wait();
    }

    // One more command, in the host namespace.
    lab.ok(&["audit"]);
    let left = state_dirs(&lab.state_dir);
    println!(
        "state directories: {} before the namespaces went, {} after one command",
        all.len(),
        left.len()
    );
    assert_eq!(left, kept, "the 20 gone, the 4 living kept");
    // The host's grant and its originals are intact.
    let state = std::fs::read_to_string(
        lab.state_dir
            .join(host_dirs.first().unwrap())
            .join("state.json"),
    )
    .unwrap();
    assert!(state.contains("\"port\":3306"), "{state}");
    drop(living);
}
