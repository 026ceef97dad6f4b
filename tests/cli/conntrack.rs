//! Topic: stale connection tracking. NAT is bound to a conntrack entry once, at the
//! flow's first packet; a flow that was already trying the published address before
//! the grant existed keeps its entry without DNAT and never reaches the service unless
//! loopgate deletes that entry when it adds the grant.

use super::*;
use loopgate::kernel::conntrack::{self, Flow};
use std::net::{SocketAddrV4, UdpSocket};
use std::time::Duration;

/// The container's fixed client port: every datagram of the test is one flow.
const STALE_PORT: u16 = 41000;

/// The host namespace's conntrack entries from `src_port` to `HOST_ADDR:port`.
fn entries(lab: &Lab, src_port: u16, port: u16) -> Vec<Flow> {
    lab.host
        .enter(conntrack::list)
        .expect("listing the host's conntrack entries")
        .into_iter()
        .filter(|f| f.sport == src_port && f.dst == HOST_ADDR && f.dport == port)
        .collect()
}

/// Datagrams the service on 127.0.0.1:`port` received from the container's `src_port`.
fn received(services: &Services, port: u16, src_port: u16) -> usize {
    services
        .udp_seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, from)| *p == port && from.port() == src_port)
        .count()
}

/// Sends `n` datagrams from `sock`, 10 ms apart, then gives the service time to take
/// them (it polls every 20 ms); returns how many more it received from that port.
fn send_burst(sock: &UdpSocket, to: SocketAddrV4, n: usize, services: &Services) -> usize {
    let port = sock.local_addr().unwrap().port();
    let before = received(services, to.port(), port);
    for _ in 0..n {
        let _ = sock.send_to(b"ping\n", to);
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    received(services, to.port(), port) - before
}

fn container_socket(lab: &Lab, port: u16) -> UdpSocket {
    lab.container
        .enter(move || UdpSocket::bind(sa(CONTAINER_ADDR, port)).expect("client socket"))
}

#[test]
fn a_udp_flow_that_was_trying_before_the_grant_reaches_the_service_after_expose() {
    let (lab, services) = lab_with_services();
    // A host firewall with a conntrack rule (and an empty NAT chain the control below
    // fills): the host tracks connections before loopgate has any grant, as any host
    // with a stateful firewall or Docker's NAT rules does.
    lab.host.exec(&[
        "nft",
        "add table ip other; \
         add chain ip other pre { type nat hook prerouting priority dstnat; }; \
         add chain ip other in { type filter hook input priority filter; }; \
         add rule ip other in ct state invalid drop",
    ]);
    let published = sa(HOST_ADDR, 5353);
    let stale = container_socket(&lab, STALE_PORT);

    // Before the grant: nothing reaches the 127.0.0.1 service, and the host holds an
    // entry for the flow without DNAT.
    assert_eq!(send_burst(&stale, published, 10, &services), 0);
    let before = entries(&lab, STALE_PORT, 5353);
    assert_eq!(before.len(), 1, "one entry for the flow: {before:?}");
    assert_eq!(before[0].dnat, None, "made without DNAT: {before:?}");

    // Control: a DNAT rule for the same publication alone (by hand, nothing cut)
    // serves a new flow and not the stale one: the entry is what stands between.
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "1");
    lab.host.exec(&[
        "nft",
        &format!("add rule ip other pre ip daddr {HOST_ADDR} udp dport 5353 dnat to {LO}:5353"),
    ]);
    let fresh = container_socket(&lab, STALE_PORT + 1);
    assert!(
        send_burst(&fresh, published, 3, &services) > 0,
        "control: the DNAT rule serves a new flow"
    );
    let cut_nothing = send_burst(&stale, published, 10, &services);
    println!("stale flow under a DNAT rule, nothing cut: {cut_nothing} of 10 datagrams");
    assert_eq!(
        cut_nothing, 0,
        "control: the stale entry keeps the flow un-NATed"
    );
    lab.host.exec(&["nft", "flush chain ip other pre"]);
    lab.host.set_sysctl("net.ipv4.conf.br0.route_localnet", "0");
    assert_eq!(send_burst(&stale, published, 3, &services), 0);

    // The grant: loopgate deletes the stale entry, and the same socket's next datagram
    // makes a new entry that its rule DNATs.
    lab.ok(&[
        "expose", "br0", "--allow", ALLOWED, "--port", "5353", "--proto", "udp",
    ]);
    let took = time_until(|| send_burst(&stale, published, 1, &services) > 0);
    assert!(
        took.is_some(),
        "the stale flow never picked the grant up: {:?}",
        entries(&lab, STALE_PORT, 5353)
    );
    let delivered = send_burst(&stale, published, 10, &services);
    println!("stale flow after expose: {delivered} of 10 datagrams, first after {took:?}");
    assert_eq!(delivered, 10);
    let after = entries(&lab, STALE_PORT, 5353);
    assert_eq!(
        after.iter().map(|f| f.dnat).collect::<Vec<_>>(),
        vec![Some(sa(LO, 5353))],
        "{after:?}"
    );
    // The new flow was DNATed to the grant's target already: left alone, still served.
    assert_eq!(send_burst(&fresh, published, 3, &services), 3);
}
