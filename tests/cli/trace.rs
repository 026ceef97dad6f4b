//! `loopgate trace`: it follows a real packet from the container through every table,
//! names the foreign chain that drops it, and leaves nothing behind (its own table is
//! gone, loopgate's table is byte-identical), also when stopped with Ctrl-C.

use super::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `loopgate trace` running in the background in the lab's host namespace.
struct Trace {
    child: Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

impl Trace {
    /// Starts trace and returns once tracing is switched on (it says so on stderr).
    fn start(lab: &Lab, args: &[&str]) -> Trace {
        let out = lab.state_dir.join("trace.out");
        let err = lab.state_dir.join("trace.err");
        let child = Command::new(BIN)
            .args(["--netns", &lab.host.name, "trace"])
            .args(args)
            .env("LOOPGATE_STATE_DIR", &lab.state_dir)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let trace = Trace { child, out, err };
        time_until(|| trace.stderr().contains("loopgate trace: tracing"))
            .unwrap_or_else(|| panic!("trace did not start: {}", trace.stderr()));
        trace
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits up to 15 s for trace to exit; its exit code and stdout.
    fn wait(&mut self) -> (Option<i32>, String) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Some(status) = self.child.try_wait().unwrap() {
                let out = std::fs::read_to_string(&self.out).unwrap_or_default();
                return (status.code(), out);
            }
            // The polling interval of this bounded wait.
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("trace did not exit: {}", self.stderr());
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// loopgate's table as `nft -s` prints it (no counters, no handles).
fn loopgate_table(lab: &Lab) -> String {
    stdout(
        &lab.host
            .exec(&["nft", "-s", "list", "table", "ip", "loopgate"]),
    )
}

fn trace_table_exists(lab: &Lab) -> bool {
    lab.host
        .exec_status(&["nft", "list", "table", "ip", "loopgate_trace"])
        .status
        .success()
}

#[test]
fn trace_names_the_foreign_chain_that_drops_a_granted_flow_and_leaves_nothing_behind() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    // A typical /etc/nftables.conf: another table whose input policy is drop.
    lab.host.exec(&[
        "nft",
        "add table inet filter; add chain inet filter input { type filter hook input priority 0; policy drop; }",
    ]);
    let before = loopgate_table(&lab);

    let mut trace = Trace::start(
        &lab,
        &["br0", "--port", "3306", "--count", "1", "--timeout", "10"],
    );
    assert!(trace_table_exists(&lab), "tracing is on while trace runs");
    fire_tcp(&lab.container, sa(HOST_ADDR, 3306));
    let (code, out) = trace.wait();

    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {}", trace.stderr());
    assert!(
        out.contains(&format!("packet {CONTAINER_ADDR}:"))
            && out.contains(&format!("-> {HOST_ADDR}:3306 tcp on br0")),
        "the packet is described: {out}"
    );
    assert!(
        out.contains("table ip loopgate chain")
            && out.contains("accept (DNAT)")
            && out.contains("now 192.0.2.10:"),
        "loopgate's DNAT is shown: {out}"
    );
    assert!(
        out.contains("table inet filter chain input: policy drop"),
        "the foreign chain is a step: {out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.starts_with("packet ")).count(),
        1,
        "--count 1: {out}"
    );
    assert!(
        out.trim_end()
            .ends_with("dropped by table inet filter, chain input: policy drop"),
        "the verdict is said in plain words: {out}"
    );
    assert!(!trace_table_exists(&lab), "the trace table is removed");
    assert_eq!(
        loopgate_table(&lab),
        before,
        "loopgate's table is unchanged"
    );
}

#[test]
fn ctrl_c_removes_the_trace_table_and_no_packet_is_exit_1() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    let before = loopgate_table(&lab);
    let mut trace = Trace::start(&lab, &["br0", "--port", "3306"]);
    assert!(trace_table_exists(&lab));
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(trace.child.id() as i32, libc::SIGINT) };
    let (code, out) = trace.wait();
    assert_eq!(code, Some(1), "stdout: {out}\nstderr: {}", trace.stderr());
    assert!(out.contains("no packet seen"), "{out}");
    assert!(!trace_table_exists(&lab), "Ctrl-C removes the trace table");
    assert_eq!(loopgate_table(&lab), before);
}

#[test]
fn a_leftover_trace_table_is_replaced_and_a_timeout_without_packets_is_exit_1() {
    let lab = Lab::new();
    // What a run on a kernel without owned tables leaves when it is killed.
    lab.host.exec(&[
        "nft",
        "add table ip loopgate_trace; add chain ip loopgate_trace prerouting { type filter hook prerouting priority -301; }; add rule ip loopgate_trace prerouting meta nftrace set 1",
    ]);
    let out = lab.loopgate(&["trace", "br0", "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains("no packet seen"));
    assert!(!trace_table_exists(&lab), "the leftover is gone too");
    // Bad input changes nothing.
    let out = lab.loopgate(&["trace", "br0", "--port", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!trace_table_exists(&lab));
}

#[test]
fn a_killed_trace_leaves_no_table_where_the_kernel_has_owned_tables() {
    let lab = Lab::new();
    let mut trace = Trace::start(&lab, &["br0"]);
    assert!(trace_table_exists(&lab));
    // SIGKILL: no handler, no guard runs; the kernel deletes the table with its owner.
    let _ = trace.child.kill();
    let _ = trace.child.wait();
    assert!(
        time_until(|| !trace_table_exists(&lab)).is_some(),
        "the owned trace table outlived its process"
    );
}

#[test]
fn trace_beside_a_holding_watch_changes_nothing_watch_guards() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    let watch = Watch::start_holding(&lab);
    let before = loopgate_table(&lab);
    let log_before = watch.log();
    let mut trace = Trace::start(
        &lab,
        &["br0", "--port", "3306", "--count", "1", "--timeout", "10"],
    );
    // The flow works while traced, and the trace follows it to loopgate's accept.
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    let (code, out) = trace.wait();
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {}", trace.stderr());
    assert!(out.contains("accept (DNAT)"), "{out}");
    assert!(
        out.lines()
            .last()
            .unwrap_or_default()
            .starts_with("accepted: DNATed by table ip loopgate"),
        "{out}"
    );
    assert!(!trace_table_exists(&lab));
    assert_eq!(loopgate_table(&lab), before);
    assert_eq!(watch.log(), log_before, "watch saw nothing to repair");
}
