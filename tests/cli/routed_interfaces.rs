//! Topic: grants on routed interfaces (issue 20, sections 1 and 3). What decides whether
//! a grant's clients get answers is that the route back to them leaves through the
//! interface they came in on: a CNI's /32 route per pod on its own veth (Calico's
//! `cali*`) is fine however the rest of the pod network is routed, and a client network
//! reached only through a default route elsewhere is `reply-route` (asymmetric), not
//! `allow-route` (which would tell the user to publish on the wrong interface).

use super::*;

const PORT: u16 = 3306;

/// A Calico-style pod: a veth `ifname` without a host address and the pod's /32
/// routed to it (felix routes each workload's /32 to its `cali*` veth). Calico's pod
/// routes via 169.254.1.1 answered by proxy ARP; here the pod's default route is the
/// link itself, which reaches the host's addresses the same way, through the veth.
fn pod(lab: &Lab, ifname: &str, tag: &str, addr: Ipv4Addr) -> Netns {
    let ns = Netns::new(tag);
    run(
        "ip",
        &[
            "-n",
            &lab.host.name,
            "link",
            "add",
            ifname,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.name,
        ],
    );
    lab.host.ip(&format!("link set {ifname} up"));
    lab.host
        .set_sysctl(&format!("net.ipv4.conf.{ifname}.rp_filter"), "0");
    // felix sets route_localnet=1 on its veths itself (they have no host address, so
    // loopgate would only guard them, not open them).
    lab.host
        .set_sysctl(&format!("net.ipv4.conf.{ifname}.route_localnet"), "1");
    lab.host.ip(&format!("route add {addr}/32 dev {ifname}"));
    ns.ip(&format!("addr add {addr}/32 dev eth0"));
    ns.ip("link set eth0 up");
    ns.ip("route add default dev eth0");
    ns
}

#[test]
fn a_pod_veth_with_its_own_host_route_is_not_called_routed_elsewhere() {
    let (lab, _services) = lab_with_services();
    let pod_a = pod(&lab, "calia0", "pa", Ipv4Addr::new(203, 0, 113, 5));
    let _pod_b = pod(&lab, "calib0", "pb", Ipv4Addr::new(203, 0, 113, 2));
    // The other pod's veth, opened by its CNI too, is guarded as the README says.
    lab.ok(&["guard", "calib0"]);
    // Calico's IPAM block for the node, blackholed (felix's `blackhole ... proto bird`).
    lab.host.ip("route add blackhole 203.0.113.0/24");
    lab.ok(&[
        "expose",
        "calia0",
        "--allow",
        "203.0.113.0/24",
        "--port",
        "3306",
        "--listen",
        "192.0.2.1",
    ]);
    assert_eq!(
        tcp_request(&pod_a, sa(HOST_ADDR, PORT)).as_deref(),
        Some("tcp:3306"),
        "the pod reaches the grant, its replies come back through its veth"
    );
    // The pod network's sampled address .2 is routed through another pod's veth: not
    // a reason to doubt this grant.
    lab.assert_audit(0, &[]);

    // Control: without the pod's route through calia0, the replies leave elsewhere
    // and audit says so.
    lab.host.ip("route del 203.0.113.5/32 dev calia0");
    lab.host.ip("route add 203.0.113.5/32 dev calib0");
    assert_eq!(tcp_request(&pod_a, sa(HOST_ADDR, PORT)), None);
    lab.assert_audit(1, &["[allow-route]", "203.0.113.0/24 through calib0"]);
}

#[test]
fn a_client_network_reached_only_through_a_default_route_elsewhere_is_reply_route() {
    let (lab, _services) = lab_with_services();
    // The container speaks from 203.0.113.10, a network behind it on br0's link.
    lab.container.ip("addr add 203.0.113.10/32 dev eth0");
    lab.container.ip(&format!(
        "route replace {HOST_ADDR}/32 dev eth0 src 203.0.113.10"
    ));
    lab.host
        .ip("route add 203.0.113.0/24 via 192.0.2.10 dev br0");
    // The host's default route leaves through another interface.
    lab.host.ip("link add dum0 type veth peer name dum1");
    lab.host.ip("link set dum1 up");
    lab.host.ip("addr add 198.51.100.1/24 dev dum0");
    lab.host.ip("link set dum0 up");
    lab.host.ip("route add default via 198.51.100.2 dev dum0");
    lab.ok(&[
        "expose",
        "br0",
        "--allow",
        "203.0.113.0/24",
        "--port",
        "3306",
    ]);
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, PORT)).as_deref(),
        Some("tcp:3306"),
        "control: with the route back through br0 the grant works"
    );
    lab.assert_audit(0, &[]);
    lab.host
        .ip("route del 203.0.113.0/24 via 192.0.2.10 dev br0");
    assert_eq!(tcp_request(&lab.container, sa(HOST_ADDR, PORT)), None);
    let report = lab.assert_audit(
        1,
        &[
            "WARNING [reply-route]",
            "203.0.113.0/24 through dum0",
            "dev br0",
        ],
    );
    assert!(!report.contains("allow-route"), "{report}");
    // The printed command, with ROUTER filled in as the message asks (the router on
    // br0's link the clients come through: the container here), fixes it.
    let printed = report
        .split('`')
        .find(|c| c.starts_with("ip route add 203.0.113.0/24 via ROUTER dev br0"))
        .unwrap_or_else(|| panic!("no route command in {report}"));
    let command = printed.replace("ROUTER", "192.0.2.10");
    let args: Vec<&str> = command.split_whitespace().collect();
    let out = lab.host.exec_status(&args);
    assert!(out.status.success(), "{command}: {}", stderr(&out));
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, PORT)).as_deref(),
        Some("tcp:3306"),
        "after {command}"
    );
    lab.assert_audit(0, &[]);
}
