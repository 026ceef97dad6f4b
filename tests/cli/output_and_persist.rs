//! Topic: exit codes and output that stay true after a change; the persisted policy file,
//! and the boot unit applying it after a "reboot".
//!
//! `--persist` is refused with `--netns`, so these tests run loopgate inside the lab's
//! host namespace (`Lab::loopgate_inside`) with `LOOPGATE_CONFIG_DIR` pointing at a
//! scratch directory: the real /etc/loopgate is never written.

use super::*;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// A scratch policy directory, removed on drop; `path` need not exist yet.
struct ConfigDir {
    root: PathBuf,
    path: PathBuf,
}

impl ConfigDir {
    fn new(tag: &str) -> ConfigDir {
        let root = std::env::temp_dir().join(format!(
            "loopgate-etc-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        ConfigDir {
            path: root.join("loopgate"),
            root,
        }
    }

    fn env(&self) -> [(&str, &str); 1] {
        [("LOOPGATE_CONFIG_DIR", self.path.to_str().unwrap())]
    }

    fn persisted(&self) -> Option<String> {
        std::fs::read_to_string(self.path.join("loopgate.yaml")).ok()
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Names in `dir` that look like a temporary file of any writer.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("tmp"))
                .collect()
        })
        .unwrap_or_default()
}

/// Exactly one line on stderr, the error; returns it.
fn one_error_line(out: &std::process::Output) -> String {
    let err = stderr(out);
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("loopgate: error"))
        .collect();
    assert_eq!(errors.len(), 1, "{err}");
    errors[0].to_string()
}

fn with_persist(args: &[&str]) -> Vec<String> {
    args.iter()
        .map(|s| s.to_string())
        .chain(["--persist".to_string()])
        .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn persist_into_a_directory_without_policy_files_records_the_change() {
    // As after `cargo install`: no directory at all, then a directory without *.yaml.
    // Before, both ended "exit 2, nothing was changed" with the grant in force.
    for create in [false, true] {
        let (lab, _services) = lab_with_services();
        let config = ConfigDir::new("empty");
        if create {
            std::fs::create_dir_all(&config.path).unwrap();
            std::fs::write(config.path.join("README"), "not a policy").unwrap();
        }
        let args = with_persist(&EXPOSE_DEFAULT);
        let out = lab.loopgate_inside(&strs(&args), &config.env());
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stdout(&out).contains("persisted to"), "{}", stdout(&out));
        let persisted = config.persisted().expect("loopgate.yaml written");
        assert!(persisted.contains("port: 3306"), "{persisted}");
        assert_eq!(
            tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
            Some("tcp:3306")
        );
        assert!(temp_files(&config.path).is_empty());
    }
}

#[test]
fn a_persist_target_that_cannot_take_the_change_is_refused_before_anything_changes() {
    let (lab, _services) = lab_with_services();
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3307"]);
    let config = ConfigDir::new("broken");
    std::fs::create_dir_all(&config.path).unwrap();
    let admin = config.path.join("admin.yaml");
    let args = with_persist(&EXPOSE_DEFAULT);
    let revoke = ["revoke", "br0", "--port", "3307", "--persist"];

    // A broken admin file: the boot unit would refuse the directory, and before this
    // change the expose went through and then exited 2 "nothing was changed".
    std::fs::write(
        &admin,
        "grants:\n  - interface: br0\n    allow: [192.0.2.0/25\n",
    )
    .unwrap();
    // An admin file that publishes 3306 to another target: written as is, the
    // directory would no longer apply at boot.
    let conflicting =
        "grants:\n  - interface: br0\n    allow: 192.0.2.0/25\n    port: 3306\n    to: 127.0.0.2\n";
    // (A revoke is not refused by that file: after it, nothing of loopgate's
    // conflicts with the admin's 3306.)
    for (case, text, needle, cmds) in [
        (
            "broken",
            None,
            "admin.yaml",
            vec![strs(&args), revoke.to_vec()],
        ),
        (
            "conflicting",
            Some(conflicting),
            "conflict",
            vec![strs(&args)],
        ),
    ] {
        if let Some(text) = text {
            std::fs::write(&admin, text).unwrap();
        }
        for cmd in cmds {
            let before = lab.fingerprint();
            let out = lab.loopgate_inside(&cmd, &config.env());
            assert_eq!(
                out.status.code(),
                Some(2),
                "{case} {cmd:?}: {}",
                stderr(&out)
            );
            let line = one_error_line(&out);
            assert!(
                line.contains("--persist") && line.contains(needle),
                "{case}: {line}"
            );
            assert_eq!(lab.fingerprint(), before, "{case} {cmd:?} changed the host");
            assert!(config.persisted().is_none(), "{case}");
            assert!(temp_files(&config.path).is_empty(), "{case}");
        }
    }
    assert_eq!(tcp_request(&lab.container, sa(HOST_ADDR, 3306)), None);

    // A directory that cannot be created (its parent is a file).
    let blocker = config.root.join("file");
    std::fs::write(&blocker, "").unwrap();
    let impossible = blocker.join("loopgate");
    let env = [("LOOPGATE_CONFIG_DIR", impossible.to_str().unwrap())];
    let before = lab.fingerprint();
    let out = lab.loopgate_inside(&strs(&args), &env);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(one_error_line(&out).contains("cannot create policy directory"));
    assert_eq!(lab.fingerprint(), before);
}

