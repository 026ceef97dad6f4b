//! Topic: sets and verdict maps of other tables (issue 20, section 1). Anonymous sets
//! (`ct state { established, related }`, `tcp dport { 22, 443 }`, as firewalld and
//! Incus ACLs write them) and kube-proxy's verdict maps are evaluated with their
//! members: a drop they decide is certain, a pass is a pass, not "may".

use super::*;

const PORT: u16 = 3306;

fn works(lab: &Lab) -> bool {
    tcp_request(&lab.container, sa(HOST_ADDR, PORT)).as_deref() == Some("tcp:3306")
}

fn nft_file(lab: &Lab, text: &str) {
    let path = std::env::temp_dir().join(format!("loopgate-sets-{}.nft", lab.host.name));
    std::fs::write(&path, text).unwrap();
    lab.host.exec(&["nft", "-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn anonymous_sets_decide_for_certain_and_a_set_naming_the_port_lets_it_through() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    // The shape of firewalld's and Incus's input chains: established by an anonymous
    // set of states, services by an anonymous set of ports, then the policy.
    nft_file(
        &lab,
        "table inet fw {
            chain input {
                type filter hook input priority filter; policy drop;
                ct state { established, related } accept
                ct state { invalid } drop
                iifname \"br0\" tcp dport { 22, 443 } ct state { new, untracked } accept
            }
        }",
    );
    assert!(
        !works(&lab),
        "control: port 3306 is not in the set, the policy drops it"
    );
    let report = lab.assert_audit(
        1,
        &[
            "WARNING [firewall-drops]",
            "table inet fw chain input",
            "policy drop",
        ],
    );
    assert!(
        !report.contains("may"),
        "the sets are evaluated, not guessed: {report}"
    );
    lab.host.exec(&[
        "nft", "add", "rule", "inet", "fw", "input", "iifname", "br0", "tcp", "dport", "{",
        "3306,", "5432", "}", "accept",
    ]);
    assert!(
        works(&lab),
        "control: a set naming the port lets it through"
    );
    lab.assert_audit(0, &[]);
}

#[test]
fn kube_proxy_nftables_mode_verdict_maps_are_evaluated_with_their_elements() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    nft_file(&lab, include_str!("fixtures/kube-proxy-nftables.nft"));
    assert!(
        works(&lab),
        "control: kube-proxy's maps do not touch the grant"
    );
    lab.assert_audit(0, &[]);

    // A LoadBalancer IP equal to the listen address, with source ranges that leave the
    // client out: kube-proxy's firewall chain drops it before loopgate's DNAT.
    lab.host.exec(&[
        "nft",
        "add",
        "element",
        "ip",
        "kube-proxy",
        "firewall-ips",
        "{ 192.0.2.1 . tcp . 3306 : goto firewall-LB }",
    ]);
    assert!(
        !works(&lab),
        "control: the firewall-ips element drops the client"
    );
    let report = lab.assert_audit(
        1,
        &[
            "WARNING [firewall-drops]",
            "table ip kube-proxy chain filter-prerouting",
            "ip saddr != 198.51.100.0/24 drop (in chain firewall-LB)",
        ],
    );
    assert!(!report.contains("may"), "{report}");
}
