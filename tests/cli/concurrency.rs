//! Topic: many loopgate processes at once on one namespace, and namespaces that share
//! one state directory.

use super::*;

#[test]
fn state_of_two_namespaces_stays_separate() {
    let (a, _sa) = lab_with_services();
    // One state directory for both: separation must come from the namespace identity.
    let b = Lab::sharing_state_with(&a);
    a.expose_default();
    let out = b.loopgate(&["audit", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["managed"] == false));
    b.ok(&["revoke", "--all"]);
    assert_eq!(
        tcp_request(&a.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    a.assert_audit(0, &[]);
}

#[test]
fn concurrent_exposes_on_one_namespace_both_apply() {
    let (lab, _services) = lab_with_services();
    let lab = std::sync::Arc::new(lab);
    let handles: Vec<_> = ["3306", "3307"]
        .into_iter()
        .map(|port| {
            let lab = lab.clone();
            std::thread::spawn(move || {
                lab.loopgate(&["expose", "br0", "--allow", ALLOWED, "--port", port])
            })
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3307)).as_deref(),
        Some("tcp:3307")
    );
    lab.assert_audit(0, &[]);
}

/// Runs `threads` workers, each doing `ops` random expose/revoke operations on its own
/// two ports, all at once against one namespace. Returns the ports that must be
/// published at the end (from each worker's own sequence of successful operations) and
/// the number of operations.
fn random_ops(
    lab: &std::sync::Arc<Lab>,
    threads: u16,
    ops: usize,
    seed: u64,
) -> (std::collections::BTreeSet<u16>, usize) {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let lab = lab.clone();
            std::thread::spawn(move || {
                let mut rng = seed ^ (u64::from(t) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let mut open = std::collections::BTreeSet::new();
                for _ in 0..ops {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let port = 4000 + t * 2 + (rng % 2) as u16;
                    let p = port.to_string();
                    let expose = !rng.is_multiple_of(3);
                    let args: Vec<&str> = if expose {
                        vec!["expose", "br0", "--allow", ALLOWED, "--port", &p]
                    } else {
                        vec!["revoke", "br0", "--port", &p]
                    };
                    let out = lab.loopgate(&args);
                    // Each thread has ports of its own: it knows whether a revoke
                    // matches something (exit 0) or nothing (exit 1, nothing changed).
                    let want = if expose || open.contains(&port) { 0 } else { 1 };
                    assert_eq!(out.status.code(), Some(want), "{args:?}: {}", stderr(&out));
                    if expose {
                        open.insert(port);
                    } else {
                        open.remove(&port);
                    }
                }
                open
            })
        })
        .collect();
    let mut all = std::collections::BTreeSet::new();
    for h in handles {
        all.extend(h.join().expect("worker"));
    }
    (all, usize::from(threads) * ops)
}

/// Insists that audit's only warnings are `not-listening`: these tests publish ports
/// nothing serves.
fn assert_only_unserved(report: &serde_json::Value) {
    let wrong: Vec<&serde_json::Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] != "info" && f["code"] != "not-listening")
        .collect();
    assert!(wrong.is_empty(), "{wrong:?}");
}

/// Checks that the host ends exactly as the successful operations imply.
fn assert_published_exactly(lab: &Lab, expected: &std::collections::BTreeSet<u16>) {
    let out = lab.loopgate(&["audit", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_only_unserved(&report);
    let published: std::collections::BTreeSet<u16> = report["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| {
            i["grants"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["port"].as_u64().unwrap() as u16)
        })
        .collect();
    assert_eq!(&published, expected);
    let want = if expected.is_empty() { "0" } else { "1" };
    assert_eq!(lab.host.sysctl("net.ipv4.conf.br0.route_localnet"), want);
    let table = NftTable::read(&lab.host);
    for port in 4000..4032u16 {
        let dnat = table
            .via(
                "nat_grants",
                &format!("\"br0\" . {HOST_ADDR} . tcp . {port}"),
            )
            .is_some_and(|rules| {
                rules
                    .iter()
                    .any(|r| r.contains(&format!("dnat to 127.0.0.1:{port} ")))
            });
        assert_eq!(
            dnat,
            expected.contains(&port),
            "port {port}: {:?}",
            table.maps
        );
    }
}

#[test]
fn sixteen_concurrent_processes_end_exactly_where_their_operations_lead() {
    let lab = std::sync::Arc::new(Lab::new());
    let (expected, ops) = random_ops(&lab, 16, 13, 0x5eed);
    println!("concurrent operations: {ops}, published at the end: {expected:?}");
    assert!(ops >= 200);
    assert_published_exactly(&lab, &expected);
}

#[test]
fn two_namespaces_worked_on_in_parallel_never_interfere() {
    let a = std::sync::Arc::new(Lab::new());
    let b = std::sync::Arc::new(Lab::sharing_state_with(&a));
    let (a2, b2) = (a.clone(), b.clone());
    let ta = std::thread::spawn(move || random_ops(&a2, 8, 8, 1).0);
    let tb = std::thread::spawn(move || random_ops(&b2, 8, 8, 2).0);
    let (ea, eb) = (ta.join().unwrap(), tb.join().unwrap());
    assert_published_exactly(&a, &ea);
    assert_published_exactly(&b, &eb);
}

#[test]
fn concurrent_conflicting_exposes_serialise_to_one_winner() {
    let lab = std::sync::Arc::new(Lab::new());
    let handles: Vec<_> = (0..8u8)
        .map(|t| {
            let lab = lab.clone();
            std::thread::spawn(move || {
                let target = format!("127.0.0.{}", 1 + t % 2);
                (0..5)
                    .map(|_| {
                        let out = lab.loopgate(&[
                            "expose", "br0", "--allow", ALLOWED, "--port", "4100", "--to", &target,
                        ]);
                        let code = out.status.code();
                        assert!(
                            code == Some(0) || code == Some(2),
                            "{target}: {}",
                            stderr(&out)
                        );
                        if code == Some(2) {
                            assert!(
                                stderr(&out).contains("already published"),
                                "{}",
                                stderr(&out)
                            );
                        }
                        (target.clone(), code == Some(0))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<(String, bool)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let winners: std::collections::BTreeSet<&String> = results
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(t, _)| t)
        .collect();
    let conflicts = results.iter().filter(|(_, ok)| !ok).count();
    println!(
        "conflicting operations: {}, refused as conflicts: {conflicts}",
        results.len()
    );
    assert_eq!(
        winners.len(),
        1,
        "every successful expose must agree on one target: {winners:?}"
    );
    assert_eq!(
        conflicts, 20,
        "the 20 exposes naming the other target are refused"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&lab.loopgate(&["audit", "--json"]).stdout).unwrap();
    let br0 = report["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "br0")
        .unwrap()
        .clone();
    assert_eq!(
        br0["grants"][0]["to"].as_str().unwrap(),
        format!("{}:4100", winners.iter().next().unwrap())
    );
    assert_only_unserved(&report);
}
