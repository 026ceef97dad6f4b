//! Topic: `audit --format prometheus` for node_exporter's textfile collector. The
//! document is the product: it is written, and the command exits 0, whatever it
//! reports (`loopgate audit --format prometheus > f.tmp && mv f.tmp f.prom` must keep
//! updating exactly when something is wrong); it says whether and when the audit ran;
//! and its counters of blocked packets only go up, across table rewrites and repairs.

use super::*;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Every sample of `text` as Debian's python3-prometheus-client (the reference parser
/// of the text format) reads it: `name{sorted labels}` → value. Panics when it
/// rejects the document.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let parser = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nfor f in p(sys.stdin.read()):\n    for s in f.samples:\n        print(s.name + '{' + ','.join(k + '=' + v for k, v in sorted(s.labels.items())) + '}', repr(s.value))\n";
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args(["-c", parser])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (scripts/install-deps.sh installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus parser rejected the output: {}\n{text}",
        stderr(&out)
    );
    let mut samples = BTreeMap::new();
    for line in stdout(&out).lines() {
        let (k, v) = line.rsplit_once(' ').unwrap();
        assert!(
            samples
                .insert(k.to_string(), v.parse::<f64>().unwrap())
                .is_none(),
            "{k} twice:\n{text}"
        );
    }
    // Format rules the parser is lenient about: one HELP and one TYPE per family,
    // before its samples, and no blank names.
    let mut families = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            assert!(families.insert(name.to_string()), "{name} twice:\n{text}");
        }
        assert!(!line.contains("=\"\""), "a blank label value: {line}");
    }
    samples
}

