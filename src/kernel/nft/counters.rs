//! Rule counters: what each deciding rule of loopgate's table has matched, read from
//! the `counter` expressions of a [`Snapshot`]'s rules, for `audit` and monitoring.
//! Counters are left out of a [`TableImage`](super::TableImage): they move with
//! traffic, not with what loopgate wrote.

use super::objects::{get_str, rule_chain, rule_comment, Obj};
use super::readback::Snapshot;
use nftnl::nftnl_sys as sys;
use std::os::raw::{c_int, c_void};
use std::ptr::NonNull;

unsafe extern "C" fn read_counter(e: *mut sys::nftnl_expr, data: *mut c_void) -> c_int {
    // SAFETY: `data` is the &mut Option<(u64, u64)> passed by `Snapshot::counters`;
    // `e` is live.
    unsafe {
        if get_str(sys::nftnl_expr_get_str(e, sys::NFTNL_EXPR_NAME as u16)) == "counter" {
            let out = (*data.cast::<Option<(u64, u64)>>()).get_or_insert((0, 0));
            out.0 += sys::nftnl_expr_get_u64(e, sys::NFTNL_EXPR_CTR_PACKETS as u16);
            out.1 += sys::nftnl_expr_get_u64(e, sys::NFTNL_EXPR_CTR_BYTES as u16);
        }
    }
    0
}

/// What one rule of loopgate's table has matched so far.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleCounter {
    /// The chain the rule is in, e.g. `raw_if_br0` or
    /// `nat_br0_192.0.2.1_tcp_3306`.
    pub chain: String,
    /// The rule's comment ([`crate::ruleset::Rule::comment`]), which names the grant
    /// or the guard it belongs to.
    pub rule: String,
    /// Packets matched since the rule was created (a table rewrite starts at 0).
    pub packets: u64,
    /// Bytes of those packets, IP headers included.
    pub bytes: u64,
}

impl Snapshot {
    /// The counters of every rule that has one (dispatch rules have none), in table
    /// order.
    pub fn counters(&self) -> Vec<RuleCounter> {
        let Some(objs) = &self.objects else {
            return vec![];
        };
        objs.objs
            .iter()
            .filter_map(|(o, _)| match o {
                Obj::Rule(r) => rule_counter(*r),
                _ => None,
            })
            .collect()
    }
}

/// What rule `r` has counted, `None` when it has no counter.
pub(super) fn rule_counter(r: NonNull<sys::nftnl_rule>) -> Option<RuleCounter> {
    let mut c: Option<(u64, u64)> = None;
    // SAFETY: live rule; the callback reads its expressions and writes only `c`, which
    // outlives the call.
    unsafe {
        sys::nftnl_expr_foreach(
            r.as_ptr(),
            Some(read_counter),
            (&mut c as *mut Option<(u64, u64)>).cast(),
        );
    }
    let c = c?;
    Some(RuleCounter {
        chain: rule_chain(r),
        rule: rule_comment(r),
        packets: c.0,
        bytes: c.1,
    })
}
