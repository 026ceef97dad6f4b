//! The same verbs with and without a running watch: same exit codes, same output, same
//! kernel state.
//!
//! The shipped configuration runs `loopgate watch --policy /etc/loopgate`, which holds
//! loopgate's table with the kernel's owner flag; every command that changes the table
//! then borrows watch's socket for its transaction. A verb that works alone but not
//! through a running watch (`guard` was refused that way, although audit prints it as
//! the remedy of its critical findings) is as serious as a hole. So the integration
//! steps of expose, revoke, apply, plan, guard, unguard, bad input and dry runs run
//! twice, in two labs: once with no watch, once with a watch that holds the table and
//! follows a policy directory, and each step's exit code, output and resulting kernel
//! state (loopgate's table, every route_localnet) are compared.

use super::*;
use std::process::Command;

/// One lab of the matrix, with a second bridge (br1, a client on it) and services on
/// 127.0.0.1 ports 3306, 5432 and 8080; a policy directory publishing 8080 on br0.
struct Side {
    /// First: fields drop in order, and watch must be gone before the lab removes its
    /// state directory (a watch still running writes its state into it again).
    watch: Option<Watch>,
    lab: Lab,
    _services: Services,
    br1_client: Netns,
    policy_dir: String,
}

const BR1_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const BR1_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);

impl Side {
    fn new(with_watch: bool) -> Side {
        let lab = Lab::new();
        let services = start_services(
            &lab.host,
            &[
                sa(Ipv4Addr::LOCALHOST, 3306),
                sa(Ipv4Addr::LOCALHOST, 5432),
                sa(Ipv4Addr::LOCALHOST, 8080),
            ],
            &[],
        );
        let br1_client = lab.add_bridge_with_client("br1", BR1_ADDR, BR1_CLIENT);
        let dir = lab.state_dir.join("policy");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("base.yaml"),
            format!("grants:\n  - interface: br0\n    allow: {ALLOWED}\n    port: 8080\n"),
        )
        .unwrap();
        let policy_dir = dir.to_str().unwrap().to_string();
        lab.ok(&["apply", &policy_dir]);
        let watch = with_watch.then(|| Watch::start_with(&lab, &["--policy", &policy_dir]));
        if let Some(w) = &watch {
            assert!(
                w.log().contains("holds table ip loopgate"),
                "the matrix needs a watch that holds the table: {}",
                w.log()
            );
        }
        Side {
            watch,
            lab,
            _services: services,
            br1_client,
            policy_dir,
        }
    }

    /// Runs one step; returns (exit code, stdout, stderr, kernel state), with what
    /// names this lab (its namespace, its state directory) replaced by placeholders.
    fn step(&self, args: &[&str]) -> (Option<i32>, String, String, String) {
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("{policy}", &self.policy_dir))
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.lab.loopgate(&args);
        let norm = |s: String| {
            s.replace(self.lab.state_dir.to_str().unwrap(), "<state>")
                .replace(&self.lab.host.name, "<ns>")
        };
        (
            out.status.code(),
            norm(stdout(&out)),
            norm(stderr(&out)),
            self.kernel_state(),
        )
    }

    /// loopgate's table as the kernel holds it (without counters, and without the
    /// ownership flags a holding watch adds) and every route_localnet of the host.
    fn kernel_state(&self) -> String {
        let table = self
            .lab
            .host
            .exec_status(&["nft", "-s", "list", "table", "ip", "loopgate"]);
        let table: String = String::from_utf8_lossy(&table.stdout)
            .lines()
            .filter(|l| !l.trim_start().starts_with("flags ") && !l.trim().is_empty())
            // nft names an owned table's owner: `table ip loopgate { # progname loopgate`.
            .map(|l| format!("{}\n", l.split(" # progname").next().unwrap_or(l)))
            .collect();
        let sysctls = self.lab.host.exec(&[
            "sh",
            "-c",
            "grep -H . /proc/sys/net/ipv4/conf/*/route_localnet",
        ]);
        format!("{table}--\n{}", String::from_utf8_lossy(&sysctls.stdout))
    }
}

