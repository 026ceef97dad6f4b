//! Where another firewall's destination NAT sends a flow, as far as it is a constant:
//! the address (and port) of an nft `dnat to` whose registers the rule loads itself,
//! or of an xt `DNAT` target (iptables-nft's compat expression, iptables-legacy's
//! entry). `audit` needs it for one question only: does another tool forward a
//! published address to 127/8 (a `foreign-forward`), which loopgate's guard lets
//! through? Kept apart from the evaluator's model of other firewalls
//! ([`super::firewall`]), which treats a NAT as an action it does not follow.

use std::net::Ipv4Addr;

/// The destination of a DNAT when the rule names a constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnatTo {
    /// The new destination address; `None` when it is not one constant address (a
    /// range, a map lookup, a register the rule does not load with an immediate).
    pub addr: Option<Ipv4Addr>,
    /// The new destination port; `None` when the rule keeps the port (or names a
    /// range).
    pub port: Option<u16>,
}

/// `NF_NAT_RANGE_MAP_IPS`: the range names addresses.
const MAP_IPS: u32 = 1;
/// `NF_NAT_RANGE_PROTO_SPECIFIED`: the range names ports.
const PROTO_SPECIFIED: u32 = 2;

/// The destination of an xt `DNAT` target from its revision and info blob (native byte
/// order for the flags, network order for addresses and ports):
/// - revision 0, `struct nf_nat_ipv4_multi_range_compat`: `rangesize` (u32), then one
///   `nf_nat_ipv4_range`: flags (u32), min_ip, max_ip (be32), min, max (be16);
/// - revisions 1 and 2, `struct nf_nat_range` / `nf_nat_range2`: flags (u32),
///   min_addr, max_addr (16-byte `nf_inet_addr`, IPv4 first), min_proto, max_proto
///   (be16), and for 2 a base_proto.
///
/// `None` for a blob too short for its revision or a revision not known here.
pub fn xt_dnat(revision: u8, info: &[u8]) -> Option<DnatTo> {
    let (flags_at, min_ip, max_ip, min_port, max_port) = match revision {
        0 => (4, 8, 12, 16, 18),
        1 | 2 => (0, 4, 20, 36, 38),
        _ => return None,
    };
    let bytes = |at: usize, n: usize| info.get(at..at + n);
    let flags = u32::from_ne_bytes(bytes(flags_at, 4)?.try_into().ok()?);
    let ip = |at| -> Option<Ipv4Addr> {
        let b: [u8; 4] = bytes(at, 4)?.try_into().ok()?;
        Some(Ipv4Addr::from(b))
    };
    let port = |at| -> Option<u16> { Some(u16::from_be_bytes(bytes(at, 2)?.try_into().ok()?)) };
    let addr = match flags & MAP_IPS {
        0 => None,
        _ => Some((ip(min_ip)?, ip(max_ip)?))
            .filter(|(a, b)| a == b)
            .map(|(a, _)| a),
    };
    let port = match flags & PROTO_SPECIFIED {
        0 => None,
        _ => Some((port(min_port)?, port(max_port)?))
            .filter(|(a, b)| a == b)
            .map(|(a, _)| a),
    };
    Some(DnatTo { addr, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `-j DNAT --to-destination 127.0.0.1:51679` (the Amazon ECS agent's rule) in the
    /// layouts iptables writes: revision 2 (iptables >= 1.8.7 with a kernel that has
    /// it), 1, and the old compat struct of revision 0.
    #[test]
    fn every_revision_of_the_xt_dnat_blob_gives_address_and_port() {
        let want = DnatTo {
            addr: Some(Ipv4Addr::LOCALHOST),
            port: Some(51679),
        };
        let mut r2 = vec![0u8; 44];
        r2[0..4].copy_from_slice(&(MAP_IPS | PROTO_SPECIFIED).to_ne_bytes());
        r2[4..8].copy_from_slice(&[127, 0, 0, 1]);
        r2[20..24].copy_from_slice(&[127, 0, 0, 1]);
        r2[36..38].copy_from_slice(&51679u16.to_be_bytes());
        r2[38..40].copy_from_slice(&51679u16.to_be_bytes());
        assert_eq!(xt_dnat(2, &r2), Some(want));
        assert_eq!(xt_dnat(1, &r2[..40]), Some(want));
        let mut r0 = vec![0u8; 20];
        r0[0..4].copy_from_slice(&1u32.to_ne_bytes());
        r0[4..8].copy_from_slice(&(MAP_IPS | PROTO_SPECIFIED).to_ne_bytes());
        r0[8..12].copy_from_slice(&[127, 0, 0, 1]);
        r0[12..16].copy_from_slice(&[127, 0, 0, 1]);
        r0[16..18].copy_from_slice(&51679u16.to_be_bytes());
        r0[18..20].copy_from_slice(&51679u16.to_be_bytes());
        assert_eq!(xt_dnat(0, &r0), Some(want));
        // Without a port, and an address range: no single address.
        r2[0..4].copy_from_slice(&MAP_IPS.to_ne_bytes());
        assert_eq!(xt_dnat(2, &r2).unwrap().port, None);
        r2[20..24].copy_from_slice(&[127, 0, 0, 9]);
        assert_eq!(xt_dnat(2, &r2).unwrap().addr, None);
        assert_eq!(xt_dnat(2, &r2[..10]), None);
        assert_eq!(xt_dnat(3, &r2), None);
    }
}
