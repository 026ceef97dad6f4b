//! Topic: audit's findings and exit code, its JSON and Prometheus output, and when it
//! may trust set elements it did not read back.

use super::*;

#[test]
fn audit_flags_all_one_and_a_deleted_table_and_expose_repairs_it() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    lab.assert_audit(0, &[]);

    lab.host.exec(&["nft", "delete", "table", "ip", "loopgate"]);
    let out = lab.loopgate(&["audit", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let codes: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["code"].as_str())
        .collect();
    assert!(
        codes.contains(&"table-tampered") && codes.contains(&"unguarded"),
        "{codes:?}"
    );
    assert_eq!(report["schema_version"], 2);

    // An edited rule counts as tampering too.
    lab.expose_default();
    // expose repairs a deleted table.
    lab.assert_audit(0, &[]);
    lab.host
        .exec(&["nft", "flush", "chain", "ip", "loopgate", "raw_prerouting"]);
    lab.assert_audit(1, &["table-tampered"]);
    lab.expose_default();

    lab.host.set_sysctl("net.ipv4.conf.all.route_localnet", "1");
    lab.assert_audit(1, &["CRITICAL [all-open]"]);
    let out = lab.ok(&["expose", "br0", "--allow", ALLOWED, "--port", "3307"]);
    let _ = out;
    let warn = stderr(&lab.loopgate(&["expose", "br0", "--allow", ALLOWED, "--port", "3307"]));
    assert!(warn.contains("conf.all.route_localnet is 1"), "{warn}");
}

#[test]
fn audit_for_monitoring_parses_as_prometheus_and_counts_traffic() {
    let (lab, _services) = lab_with_services();
    lab.ok(&[
        "expose", "br0", "--allow", ALLOWED, "--port", "3306", "--name", "mysql",
    ]);
    for _ in 0..3 {
        assert_eq!(
            tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
            Some("tcp:3306")
        );
    }
    let text = lab.ok(&["audit", "--format", "prometheus"]);
    // Debian's python3-prometheus-client: the reference parser of the text format.
    let parser = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nfor f in p(sys.stdin.read()):\n    for s in f.samples:\n        print(s.name, sorted(s.labels.items()), s.value)\n";
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
    let samples = stdout(&out);
    assert!(
        samples.contains("loopgate_guarded [('interface', 'br0')] 1.0"),
        "{samples}"
    );
    assert!(
        samples.contains("loopgate_grants [('interface', 'br0')] 1.0"),
        "{samples}"
    );
    assert!(
        samples.contains("loopgate_findings [('severity', 'critical')] 0.0"),
        "{samples}"
    );
    let dnat = samples
        .lines()
        .find(|l| {
            l.starts_with("loopgate_rule_packets_total")
                && l.contains("'nat_br0_192.0.2.1_tcp_3306'")
                && l.contains("grant mysql")
        })
        .expect("a counter for the grant's DNAT rule");
    assert!(
        dnat.ends_with(" 3.0"),
        "three connections were DNATed: {dnat}"
    );
    assert!(
        !samples.contains("published addresses and ports"),
        "dispatch rules count nothing, so they export no series"
    );
}

/// `audit` skips reading a large set back only while the nftables generation has not
/// moved since loopgate wrote it; any commit anywhere makes it read every element, and
/// an element added by hand is found.
#[test]
fn audit_trusts_unread_elements_only_while_the_nftables_generation_stands_still() {
    let (lab, _services) = lab_with_services();
    let many: Vec<String> = (0..2000u32)
        .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
        .chain([ALLOWED.to_string()])
        .collect();
    let allow = many.join(",");
    lab.ok(&["expose", "br0", "--allow", &allow, "--port", "3306"]);
    let audit = |args: &[&str]| {
        let out = lab.loopgate(&[&["audit", "--json"], args].concat());
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            out.status.code(),
            report["table"]["elements_read_back"].as_bool().unwrap(),
            report["table"]["differences"].to_string(),
        )
    };
    assert_eq!(audit(&[]), (Some(0), false, "[]".into()), "vouched");
    assert_eq!(audit(&["--deep"]), (Some(0), true, "[]".into()), "--deep");

    // Any commit, even to another table, moves the generation: everything is read.
    lab.host.exec(&["nft", "add", "table", "ip", "other"]);
    assert_eq!(audit(&[]), (Some(0), true, "[]".into()), "generation moved");
    // A command that finds the table intact vouches for it again.
    assert!(lab
        .ok(&["expose", "br0", "--allow", &allow, "--port", "3306"])
        .contains("nothing to do"));
    assert_eq!(audit(&[]), (Some(0), false, "[]".into()), "vouched again");

    let sets = NftTable::read(&lab.host).sets;
    assert_eq!(sets.len(), 1, "{sets:?}");
    let set = &sets[0];
    lab.host.exec(&[
        "nft",
        "add",
        "element",
        "ip",
        "loopgate",
        set,
        "{ 203.0.113.99 }",
    ]);
    let (code, read_back, differences) = audit(&[]);
    assert_eq!((code, read_back), (Some(1), true));
    assert!(
        differences.contains(&format!("unexpected element in {set}: cb007163")),
        "{differences}"
    );
    // Repaired by the next expose, which writes (and vouches for) the table anew.
    lab.ok(&["expose", "br0", "--allow", &allow, "--port", "3306"]);
    assert_eq!(audit(&[]), (Some(0), false, "[]".into()), "repaired");
    assert!(tcp_request(&lab.container, sa(HOST_ADDR, 3306)).is_some());
}

/// The remedy `table-empty` prints, run as printed, removes the finding: the empty
/// `table ip loopgate` a killed watch leaves (it held the table with nothing to protect,
/// and the table persists its owner) is reported, and the command the message ends with
/// takes it away.
#[test]
fn the_empty_table_a_killed_watch_leaves_is_reported_and_its_printed_remedy_removes_it() {
    let lab = Lab::new();
    // Control: a clean host has no finding.
    lab.assert_audit(0, &[]);
    drop(Watch::start_holding(&lab)); // SIGKILL
    let out = lab.loopgate(&["audit", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "table-empty")
        .unwrap_or_else(|| panic!("no table-empty finding: {report}"))
        .clone();
    let message = finding["message"].as_str().unwrap();
    let remedy = message
        .rsplit_once("remove it: ")
        .map(|(_, r)| r.trim())
        .unwrap_or_else(|| panic!("no remedy in {message:?}"));
    let out = lab.host.exec_status(&["sh", "-c", remedy]);
    assert!(out.status.success(), "{remedy}: {}", stderr(&out));
    lab.assert_audit(0, &[]);
    assert!(
        !stdout(&lab.host.exec_status(&["nft", "list", "tables"])).contains("loopgate"),
        "the table is still there after {remedy}"
    );
}