/// A Python program that asks the watch at `sock` to lend its table, as a client of
/// the protocol would, and prints the answer (or why it could not connect).
fn lease_request(sock: &std::path::Path) -> String {
    format!(
        "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect({:?})\nexcept OSError as e:\n    print('connect:', e.strerror)\n    raise SystemExit\ns.sendall(b'{{\"version\":2,\"request\":\"lease\",\"command\":\"revoke --all\"}}\\n')\nprint(s.recv(4096).decode())",
        sock.to_str().unwrap()
    )
}

#[test]
fn every_verb_behaves_the_same_with_and_without_a_holding_watch() {
    let alone = Side::new(false);
    let held = Side::new(true);
    let expose = EXPOSE_DEFAULT;
    let steps: Vec<Vec<&str>> = vec![
        expose.to_vec(),
        expose.to_vec(), // nothing to do
        vec!["expose", "br0", "--allow", "10.0.0.0/0", "--port", "1"], // bad input
        vec!["expose", "nosuchif0", "--allow", ALLOWED, "--port", "1"], // bad input
        vec![
            "expose",
            "br0",
            "--allow",
            ALLOWED,
            "--port",
            "5432",
            "--dry-run",
        ],
        vec!["guard", "br1"],
        vec!["guard", "br1", "--dry-run"],
        vec!["guard", "--all-interfaces"],
        vec!["unguard", "--all-interfaces"],
        vec!["unguard", "br1"],
        vec!["guard", "br1"],
        vec!["revoke", "br0", "--port", "3306", "--dry-run"],
        vec!["revoke", "br0", "--port", "3306"],
        vec!["revoke", "br0", "--port", "3306"], // nothing matched
        vec!["apply", "{policy}"],               // the same policy: nothing to do
        vec!["apply", "{policy}", "--dry-run"],
        vec!["plan", "{policy}"],
        vec!["apply", "/nonexistent/policy.yaml"], // bad input
    ];
    for args in &steps {
        let a = alone.step(args);
        let h = held.step(args);
        let log = held.watch.as_ref().unwrap().log();
        assert_eq!(
            a.0, h.0,
            "{args:?}: exit code without watch {:?}, with watch {:?}\nwithout: {}\nwith: {}\nwatch log:\n{log}",
            a.0, h.0, a.2, h.2
        );
        assert_eq!(a.1, h.1, "{args:?}: stdout differs\nwatch log:\n{log}");
        assert_eq!(a.2, h.2, "{args:?}: stderr differs\nwatch log:\n{log}");
        assert_eq!(
            a.3, h.3,
            "{args:?}: kernel state differs\nwatch log:\n{log}"
        );
    }
    let log = held.watch.as_ref().unwrap().log();
    assert!(
        log.contains("lent table ip loopgate to pid"),
        "the changes went through the watch's socket: {log}"
    );
    assert!(
        !log.contains("another process changed table ip loopgate") && !log.contains("refused"),
        "watch took a borrower's commit for a foreign one, or refused one: {log}"
    );
    // What the kernel state says, with real traffic, on both sides: the policy's grant
    // works; br1 is guarded: its client's packets to 127.0.0.1 (routed through the
    // host, CVE-2020-8558) get nothing, while the same attack works once br1 is open
    // and unguarded (the control, at the end).
    for side in [&alone, &held] {
        assert_eq!(
            tcp_request(&side.lab.container, sa(HOST_ADDR, 8080)).as_deref(),
            Some("tcp:8080")
        );
        Lab::route_loopback_via(&side.br1_client, BR1_ADDR);
        side.lab
            .host
            .set_sysctl("net.ipv4.conf.br1.route_localnet", "1");
        assert_eq!(
            tcp_request(&side.br1_client, sa(Ipv4Addr::LOCALHOST, 3306)),
            None,
            "br1 is guarded"
        );
    }
    // Control: unguarded, the open br1 lets its client reach 127.0.0.1:3306.
    for side in [&alone, &held] {
        let out = side.step(&["unguard", "br1"]);
        assert_eq!(out.0, Some(0), "{}", out.2);
        side.lab
            .host
            .set_sysctl("net.ipv4.conf.br1.route_localnet", "1");
        assert_eq!(
            tcp_request(&side.br1_client, sa(Ipv4Addr::LOCALHOST, 3306)).as_deref(),
            Some("tcp:3306"),
            "without the guard the attack works"
        );
    }
}

