//! Topic: the remedies audit prints (issue 20, section 3). Each is taken from the
//! report and run as printed, in the firewall it names; the client then gets through
//! and the finding is gone. Controls show each firewall really stops the client first.

use super::*;

const PORT: u16 = 3306;

fn works_to(client: &Netns, addr: Ipv4Addr) -> bool {
    tcp_request(client, sa(addr, PORT)).as_deref() == Some("tcp:3306")
}

fn works(lab: &Lab) -> bool {
    works_to(&lab.container, HOST_ADDR)
}

/// Every command in backquotes in `report` that starts with `program`.
fn printed(report: &str, program: &str) -> Vec<String> {
    report
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|c| c.starts_with(program))
        .map(str::to_string)
        .collect()
}

/// Runs every `program` command the report prints, as printed, in the host; returns
/// how many.
#[track_caller]
fn run_printed(lab: &Lab, report: &str, program: &str) -> usize {
    let commands = printed(report, program);
    assert!(
        !commands.is_empty(),
        "no `{program} ...` remedy in:\n{report}"
    );
    for c in &commands {
        lab.host.exec(&["sh", "-c", c]);
    }
    commands.len()
}

fn nft_file(lab: &Lab, text: &str) {
    let path = std::env::temp_dir().join(format!("loopgate-remedy-{}.nft", lab.host.name));
    std::fs::write(&path, text).unwrap();
    lab.host.exec(&["nft", "-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn the_nft_line_for_a_raw_prerouting_notrack_matches_the_packet_raw_sees() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    nft_file(
        &lab,
        "table ip raw {
            chain prerouting {
                type filter hook prerouting priority raw;
                iifname \"br0\" tcp dport 3306 notrack
            }
        }",
    );
    assert!(!works(&lab), "control: untracked, the flow is never DNATed");
    let report = lab.assert_audit(1, &["WARNING [notrack]", "table ip raw chain prerouting"]);
    assert!(
        report.contains("ip daddr 192.0.2.1 tcp dport 3306 accept"),
        "the line matches the client's own tuple: {report}"
    );
    run_printed(&lab, &report, "nft ");
    assert!(works(&lab), "the printed line keeps the flow tracked");
    lab.assert_audit(0, &[]);
}

#[test]
fn the_iptables_line_for_an_iptables_nft_raw_notrack_works() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    lab.host.exec(&[
        "iptables-nft",
        "-t",
        "raw",
        "-A",
        "PREROUTING",
        "-i",
        "br0",
        "-p",
        "tcp",
        "--dport",
        "3306",
        "-j",
        "CT",
        "--notrack",
    ]);
    assert!(!works(&lab), "control: CT --notrack stops the DNAT");
    let report = lab.assert_audit(1, &["WARNING [notrack]", "table ip raw chain PREROUTING"]);
    run_printed(&lab, &report, "iptables-nft ");
    assert!(works(&lab));
    lab.assert_audit(0, &[]);
}

#[test]
fn an_output_notrack_of_the_replies_is_found_and_its_line_works() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    assert!(works(&lab), "control: the grant works");
    nft_file(
        &lab,
        "table ip raw {
            chain output {
                type filter hook output priority raw;
                oifname \"br0\" tcp sport 3306 notrack
            }
        }",
    );
    assert!(
        !works(&lab),
        "control: untracked replies keep 127.0.0.1 as their source"
    );
    let report = lab.assert_audit(
        1,
        &[
            "WARNING [notrack-replies]",
            "table ip raw chain output",
            "replies",
        ],
    );
    run_printed(&lab, &report, "nft ");
    assert!(works(&lab), "the printed line keeps the replies tracked");
    lab.assert_audit(0, &[]);
}

#[test]
fn the_line_for_kube_proxy_nftables_mode_goes_before_its_filter_and_works() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    nft_file(&lab, include_str!("fixtures/kube-proxy-nftables.nft"));
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
        "control: kube-proxy's source ranges drop the client"
    );
    let report = lab.assert_audit(
        1,
        &[
            "[firewall-drops]",
            "table ip kube-proxy chain filter-prerouting",
            "loadBalancerSourceRanges",
        ],
    );
    assert!(
        printed(&report, "nft ")
            .iter()
            .all(|c| c.contains("ip daddr 192.0.2.1 tcp dport 3306")
                && !c.contains("ct status dnat")),
        "the line for a chain before loopgate's DNAT matches the client's tuple: {report}"
    );
    run_printed(&lab, &report, "nft ");
    assert!(works(&lab));
    lab.assert_audit(0, &[]);
}