#[test]
fn persist_with_netns_is_refused_and_changes_nothing() {
    let (lab, _services) = lab_with_services();
    let config = ConfigDir::new("netns");
    let expose = with_persist(&EXPOSE_DEFAULT);
    for args in [strs(&expose), vec!["revoke", "br0", "--all", "--persist"]] {
        let before = lab.fingerprint();
        // lab.loopgate* adds `--netns <lab host>`.
        let out = lab.loopgate_env(&args, &config.env());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let line = one_error_line(&out);
        assert!(
            line.contains("--persist") && line.contains("--netns") && line.contains(&lab.host.name),
            "{line}"
        );
        assert_eq!(lab.fingerprint(), before);
        assert!(!config.path.exists(), "nothing written for {args:?}");
    }
    // Without --persist, --netns works as ever.
    lab.expose_default();
}

/// Runs loopgate (with `--netns`) with stdout a pipe whose reader is already gone.
fn with_closed_stdout(lab: &Lab, args: &[&str]) -> std::process::Output {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds are open and owned by nobody else.
    let (read, write) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    drop(read);
    std::process::Command::new(BIN)
        .arg("--netns")
        .arg(&lab.host.name)
        .args(args)
        .env("LOOPGATE_STATE_DIR", &lab.state_dir)
        .env_remove("LOOPGATE_FAILPOINT")
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .expect("running loopgate")
}

#[test]
fn a_closed_stdout_ends_output_quietly_with_the_documented_exit_code() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    for (args, code) in [
        (vec!["audit"], 0),
        (vec!["audit", "--json"], 0),
        (
            vec![
                "expose",
                "br0",
                "--allow",
                ALLOWED,
                "--port",
                "3307",
                "--dry-run",
            ],
            0,
        ),
    ] {
        let before = lab.fingerprint();
        // The same command with a reader: the code to expect, and output to lose.
        let open = lab.loopgate(&args);
        assert_eq!(
            open.status.code(),
            Some(code),
            "{args:?}: {}",
            stderr(&open)
        );
        assert!(!open.stdout.is_empty());
        let out = with_closed_stdout(&lab, &args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{err}"
        );
        assert_eq!(lab.fingerprint(), before, "{args:?}");
    }
    // The audit finding is still the exit code when nobody reads it.
    lab.host.set_sysctl("net.ipv4.conf.all.route_localnet", "1");
    let out = with_closed_stdout(&lab, &["audit"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"));
}

#[test]
fn a_failed_final_write_says_the_change_is_in_force_with_exit_4() {
    if !cfg!(feature = "failpoints") {
        panic!("needs the test hook: run `cargo test --features failpoints`");
    }
    let (lab, _services) = lab_with_services();
    let config = ConfigDir::new("late");
    let args = with_persist(&EXPOSE_DEFAULT);
    let out = lab.loopgate_inside(&strs(&args), &config.env());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let recorded = config.persisted().unwrap();

    let args = with_persist(&["expose", "br0", "--allow", ALLOWED, "--port", "3307"]);
    let mut env = config.env().to_vec();
    env.push(("LOOPGATE_FAILPOINT", "persist-rename"));
    let out = lab.loopgate_inside(&strs(&args), &env);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let line = one_error_line(&out);
    assert!(
        line.contains("the change is in force but was not recorded in")
            && line.contains("loopgate.yaml"),
        "{line}"
    );
    // In force: the new grant carries traffic. Not recorded: the file is the old one,
    // whole, and no temporary file is left.
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3307)).as_deref(),
        Some("tcp:3307")
    );
    assert_eq!(config.persisted().unwrap(), recorded);
    assert!(
        temp_files(&config.path).is_empty(),
        "{:?}",
        temp_files(&config.path)
    );
    // The next --persist records the whole current state.
    let out = lab.loopgate_inside(&strs(&args), &config.env());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = config.persisted().unwrap();
    assert!(
        text.contains("port: 3306") && text.contains("port: 3307"),
        "{text}"
    );
}

