//! Reading every other table's chains and rules (families `ip` and `inet`, the ones
//! that see IPv4) into the plain model of [`crate::kernel::firewall`], with
//! the same dump reader loopgate reads its own table with, unfiltered: two dumps,
//! chains and rules. loopgate's own table is left out. Each rule's expressions are
//! decoded into what the evaluator models; anything else is kept by name as unknown.

use super::abi::*;
use super::objects::{get_str, Owned};
use super::readback::dump_objects;
use crate::kernel::firewall::{BaseHook, Chain, Expr, Hook, Jump, Rule};
use crate::kernel::netlink::NlSocket;
use crate::ruleset::TABLE;
use anyhow::Result;
use nftnl::nftnl_sys as sys;
use std::collections::HashMap;
use std::os::raw::{c_int, c_void};

/// `table ip loopgate`'s own objects are not foreign.
fn foreign(family: u32, table: &str) -> bool {
    !(family == u32::from(NFPROTO_IPV4) && table == TABLE)
}

/// How a message names a table of `family`: `ip filter`, `inet fw`; `None` for a
/// family that does not see IPv4 at the IP hooks.
fn family_name(family: u32) -> Option<&'static str> {
    match family {
        f if f == libc::NFPROTO_IPV4 as u32 => Some("ip"),
        f if f == libc::NFPROTO_INET as u32 => Some("inet"),
        _ => None,
    }
}

/// A base chain audit does not evaluate but that can drop: `(table, chain, why)`.
pub type Unjudged = (String, String, String);

/// Every chain, with its rules, of the `ip` and `inet` tables other than loopgate's;
/// and the base chains that can drop but are not evaluated (an `ingress` hook, a
/// `netdev` or `bridge` table: they see the grant's packets before, or beside, the IP
/// hooks), with a policy drop or a drop/reject rule.
pub fn foreign_chains() -> Result<(Vec<Chain>, Vec<Unjudged>)> {
    let mut sock = NlSocket::netfilter()?;
    sock.size_buffers(8 << 20)?;
    let unspec = libc::NFPROTO_UNSPEC as u16;
    let mut chains: Vec<Chain> = Vec::new();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    // Base chains not evaluated: (family, table, chain) -> (description, can drop).
    let mut other: HashMap<(u32, String, String), (String, bool)> = HashMap::new();
    for row in dump_objects::<sys::nftnl_chain>(&mut sock, unspec, None)? {
        let c = Owned::<sys::nftnl_chain>::new();
        if !c.parse(&row) {
            continue;
        }
        let family = c.get_u32(sys::NFTNL_CHAIN_FAMILY);
        let table = c.get_str(sys::NFTNL_CHAIN_TABLE);
        let (is_base, base) = base_of(&c);
        let unevaluated_family =
            family == libc::NFPROTO_NETDEV as u32 || family == libc::NFPROTO_BRIDGE as u32;
        let unevaluated_hook = family_name(family).is_some() && is_base && base.is_none();
        if is_base && (unevaluated_family || unevaluated_hook) {
            let fam = match family {
                f if f == libc::NFPROTO_NETDEV as u32 => "netdev",
                f if f == libc::NFPROTO_BRIDGE as u32 => "bridge",
                f => family_name(f).unwrap_or("?"),
            };
            let policy_drop = c.get_u32(sys::NFTNL_CHAIN_POLICY) == NF_DROP;
            other.insert(
                (family, table.clone(), c.get_str(sys::NFTNL_CHAIN_NAME)),
                (format!("{fam} {table}"), policy_drop),
            );
            continue;
        }
        let Some(fam) = family_name(family).filter(|_| foreign(family, &table)) else {
            continue;
        };
        let table = format!("{fam} {table}");
        let name = c.get_str(sys::NFTNL_CHAIN_NAME);
        let base = base_of(&c).1;
        index.insert((table.clone(), name.clone()), chains.len());
        chains.push(Chain {
            table,
            name,
            base,
            rules: Vec::new(),
        });
    }
    for row in dump_objects::<sys::nftnl_rule>(&mut sock, unspec, None)? {
        let r = Owned::<sys::nftnl_rule>::new();
        if !r.parse(&row) {
            continue;
        }
        let family = r.get_u32(sys::NFTNL_RULE_FAMILY);
        let table = r.get_str(sys::NFTNL_RULE_TABLE);
        if let Some((_, can_drop)) =
            other.get_mut(&(family, table.clone(), r.get_str(sys::NFTNL_RULE_CHAIN)))
        {
            *can_drop |= rule_of(&r)
                .exprs
                .iter()
                .any(|e| matches!(e, Expr::Verdict(Jump::Drop) | Expr::Reject));
            continue;
        }
        let Some(fam) = family_name(family).filter(|_| foreign(family, &table)) else {
            continue;
        };
        let key = (format!("{fam} {table}"), r.get_str(sys::NFTNL_RULE_CHAIN));
        // A rule of a chain added after the chain dump: seen at the next audit.
        let Some(&i) = index.get(&key) else { continue };
        chains[i].rules.push(rule_of(&r));
    }
    // The members of the sets the rules look up. A set that cannot be read leaves its
    // lookups unknown ("may"), never a wrong certainty.
    let looked_up: std::collections::HashSet<(String, String)> = chains
        .iter()
        .flat_map(|c| {
            c.rules.iter().flat_map(|r| {
                r.exprs.iter().filter_map(|e| match e {
                    Expr::Lookup {
                        set, members: None, ..
                    } => Some((c.table.clone(), set.clone())),
                    _ => None,
                })
            })
        })
        .collect();
    if let Ok(sets) = super::foreign_sets::read(&mut sock, |family, table, set| {
        family_name(family)
            .filter(|_| foreign(family, table))
            .map(|fam| format!("{fam} {table}"))
            .filter(|shown| looked_up.contains(&(shown.clone(), set.to_string())))
    }) {
        for chain in &mut chains {
            for rule in &mut chain.rules {
                for e in &mut rule.exprs {
                    if let Expr::Lookup {
                        set,
                        members: members @ None,
                        ..
                    } = e
                    {
                        *members = sets.get(&(chain.table.clone(), set.clone())).cloned();
                    }
                }
            }
        }
    }
    let mut unjudged: Vec<Unjudged> = other
        .into_iter()
        .filter(|(_, (_, can_drop))| *can_drop)
        .map(|((_, _, chain), (table, _))| {
            let why = format!(
                "chain {chain} of table {table} sees packets before or beside the IP hooks (ingress, netdev or bridge) and can drop; audit does not evaluate it"
            );
            (table, chain, why)
        })
        .collect();
    unjudged.sort();
    Ok((chains, unjudged))
}

