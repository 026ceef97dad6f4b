//! The packet each chain sees: a nat chain the original tuple or nothing, a first
//! packet a bare SYN to this host.

use super::*;

#[test]
fn nat_chains_see_the_original_tuple_or_nothing() {
    let nat = |priority: i32, to: [u8; 4]| {
        let mut c = base(
            "ip nat",
            "PREROUTING",
            Hook::Prerouting,
            priority,
            false,
            vec![rule(
                3,
                vec![daddr(to), dport(6, 3306), vec![Expr::Unknown("nat".into())]],
            )],
        );
        c.base.as_mut().unwrap().nat = true;
        c
    };
    // Docker's DNAT of 127.0.0.1:3306: the packet loopgate's DNAT makes, which no nat
    // chain sees.
    assert_eq!(said(vec![nat(-100, [127, 0, 0, 1])]), "passes");
    // A DNAT of the listen address before loopgate's may take the flow.
    assert_eq!(said(vec![nat(-100, [192, 0, 2, 1])]), "may PREROUTING");
    assert_eq!(said(vec![nat(-150, [192, 0, 2, 1])]), "may PREROUTING");
    // After loopgate's DNAT, no nat chain runs for the flow.
    assert_eq!(said(vec![nat(-50, [192, 0, 2, 1])]), "passes");
}

#[test]
fn a_first_packet_is_a_bare_syn_to_this_host() {
    let flags = |mask: u8, op: u32, value: u8| {
        vec![
            Expr::Payload {
                base: 2,
                offset: 13,
                len: 1,
                dreg: 1,
            },
            Expr::Bitwise {
                sreg: 1,
                dreg: 1,
                mask: vec![mask],
                xor: vec![0],
            },
            cmp(op, &[value]),
        ]
    };
    // `ct state new tcp flags & (fin|syn|rst|ack) != syn drop`: not the grant's SYN.
    let not_syn = rule(1, vec![ct_state(8), flags(0x17, 1, 0x02), v(Jump::Drop)]);
    assert_eq!(said(vec![input(false, vec![not_syn])]), "passes");
    // `tcp flags syn drop` drops it.
    let syn = rule(2, vec![flags(0x02, 1, 0), v(Jump::Drop)]);
    assert_eq!(said(vec![input(false, vec![syn])]), "drops input drop");
    // `meta pkttype != host drop`.
    let pkttype = rule(3, vec![vec![meta(8), cmp(1, &[0])], v(Jump::Drop)]);
    assert_eq!(said(vec![input(false, vec![pkttype])]), "passes");
}
