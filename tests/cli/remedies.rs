//! Topic: the remedies audit prints for findings other than another firewall's (issue
//! 20, section 3; the firewall ones are in firewall_remedies.rs, firewall_incus.rs and
//! the other firewall*.rs). Each is taken from audit's JSON message (or, where the
//! message names none, the reference's remedy column) and run as printed; the finding
//! then goes and, where it is about traffic, the traffic works.

use super::*;

/// The message of the finding `code` in `loopgate audit --json`, insisting on exit 1.
#[track_caller]
fn message(lab: &Lab, code: &str) -> String {
    let out = lab.loopgate(&["audit", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == code)
        .and_then(|f| f["message"].as_str())
        .unwrap_or_else(|| panic!("no {code} finding: {report}"))
        .to_string()
}

/// The commands in backquotes in `message`.
fn quoted(message: &str) -> Vec<String> {
    message
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// Runs a `loopgate ...` command line as printed, in the lab (its netns and state).
#[track_caller]
fn run_printed(lab: &Lab, printed: &str) -> String {
    let words: Vec<&str> = printed.split_whitespace().collect();
    assert_eq!(words[0], "loopgate", "{printed}");
    let out = lab.loopgate(&words[1..]);
    assert!(out.status.success(), "{printed}: {}", stderr(&out));
    stderr(&out)
}

fn works(lab: &Lab) -> bool {
    tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref() == Some("tcp:3306")
}

/// `grant-inactive`: an interface with grants whose route_localnet went back to 0 (a
/// re-created device starts at 0). The printed `loopgate watch --once` repairs it, and
/// so does a running `loopgate watch`.
#[test]
fn grant_inactive_is_repaired_by_the_printed_watch_once_and_by_a_running_watch() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    assert!(works(&lab), "control: the grant works");
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "0");
    assert!(
        !works(&lab),
        "control: with route_localnet 0 the grant is dead"
    );
    let m = message(&lab, "grant-inactive");
    assert!(
        quoted(&m).iter().any(|c| c == "loopgate watch --once"),
        "{m}"
    );
    run_printed(&lab, "loopgate watch --once");
    lab.assert_audit(0, &[]);
    assert!(works(&lab), "the grant works again after watch --once");
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "0");
    assert!(quoted(&message(&lab, "grant-inactive"))
        .iter()
        .any(|c| c == "loopgate watch"));
    let watch = Watch::start(&lab);
    time_until(|| lab.audit().0 == Some(0))
        .unwrap_or_else(|| panic!("watch repairs it: {:?} {}", lab.audit(), watch.log()));
    assert!(works(&lab), "the grant works again");
}

/// `default-open`: the message names the setting; the reference's remedy is to reset it.
#[test]
fn default_open_goes_when_the_setting_is_reset() {
    let lab = Lab::new();
    lab.assert_audit(0, &[]);
    lab.host
        .set_sysctl("net.ipv4.conf.default.route_localnet", "1");
    let m = message(&lab, "default-open");
    assert!(m.contains("net.ipv4.conf.default.route_localnet=1"), "{m}");
    lab.host
        .set_sysctl("net.ipv4.conf.default.route_localnet", "0");
    lab.assert_audit(0, &[]);
}

/// `table-tampered`: another process flushed one of loopgate's chains. The printed
/// `loopgate watch --once` puts the table back, with no watch running.
#[test]
fn a_tampered_table_is_put_back_by_the_printed_watch_once() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    lab.assert_audit(0, &[]);
    lab.host
        .exec(&["nft", "flush", "chain", "ip", "loopgate", "raw_prerouting"]);
    let m = message(&lab, "table-tampered");
    assert!(
        quoted(&m).iter().any(|c| c == "loopgate watch --once"),
        "{m}"
    );
    let log = run_printed(&lab, "loopgate watch --once");
    lab.assert_audit(0, &[]);
    assert!(works(&lab), "the grant works: {log}");
    // Nothing left to do: a second run says so and changes nothing.
    let before = lab.fingerprint();
    assert!(run_printed(&lab, "loopgate watch --once").contains("nothing to repair"));
    assert_eq!(before, lab.fingerprint());
}

/// `interface-renamed`: a managed interface renamed while open. The printed
/// `loopgate watch --once` closes it (its guard names the old name), and the finding goes.
#[test]
fn a_renamed_open_interface_is_closed_by_the_printed_watch_once() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    lab.host.ip("link set br0 down");
    lab.host.ip("link set br0 name brx");
    lab.host.ip("link set brx up");
    assert_eq!(lab.host.sysctl("net.ipv4.conf.brx.route_localnet"), "1");
    let m = message(&lab, "interface-renamed");
    assert!(
        quoted(&m).iter().any(|c| c == "loopgate watch --once"),
        "{m}"
    );
    run_printed(&lab, "loopgate watch --once");
    assert_eq!(lab.host.sysctl("net.ipv4.conf.brx.route_localnet"), "0");
    let (_, text) = lab.audit();
    assert!(!text.contains("interface-renamed"), "{text}");
}

