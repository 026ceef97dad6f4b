//! Topic: every repair clears the flows that began without the guard. An nftables
//! configuration reloaded with `flush ruleset` (and a NAT chain of its own) deletes
//! loopgate's table; a UDP client with a fixed source port that keeps sending meanwhile
//! holds a conntrack entry without DNAT, which NAT never revisits. Whatever puts the
//! table back (`expose` again, `apply`, watch's repair) must delete that entry, or the
//! client never reaches the service again while audit says all is well.

use super::*;
use loopgate::kernel::conntrack::{self, Flow};
use std::net::{SocketAddrV4, UdpSocket};

/// The client's fixed source port: every datagram of the test is one flow.
const CLIENT_PORT: u16 = 41100;

/// The grant under test: UDP 5353 on br0 for the container.
const EXPOSE: [&str; 9] = [
    "expose", "br0", "--allow", ALLOWED, "--port", "5353", "--proto", "udp", "--name",
];

fn expose_args() -> Vec<&'static str> {
    let mut a = EXPOSE.to_vec();
    a.push("dns");
    a
}

/// The host namespace's conntrack entries from `CLIENT_PORT` to `HOST_ADDR:5353`.
fn entries(lab: &Lab) -> Vec<Flow> {
    lab.host
        .enter(conntrack::list)
        .expect("listing the host's conntrack entries")
        .into_iter()
        .filter(|f| f.sport == CLIENT_PORT && f.dst == HOST_ADDR && f.dport == 5353)
        .collect()
}

/// Datagrams the service on 127.0.0.1:5353 received from `CLIENT_PORT`.
fn received(services: &Services) -> usize {
    services
        .udp_seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, from)| *p == 5353 && from.port() == CLIENT_PORT)
        .count()
}

/// Sends one datagram; true once the service has it (waited for, at most 3 s).
fn delivered(sock: &UdpSocket, services: &Services) -> bool {
    let before = received(services);
    let _ = sock.send_to(b"ping\n", published());
    time_until(|| received(services) > before).is_some()
}

fn published() -> SocketAddrV4 {
    sa(HOST_ADDR, 5353)
}

/// What an nftables.service reload of a typical /etc/nftables.conf does: `flush
/// ruleset` (loopgate's table goes with it), then a table of its own with a NAT chain
/// (every host with Docker or masquerading has one) and a stateful input chain.
fn reload_nftables_conf(lab: &Lab) {
    let conf = lab.policy(
        "nftables.conf",
        "flush ruleset\n\
         table ip other {\n\
         \tchain pre { type nat hook prerouting priority dstnat; policy accept; }\n\
         \tchain in { type filter hook input priority filter; policy accept; ct state invalid drop; }\n\
         }\n",
    );
    lab.host.exec(&["nft", "-f", &conf]);
    assert!(
        !stdout(&lab.host.exec(&["nft", "list", "tables"])).contains("loopgate"),
        "the reload removed loopgate's table"
    );
}

/// Installs the grant (`setup`), checks that it serves a client, reloads the
/// nftables configuration, and lets a client flow begin without the guard (an entry
/// without DNAT). Returns the client's socket and the table as it was in force.
fn stale_flow_after_reload(
    lab: &Lab,
    services: &Services,
    setup: &dyn Fn(),
) -> (UdpSocket, String) {
    setup();
    let control = lab
        .container
        .enter(|| UdpSocket::bind(sa(CONTAINER_ADDR, CLIENT_PORT + 1)).expect("socket"));
    let before = services.udp_seen.lock().unwrap().len();
    let _ = control.send_to(b"ping\n", published());
    assert!(
        time_until(|| services.udp_seen.lock().unwrap().len() > before).is_some(),
        "control: the grant serves"
    );
    let table = stdout(&lab.host.exec(&["nft", "list", "table", "ip", "loopgate"]));
    reload_nftables_conf(lab);
    let sock = lab
        .container
        .enter(|| UdpSocket::bind(sa(CONTAINER_ADDR, CLIENT_PORT)).expect("client socket"));
    // Without the guard the datagram goes to the host's own address, where nothing
    // listens on 5353; the entry is made without DNAT.
    assert!(!delivered(&sock, services));
    let stale = entries(lab);
    assert_eq!(stale.len(), 1, "one entry for the flow: {stale:?}");
    assert_eq!(stale[0].dnat, None, "made without DNAT: {stale:?}");
    (sock, table)
}

/// After the repair: the same socket's next datagram reaches the service, through an
/// entry DNATed to the grant's target.
#[track_caller]
fn assert_served_again(lab: &Lab, services: &Services, sock: &UdpSocket, how: &str) {
    let took = time_until(|| delivered(sock, services));
    assert!(
        took.is_some(),
        "after {how}, the flow that began without the guard never reaches the service: {:?}",
        entries(lab)
    );
    assert_eq!(
        entries(lab).iter().map(|f| f.dnat).collect::<Vec<_>>(),
        vec![Some(sa(LO, 5353))],
        "after {how}"
    );
    lab.assert_audit(0, &["present, as loopgate generated it"]);
}

/// Control: the table put back by hand (no loopgate run, so nothing cuts the entry)
/// leaves the flow un-NATed: the entry, not the table, is what stands between.
#[test]
fn control_the_table_alone_does_not_serve_a_flow_begun_without_it() {
    let (lab, services) = lab_with_services();
    let (sock, table) = stale_flow_after_reload(&lab, &services, &|| {
        lab.ok(&expose_args());
    });
    let saved = lab.policy("loopgate.nft", &table);
    lab.host.exec(&["nft", "-f", &saved]);
    assert!(stdout(&lab.host.exec(&["nft", "list", "tables"])).contains("loopgate"));
    for _ in 0..3 {
        assert!(
            !delivered(&sock, &services),
            "the stale flow stays un-NATed"
        );
    }
    assert_eq!(entries(&lab)[0].dnat, None);
}

#[test]
fn expose_again_clears_a_flow_begun_while_the_table_was_missing() {
    let (lab, services) = lab_with_services();
    let (sock, _) = stale_flow_after_reload(&lab, &services, &|| {
        lab.ok(&expose_args());
    });
    lab.ok(&expose_args());
    assert_served_again(&lab, &services, &sock, "expose again");
}

#[test]
fn apply_clears_a_flow_begun_while_the_table_was_missing() {
    let (lab, services) = lab_with_services();
    let policy = lab.policy(
        "dns.yaml",
        &format!(
            "grants:\n  - name: dns\n    interface: br0\n    allow: [{ALLOWED}]\n    port: 5353\n    proto: udp\n"
        ),
    );
    let (sock, _) = stale_flow_after_reload(&lab, &services, &|| {
        lab.ok(&["apply", &policy]);
    });
    lab.ok(&["apply", &policy]);
    assert_served_again(&lab, &services, &sock, "apply");
}

#[test]
fn a_watch_repair_clears_a_flow_begun_while_the_table_was_missing() {
    let (lab, services) = lab_with_services();
    let (sock, _) = stale_flow_after_reload(&lab, &services, &|| {
        lab.ok(&expose_args());
    });
    // Watch starts on a host whose table is gone: its first pass is the repair. (A
    // reload while watch runs leaves a window of milliseconds for a flow to begin;
    // the repair is the same transaction either way.)
    let watch = Watch::start(&lab);
    assert_served_again(&lab, &services, &sock, "watch's first pass");
    drop(watch);
}
