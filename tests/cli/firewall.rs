//! Topic: another firewall on the host that stops a grant's flow (issue 13, items 1
//! and 2): a foreign table's `policy drop` or `reject`, a `notrack` before loopgate's
//! DNAT, an expression audit cannot model, and iptables-legacy. Each control shows the
//! client really fails; audit names the table and chain, expose warns, and the
//! suggested rule makes both the traffic and the finding go.

use super::*;

const PORT: u16 = 3306;

fn expose(lab: &Lab) -> String {
    let out = lab.loopgate(&EXPOSE_DEFAULT);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    stderr(&out)
}

fn works(lab: &Lab) -> bool {
    tcp_request(&lab.container, sa(HOST_ADDR, PORT)).as_deref() == Some("tcp:3306")
}

fn nft(lab: &Lab, script: &str) {
    lab.host.exec(&["nft", script]);
}

/// The rule the finding suggests, as printed for `inet filter input`.
const SUGGESTED: &str =
    "insert rule inet filter input iifname \"br0\" ip daddr 127.0.0.1 tcp dport 3306 ct status dnat accept";

#[test]
fn a_foreign_policy_drop_is_named_warned_at_expose_and_the_suggested_accept_fixes_it() {
    let (lab, _services) = lab_with_services();
    expose(&lab);
    assert!(works(&lab), "control: the grant works before the firewall");
    lab.assert_audit(0, &[]);

    nft(&lab, "add table inet filter");
    nft(
        &lab,
        "add chain inet filter input { type filter hook input priority 0; policy drop; }",
    );
    assert!(
        !works(&lab),
        "control: the foreign policy drop stops the client"
    );
    let report = lab.assert_audit(
        1,
        &[
            "WARNING [firewall-drops]",
            "table inet filter chain input",
            "policy drop",
            SUGGESTED,
        ],
    );
    // A plain nft table: the nft line only (ufw's or firewalld's would not touch it).
    assert!(
        !report.contains("ufw allow") && !report.contains("firewall-cmd"),
        "{report}"
    );
    let warned = expose(&lab);
    assert!(
        warned.contains("warning:") && warned.contains("table inet filter chain input"),
        "expose does not warn: {warned}"
    );
    // JSON carries the finding too.
    let json: serde_json::Value =
        serde_json::from_slice(&lab.loopgate(&["audit", "--json"]).stdout).unwrap();
    assert!(
        json["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["code"] == "firewall-drops"
                && f["severity"] == "warning"
                && f["interface"] == "br0"),
        "{json}"
    );

    // A typical ruleset: established accepted, the first packet still dropped.
    nft(
        &lab,
        "add rule inet filter input ct state established,related accept",
    );
    assert!(!works(&lab));
    lab.assert_audit(1, &["[firewall-drops]"]);

    lab.host.exec(&["sh", "-c", &format!("nft '{SUGGESTED}'")]);
    assert!(works(&lab), "the suggested rule lets the client through");
    lab.assert_audit(0, &[]);
    let quiet = expose(&lab);
    assert!(!quiet.contains("firewall"), "{quiet}");
}

#[test]
fn a_foreign_reject_rule_is_named_with_its_handle() {
    let (lab, _services) = lab_with_services();
    expose(&lab);
    nft(&lab, "add table inet filter");
    nft(
        &lab,
        "add chain inet filter input { type filter hook input priority 0; policy accept; }",
    );
    nft(&lab, "add rule inet filter input tcp dport 3306 reject");
    assert!(!works(&lab), "control: the reject stops the client");
    let handle = stdout(
        &lab.host
            .exec(&["nft", "-a", "list", "chain", "inet", "filter", "input"]),
    )
    .lines()
    .find(|l| l.contains("reject"))
    .and_then(|l| l.rsplit("# handle ").next().map(|h| h.trim().to_string()))
    .unwrap();
    lab.assert_audit(
        1,
        &[
            "[firewall-drops]",
            "table inet filter chain input",
            &format!("rule handle {handle}"),
            "th dport == 3306",
            "(reject)",
            SUGGESTED,
        ],
    );
    let warned = expose(&lab);
    assert!(warned.contains("reject"), "{warned}");
    lab.host.exec(&["sh", "-c", &format!("nft '{SUGGESTED}'")]);
    assert!(works(&lab));
    lab.assert_audit(0, &[]);
}

#[test]
fn a_notrack_rule_before_the_dnat_is_reported() {
    let (lab, _services) = lab_with_services();
    expose(&lab);
    nft(&lab, "add table ip raw");
    nft(
        &lab,
        "add chain ip raw prerouting { type filter hook prerouting priority raw; }",
    );
    nft(
        &lab,
        "add rule ip raw prerouting iifname \"br0\" tcp dport 3306 notrack",
    );
    assert!(!works(&lab), "control: untracked, the flow is never DNATed");
    lab.assert_audit(
        1,
        &[
            "WARNING [notrack]",
            "table ip raw chain prerouting",
            "DNAT never happens",
        ],
    );
    let warned = expose(&lab);
    assert!(warned.contains("notrack"), "{warned}");
    nft(&lab, "flush chain ip raw prerouting");
    assert!(works(&lab));
    lab.assert_audit(0, &[]);
}

#[test]
fn an_unmodelled_expression_may_drop_and_is_named() {
    let (lab, _services) = lab_with_services();
    expose(&lab);
    nft(&lab, "add table inet filter");
    nft(
        &lab,
        "add chain inet filter input { type filter hook input priority 0; policy accept; }",
    );
    nft(&lab, "add rule inet filter input meta mark 0x1 drop");
    // The mark is 0 here, so the client gets through; audit cannot know that.
    assert!(works(&lab));
    lab.assert_audit(
        1,
        &[
            "WARNING [firewall-may-drop]",
            "table inet filter chain input may drop",
            "meta mark",
            SUGGESTED,
        ],
    );
    lab.host.exec(&["sh", "-c", &format!("nft '{SUGGESTED}'")]);
    lab.assert_audit(0, &[]);
}

#[test]
fn iptables_legacy_input_drop_is_read_and_named() {
    if std::process::Command::new("iptables-legacy")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("iptables-legacy is missing: scripts/install-deps.sh installs the iptables package");
    }
    let (lab, _services) = lab_with_services();
    expose(&lab);
    lab.host.exec(&[
        "iptables-legacy",
        "-A",
        "INPUT",
        "-m",
        "conntrack",
        "--ctstate",
        "RELATED,ESTABLISHED",
        "-j",
        "ACCEPT",
    ]);
    lab.host.exec(&["iptables-legacy", "-P", "INPUT", "DROP"]);
    assert!(!works(&lab), "control: the legacy policy drops the client");
    let report = lab.assert_audit(
        1,
        &[
            "[firewall-drops]",
            "table iptables-legacy filter chain INPUT",
            "policy drop",
            "iptables-legacy tables are loaded: filter (INPUT policy DROP)",
            "`iptables-legacy -I INPUT -i br0 -d 127.0.0.1 -p tcp --dport 3306 -m conntrack --ctstate DNAT -j ACCEPT`",
        ],
    );
    // The printed line, run as printed.
    let lines: Vec<&str> = report
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|c| c.starts_with("iptables-legacy "))
        .collect();
    assert_eq!(lines.len(), 1, "{report}");
    lab.host.exec(&["sh", "-c", lines[0]]);
    assert!(works(&lab), "the suggested rule lets the client through");
    // Loaded but letting it through: said, as information only.
    lab.assert_audit(0, &["info [iptables-legacy]"]);
}