#[test]
fn a_runtime_bridge_name_is_left_out_of_the_line() {
    // A bridge named as Docker names a user network's (`br-<12 hex>`).
    let lab = Lab::new();
    let bridge = "br-0123456789ab";
    let (host_addr, client_addr) = (
        Ipv4Addr::new(198, 51, 100, 1),
        Ipv4Addr::new(198, 51, 100, 10),
    );
    let client = Netns::new("crt");
    lab.host.ip(&format!("link add {bridge} type bridge"));
    lab.host
        .ip(&format!("addr add {host_addr}/24 dev {bridge}"));
    lab.host.ip(&format!("link set {bridge} up"));
    lab.host
        .set_sysctl(&format!("net.ipv4.conf.{bridge}.rp_filter"), "0");
    run(
        "ip",
        &[
            "-n",
            &lab.host.name,
            "link",
            "add",
            "vrt0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &client.name,
        ],
    );
    lab.host.ip(&format!("link set vrt0 master {bridge} up"));
    client.ip(&format!("addr add {client_addr}/24 dev eth0"));
    client.ip("link set eth0 up");
    client.ip(&format!("route add default via {host_addr}"));
    let _services = start_services(&lab.host, &[sa(Ipv4Addr::LOCALHOST, PORT)], &[]);
    lab.ok(&[
        "expose",
        bridge,
        "--allow",
        "198.51.100.0/24",
        "--port",
        "3306",
    ]);
    assert!(works_to(&client, host_addr), "control: the grant works");
    nft_file(
        &lab,
        "table inet filter {\n chain input {\n type filter hook input priority 0; policy drop;\n }\n}",
    );
    assert!(
        !works_to(&client, host_addr),
        "control: the policy drops it"
    );
    let report = lab.assert_audit(
        1,
        &["[firewall-drops]", "renamed when its network is recreated"],
    );
    let lines = printed(&report, "nft ");
    assert!(lines.iter().all(|l| !l.contains(bridge)), "{report}");
    run_printed(&lab, &report, "nft ");
    assert!(works_to(&client, host_addr));
    lab.assert_audit(0, &[]);
}

#[test]
fn firewalld_strict_forward_ports_rejects_for_certain_and_says_what_helps() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    let strict = include_str!("fixtures/firewalld-2.3-input.nft");
    nft_file(&lab, strict);
    assert!(!works(&lab), "control: the DNAT check rejects the grant");
    let report = lab.assert_audit(
        1,
        &[
            "WARNING [firewall-drops]",
            "table inet firewalld chain filter_INPUT",
            "(reject)",
            "StrictForwardPorts=no",
        ],
    );
    assert!(
        !report.contains("may") && !report.contains("--zone=trusted"),
        "{report}"
    );
    // The remedy: with StrictForwardPorts=no firewalld builds `ct status dnat accept`
    // instead of the jump (the same `_build_default_rules_dnat`).
    lab.host
        .exec(&["nft", "delete", "table", "inet", "firewalld"]);
    nft_file(
        &lab,
        &strict
            .replace(
                "ct status dnat jump filter_INPUT_dnat",
                "ct status dnat accept",
            )
            .replace(
                "\tchain filter_INPUT_dnat {\n\t\treject with icmpx admin-prohibited\n\t}\n",
                "",
            ),
    );
    assert!(works(&lab));
    lab.assert_audit(0, &[]);
}

#[test]
fn firewalld_add_port_is_what_firewalld_builds_and_it_works() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    // The comment lines of the fixture are nft comments too.
    nft_file(&lab, include_str!("fixtures/firewalld-0.6-input.nft"));
    assert!(!works(&lab), "control: zone public rejects the port");
    let report = lab.assert_audit(
        1,
        &[
            "[firewall-drops]",
            "table inet firewalld chain filter_INPUT",
            "--add-port=3306/tcp",
        ],
    );
    assert!(
        printed(&report, "firewall-cmd ").iter().any(|c| c
            == "firewall-cmd --zone=\"$(firewall-cmd --get-zone-of-interface=br0)\" --add-port=3306/tcp"),
        "{report}"
    );
    // firewall-cmd cannot run here: the rule it makes firewalld add for
    // `--zone=public --add-port=3306/tcp` (v0.6.0 nftables.py, build_zone_ports_rules:
    // `add rule inet firewalld filter_IN_public_allow tcp dport 3306 ct state new
    // accept`).
    lab.host.exec(&[
        "nft",
        "add",
        "rule",
        "inet",
        "firewalld",
        "filter_IN_public_allow",
        "tcp",
        "dport",
        "3306",
        "ct",
        "state",
        "new",
        "accept",
    ]);
    assert!(
        works(&lab),
        "the port firewalld opens lets the grant through"
    );
    lab.assert_audit(0, &[]);
}