#[test]
fn concurrent_persists_all_land_in_the_file_and_leave_no_temporary_files() {
    let (lab, _services) = lab_with_services();
    let lab = std::sync::Arc::new(lab);
    let config = std::sync::Arc::new(ConfigDir::new("concurrent"));
    let ports: Vec<u16> = (4000..4008).collect();
    let workers: Vec<_> = ports
        .iter()
        .map(|&port| {
            let (lab, config) = (lab.clone(), config.clone());
            std::thread::spawn(move || {
                let port = port.to_string();
                let args = [
                    "expose",
                    "br0",
                    "--allow",
                    ALLOWED,
                    "--port",
                    &port,
                    "--persist",
                ];
                lab.loopgate_inside(&args, &config.env())
            })
        })
        .collect();
    for w in workers {
        let out = w.join().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let text = config.persisted().unwrap();
    let policy = loopgate::policy::parse(&text, "loopgate.yaml").expect("a whole file");
    assert_eq!(policy.grants.len(), ports.len(), "{text}");
    for port in &ports {
        assert!(text.contains(&format!("port: {port}\n")), "{port}: {text}");
    }
    assert!(
        temp_files(&config.path).is_empty(),
        "{:?}",
        temp_files(&config.path)
    );
}

/// The grant names `audit --json` reports for `iface`.
fn grant_names(lab: &Lab, iface: &str) -> Vec<String> {
    let out = lab.loopgate(&["audit", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["name"] == iface)
        .flat_map(|i| i["grants"].as_array().unwrap().clone())
        .map(|g| g["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn two_listen_addresses_on_one_interface_get_distinct_names_and_revoke_apart() {
    let (lab, _services) = lab_with_services();
    let second = Ipv4Addr::new(192, 0, 2, 2);
    lab.host.ip(&format!("addr add {second}/24 dev br0"));
    lab.expose_default();
    lab.ok(&[
        "expose",
        "br0",
        "--allow",
        ALLOWED,
        "--port",
        "3306",
        "--listen",
        "192.0.2.2",
    ]);
    let mut names = grant_names(&lab, "br0");
    names.sort();
    assert_eq!(names, ["br0-192.0.2.2-tcp-3306", "br0-tcp-3306"]);
    for addr in [HOST_ADDR, second] {
        assert_eq!(
            tcp_request(&lab.container, sa(addr, 3306)).as_deref(),
            Some("tcp:3306"),
            "{addr}"
        );
    }
    // Naming the primary address explicitly is the same grant, with the short name.
    let out = lab.ok(&[
        "expose",
        "br0",
        "--allow",
        ALLOWED,
        "--port",
        "3306",
        "--listen",
        "192.0.2.1",
    ]);
    // (Recorded as pinned to that address from now on; no grant changes.)
    assert!(
        !out.contains("add grant") && !out.contains("change grant"),
        "{out}"
    );
    assert_eq!(grant_names(&lab, "br0").len(), 2);

    lab.ok(&["revoke", "br0", "--name", "br0-192.0.2.2-tcp-3306"]);
    assert_eq!(grant_names(&lab, "br0"), ["br0-tcp-3306"]);
    assert_eq!(tcp_request(&lab.container, sa(second, 3306)), None);
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    lab.assert_audit(0, &[]);
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
        stderr(&out).contains("later0 tcp/1 is pending: the interface does not exist now"),
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
    // Their absence at the services proves something only once they have met the
    // guard: wait until its drop counters account for the SYN and datagram to
    // 127.0.0.1 and the forged source.
    time_until(|| {
        counted(&lab, "guard: no direct route to loopback") >= 2
            && counted(&lab, "guard: no spoofed loopback source") >= 1
    })
    .expect("the guard counted every packet to or from 127/8");
    assert_eq!(passive_opens(&lab.host), opens);
    let seen = services.udp_seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(
            |(port, from)| *port == 5353 && from.ip().to_string() == CONTAINER_ADDR.to_string()
        ),
        "{seen:?}"
    );
    lab.assert_audit(0, &[]);
    // Applying the same directory again changes nothing.
    assert!(stdout(&lab.loopgate_env(&boot, &env)).contains("nothing to do"));

    // revoke --persist drops it from loopgate.yaml, and the grant the admin's file
    // keeps from that file (the one owner of it), so that it does not return at boot.
    let out = lab.loopgate_inside(&["revoke", "br0", "--all", "--persist"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let persisted = std::fs::read_to_string(config.join("loopgate.yaml")).unwrap();
    assert!(persisted.contains("grants: []"), "{persisted}");
    let admin = std::fs::read_to_string(config.join("admin.yaml")).unwrap();
    assert!(
        !admin.contains("dns") && admin.contains("later0"),
        "{admin}"
    );
    let _ = std::fs::remove_dir_all(&config);
}
