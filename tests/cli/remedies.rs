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

fn works(lab: &Lab) -> bool {
    tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref() == Some("tcp:3306")
}

/// `grant-inactive`: an interface with grants whose route_localnet went back to 0 (a
/// re-created device starts at 0). The printed `loopgate watch` repairs it.
#[test]
fn grant_inactive_is_repaired_by_the_printed_watch() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    assert!(works(&lab), "control: the grant works");
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "0");
    assert!(
        !works(&lab),
        "control: with route_localnet 0 the grant is dead"
    );
    let m = message(&lab, "grant-inactive");
    assert!(quoted(&m).iter().any(|c| c == "loopgate watch"), "{m}");
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