/// `audit --format prometheus`: exit code, the parsed samples, stderr.
fn prometheus(lab: &Lab) -> (Option<i32>, BTreeMap<String, f64>, String) {
    let out = lab.loopgate(&["audit", "--format", "prometheus"]);
    (out.status.code(), parse(&stdout(&out)), stderr(&out))
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn the_textfile_is_written_and_exits_0_when_there_are_findings() {
    let lab = Lab::new();
    // A critical finding: br0 open without a guard.
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "1");
    lab.assert_audit(1, &["CRITICAL [unguarded]"]); // control: the text report says so
    let (code, samples, err) = prometheus(&lab);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(samples["loopgate_audit_success{}"], 1.0);
    let t = samples["loopgate_audit_timestamp_seconds{}"];
    assert!((now() - t).abs() < 60.0, "timestamp {t}");
    assert_eq!(samples["loopgate_findings{severity=critical}"], 1.0);
    assert_eq!(
        samples["loopgate_findings_by_code{code=unguarded,severity=critical}"],
        1.0
    );
    assert_eq!(samples["loopgate_pending_grants{}"], 0.0);
    // node_exporter's pattern, as a cron job or a systemd timer runs it.
    let dir = lab.state_dir.join("textfile");
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        "{BIN} --netns {} audit --format prometheus > {d}/loopgate.prom.tmp && mv {d}/loopgate.prom.tmp {d}/loopgate.prom",
        lab.host.name,
        d = dir.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .env("LOOPGATE_STATE_DIR", &lab.state_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let prom = std::fs::read_to_string(dir.join("loopgate.prom")).unwrap();
    assert_eq!(
        parse(&prom)["loopgate_findings_by_code{code=unguarded,severity=critical}"],
        1.0
    );
}

#[test]
fn a_failed_audit_still_writes_a_document_that_says_so() {
    let lab = Lab::new();
    lab.expose_default();
    // A state file that cannot be read: audit cannot judge.
    let state = std::fs::read_dir(&lab.state_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("state.json"))
        .find(|p| p.exists())
        .expect("state.json");
    std::fs::write(&state, b"{ not json").unwrap();
    let text = lab.loopgate(&["audit"]);
    assert_eq!(text.status.code(), Some(3), "control: {}", stderr(&text));
    let (code, samples, err) = prometheus(&lab);
    assert_eq!(code, Some(0));
    assert!(
        err.contains("loopgate: error: ") && err.contains("corrupt"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(samples["loopgate_audit_success{}"], 0.0);
    assert!((now() - samples["loopgate_audit_timestamp_seconds{}"]).abs() < 60.0);
}

#[test]
fn pending_grants_are_counted() {
    let lab = Lab::new();
    lab.ok(&["expose", "veth*", "--allow", ALLOWED, "--port", "3306"]);
    let (code, samples, _) = prometheus(&lab);
    assert_eq!(code, Some(0));
    assert_eq!(samples["loopgate_pending_grants{}"], 1.0);
    assert_eq!(
        samples["loopgate_findings_by_code{code=pending,severity=info}"],
        1.0
    );
}

/// Spoofed datagrams from 127.0.0.2 the guard of br0 drops (`spoofed-loopback-source`).
fn spoof(lab: &Lab, n: usize) {
    assert_eq!(
        flood_udp(
            &lab.neighbour,
            Ipv4Addr::new(127, 0, 0, 2),
            sa(HOST_ADDR, 5400),
            b"spoofed\n",
            n,
        ),
        n
    );
}

const SPOOFED: &str = "loopgate_blocked_packets_total{interface=br0,kind=spoofed-loopback-source}";

#[test]
fn blocked_packet_counters_only_go_up_across_rewrites_and_repairs() {
    let (lab, services) = lab_with_services();
    lab.expose_default();
    spoof(&lab, 50);
    assert!(services.udp_seen.lock().unwrap().is_empty(), "all dropped");
    let (_, samples, _) = prometheus(&lab);
    assert_eq!(samples[SPOOFED], 50.0);
    // A change rewrites the table: the kernel's counters start again.
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3307"]);
    spoof(&lab, 20);
    let (_, samples, _) = prometheus(&lab);
    assert_eq!(samples[SPOOFED], 70.0, "50 before the rewrite, 20 after");
    // Counted after the last audit, then a rewrite, then more than before it: the
    // transaction folded what the old copy had counted.
    spoof(&lab, 30);
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3308"]);
    spoof(&lab, 40);
    let (_, samples, _) = prometheus(&lab);
    assert_eq!(samples[SPOOFED], 140.0);
    // Watch's repair of a tampered table rewrites it too.
    let watch = Watch::start(&lab);
    spoof(&lab, 10);
    lab.host
        .exec(&["nft", "add", "chain", "ip", "loopgate", "intruder"]);
    assert!(
        time_until(
            || !stdout(&lab.host.exec(&["nft", "list", "table", "ip", "loopgate"]))
                .contains("intruder")
        )
        .is_some(),
        "watch repaired the table: {}",
        watch.log()
    );
    spoof(&lab, 5);
    let (_, samples, _) = prometheus(&lab);
    assert_eq!(samples[SPOOFED], 155.0, "{}", watch.log());
    drop(watch);
}

/// Per-interface series only for interfaces loopgate manages or guards and those open:
/// the veths of containers at 0 have none (they would churn with every container).
#[test]
fn per_interface_series_are_for_managed_or_open_interfaces_only() {
    let lab = Lab::new();
    let (_, samples, _) = prometheus(&lab);
    let ifaces = |samples: &BTreeMap<String, f64>| -> Vec<String> {
        samples
            .keys()
            .filter(|k| k.starts_with("loopgate_route_localnet{"))
            .cloned()
            .collect()
    };
    assert_eq!(
        ifaces(&samples),
        Vec::<String>::new(),
        "nothing managed or open"
    );
    lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3306"]);
    let (_, samples, _) = prometheus(&lab);
    assert_eq!(
        ifaces(&samples),
        ["loopgate_route_localnet{interface=br0}"],
        "br0 only, not the veths beside it"
    );
    assert_eq!(samples["loopgate_grants{interface=br0}"], 1.0);
}

/// A runtime network whose grants are pending (the project is down) reads
/// `loopgate_grants{network=...} 0` instead of losing its series.
#[test]
fn a_pending_networks_grants_read_0() {
    let lab = Lab::new();
    let path = lab.fake_cli_script(
        "docker",
        "case \"$2\" in\n ls) echo bridge ;;\n inspect) echo \"Error response from daemon: network $4 not found\" >&2; exit 1 ;;\nesac\n",
    );
    let env = [("PATH", path.as_str())];
    let out = lab.loopgate_env(
        &[
            "expose",
            "--docker-network",
            "myproj_default",
            "--port",
            "5432",
            "--pending-ok",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = lab.loopgate_env(&["audit", "--format", "prometheus"], &env);
    let samples = parse(&stdout(&out));
    assert_eq!(samples["loopgate_grants{network=myproj_default}"], 0.0);
    assert_eq!(samples["loopgate_pending_grants{}"], 1.0);
}