/// Whether the chain is a base chain (it has a hook), and its hook, priority, policy
/// and type; the second is `None` for a regular chain or a hook that is not one of
/// IPv4's five.
fn base_of(c: &Owned<sys::nftnl_chain>) -> (bool, Option<BaseHook>) {
    let p = c.ptr().as_ptr();
    // SAFETY: live chain; the getters read its attributes.
    let (hooked, priority, has_policy) = unsafe {
        (
            sys::nftnl_chain_is_set(p, sys::NFTNL_CHAIN_HOOKNUM as u16),
            sys::nftnl_chain_get_s32(p, sys::NFTNL_CHAIN_PRIO as u16),
            sys::nftnl_chain_is_set(p, sys::NFTNL_CHAIN_POLICY as u16),
        )
    };
    if !hooked {
        return (false, None);
    }
    let base = Hook::from_number(c.get_u32(sys::NFTNL_CHAIN_HOOKNUM)).map(|hook| BaseHook {
        hook,
        priority,
        policy_drop: has_policy && c.get_u32(sys::NFTNL_CHAIN_POLICY) == NF_DROP,
        nat: c.get_str(sys::NFTNL_CHAIN_TYPE) == "nat",
    });
    (true, base)
}

/// The rule: its handle and its expressions, decoded.
fn rule_of(r: &Owned<sys::nftnl_rule>) -> Rule {
    let mut exprs: Vec<Expr> = Vec::new();
    let p = r.ptr().as_ptr();
    // SAFETY: live rule; the handle getter only reads it, and the callback only reads
    // each expression and pushes to `exprs`, which outlives the call.
    let handle = unsafe {
        sys::nftnl_expr_foreach(p, Some(decode_expr), (&mut exprs as *mut Vec<Expr>).cast());
        sys::nftnl_rule_get_u64(p, sys::NFTNL_RULE_HANDLE as u16)
    };
    Rule { handle, exprs }
}