/// The remedy audit prints for an open, unguarded interface (`loopgate guard IFACE`)
/// works while watch holds the table: exit 0, and the interface is guarded at once.
/// Before the lease, watch refused it with exit 2 ("watch runs only expose, revoke and
/// apply for clients") and the neighbour kept reaching 127.0.0.1.
#[test]
fn the_remedy_audit_prints_works_through_a_holding_watch() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    let _watch = Watch::start_holding(&lab);
    let br1_client = lab.add_bridge_with_client("br1", BR1_ADDR, BR1_CLIENT);
    Lab::route_loopback_via(&br1_client, BR1_ADDR);
    lab.host.set_sysctl("net.ipv4.conf.br1.route_localnet", "1");
    // Control: open and unguarded, the attack works and audit says so.
    assert_eq!(
        tcp_request(&br1_client, sa(Ipv4Addr::LOCALHOST, 3306)).as_deref(),
        Some("tcp:3306")
    );
    let report = lab.assert_audit(1, &["loopgate guard br1"]);
    let out = lab.loopgate(&["guard", "br1"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(
        tcp_request(&br1_client, sa(Ipv4Addr::LOCALHOST, 3306)),
        None
    );
    lab.assert_audit(0, &[]);
}

/// Only a process with CAP_NET_ADMIN in watch's own network and user namespace may
/// borrow the table: a root process whose capabilities were dropped, and root mapped
/// into its own user and network namespace, are refused and change nothing.
#[test]
fn only_cap_net_admin_in_watchs_namespaces_borrows_the_table() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    let watch = Watch::start_holding(&lab);
    let before = lab.fingerprint();
    // A uid-0 process without CAP_NET_ADMIN (dropped from its bounding set, so exec as
    // root cannot give it back). loopgate itself refuses early (it checks the
    // capability before any netlink call), so the client speaks the protocol itself.
    let sock = lab.watch_socket();
    let ask = lease_request(&sock);
    let uncapable = Command::new("setpriv")
        .args(["--bounding-set=-net_admin", "--inh-caps=-net_admin", "--"])
        .args(["ip", "netns", "exec", &lab.host.name, "python3", "-c", &ask])
        .output()
        .unwrap();
    // `ip netns exec` itself needs CAP_SYS_ADMIN, not NET_ADMIN: it runs.
    let answer = stdout(&uncapable);
    assert!(
        answer.contains("\"refused\"") && answer.contains("lacks CAP_NET_ADMIN"),
        "{answer} {}",
        stderr(&uncapable)
    );
    // Root in a user namespace of its own (and a network namespace of its own) has
    // CAP_NET_ADMIN there, not in watch's.
    let own_userns = Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "python3", "-c", &ask])
        .output()
        .unwrap();
    let answer = stdout(&own_userns);
    assert!(
        answer.contains("\"refused\"") && answer.contains("another user namespace"),
        "{answer} {}",
        stderr(&own_userns)
    );
    // Its own network namespace, watch's user namespace.
    let own_netns = Command::new("unshare")
        .args(["--net", "python3", "-c", &ask])
        .output()
        .unwrap();
    let answer = stdout(&own_netns);
    assert!(
        answer.contains("\"refused\"") && answer.contains("another network namespace"),
        "{answer} {}",
        stderr(&own_netns)
    );
    assert_eq!(
        lab.fingerprint(),
        before,
        "a refused borrower changed nothing"
    );
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    // Control: the same request from a process with CAP_NET_ADMIN in watch's
    // namespaces is lent the table.
    let capable = Command::new("ip")
        .args(["netns", "exec", &lab.host.name, "python3", "-c", &ask])
        .output()
        .unwrap();
    assert!(
        stdout(&capable).contains("\"lent\""),
        "{}",
        stdout(&capable)
    );
    assert!(
        time_until(|| watch.log().contains("lent table ip loopgate to pid")).is_some(),
        "{}",
        watch.log()
    );
}

