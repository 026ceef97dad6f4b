//! The xt (x_tables) matches and targets of iptables rules, translated into the plain
//! model of [`super::firewall`]. One decoder for both places they appear: the
//! iptables-legacy blob ([`super::legacy`]) and the `match` / `target` compat
//! expressions iptables-nft leaves in nf_tables rules (`kernel::nft::foreign`), which
//! carry the same kernel structs (`struct xt_conntrack_mtinfo3` and so on). Without it
//! the commonest iptables-nft rules (`-m conntrack --ctstate`, `-m addrtype`) read as
//! "not modelled" and audit cries "may drop" on a host whose grant works.
//!
//! Each match becomes the expressions that test the same thing (a `ct` load, a mask, a
//! compare; a lookup in the ports of `multiport`; an [`Expr::AddrType`]); what is not
//! modelled stays [`Expr::Unknown`], named.

use super::firewall::{Expr, Member, Members, CT_XT_STATE};

fn u16_at(b: &[u8], o: usize) -> u16 {
    b.get(o..o + 2)
        .map_or(0, |s| u16::from_ne_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4)
        .map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

/// `masked(load) OP 0`: the bits of `mask` in the loaded value, any set (`op` 1, neq)
/// or none (`op` 0, eq).
fn any_bit(out: &mut Vec<Expr>, load: Expr, mask: u32, op: u32) {
    out.push(load);
    out.push(Expr::Bitwise {
        sreg: 1,
        dreg: 1,
        mask: mask.to_ne_bytes().to_vec(),
        xor: vec![0; 4],
    });
    out.push(Expr::Cmp {
        sreg: 1,
        op,
        data: vec![0; 4],
    });
}

/// `load & mask OP value` over bytes (addresses): skipped when the mask is empty.
fn masked(out: &mut Vec<Expr>, load: Expr, value: &[u8], mask: &[u8], inv: bool) {
    if mask.iter().all(|m| *m == 0) {
        return;
    }
    out.push(load);
    out.push(Expr::Bitwise {
        sreg: 1,
        dreg: 1,
        mask: mask.to_vec(),
        xor: vec![0; mask.len()],
    });
    out.push(Expr::Cmp {
        sreg: 1,
        op: u32::from(inv),
        data: value.iter().zip(mask).map(|(v, m)| v & m).collect(),
    });
}

/// A port range match on the transport header at `offset`, skipped when it is all
/// ports.
pub(super) fn ports(out: &mut Vec<Expr>, offset: u32, lo: u16, hi: u16, inv: bool) {
    if (lo, hi) == (0, u16::MAX) && !inv {
        return;
    }
    out.push(Expr::Payload {
        base: 2,
        offset,
        len: 2,
        dreg: 1,
    });
    out.push(Expr::Range {
        sreg: 1,
        op: u32::from(inv),
        from: lo.to_be_bytes().to_vec(),
        to: hi.to_be_bytes().to_vec(),
    });
}

fn ct(key: u32, dir: Option<u8>) -> Expr {
    Expr::Ct { key, dir, dreg: 1 }
}

/// `xt_conntrack_mtinfo1/2/3`: the state (with the SNAT/DNAT pseudo-states), the
/// protocol, the four addresses, the ports, the status bits and the direction; a
/// rule with `--ctexpire` stays unknown.
fn conntrack(revision: u8, d: &[u8]) -> Option<Vec<Expr>> {
    let (flags, invert, state, status) = match revision {
        1 if d.len() >= 150 => (
            u16::from(d[146]),
            u16::from(d[147]),
            u16::from(d[148]),
            u16::from(d[149]),
        ),
        2 | 3 if d.len() >= 154 => (
            u16_at(d, 146),
            u16_at(d, 148),
            u16_at(d, 150),
            u16_at(d, 152),
        ),
        _ => return None,
    };
    // XT_CONNTRACK_EXPIRES: how long the entry lives, not modelled.
    if flags & 0x80 != 0 {
        return None;
    }
    let inv = |bit: u16| invert & bit != 0;
    let mut out = Vec::new();
    // XT_CONNTRACK_STATE: (state_mask & statebit) != 0, xor the inversion.
    if flags & 0x1 != 0 {
        any_bit(
            &mut out,
            ct(CT_XT_STATE, None),
            u32::from(state),
            u32::from(!inv(0x1)),
        );
    }
    // XT_CONNTRACK_PROTO.
    if flags & 0x2 != 0 {
        out.push(ct(10, None));
        out.push(Expr::Cmp {
            sreg: 1,
            op: u32::from(inv(0x2)),
            data: vec![u16_at(d, 136) as u8],
        });
    }
    // ORIGSRC, ORIGDST, REPLSRC, REPLDST: (addr, mask) pairs of 16 bytes, IPv4 in the
    // first four; NFT_CT_SRC_IP 19 / NFT_CT_DST_IP 20 by direction.
    for (bit, at, key, dir) in [
        (0x4, 0, 19, 0),
        (0x8, 32, 20, 0),
        (0x10, 64, 19, 1),
        (0x20, 96, 20, 1),
    ] {
        if flags & bit != 0 {
            masked(
                &mut out,
                ct(key, Some(dir)),
                &d[at..at + 4],
                &d[at + 16..at + 20],
                inv(bit),
            );
        }
    }
    // Ports (network order), ranges to the `_high` ports in revision 3: NFT_CT_PROTO_SRC
    // 11 / NFT_CT_PROTO_DST 12 by direction.
    for (i, (bit, key, dir)) in [
        (0x100, 11, 0),
        (0x200, 12, 0),
        (0x400, 11, 1),
        (0x800, 12, 1),
    ]
    .into_iter()
    .enumerate()
    {
        if flags & bit != 0 {
            let lo = d.get(138 + 2 * i..140 + 2 * i).unwrap_or(&[0, 0]).to_vec();
            let hi = match revision {
                3 => d.get(154 + 2 * i..156 + 2 * i).unwrap_or(&[0, 0]).to_vec(),
                _ => lo.clone(),
            };
            out.push(ct(key, Some(dir)));
            out.push(Expr::Range {
                sreg: 1,
                op: u32::from(inv(bit)),
                from: lo,
                to: hi,
            });
        }
    }
    // XT_CONNTRACK_STATUS: (status & status_mask) != 0, xor the inversion.
    if flags & 0x40 != 0 {
        any_bit(
            &mut out,
            ct(2, None),
            u32::from(status),
            u32::from(!inv(0x40)),
        );
    }
    // XT_CONNTRACK_DIRECTION: original unless inverted.
    if flags & 0x1000 != 0 {
        out.push(ct(1, None));
        out.push(Expr::Cmp {
            sreg: 1,
            op: u32::from(inv(0x1000)),
            data: vec![0],
        });
    }
    Some(out)
}

/// `xt_addrtype_info` (revision 0) and `xt_addrtype_info_v1` (revision 1).
fn addrtype(revision: u8, d: &[u8]) -> Option<Vec<Expr>> {
    let (src, dst) = (u16_at(d, 0), u16_at(d, 2));
    let (inv_src, inv_dst, limit) = match revision {
        0 if d.len() >= 12 => (u32_at(d, 4) != 0, u32_at(d, 8) != 0, false),
        1 if d.len() >= 8 => {
            let f = u32_at(d, 4);
            (f & 0x1 != 0, f & 0x2 != 0, f & 0xc != 0)
        }
        _ => return None,
    };
    let mut out = Vec::new();
    for (daddr, types, invert) in [(false, src, inv_src), (true, dst, inv_dst)] {
        if types != 0 {
            out.push(Expr::AddrType {
                daddr,
                types,
                invert,
                limit_iface: limit,
            });
        }
    }
    Some(out)
}

/// `xt_multiport` (revision 0) and `xt_multiport_v1` (revision 1, with ranges and
/// inversion): the source or destination port in a list, as a lookup in its members.
/// `--ports` (either side) stays unknown.
fn multiport(revision: u8, d: &[u8]) -> Option<Vec<Expr>> {
    if d.len() < 32 {
        return None;
    }
    let offset = match d[0] {
        0 => 0,
        1 => 2,
        _ => return None,
    };
    let count = usize::from(d[1]).min(15);
    let (ranges, invert) = match revision {
        0 => (vec![0u8; 15], false),
        1 if d.len() >= 48 => (d[32..47].to_vec(), d[47] != 0),
        _ => return None,
    };
    let mut items = Vec::new();
    let mut i = 0;
    while i < count {
        let lo = u16_at(d, 2 + 2 * i);
        let hi = if ranges[i] != 0 && i + 1 < count {
            i += 1;
            u16_at(d, 2 + 2 * i)
        } else {
            lo
        };
        items.push(Member {
            from: lo.to_be_bytes().to_vec(),
            to: hi.to_be_bytes().to_vec(),
            verdict: None,
        });
        i += 1;
    }
    Some(vec![
        Expr::Payload {
            base: 2,
            offset,
            len: 2,
            dreg: 1,
        },
        Expr::Lookup {
            set: "multiport".into(),
            sreg: 1,
            invert,
            verdict_map: false,
            members: Some(Members {
                by_word: false,
                items,
            }),
        },
    ])
}

/// What match `name` (revision `revision`, its kernel struct in `d`) checks, as
/// expressions; a match not modelled is one [`Expr::Unknown`] naming it.
pub fn match_exprs(name: &str, revision: u8, d: &[u8]) -> Vec<Expr> {
    let mut out = Vec::new();
    let decoded = match name {
        // xt_tcp / xt_udp: ports and their inversion flags.
        "tcp" | "udp" if d.len() >= if name == "tcp" { 12 } else { 9 } => {
            let inv = if name == "tcp" { d[11] } else { d[8] };
            ports(&mut out, 0, u16_at(d, 0), u16_at(d, 2), inv & 0x01 != 0);
            ports(&mut out, 2, u16_at(d, 4), u16_at(d, 6), inv & 0x02 != 0);
            // xt_tcp: option at 8, flg_mask 9, flg_cmp 10, invflags 11
            // (XT_TCP_INV_FLAGS 0x04): `--tcp-flags MASK COMP`, `--syn`.
            if name == "tcp" && d[9] != 0 {
                out.push(Expr::Payload {
                    base: 2,
                    offset: 13,
                    len: 1,
                    dreg: 1,
                });
                out.push(Expr::Bitwise {
                    sreg: 1,
                    dreg: 1,
                    mask: vec![d[9]],
                    xor: vec![0],
                });
                out.push(Expr::Cmp {
                    sreg: 1,
                    op: u32::from(inv & 0x04 != 0),
                    data: vec![d[10] & d[9]],
                });
            }
            if name == "tcp" && d[8] != 0 {
                out.push(Expr::Unknown("tcp options".into()));
            }
            true
        }
        // xt_state_info: statemask & the ct state bit (nft's `ct state` bits).
        "state" if d.len() >= 4 => {
            any_bit(&mut out, ct(0, None), u32_at(d, 0), 1);
            true
        }
        "conntrack" => conntrack(revision, d).map(|e| out = e).is_some(),
        "addrtype" => addrtype(revision, d).map(|e| out = e).is_some(),
        "multiport" => multiport(revision, d).map(|e| out = e).is_some(),
        // xt_mark_mtinfo1: (mark & mask) == mark, xor invert.
        "mark" if revision == 1 && d.len() >= 9 => {
            masked(
                &mut out,
                Expr::Meta { key: 3, dreg: 1 },
                &u32_at(d, 0).to_ne_bytes(),
                &u32_at(d, 4).to_ne_bytes(),
                d[8] != 0,
            );
            true
        }
        "comment" => {
            out.push(Expr::Statement("match comment".into()));
            true
        }
        // xt_rpfilter_info: flags XT_RPFILTER_LOOSE 1, VALID_MARK 2, ACCEPT_LOCAL 4,
        // INVERT 8.
        "rpfilter" if revision == 0 && !d.is_empty() => {
            out.push(Expr::RpFilter {
                loose: d[0] & 1 != 0,
                mark: d[0] & 2 != 0,
                accept_local: d[0] & 4 != 0,
                invert: d[0] & 8 != 0,
            });
            true
        }
        _ => false,
    };
    if !decoded {
        out = vec![Expr::Unknown(format!("match {name}"))];
    }
    out
}

/// The expressions that set the packet's mark to `(mark & !and) ^ xor`.
fn set_mark(and: u32, xor: u32) -> Vec<Expr> {
    vec![
        Expr::Meta { key: 3, dreg: 1 },
        Expr::Bitwise {
            sreg: 1,
            dreg: 1,
            mask: (!and).to_ne_bytes().to_vec(),
            xor: xor.to_ne_bytes().to_vec(),
        },
        Expr::MetaSet { key: 3, sreg: 1 },
    ]
}

/// What a non-standard target (revision `revision`, its kernel struct in `d`) does:
/// `REJECT`, `NOTRACK` and `CT --notrack` stop or untrack; `DNAT` translates (see
/// [`super::dnat::xt_dnat`]); `MARK` sets the packet's mark and `CONNMARK
/// --restore-mark` makes it unknown (later mark matches depend on it); targets that
/// only log or mark the connection are statements; any other is unknown.
pub fn target_exprs(name: &str, revision: u8, d: &[u8]) -> Vec<Expr> {
    let one = match name {
        "REJECT" => Expr::Reject,
        "DNAT" => super::dnat::xt_dnat(revision, d)
            .map_or_else(|| Expr::Unknown("target DNAT".into()), Expr::Dnat),
        "NOTRACK" => Expr::Notrack,
        // xt_ct_target_info: flags (u16) first, XT_CT_NOTRACK 0x1.
        "CT" if u16_at(d, 0) & 1 != 0 => Expr::Notrack,
        // xt_mark_tginfo2 { mark, mask }: `--set-xmark mark/mask`, mark = (mark &
        // ~mask) ^ mark.
        "MARK" if revision == 2 && d.len() >= 8 => {
            return set_mark(u32_at(d, 4), u32_at(d, 0));
        }
        // xt_connmark_tginfo1/2 { ctmark, ctmask, nfmask, mode (u8) }: XT_CONNMARK_SET
        // 0 and SAVE 1 change only the connection's mark; RESTORE 2 copies it into
        // the packet's (as `meta mark set ct mark`: nothing without a conntrack
        // entry), which is not known here.
        "CONNMARK" if d.get(12).is_some_and(|m| *m < 2) => {
            Expr::Statement("target CONNMARK".into())
        }
        "CONNMARK" => {
            return vec![
                Expr::Ct {
                    key: 3,
                    dir: None,
                    dreg: 1,
                },
                Expr::MetaSet { key: 3, sreg: 1 },
            ];
        }
        t @ ("CT" | "LOG" | "NFLOG" | "TRACE" | "TCPMSS" | "CHECKSUM" | "CLASSIFY") => {
            Expr::Statement(format!("target {t}"))
        }
        t => Expr::Unknown(format!("target {t}")),
    };
    vec![one]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT` as iptables 1.8.9 stores
    /// it (revision 3, KUBE-FIREWALL's rule).
    fn ctstate_rev3(mask: u16, invert: bool) -> Vec<u8> {
        let mut d = vec![0u8; 168];
        d[146..148].copy_from_slice(&1u16.to_ne_bytes());
        d[148..150].copy_from_slice(&u16::from(invert).to_ne_bytes());
        d[150..152].copy_from_slice(&mask.to_ne_bytes());
        d
    }

    #[test]
    fn conntrack_state_becomes_a_masked_compare_with_its_inversion() {
        let e = match_exprs("conntrack", 3, &ctstate_rev3(0x2 | 0x4 | 0x80, true));
        assert_eq!(
            e,
            vec![
                Expr::Ct {
                    key: CT_XT_STATE,
                    dir: None,
                    dreg: 1
                },
                Expr::Bitwise {
                    sreg: 1,
                    dreg: 1,
                    mask: 0x86u32.to_ne_bytes().to_vec(),
                    xor: vec![0; 4]
                },
                Expr::Cmp {
                    sreg: 1,
                    op: 0,
                    data: vec![0; 4]
                },
            ]
        );
        let plain = match_exprs("conntrack", 3, &ctstate_rev3(0x6, false));
        assert!(matches!(plain[2], Expr::Cmp { op: 1, .. }));
        // --ctexpire is not modelled.
        let mut d = ctstate_rev3(0x6, false);
        d[146] |= 0x80;
        assert!(matches!(
            &match_exprs("conntrack", 3, &d)[..],
            [Expr::Unknown(_)]
        ));
    }

    #[test]
    fn addrtype_and_multiport_and_comment_are_decoded() {
        // --dst-type LOCAL, revision 1.
        let mut d = vec![0u8; 8];
        d[2..4].copy_from_slice(&(1u16 << 2).to_ne_bytes());
        assert_eq!(
            match_exprs("addrtype", 1, &d),
            vec![Expr::AddrType {
                daddr: true,
                types: 4,
                invert: false,
                limit_iface: false
            }]
        );
        // --dports 80,1000:2000, revision 1.
        let mut m = vec![0u8; 48];
        m[0] = 1;
        m[1] = 3;
        for (i, p) in [80u16, 1000, 2000].iter().enumerate() {
            m[2 + 2 * i..4 + 2 * i].copy_from_slice(&p.to_ne_bytes());
        }
        m[32 + 1] = 1;
        let e = match_exprs("multiport", 1, &m);
        let Expr::Lookup {
            members: Some(members),
            invert: false,
            ..
        } = &e[1]
        else {
            panic!("{e:?}")
        };
        assert_eq!(members.items.len(), 2);
        assert_eq!(members.items[1].from, 1000u16.to_be_bytes());
        assert_eq!(members.items[1].to, 2000u16.to_be_bytes());
        // `-p tcp ! --syn`: flg_mask SYN|RST|ACK|FIN, flg_cmp SYN, inverted.
        let mut t = vec![0u8; 12];
        t[2..4].copy_from_slice(&u16::MAX.to_ne_bytes());
        t[6..8].copy_from_slice(&u16::MAX.to_ne_bytes());
        (t[9], t[10], t[11]) = (0x17, 0x02, 0x04);
        assert_eq!(
            match_exprs("tcp", 0, &t)[1..],
            [
                Expr::Bitwise {
                    sreg: 1,
                    dreg: 1,
                    mask: vec![0x17],
                    xor: vec![0]
                },
                Expr::Cmp {
                    sreg: 1,
                    op: 1,
                    data: vec![0x02]
                }
            ]
        );
        assert!(matches!(
            &match_exprs("comment", 0, &[0; 256])[..],
            [Expr::Statement(_)]
        ));
        assert!(matches!(
            &match_exprs("hashlimit", 1, &[0; 8])[..],
            [Expr::Unknown(n)] if n == "match hashlimit"
        ));
    }
}
