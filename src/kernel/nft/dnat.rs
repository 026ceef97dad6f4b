//! Reading another table's destination NAT into [`Expr::Dnat`]: the nft `nat`
//! expression of type dnat, whose address and port come from registers the rule loaded
//! before it, and iptables-nft's compat `target DNAT`. Apart from the rest of
//! `foreign`'s decoding because it needs the rule's earlier expressions (the
//! registers' last loads).

use crate::kernel::dnat::{xt_dnat, DnatTo};
use crate::kernel::firewall::Expr;
use nftnl::nftnl_sys as sys;
use std::net::Ipv4Addr;

/// `NFT_NAT_DNAT`.
const NAT_DNAT: u32 = 1;

/// The DNAT `e` is, given the expressions of its rule before it; `None` when `e` is
/// not a destination NAT (it is then decoded as anything else).
///
/// # Safety
/// `e` must be a live expression.
pub(super) unsafe fn dnat_of(e: *mut sys::nftnl_expr, before: &[Expr]) -> Option<Expr> {
    // SAFETY: `e` is live (the caller's contract); the getters copy out what they
    // return, and `nftnl_expr_get` returns data owned by `e`, valid for the length it
    // writes.
    unsafe {
        let is = |a: u32| sys::nftnl_expr_is_set(e, a as u16);
        let u32_of = |a: u32| sys::nftnl_expr_get_u32(e, a as u16);
        let name = super::objects::get_str(sys::nftnl_expr_get_str(e, sys::NFTNL_EXPR_NAME as u16));
        match name.as_str() {
            "nat" if u32_of(sys::NFTNL_EXPR_NAT_TYPE) == NAT_DNAT => {
                let reg = |min: u32, max: u32, len: usize| -> Option<Vec<u8>> {
                    if !is(min) {
                        return None;
                    }
                    let lo = loaded(before, u32_of(min), len)?;
                    let hi = match is(max) {
                        true => loaded(before, u32_of(max), len)?,
                        false => lo.clone(),
                    };
                    (lo == hi).then_some(lo)
                };
                let addr = reg(
                    sys::NFTNL_EXPR_NAT_REG_ADDR_MIN,
                    sys::NFTNL_EXPR_NAT_REG_ADDR_MAX,
                    4,
                )
                .map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3]));
                let port = reg(
                    sys::NFTNL_EXPR_NAT_REG_PROTO_MIN,
                    sys::NFTNL_EXPR_NAT_REG_PROTO_MAX,
                    2,
                )
                .map(|b| u16::from_be_bytes([b[0], b[1]]));
                Some(Expr::Dnat(DnatTo { addr, port }))
            }
            "target" => {
                let target = super::objects::get_str(sys::nftnl_expr_get_str(
                    e,
                    sys::NFTNL_EXPR_TG_NAME as u16,
                ));
                if target != "DNAT" {
                    return None;
                }
                let mut len = 0u32;
                let p = sys::nftnl_expr_get(e, sys::NFTNL_EXPR_TG_INFO as u16, &mut len);
                let info = match p.is_null() {
                    true => &[][..],
                    false => std::slice::from_raw_parts(p.cast::<u8>(), len as usize),
                };
                let revision = u32_of(sys::NFTNL_EXPR_TG_REV) as u8;
                Some(
                    xt_dnat(revision, info)
                        .map_or_else(|| Expr::Unknown("target DNAT".into()), Expr::Dnat),
                )
            }
            _ => None,
        }
    }
}

/// The first `len` bytes register `reg` holds when the rule reaches this point, if
/// its last writer before it is an `immediate` load; `None` when anything else wrote
/// it last (a payload, a map lookup, an expression not modelled) or nothing did.
fn loaded(before: &[Expr], reg: u32, len: usize) -> Option<Vec<u8>> {
    let want = bytes_of(reg)?;
    for x in before.iter().rev() {
        let (dreg, data) = match x {
            Expr::Load { dreg, data } => (*dreg, Some(data)),
            Expr::Meta { dreg, .. }
            | Expr::Payload { dreg, .. }
            | Expr::Ct { dreg, .. }
            | Expr::Bitwise { dreg, .. } => (*dreg, None),
            Expr::Unknown(_) => return None,
            _ => continue,
        };
        let have = bytes_of(dreg)?;
        if have.start >= want.end || want.start >= have.end {
            continue;
        }
        // The load must cover the register from its start.
        let data = data?;
        let from = want.start - have.start;
        if have.start > want.start {
            return None;
        }
        return data.get(from..from + len).map(<[u8]>::to_vec);
    }
    None
}

/// The bytes of the register file a register number names: `NFT_REG_1..4` are
/// 16 bytes each, `NFT_REG32_00..15` (8..23) four bytes each, over the same space.
fn bytes_of(reg: u32) -> Option<std::ops::Range<usize>> {
    match reg {
        1..=4 => Some((reg as usize - 1) * 16..reg as usize * 16),
        8..=23 => Some((reg as usize - 8) * 4..(reg as usize - 7) * 4),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dnat to 127.0.0.1:18080` as nft 1.0 encodes it: the address in reg 1, the port
    /// in reg 2; a later payload load into reg 1 hides the immediate.
    #[test]
    fn registers_resolve_to_their_last_immediate() {
        let before = vec![
            Expr::Payload {
                base: 1,
                offset: 12,
                len: 4,
                dreg: 1,
            },
            Expr::Load {
                dreg: 1,
                data: vec![127, 0, 0, 1],
            },
            Expr::Load {
                dreg: 2,
                data: 18080u16.to_be_bytes().to_vec(),
            },
        ];
        assert_eq!(loaded(&before, 1, 4), Some(vec![127, 0, 0, 1]));
        assert_eq!(loaded(&before, 2, 2), Some(vec![0x46, 0xa0]));
        // reg32 0 is the first four bytes of reg 1.
        assert_eq!(loaded(&before, 8, 4), Some(vec![127, 0, 0, 1]));
        assert_eq!(loaded(&before, 3, 2), None);
        let mut hidden = before.clone();
        hidden.push(Expr::Meta { key: 6, dreg: 1 });
        assert_eq!(loaded(&hidden, 1, 4), None);
        hidden.push(Expr::Unknown("lookup".into()));
        assert_eq!(loaded(&hidden, 2, 2), None);
    }
}
