//! Topic: watch's life cycle around the table it holds (issue 17, items 4 to 6): one
//! watch per namespace, a table left in a state watch did not write (dormant, another
//! owner) repaired or waited out without spinning, no empty table left behind, and the
//! hold coordinated with nftables.service as the shipped units run it.

use super::*;
use loopgate::kernel::nft::Owner;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Whether this kernel can hold a table (probed inside a lab namespace).
fn kernel_can_hold(lab: &Lab) -> bool {
    lab.host
        .enter(|| loopgate::kernel::nft::probe_owner_support().unwrap_or(false))
}

/// Polls `cond` every 20 ms for up to `limit`: true once it holds.
fn within(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        // The polling interval of this bounded wait.
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Another process's hold on loopgate's table: an [`Owner`] on a thread of this test
/// process inside `ns`, until dropped (its socket then closes; the table is orphaned).
struct ForeignOwner {
    release: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ForeignOwner {
    fn adopt(ns: &Netns) -> ForeignOwner {
        let path = format!("/run/netns/{}", ns.name);
        let (release, wait) = mpsc::channel::<()>();
        let (ready, adopted) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("netns file");
            // SAFETY: valid fd; setns only changes this thread's namespace.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}");
            match Owner::adopt() {
                Ok(owner) => {
                    ready.send(Ok(())).unwrap();
                    let _ = wait.recv();
                    drop(owner);
                }
                Err(e) => ready.send(Err(format!("{e:#}"))).unwrap(),
            }
        });
        adopted
            .recv()
            .unwrap()
            .expect("the foreign owner adopts the table");
        ForeignOwner {
            release: Some(release),
            thread: Some(thread),
        }
    }
}