/// A plan or a dry run while watch holds the table reads the table owned by watch's
/// socket: that ownership is loopgate's own, not a change someone made. They said the
/// table had been tampered with.
#[test]
fn plans_and_dry_runs_under_a_holding_watch_see_nothing_to_do() {
    let (lab, _services) = lab_with_services();
    let policy = lab.policy(
        "p.yaml",
        &format!("grants:\n  - interface: br0\n    allow: {ALLOWED}\n    port: 3306\n"),
    );
    lab.ok(&["apply", &policy]);
    let _watch = Watch::start_holding(&lab);
    for args in [
        vec!["plan", policy.as_str()],
        vec!["apply", policy.as_str(), "--dry-run"],
    ] {
        let out = lab.loopgate(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(
            stdout(&out),
            "nothing to do: the host already matches\n",
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

/// A watch holds the table but its socket does not answer (the file was removed): a
/// changing command says who holds the table and what to do, in one line, exit 3, with
/// nothing changed, instead of failing half way and reporting an incomplete rollback.
/// The remedy it names (restart watch) then lets the same command through.
#[test]
fn a_held_table_whose_watch_does_not_answer_is_named_with_the_remedy() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    let mut watch = Watch::start_holding(&lab);
    let sock = lab.watch_socket();
    std::fs::remove_file(&sock).unwrap();
    let before = lab.fingerprint();
    let out = lab.loopgate(&["expose", "br0", "--allow", ALLOWED, "--port", "3307"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("held by loopgate watch (pid {})", watch.pid()))
            && err.contains("restart loopgate watch")
            && err.contains("nothing was changed")
            && !err.contains("ROLLBACK"),
        "{err}"
    );
    assert_eq!(lab.fingerprint(), before);
    // The remedy: restart watch (what `systemctl restart` does), then the same command.
    watch.stop();
    let _watch = Watch::start_holding(&lab);
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3307"]);
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3307)).as_deref(),
        Some("tcp:3307")
    );
}

/// A user other than root cannot reach watch.sock (a root-only directory, a 0600
/// socket); and where an admin opened both up by mistake, watch still refuses the
/// user, who has no CAP_NET_ADMIN. Nothing changes either way.
#[test]
fn a_non_root_user_cannot_borrow_the_table_even_through_an_opened_socket() {
    use std::os::unix::fs::PermissionsExt;
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    let _watch = Watch::start_holding(&lab);
    let before = lab.fingerprint();
    let sock = lab.watch_socket();
    let ask = lease_request(&sock);
    let as_nobody = || {
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.host.name, "setpriv"])
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(["/usr/bin/python3", "-c", &ask])
            .output()
            .unwrap();
        format!("{}{}", stdout(&out), stderr(&out))
    };
    let answer = as_nobody();
    assert!(answer.contains("Permission denied"), "{answer}");
    // The mistake: every directory on the way and the socket opened to everyone.
    let mut dirs = vec![];
    let mut d = sock.parent().unwrap().to_path_buf();
    while d.starts_with(&lab.state_dir) {
        dirs.push((d.clone(), std::fs::metadata(&d).unwrap().permissions()));
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o711)).unwrap();
        d = d.parent().unwrap().to_path_buf();
    }
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let answer = as_nobody();
    for (d, p) in dirs {
        std::fs::set_permissions(&d, p).unwrap();
    }
    assert!(
        answer.contains("\"refused\"") && answer.contains("lacks CAP_NET_ADMIN"),
        "{answer}"
    );
    assert_eq!(lab.fingerprint(), before);
}