/// A filter chain at prerouting's dstnat priority: netfilter runs hooks of equal
/// priority in reverse order of registration, so it sees the client's own tuple when it
/// was made after loopgate's table and the translated one when it was there first.
/// Audit prints both lines; run as printed, they let the flow through in either order.
#[test]
fn both_lines_for_a_chain_at_the_dnat_priority_work_in_either_order() {
    const AT_DSTNAT: &str = "table inet filter {
        chain pre {
            type filter hook prerouting priority dstnat; policy accept;
            iifname \"br0\" tcp dport 3306 drop
        }
    }";
    for foreign_first in [false, true] {
        let (lab, _services) = lab_with_services();
        if foreign_first {
            nft_file(&lab, AT_DSTNAT);
        }
        lab.expose_default();
        if !foreign_first {
            nft_file(&lab, AT_DSTNAT);
        }
        assert!(
            !works(&lab),
            "control ({foreign_first}): the chain drops it"
        );
        let report = lab.assert_audit(1, &["[firewall-drops]", "table inet filter chain pre"]);
        let lines = printed(&report, "nft ");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("ip daddr 192.0.2.1 tcp dport 3306 accept"))
                && lines
                    .iter()
                    .any(|l| l.contains("ip daddr 127.0.0.1 tcp dport 3306 ct status dnat accept")),
            "both tuples: {report}"
        );
        assert_eq!(run_printed(&lab, &report, "nft "), 2);
        assert!(
            works(&lab),
            "({foreign_first}) the printed lines let it through"
        );
        lab.assert_audit(0, &[]);
    }
}

/// A chain that drops the replies, at output or postrouting, before or after their
/// source is translated back to the listen address (at srcnat), or at srcnat itself
/// (either, by registration order): the printed lines match the replies it sees.
#[test]
fn the_lines_for_reply_chains_match_the_replies_each_sees_and_work() {
    for (hook, priority, sources) in [
        (
            "output",
            "filter",
            &["ip saddr 127.0.0.1 tcp sport 3306"][..],
        ),
        (
            "postrouting",
            "filter",
            &["ip saddr 127.0.0.1 tcp sport 3306"][..],
        ),
        (
            "postrouting",
            "srcnat + 10",
            &["ip saddr 192.0.2.1 tcp sport 3306"][..],
        ),
        (
            "postrouting",
            "srcnat",
            &[
                "ip saddr 127.0.0.1 tcp sport 3306",
                "ip saddr 192.0.2.1 tcp sport 3306",
            ][..],
        ),
    ] {
        let (lab, _services) = lab_with_services();
        lab.expose_default();
        assert!(works(&lab), "control: the grant works");
        nft_file(
            &lab,
            &format!(
                "table inet filter {{
                    chain replies {{
                        type filter hook {hook} priority {priority}; policy accept;
                        oifname \"br0\" tcp sport 3306 drop
                    }}
                }}"
            ),
        );
        assert!(
            !works(&lab),
            "control ({hook} {priority}): the replies are dropped"
        );
        let report = lab.assert_audit(1, &["[firewall-drops]", "table inet filter chain replies"]);
        let lines = printed(&report, "nft ");
        assert_eq!(lines.len(), sources.len(), "{hook} {priority}: {report}");
        for s in sources {
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains(&format!("oifname \"br0\" {s} ct status dnat accept"))),
                "{hook} {priority}: no line with {s}: {report}"
            );
        }
        run_printed(&lab, &report, "nft ");
        assert!(
            works(&lab),
            "{hook} {priority}: the printed lines let the replies out"
        );
        lab.assert_audit(0, &[]);
    }
}

/// The iptables forms of the reply lines: a filter OUTPUT drop (after conntrack: the
/// `--ctstate DNAT` line) and a raw OUTPUT `CT --notrack` (before it: untracked, no
/// conntrack match), both loaded with iptables-nft.
#[test]
fn the_iptables_lines_for_reply_chains_work() {
    for (table, target, want) in [
        (
            "filter",
            &["-j", "DROP"][..],
            "iptables-nft -I OUTPUT -o br0 -s 127.0.0.1 -p tcp --sport 3306 -m conntrack --ctstate DNAT -j ACCEPT",
        ),
        (
            "raw",
            &["-j", "CT", "--notrack"][..],
            "iptables-nft -t raw -I OUTPUT -o br0 -s 127.0.0.1 -p tcp --sport 3306 -j ACCEPT",
        ),
    ] {
        let (lab, _services) = lab_with_services();
        lab.expose_default();
        assert!(works(&lab), "control: the grant works");
        let mut rule = vec![
            "iptables-nft", "-t", table, "-A", "OUTPUT", "-o", "br0", "-p", "tcp", "--sport",
            "3306",
        ];
        rule.extend(target);
        lab.host.exec(&rule);
        assert!(!works(&lab), "control ({table}): the replies are stopped");
        let report = lab.assert_audit(1, &[&format!("table ip {table} chain OUTPUT"), want]);
        assert_eq!(run_printed(&lab, &report, "iptables-nft "), 1, "{report}");
        assert!(works(&lab), "{table}: the printed line lets the replies out");
        lab.assert_audit(0, &[]);
    }
}