impl Drop for ForeignOwner {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// CPU time (utime + stime) of process `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// A `loopgate watch` child in the lab's host namespace, stderr to `log`.
fn spawn_watch(lab: &Lab, log: &std::path::Path, extra: &[&str]) -> Child {
    Command::new(BIN)
        .args(["--netns", &lab.host.name, "watch"])
        .args(extra)
        .env("LOOPGATE_STATE_DIR", &lab.state_dir)
        .env_remove("LOOPGATE_FAILPOINT")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn two_watches_started_together_leave_exactly_one_and_the_other_names_it() {
    let lab = Lab::new();
    let tries = 8;
    let mut survivors = 0;
    for i in 0..tries {
        let logs = [
            lab.state_dir.join(format!("pair{i}-a.log")),
            lab.state_dir.join(format!("pair{i}-b.log")),
        ];
        let mut kids = [
            spawn_watch(&lab, &logs[0], &["--no-hold"]),
            spawn_watch(&lab, &logs[1], &["--no-hold"]),
        ];
        // One exits (bounded wait); the other must be running and have started.
        let mut exited: Option<(usize, Option<i32>)> = None;
        let start = Instant::now();
        while exited.is_none() && start.elapsed() < Duration::from_secs(10) {
            for (k, kid) in kids.iter_mut().enumerate() {
                if let Some(status) = kid.try_wait().unwrap() {
                    exited = Some((k, status.code()));
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let Some((gone, code)) = exited else {
            for kid in &mut kids {
                let _ = kid.kill();
                let _ = kid.wait();
            }
            panic!(
                "try {i}: both watches run:\n{}\n--\n{}",
                read(&logs[0]),
                read(&logs[1])
            );
        };
        let stays = 1 - gone;
        let alive = kids[stays].try_wait().unwrap().is_none();
        let started = within(Duration::from_secs(5), || {
            read(&logs[stays]).contains("loopgate watch: started")
        });
        let said = read(&logs[gone]);
        let pid = kids[stays].id();
        for kid in &mut kids {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(kid.id() as i32, libc::SIGTERM) };
            let _ = kid.wait();
        }
        assert_eq!(code, Some(2), "try {i}: {said}");
        assert!(alive && started, "try {i}: {}", read(&logs[stays]));
        assert!(said.contains(&format!("pid {pid}")), "try {i}: {said}");
        assert_eq!(said.trim().lines().count(), 1, "try {i}: one line: {said}");
        survivors += 1;
    }
    println!("double start: exactly one watch survived in {survivors} of {tries} tries");
}

#[test]
fn a_table_made_dormant_before_watch_starts_is_repaired_and_watch_does_not_spin() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    lab.host.exec(&[
        "nft",
        "add",
        "table",
        "ip",
        "loopgate",
        "{ flags dormant; }",
    ]);
    // Control: dormant, the grant is dead.
    assert_eq!(tcp_request(&lab.container, sa(HOST_ADDR, 3306)), None);
    let held = kernel_can_hold(&lab);
    let watch = Watch::start_holding(&lab);
    assert!(
        within(Duration::from_secs(5), || tcp_request(
            &lab.container,
            sa(HOST_ADDR, 3306)
        )
        .as_deref()
            == Some("tcp:3306")),
        "the grant works again: {}",
        watch.log()
    );
    let table = stdout(&lab.host.exec(&["nft", "list", "table", "ip", "loopgate"]));
    assert!(!table.contains("dormant"), "{table}");
    if held {
        assert!(
            watch.log().contains("holds table ip loopgate"),
            "{}",
            watch.log()
        );
    }
    let log = watch.log();
    assert!(
        !log.contains("repair failed") && !log.contains("refused"),
        "no failing repairs: {log}"
    );
    // Converged: after a tick, nothing more is logged (no repair loop).
    // Converged: for the next 2 s (waiting for the log to grow), nothing more is
    // logged, and a spinning watch (~100 ticks a second) would show in its CPU time.
    let lines = log.lines().count();
    let ticks = cpu_ticks(watch.pid());
    let grew = within(Duration::from_secs(2), || {
        watch.log().lines().count() > lines
    });
    let spent = cpu_ticks(watch.pid()) - ticks;
    assert!(!grew, "{}", watch.log());
    assert!(spent < 20, "{spent} ticks in 2 s after converging");
}

#[test]
fn a_repair_that_keeps_failing_backs_off_logs_once_and_keeps_the_interface_closed() {
    let (lab, _services) = lab_with_services();
    // Fails rather than skips: this test proves nothing on a kernel without the hold.
    assert!(
        kernel_can_hold(&lab),
        "a table held by another process needs Linux 6.9"
    );
    lab.expose_default();
    // Another process holds the table: every repair of watch's is refused (EPERM).
    let foreign = ForeignOwner::adopt(&lab.host);
    let watch = Watch::start_holding(&lab);
    assert!(
        within(Duration::from_secs(5), || watch
            .log()
            .contains("repair failed")),
        "{}",
        watch.log()
    );
    // SAFETY: sysconf reads a constant of the C library; no memory is involved.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (t0, start) = (cpu_ticks(watch.pid()), Instant::now());
    // Six seconds of a failure that does not go away, the interface sampled meanwhile.
    let mut opened = false;
    while start.elapsed() < Duration::from_secs(6) {
        opened |= lab.host.sysctl("net.ipv4.conf.br0.route_localnet") != "0";
        // The sampling interval of this measurement window.
        std::thread::sleep(Duration::from_millis(100));
    }
    let cpu = (cpu_ticks(watch.pid()) - t0) as f64 / tck / start.elapsed().as_secs_f64();
    let log = watch.log();
    let failed = log.matches("repair failed").count();
    println!(
        "persistent failure: watch used {:.2} % of a core over {:.1} s; {failed} 'repair failed' line(s), {} log lines in all",
        cpu * 100.0,
        start.elapsed().as_secs_f64(),
        log.lines().count()
    );
    assert!(!opened, "br0 stays closed while the repair fails: {log}");
    assert_eq!(tcp_request(&lab.container, sa(HOST_ADDR, 3306)), None);
    assert_eq!(failed, 1, "one line per change of error: {log}");
    assert!(log.matches("could not converge").count() <= 1, "{log}");
    // Not spinning: a repair loop without back-off takes most of a core. Three attempts
    // in the window (0.25 s doubling to the 2 s cap), each a whole transaction that the
    // kernel refuses and rolls back: 1.16 % measured on a quiet machine after the
    // issue 19-21 changes (7 clock ticks of 10 ms; under 1 % before, cause not
    // profiled); the bound leaves room for the clock's granularity.
    assert!(cpu < 0.02, "{:.2} % of a core: {log}", cpu * 100.0);
    // Control: once the other process lets go, watch takes the table and the grant
    // works again, within the back-off's cap.
    drop(foreign);
    assert!(
        within(Duration::from_secs(8), || tcp_request(
            &lab.container,
            sa(HOST_ADDR, 3306)
        )
        .is_some()),
        "{}",
        watch.log()
    );
    let log = watch.log();
    assert!(log.contains("repaired after"), "{log}");
    assert!(log.contains("holds table ip loopgate"), "{log}");
}

#[test]
fn a_watch_that_stops_with_nothing_to_protect_leaves_no_table_and_a_loadable_ruleset() {
    let lab = Lab::new();
    // Started with no grants, and stopped after a grant came and went through it.
    for grant in [false, true] {
        let mut watch = Watch::start_holding(&lab);
        if grant {
            lab.expose_default();
            lab.ok(&["revoke", "br0", "--port", "3306"]);
        }
        assert_eq!(watch.stop(), Some(0), "{}", watch.log());
        let ruleset = stdout(&lab.host.exec(&["nft", "list", "ruleset"]));
        assert!(
            !ruleset.contains("table ip loopgate"),
            "grant {grant}: {ruleset}\n{}",
            watch.log()
        );
        let check = lab.host.exec_status(&[
            "sh",
            "-c",
            "nft list ruleset > /tmp/lgt-saved.$$ && nft -c -f /tmp/lgt-saved.$$; rc=$?; rm -f /tmp/lgt-saved.$$; exit $rc",
        ]);
        assert!(check.status.success(), "{}", stderr(&check));
    }
    // Control: a watch that stops while a grant stands leaves its table (the guard).
    let mut watch = Watch::start_holding(&lab);
    lab.expose_default();
    watch.stop();
    assert!(stdout(&lab.host.exec(&["nft", "list", "ruleset"])).contains("table ip loopgate"));
}

/// The command lines of `key` (ExecStart, ExecReload, ExecStop) of a unit and its
/// drop-ins, in order, as systemd reads them: an empty assignment clears the list.
fn exec_lines(files: &[&str], key: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        for line in text.lines() {
            if let Some(v) = line.strip_prefix(&format!("{key}=")) {
                match v.trim() {
                    "" => lines.clear(),
                    v => lines.push(v.to_string()),
                }
            }
        }
    }
    lines
}

const NFT_UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/systemd/nftables.service"
);
const DROP_IN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/systemd/nftables.service.d/loopgate.conf"
);
const APPLY_UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/systemd/loopgate.service"
);
const WATCH_UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/systemd/loopgate-watch.service"
);

