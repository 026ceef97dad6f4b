//! Topic: watch holding loopgate's table with the kernel's owner flag. Nothing another
//! process does (flush, delete, dormant, a reload of /etc/nftables.conf) reaches the
//! table, so nothing leaks under a flood; commands run through the watch with the same
//! output and exit codes; audit names the protection in force.

use super::*;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Whether this kernel can hold a table (probed inside a lab namespace).
fn kernel_can_hold(lab: &Lab) -> bool {
    lab.host
        .enter(|| loopgate::kernel::nft::probe_owner_support().unwrap_or(false))
}

#[test]
fn while_watch_holds_the_table_no_other_process_opens_a_hole_under_a_flood() {
    let (lab, services) = lab_with_services();
    Lab::route_loopback_via_host(&lab.container);
    lab.expose_default();
    let held = kernel_can_hold(&lab);
    let watch = Watch::start_holding(&lab);
    if held {
        assert!(
            watch.log().contains("holds table ip loopgate"),
            "{}",
            watch.log()
        );
        lab.assert_audit(0, &["table protection: owned by watch (pid"]);
    } else {
        println!("SKIPPED the ownership assertions: this kernel cannot hold a table (NFT_TABLE_F_OWNER with PERSIST, Linux 6.9+); checking the fallback instead");
        assert!(
            watch.log().contains("protecting it by repair only"),
            "{}",
            watch.log()
        );
        lab.assert_audit(0, &["table protection: not owned"]);
    }
    let want = table_image(&lab.host).expect("table");
    // What nftables.service does on restart or reload: load a file that starts with
    // `flush ruleset`.
    let conf = lab.policy(
        "nftables.conf",
        "flush ruleset\ntable inet filter {\n  chain input { type filter hook input priority 0; policy accept; }\n}\n",
    );
    let attacks: Vec<(&str, Vec<&str>)> = vec![
        ("nft flush ruleset", vec!["nft", "flush", "ruleset"]),
        ("nft -f nftables.conf", vec!["nft", "-f", conf.as_str()]),
        (
            "delete table",
            vec!["nft", "delete", "table", "ip", "loopgate"],
        ),
        (
            "flags dormant",
            vec![
                "nft",
                "add",
                "table",
                "ip",
                "loopgate",
                "{ flags dormant; }",
            ],
        ),
        (
            "flush table",
            vec!["nft", "flush", "table", "ip", "loopgate"],
        ),
    ];
    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    services.udp_seen.lock().unwrap().clear();
    let flooding = flood_loopback(&lab.container, stop.clone(), sent.clone());
    for (what, cmd) in &attacks {
        // Refused (EPERM) or skipped (flush ruleset): either way, never an error of ours.
        let _ = lab.host.exec_status(cmd);
        if held {
            assert_eq!(table_image(&lab.host).as_ref(), Some(&want), "{what}");
        } else {
            time_until(|| table_image(&lab.host).as_ref() == Some(&want))
                .unwrap_or_else(|| panic!("{what}: repaired: {}", watch.log()));
        }
        assert_eq!(
            lab.host.sysctl("net.ipv4.conf.br0.route_localnet"),
            "1",
            "{what}"
        );
    }
    std::thread::sleep(Duration::from_millis(100)); // the flood goes on past the last one
    stop.store(true, Ordering::SeqCst);
    flooding.join().unwrap();
    let leak = leaked_from_container(&services);
    println!(
        "{} attacks on the table (held: {held}) under a flood of {} datagrams to 127.0.0.1: {leak} leaked",
        attacks.len(),
        sent.load(Ordering::SeqCst)
    );
    if held {
        assert_eq!(leak, 0, "{}", watch.log());
        assert!(
            !watch.log().contains("closed route_localnet"),
            "{}",
            watch.log()
        );
    }
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    // Control: without watch (the table orphaned, nobody holding it) the same flush
    // removes it: the ownership was what kept it.
    drop(watch);
    lab.host.exec(&["nft", "flush", "ruleset"]);
    assert_eq!(table_image(&lab.host), None);
    lab.ok(&[
        "apply",
        &lab.policy(
            "again.yaml",
            &format!("grants:\n  - interface: br0\n    allow: {ALLOWED}\n    port: 3306\n"),
        ),
    ]);
}

#[test]
fn commands_borrow_the_watchs_table_with_the_same_output_and_exit_codes() {
    let (lab, _services) = lab_with_services();
    let direct = Lab::new();
    let _direct_services = start_services(&direct.host, &[sa(LO, 3306)], &[]);
    let watch = Watch::start_holding(&lab);
    let expose = EXPOSE_DEFAULT;
    for args in [
        &expose[..],
        &expose[..],                                                    // nothing to do
        &["expose", "br0", "--allow", "10.0.0.0/0", "--port", "1"][..], // bad input
        &["revoke", "br0", "--port", "3306"][..],
        &["revoke", "br0", "--port", "3306"][..], // nothing matched
    ] {
        let via = lab.loopgate(args);
        let here = direct.loopgate(args);
        assert_eq!(
            via.status.code(),
            here.status.code(),
            "{args:?}: {} / {} / {}",
            stderr(&via),
            stderr(&here),
            watch.log()
        );
        assert_eq!(stdout(&via), stdout(&here), "{args:?}");
        assert_eq!(stderr(&via), stderr(&here), "{args:?}");
    }
    // Every command that got as far as its transaction borrowed the table (the bad
    // input and the revoke that matched nothing were refused before): expose, expose
    // (nothing to do), revoke.
    assert_eq!(
        watch.log().matches("lent table ip loopgate to pid").count(),
        3,
        "every transaction went through watch's socket: {}",
        watch.log()
    );
    // And the grant made through it works.
    lab.ok(&expose);
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    let _ = Ipv4Addr::LOCALHOST;
}