/// `all-open`: conf.all=1 (kube-proxy sets it) opens every interface. The remedy,
/// `loopgate guard --all-interfaces` with a running watch, closes every hole (the
/// traffic side is `guard::kube_proxy_style_localhost_nodeport_with_conf_all_is_guarded_on_every_interface`),
/// and audit then says so without an alarm (a kube-proxy host is not at exit 1 for
/// ever); without the watch it stays a warning, since a new interface would stay open.
#[test]
fn all_open_is_critical_until_every_interface_is_guarded_and_a_watch_guards_new_ones() {
    let (lab, _services) = lab_with_services();
    lab.host.set_sysctl("net.ipv4.conf.all.route_localnet", "1");
    lab.assert_audit(1, &["CRITICAL [all-open]", "[unguarded]"]);
    let m = message(&lab, "all-open");
    assert!(m.contains("every interface routes 127.0.0.0/8"), "{m}");
    run_printed(&lab, "loopgate guard --all-interfaces");
    let (code, text) = lab.audit();
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("WARNING [all-open]") && !text.contains("[unguarded]"),
        "{text}"
    );
    let watch = Watch::start_holding(&lab);
    lab.assert_audit(0, &["info [all-open]"]);
    // A new interface is guarded as it appears, and audit stays at 0.
    lab.host.ip("link add brnew type bridge");
    time_until(|| NftTable::read_or_empty(&lab.host).guard_of("brnew").is_ok())
        .unwrap_or_else(|| panic!("watch guards brnew: {}", watch.log()));
    lab.assert_audit(0, &["info [all-open]"]);
    // Control: an interface nobody guarded (no watch to see it appear) brings the
    // alarm back.
    drop(watch);
    lab.host.ip("link add brlate type bridge");
    lab.assert_audit(1, &["CRITICAL [all-open]", "for brlate"]);
}

/// `listen-address-gone`: the interface's address changed under a grant that took its
/// address by default. The printed `loopgate watch --once` moves the grant to the new
/// address, and the client reaches it there.
#[test]
fn a_moved_default_address_follows_with_the_printed_watch_once() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    assert!(works(&lab), "control: the grant works");
    let moved = std::net::Ipv4Addr::new(192, 0, 2, 2);
    // (Deleting a primary address takes the secondaries of its subnet with it.)
    lab.host.ip(&format!("addr del {HOST_ADDR}/24 dev br0"));
    lab.host.ip("addr add 192.0.2.2/24 dev br0");
    assert_eq!(
        tcp_request(&lab.container, sa(moved, 3306)),
        None,
        "control: nothing serves the new address yet"
    );
    let m = message(&lab, "listen-address-gone");
    assert!(
        quoted(&m).iter().any(|c| c == "loopgate watch --once"),
        "{m}"
    );
    run_printed(&lab, "loopgate watch --once");
    lab.assert_audit(0, &[]);
    assert_eq!(
        tcp_request(&lab.container, sa(moved, 3306)).as_deref(),
        Some("tcp:3306")
    );
}

/// `interrupted`: an expose killed between its steps. The printed
/// `loopgate watch --once` rolls it back: audit is clean and the interface is closed
/// (the expose never finished).
#[test]
fn an_interrupted_expose_is_rolled_back_by_the_printed_watch_once() {
    let (lab, _services) = lab_with_services();
    let out = lab.loopgate_env(&EXPOSE_DEFAULT, &[("LOOPGATE_CRASH", "after-sysctl-raise")]);
    assert_eq!(out.status.code(), None, "a SIGKILL: {}", stderr(&out));
    let m = message(&lab, "interrupted");
    assert!(
        quoted(&m).iter().any(|c| c == "loopgate watch --once"),
        "{m}"
    );
    run_printed(&lab, "loopgate watch --once");
    lab.assert_audit(0, &[]);
    assert_eq!(lab.host.sysctl("net.ipv4.conf.br0.route_localnet"), "0");
    assert!(!works(&lab), "rolled back: not published");
}

/// `loopgate watch --once` beside the running watch the shipped unit starts: refused
/// (exit 2, naming that watch's pid), changing nothing; that watch repairs by itself.
#[test]
fn watch_once_beside_a_running_watch_is_refused_and_changes_nothing() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    let watch = Watch::start_holding(&lab);
    let before = lab.fingerprint();
    let out = lab.loopgate(&["watch", "--once"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("pid {}", watch.pid())),
        "{}",
        stderr(&out)
    );
    assert_eq!(before, lab.fingerprint());
    lab.assert_audit(0, &[]);
}
