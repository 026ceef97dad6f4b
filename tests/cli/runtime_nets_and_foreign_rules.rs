//! Topic: runtime networks (a bridge named lo, their subnets' allow checks) and how
//! audit reads foreign firewall rules; review 3 attacks.
//!
//! Each test's comment describes the hole the review found (in the present tense of
//! the code it was found in); the test asserts the hole is closed.

use super::*;

/// A runtime network whose bridge is `lo` (podman `--interface-name lo`, or a Docker
/// `com.docker.network.bridge.name=lo` option) must not make loopgate guard or
/// publish on the loopback itself: `expose lo` is refused as bad input, and the guard
/// on lo drops every 127/8 packet of the host.
#[test]
fn a_runtime_network_whose_bridge_is_lo_is_not_published_on_lo() {
    let (lab, _services) = lab_with_services();
    let path = lab.fake_cli(
        "docker",
        r#"[{"Name":"evil","Id":"0123456789abcdef","Driver":"bridge","Options":{"com.docker.network.bridge.name":"lo"},"IPAM":{"Config":[{"Subnet":"192.0.2.0/25","Gateway":"192.0.2.1"}]}}]"#,
    );
    assert_eq!(
        tcp_request(&lab.host, sa(LO, 3306)).as_deref(),
        Some("tcp:3306"),
        "the host reaches its own service before"
    );
    let out = lab.loopgate_env(
        &["expose", "--docker-network", "evil", "--port", "3307"],
        &[("PATH", &path)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let table = stdout(
        &lab.host
            .exec_status(&["nft", "list", "table", "ip", "loopgate"]),
    );
    let host_ok = tcp_request(&lab.host, sa(LO, 3306)).as_deref() == Some("tcp:3306");
    assert!(
        host_ok && !table.contains("\"lo\""),
        "expose exit {:?} stderr {}\nhost reaches 127.0.0.1:3306: {host_ok}\n{table}",
        out.status.code(),
        stderr(&out)
    );
}

fn expose_3306(lab: &Lab) {
    let out = lab.loopgate(&EXPOSE_DEFAULT);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

fn grant_works(lab: &Lab) -> bool {
    tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref() == Some("tcp:3306")
}

fn nft_script(lab: &Lab, script: &str) {
    let out = lab.host.exec(&["nft", script]);
    assert!(out.status.success(), "nft {script}: {}", stderr(&out));
}

/// A foreign firewall drops the grant's flow at a hook audit does not read; audit
/// must not exit 0 ("all is well") while the client times out.
fn foreign_drop_outside_ip_hooks(script: &[&str]) {
    let (lab, _services) = lab_with_services();
    expose_3306(&lab);
    assert!(
        grant_works(&lab),
        "control: the grant works before the firewall"
    );
    lab.assert_audit(0, &[]);
    for s in script {
        nft_script(&lab, s);
    }
    assert!(
        !grant_works(&lab),
        "control: the foreign drop stops the client"
    );
    let (code, report) = lab.audit();
    assert_ne!(
        code,
        Some(0),
        "audit says all is well while {script:?} drops the grant's flow:\n{report}"
    );
}

/// `inet` tables have an ingress hook (NF_INET_INGRESS, hook number 5) since Linux
/// 5.10: `Hook::from_number(5)` is None, so the chain is read as a regular chain that
/// nothing reaches.
#[test]
fn an_inet_ingress_policy_drop_is_reported() {
    foreign_drop_outside_ip_hooks(&[
        "add table inet fw",
        "add chain inet fw ing { type filter hook ingress device br0 priority 0; policy drop; }",
    ]);
}

/// A `netdev` table's ingress chain on a port of the grant's bridge: not read at all.
#[test]
fn a_netdev_ingress_drop_is_reported() {
    foreign_drop_outside_ip_hooks(&[
        "add table netdev fw",
        "add chain netdev fw ing { type filter hook ingress device vc priority 0; policy accept; }",
        "add rule netdev fw ing ip daddr 192.0.2.1 tcp dport 3306 drop",
    ]);
}

/// A `bridge` table's input chain (frames a bridge port passes up to the host): not
/// read at all.
#[test]
fn a_bridge_family_input_policy_drop_is_reported() {
    foreign_drop_outside_ip_hooks(&[
        "add table bridge fw",
        "add chain bridge fw in { type filter hook input priority 0; policy drop; }",
    ]);
}

/// An expression the evaluator does not model (here `fib`) loads a register; the
/// evaluator does not mark that register unknown, so the compare that follows is made
/// against what an earlier load (iifname) left there, found false, and the drop rule
/// is judged "does not match": audit says all is well.
#[test]
fn an_unmodelled_load_is_not_compared_with_a_stale_register() {
    foreign_drop_outside_ip_hooks(&[
        "add table inet fw",
        "add chain inet fw pre { type filter hook prerouting priority 0; policy accept; }",
        "add rule inet fw pre iifname \"br0\" fib daddr type local tcp dport 3306 drop",
    ]);
}

/// A `dynset` with an embedded expression (`meter`/`add @set { ip saddr limit ... }`)
/// is a match, not a statement: past the limit the rule does not match and the
/// policy drop decides. The evaluator reads it as an unconditional accept.
#[test]
fn a_rate_limited_accept_is_not_read_as_an_accept() {
    foreign_drop_outside_ip_hooks(&[
        "add table inet fw",
        "add set inet fw seen { type ipv4_addr; flags dynamic; }",
        "add chain inet fw in { type filter hook input priority 0; policy drop; }",
        "add rule inet fw in iifname \"br0\" add @seen { ip saddr limit rate 1/hour burst 1 packets } accept",
    ]);
}

/// iptables `-g CHAIN` (goto, IPT_F_GOTO in the entry's flags) is read as `-j`: when
/// the chain gone to falls off its end, the kernel applies the base chain's policy
/// (DROP), but the evaluator continues with the next rule of INPUT (ACCEPT).
#[test]
fn an_iptables_legacy_goto_is_not_read_as_a_jump() {
    let (lab, _services) = lab_with_services();
    expose_3306(&lab);
    assert!(grant_works(&lab), "control");
    lab.assert_audit(0, &[]);
    for args in [
        &["-N", "LG"][..],
        &["-A", "LG", "-s", "203.0.113.0/24", "-j", "ACCEPT"],
        &["-A", "INPUT", "-i", "br0", "-g", "LG"],
        &["-A", "INPUT", "-i", "br0", "-j", "ACCEPT"],
        &["-P", "INPUT", "DROP"],
    ] {
        let mut cmd = vec!["iptables-legacy"];
        cmd.extend_from_slice(args);
        let out = lab.host.exec(&cmd);
        assert!(out.status.success(), "{cmd:?}: {}", stderr(&out));
    }
    assert!(
        !grant_works(&lab),
        "control: the goto ends in INPUT's policy drop"
    );
    let (code, report) = lab.audit();
    assert_ne!(code, Some(0), "audit says all is well:\n{report}");
}

/// The subnets a runtime reports become the grant's allowed sources without the
/// checks `--allow` gets (`parse_cidr`: not the whole Internet, not 127/8, no host
/// bits): a network described as 0.0.0.0/0 publishes to every source.
#[test]
fn runtime_subnets_get_the_allow_checks() {
    let (lab, _services) = lab_with_services();
    let refused = lab.loopgate(&["expose", "br0", "--allow", "0.0.0.0/0", "--port", "3306"]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "control: --allow 0.0.0.0/0 is refused"
    );
    let path = lab.fake_cli(
        "docker",
        r#"[{"Name":"wide","Id":"0123456789abcdef","Driver":"bridge","Options":{"com.docker.network.bridge.name":"br0"},"IPAM":{"Config":[{"Subnet":"192.0.2.77/0","Gateway":"192.0.2.1"}]}}]"#,
    );
    let out = lab.loopgate_env(
        &["expose", "--docker-network", "wide", "--port", "3306"],
        &[("PATH", &path)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let table = stdout(
        &lab.host
            .exec_status(&["nft", "list", "table", "ip", "loopgate"]),
    );
    let neighbour = tcp_request(&lab.neighbour, sa(HOST_ADDR, 3306));
    assert!(
        !table.contains("0.0.0.0/0") && neighbour.is_none(),
        "expose exit {:?} {}; neighbour got {neighbour:?}\n{table}",
        out.status.code(),
        stderr(&out)
    );
}
