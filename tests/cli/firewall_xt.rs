//! Topic: iptables rules loaded with iptables-nft (issue 20, section 1): the xt
//! `match` expressions they leave in nf_tables (`-m conntrack --ctstate`, `-m
//! addrtype`, `-m limit`, `-m comment`) are decoded as iptables-legacy's are, so a
//! grant that works is not called "may drop". Real rulesets: ufw 0.36.2 as `ufw
//! enable` loads it (fixture `fixtures/ufw-0.36.2.rules`, sources cited there) and
//! kubelet's / kube-proxy's KUBE-FIREWALL.

use super::*;

const PORT: u16 = 3306;

fn works(lab: &Lab) -> bool {
    tcp_request(&lab.container, sa(HOST_ADDR, PORT)).as_deref() == Some("tcp:3306")
}

/// `iptables-nft-restore -n` of `rules` inside the lab's host.
fn restore(lab: &Lab, rules: &str) {
    let path = std::env::temp_dir().join(format!("loopgate-xt-{}.rules", lab.host.name));
    std::fs::write(&path, rules).unwrap();
    lab.host.exec(&[
        "sh",
        "-c",
        &format!("iptables-nft-restore -n < {}", path.display()),
    ]);
    let _ = std::fs::remove_file(&path);
}

/// kubelet's KUBE-FIREWALL (kubernetes pkg/kubelet/kubelet_network_linux.go,
/// `syncIPTablesRules`; kube-proxy writes the same rule in
/// pkg/proxy/iptables/proxier.go, `syncProxyRules`, v1.28+): the chain, prepended to
/// INPUT and OUTPUT, dropping non-loopback traffic to 127/8 unless it was DNATed.
const KUBE_FIREWALL: &str = "*filter
:KUBE-FIREWALL - [0:0]
-I INPUT -j KUBE-FIREWALL
-I OUTPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
COMMIT
";

#[test]
fn kube_firewall_loaded_with_iptables_nft_is_judged_as_the_kernel_does() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    restore(&lab, KUBE_FIREWALL);
    let listed = stdout(&lab.host.exec(&[
        "nft",
        "--debug=netlink",
        "list",
        "chain",
        "ip",
        "filter",
        "KUBE-FIREWALL",
    ]));
    assert!(
        listed.contains("match name conntrack rev 3"),
        "control: iptables-nft stores the state as an xt match: {listed}"
    );
    assert!(works(&lab), "the DNATed grant passes KUBE-FIREWALL");
    lab.assert_audit(0, &[]);

    // Control: the same rule without the DNAT exception does drop the grant, and audit
    // says so for certain (the decoded match, not "may").
    lab.host.exec(&["iptables-nft", "-F", "KUBE-FIREWALL"]);
    lab.host.exec(&[
        "iptables-nft",
        "-A",
        "KUBE-FIREWALL",
        "-d",
        "127.0.0.0/8",
        "!",
        "-s",
        "127.0.0.0/8",
        "-m",
        "conntrack",
        "!",
        "--ctstate",
        "RELATED,ESTABLISHED",
        "-j",
        "DROP",
    ]);
    assert!(
        !works(&lab),
        "control: without DNAT in the exception the client is dropped"
    );
    lab.assert_audit(
        1,
        &[
            "WARNING [firewall-drops]",
            "table ip filter chain INPUT",
            "ctstate",
        ],
    );
}

/// The ufw rule audit prints for the grant (`ufw allow in on br0 to 127.0.0.1 port
/// 3306 proto tcp`), as ufw's backend writes it (`UFWRule.format_rule`, ufw 0.36.2
/// src/common.py) into ufw-user-input.
const UFW_ALLOW: [&str; 14] = [
    "iptables-nft",
    "-A",
    "ufw-user-input",
    "-i",
    "br0",
    "-p",
    "tcp",
    "-d",
    "127.0.0.1",
    "--dport",
    "3306",
    "-j",
    "ACCEPT",
    "-w",
];

#[test]
fn ufw_loaded_with_iptables_nft_drops_for_certain_and_its_printed_rule_clears_the_warning() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    assert!(works(&lab), "control: the grant works before ufw");
    restore(&lab, include_str!("fixtures/ufw-0.36.2.rules"));
    assert!(!works(&lab), "control: ufw's default deny drops the grant");
    let report = lab.assert_audit(
        1,
        &[
            "WARNING [firewall-drops]",
            "table ip filter chain INPUT",
            "ufw allow in on br0 to 127.0.0.1 port 3306 proto tcp",
        ],
    );
    assert!(!report.contains("firewall-may-drop"), "{report}");
    lab.host.exec(&UFW_ALLOW);
    assert!(works(&lab), "the printed ufw rule lets the client through");
    lab.assert_audit(0, &[]);
}
