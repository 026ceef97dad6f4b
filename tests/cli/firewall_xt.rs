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
/// src/common.py) into ufw-user-input: ufw 0.36.2's own parser
/// (`ufw.frontend.parse_command` of the package's modules) turns the printed command
/// into exactly `-i br0 -p tcp -d 127.0.0.1 --dport 3306 -j ACCEPT`. (ufw itself is not
/// run: its CLI manages the host's firewall service.)
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

    // The other line printed, run as printed: the iptables-nft rule at INPUT's top.
    let mut delete = UFW_ALLOW;
    delete[1] = "-D";
    lab.host.exec(&delete);
    assert!(
        !works(&lab),
        "control: without the ufw rule ufw drops it again"
    );
    let lines: Vec<&str> = report
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|c| c.starts_with("iptables-nft "))
        .collect();
    assert!(!lines.is_empty(), "{report}");
    for l in lines {
        lab.host.exec(&["sh", "-c", l]);
    }
    assert!(
        works(&lab),
        "the printed iptables-nft line lets the client through"
    );
    lab.assert_audit(0, &[]);
}

/// Docker 28's rules for `docker run -p 127.0.0.1:3306:80` on a user network
/// (bridge1, 198.51.100.0/24): moby/moby
/// integration/network/bridge/iptablesdoc/generated/usernet-portmap-lo.md (commit
/// 5b0eecd6), nat and raw tables, with the documentation's 192.0.2.0/24 moved to
/// 198.51.100.0/24 (the lab's br0 uses 192.0.2.0/24) and port 8080 to the grant's
/// 3306, so Docker's DNAT matches exactly the packet loopgate's DNAT makes.
const DOCKER_PORTMAP_LO: &str = "*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 198.51.100.0/24 ! -o bridge1 -j MASQUERADE
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -d 127.0.0.1/32 ! -i bridge1 -p tcp -m tcp --dport 3306 -j DNAT --to-destination 198.51.100.2:80
COMMIT
*raw
-A PREROUTING -d 198.51.100.2/32 ! -i bridge1 -j DROP
-A PREROUTING -d 127.0.0.1/32 ! -i lo -p tcp -m tcp --dport 3306 -j DROP
COMMIT
";

#[test]
fn docker_nat_rules_are_judged_on_the_packet_nat_chains_see() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    restore(&lab, DOCKER_PORTMAP_LO);
    // netfilter translates a flow once: Docker's nat chain sees the client's packet
    // to 192.0.2.1 (no match) or, once loopgate's DNAT is done, nothing; its raw
    // drop sees the original tuple too.
    assert!(
        works(&lab),
        "Docker's loopback port mapping does not touch the grant"
    );
    lab.assert_audit(0, &[]);
}
