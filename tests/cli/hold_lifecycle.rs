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
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3306"]);
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
    if !kernel_can_hold(&lab) {
        let _ = writeln_skip("a table held by another process needs Linux 6.9");
        return;
    }
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3306"]);
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
    assert!(cpu < 0.01, "{:.2} % of a core: {log}", cpu * 100.0);
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

/// Says on the real stderr that a test's assertions were skipped.
fn writeln_skip(why: &str) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(std::io::stderr(), "hold_lifecycle: SKIPPED: {why}")
}