#[test]
fn nftables_restart_and_reload_as_the_units_run_them_keep_both_firewalls() {
    let (lab, _services) = lab_with_services();
    // Fails rather than skips: this test proves nothing on a kernel without the hold.
    assert!(kernel_can_hold(&lab), "the hold needs Linux 6.9");
    Lab::route_loopback_via_host(&lab.neighbour);
    let policy_dir = lab.state_dir.join("etc-loopgate");
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::write(
        policy_dir.join("db.yaml"),
        format!("grants:\n  - interface: br0\n    allow: {ALLOWED}\n    port: 3306\n"),
    )
    .unwrap();
    let conf = lab.state_dir.join("nftables.conf");
    let conf_s = conf.display().to_string();
    let local = |line: &str| {
        line.replace("/etc/nftables.conf", &conf_s)
            .replace("/etc/loopgate", &policy_dir.display().to_string())
            .replace("/usr/bin/loopgate", BIN)
    };
    // Runs one unit command line in the lab's host namespace, as root would.
    let run_line = |line: &str| -> bool {
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.host.name, "sh", "-c", &local(line)])
            .env("LOOPGATE_STATE_DIR", &lab.state_dir)
            .env_remove("LOOPGATE_FAILPOINT")
            .output()
            .unwrap();
        out.status.success()
    };
    for line in exec_lines(&[APPLY_UNIT], "ExecStart") {
        assert!(run_line(&line), "{line}");
    }
    let watch_line = local(&exec_lines(&[WATCH_UNIT], "ExecStart")[0]);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.host.name])
        .args(watch_line.split_whitespace());
    let watch = Watch::spawn(&lab, cmd);
    assert!(
        watch.log().contains("holds table ip loopgate"),
        "{}",
        watch.log()
    );
    // The bad case: the user's own firewall saved with `nft list ruleset`, which
    // includes loopgate's held table.
    lab.host.exec(&[
        "nft",
        "add table inet userfw { chain input { type filter hook input priority 0; policy accept; }; }",
    ]);
    let saved = stdout(&lab.host.exec(&["nft", "list", "ruleset"]));
    assert!(saved.contains("table ip loopgate") && saved.contains("table inet userfw"));
    std::fs::write(
        &conf,
        format!("#!/usr/sbin/nft -f\nflush ruleset\n\n{saved}"),
    )
    .unwrap();
    let user_table =
        || stdout(&lab.host.exec(&["nft", "list", "tables"])).contains("table inet userfw");
    let guarded = || {
        let allowed =
            tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref() == Some("tcp:3306");
        let before = passive_opens(&lab.host);
        fire_tcp(&lab.neighbour, sa(LO, 3307));
        allowed && passive_opens(&lab.host) == before
    };
    let env = [("LOOPGATE_NFTABLES_CONF", conf_s.as_str())];
    // Control: Debian's unit as shipped; restart = ExecStop then ExecStart.
    for line in exec_lines(&[NFT_UNIT], "ExecStop") {
        run_line(&line);
    }
    let loaded = exec_lines(&[NFT_UNIT], "ExecStart")
        .iter()
        .all(|l| run_line(l));
    assert!(
        !loaded && !user_table(),
        "the host lost its own firewall without the drop-in"
    );
    // With loopgate's drop-in: `systemctl restart nftables` (nftables stops, then
    // starts; loopgate.service, PartOf it, is restarted after it; watch keeps running),
    // then `systemctl reload nftables` (loopgate.service reloads after it).
    let restart: Vec<String> = [
        exec_lines(&[NFT_UNIT, DROP_IN], "ExecStop"),
        exec_lines(&[NFT_UNIT, DROP_IN], "ExecStart"),
        exec_lines(&[APPLY_UNIT], "ExecStart"),
    ]
    .concat();
    let reload: Vec<String> = [
        exec_lines(&[NFT_UNIT, DROP_IN], "ExecReload"),
        exec_lines(&[APPLY_UNIT], "ExecReload"),
    ]
    .concat();
    for (what, lines) in [("restart", restart), ("reload", reload)] {
        for line in &lines {
            assert!(run_line(line), "{what}: {line}: {}", watch.log());
        }
        assert!(user_table(), "{what}: the user's table is loaded");
        assert!(guarded(), "{what}: {}", watch.log());
        let report = lab.loopgate_env(&["audit"], &env);
        assert!(
            stdout(&report).contains("CRITICAL [nftables-conf-names-table]"),
            "{what}: {}",
            stdout(&report)
        );
    }
    // The remedy audit prints makes the finding go away.
    let report = stdout(&lab.loopgate_env(&["audit"], &env));
    let remedy = report
        .lines()
        .find(|l| l.contains("[nftables-conf-names-table]"))
        .and_then(|l| l.split("take it out of the file: ").nth(1))
        .expect("a remedy")
        .to_string();
    assert!(run_line(&remedy), "{remedy}");
    assert!(!stdout(&lab.loopgate_env(&["audit"], &env)).contains("nftables-conf-names-table"));
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains("table inet userfw") && !text.contains("table ip loopgate"));
    // Control for the guard: without watch and loopgate's table, the neighbour's SYN
    // to 127.0.0.1 is accepted.
    drop(watch);
    lab.host.exec(&["nft", "flush", "ruleset"]);
    let before = passive_opens(&lab.host);
    fire_tcp(&lab.neighbour, sa(LO, 3307));
    assert!(
        passive_opens(&lab.host) > before,
        "the attack works without the guard"
    );
}