unsafe extern "C" fn decode_expr(e: *mut sys::nftnl_expr, data: *mut c_void) -> c_int {
    // SAFETY: `data` is the &mut Vec<Expr> passed by `rule_of`; `e` is live during the
    // callback.
    unsafe {
        let out = &mut *data.cast::<Vec<Expr>>();
        match super::dnat::dnat_of(e, out) {
            Some(x) => out.push(x),
            None => out.extend(decode(e)),
        }
    }
    0
}

/// One expression as the evaluator models it (an xt match may be several).
///
/// # Safety
/// `e` must be a live expression.
unsafe fn decode(e: *mut sys::nftnl_expr) -> Vec<Expr> {
    // SAFETY: `e` is live (the caller's contract); getters copy out what they return,
    // `nftnl_expr_get` returns data owned by `e` valid for the length it writes.
    unsafe {
        let is = |a: u32| sys::nftnl_expr_is_set(e, a as u16);
        let u32_of = |a: u32| sys::nftnl_expr_get_u32(e, a as u16);
        let str_of = |a: u32| get_str(sys::nftnl_expr_get_str(e, a as u16));
        let bytes = |a: u32| {
            let mut len = 0u32;
            let p = sys::nftnl_expr_get(e, a as u16, &mut len);
            if p.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(p.cast::<u8>(), len as usize).to_vec()
            }
        };
        let name = str_of(sys::NFTNL_EXPR_NAME);
        let one = match name.as_str() {
            "meta" if is(sys::NFTNL_EXPR_META_DREG) => Expr::Meta {
                key: u32_of(sys::NFTNL_EXPR_META_KEY),
                dreg: u32_of(sys::NFTNL_EXPR_META_DREG),
            },
            "payload" if is(sys::NFTNL_EXPR_PAYLOAD_DREG) => Expr::Payload {
                base: u32_of(sys::NFTNL_EXPR_PAYLOAD_BASE),
                offset: u32_of(sys::NFTNL_EXPR_PAYLOAD_OFFSET),
                len: u32_of(sys::NFTNL_EXPR_PAYLOAD_LEN),
                dreg: u32_of(sys::NFTNL_EXPR_PAYLOAD_DREG),
            },
            "ct" if is(sys::NFTNL_EXPR_CT_DREG) => Expr::Ct {
                key: u32_of(sys::NFTNL_EXPR_CT_KEY),
                dir: is(sys::NFTNL_EXPR_CT_DIR)
                    .then(|| sys::nftnl_expr_get_u8(e, sys::NFTNL_EXPR_CT_DIR as u16)),
                dreg: u32_of(sys::NFTNL_EXPR_CT_DREG),
            },
            // `meta mark set`: later mark matches see the value (NFT_META_MARK 3).
            "meta" if is(sys::NFTNL_EXPR_META_SREG) && u32_of(sys::NFTNL_EXPR_META_KEY) == 3 => {
                Expr::MetaSet {
                    key: 3,
                    sreg: u32_of(sys::NFTNL_EXPR_META_SREG),
                }
            }
            // A dynset ends the rule when its add fails or its embedded limit, quota or
            // connlimit does: not a plain statement.
            "dynset" => Expr::Unknown(name),
            "meta" | "payload" | "ct" | "counter" | "log" | "last" => Expr::Statement(name),
            "immediate" if is(sys::NFTNL_EXPR_IMM_VERDICT) => {
                let chain = || str_of(sys::NFTNL_EXPR_IMM_CHAIN);
                match u32_of(sys::NFTNL_EXPR_IMM_VERDICT) as i32 {
                    0 => Expr::Verdict(Jump::Drop),
                    1 => Expr::Verdict(Jump::Accept),
                    -1 => Expr::Verdict(Jump::Continue),
                    -3 => Expr::Verdict(Jump::Jump(chain())),
                    -4 => Expr::Verdict(Jump::Goto(chain())),
                    -5 => Expr::Verdict(Jump::Return),
                    v => Expr::Unknown(format!("verdict {v}")),
                }
            }
            "immediate" => Expr::Load {
                dreg: u32_of(sys::NFTNL_EXPR_IMM_DREG),
                data: bytes(sys::NFTNL_EXPR_IMM_DATA),
            },
            "bitwise"
                if !is(sys::NFTNL_EXPR_BITWISE_OP) || u32_of(sys::NFTNL_EXPR_BITWISE_OP) == 0 =>
            {
                Expr::Bitwise {
                    sreg: u32_of(sys::NFTNL_EXPR_BITWISE_SREG),
                    dreg: u32_of(sys::NFTNL_EXPR_BITWISE_DREG),
                    mask: bytes(sys::NFTNL_EXPR_BITWISE_MASK),
                    xor: bytes(sys::NFTNL_EXPR_BITWISE_XOR),
                }
            }
            "cmp" => Expr::Cmp {
                sreg: u32_of(sys::NFTNL_EXPR_CMP_SREG),
                op: u32_of(sys::NFTNL_EXPR_CMP_OP),
                data: bytes(sys::NFTNL_EXPR_CMP_DATA),
            },
            "range" => Expr::Range {
                sreg: u32_of(sys::NFTNL_EXPR_RANGE_SREG),
                op: u32_of(sys::NFTNL_EXPR_RANGE_OP),
                from: bytes(sys::NFTNL_EXPR_RANGE_FROM_DATA),
                to: bytes(sys::NFTNL_EXPR_RANGE_TO_DATA),
            },
            "lookup" => {
                let set = str_of(sys::NFTNL_EXPR_LOOKUP_SET);
                let sreg = u32_of(sys::NFTNL_EXPR_LOOKUP_SREG);
                // NFT_LOOKUP_F_INV.
                let invert = is(sys::NFTNL_EXPR_LOOKUP_FLAGS)
                    && u32_of(sys::NFTNL_EXPR_LOOKUP_FLAGS) & 1 != 0;
                match is(sys::NFTNL_EXPR_LOOKUP_DREG).then(|| u32_of(sys::NFTNL_EXPR_LOOKUP_DREG)) {
                    None => Expr::Lookup {
                        set,
                        sreg,
                        invert,
                        verdict_map: false,
                        members: None,
                    },
                    Some(REG_VERDICT) => Expr::Lookup {
                        set,
                        sreg,
                        invert,
                        verdict_map: true,
                        members: None,
                    },
                    Some(_) => Expr::Unknown(format!("map lookup in @{set}")),
                }
            }
            // NFTA_FIB_F_SADDR 1, DADDR 2 without IIF (8) / OIF (0x10); result ADDRTYPE 3.
            "fib"
                if u32_of(sys::NFTNL_EXPR_FIB_RESULT) == 3
                    && u32_of(sys::NFTNL_EXPR_FIB_FLAGS) & !0x3 == 0 =>
            {
                Expr::FibType {
                    daddr: u32_of(sys::NFTNL_EXPR_FIB_FLAGS) & 0x2 != 0,
                    dreg: u32_of(sys::NFTNL_EXPR_FIB_DREG),
                }
            }
            // `fib saddr [. mark] [. iif] oif|oifname`: NFTA_FIB_F_SADDR 1, MARK 4, IIF 8,
            // PRESENT 0x20; result OIF 1, OIFNAME 2. The reverse path check.
            "fib"
                if matches!(u32_of(sys::NFTNL_EXPR_FIB_RESULT), 1 | 2)
                    && u32_of(sys::NFTNL_EXPR_FIB_FLAGS) & 1 != 0
                    && u32_of(sys::NFTNL_EXPR_FIB_FLAGS) & !(1 | 4 | 8 | 0x20) == 0 =>
            {
                let flags = u32_of(sys::NFTNL_EXPR_FIB_FLAGS);
                Expr::FibOif {
                    iif: flags & 8 != 0,
                    present: flags & 0x20 != 0,
                    name: u32_of(sys::NFTNL_EXPR_FIB_RESULT) == 2,
                    dreg: u32_of(sys::NFTNL_EXPR_FIB_DREG),
                }
            }
            "reject" => Expr::Reject,
            "notrack" => Expr::Notrack,
            // iptables-nft's compat expressions carry the xt structs iptables-legacy's
            // blob does: one decoder for both.
            "target" => {
                return crate::kernel::xt::target_exprs(
                    &str_of(sys::NFTNL_EXPR_TG_NAME),
                    u32_of(sys::NFTNL_EXPR_TG_REV) as u8,
                    &bytes(sys::NFTNL_EXPR_TG_INFO),
                )
            }
            "match" => {
                let decoded = crate::kernel::xt::match_exprs(
                    &str_of(sys::NFTNL_EXPR_MT_NAME),
                    u32_of(sys::NFTNL_EXPR_MT_REV) as u8,
                    &bytes(sys::NFTNL_EXPR_MT_INFO),
                );
                return decoded;
            }
            _ => Expr::Unknown(name),
        };
        vec![one]
    }
}
