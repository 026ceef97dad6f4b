//! `loopgate trace`'s own table, `ip loopgate_trace`: one base chain at prerouting,
//! priority raw - 1 (-301), before every other chain, with one rule that sets the
//! `nftrace` bit on the packets to trace. It is kept apart from `ip loopgate`, whose
//! contents audit and watch compare with the plan (and watch may hold).
//!
//! The table is created owned by the socket that created it (`NFT_TABLE_F_OWNER`,
//! Linux 5.12+), without `persist`: the kernel deletes it when that socket closes, so
//! it cannot outlive loopgate even when loopgate is killed. [`TraceTable`] deletes it
//! itself when dropped, and a table left over by an older kernel's run is replaced.
//!
//! [`lookup_rule`] reads one rule of any table by handle, to say what a traced rule is
//! (its comment, and whether it NATs or rejects).

use super::abi::*;
use super::batch::{BatchWriter, Send};
use super::expr::new_trace_rule;
use super::objects::{Obj, Owned};
use crate::kernel::netlink::{self, attrs, NlSocket};
use anyhow::{Context, Result};
use nftnl::nftnl_sys as sys;
use std::io;

/// The name of the trace table (family `ip`).
pub const TRACE_TABLE: &str = "loopgate_trace";
/// The name of its one chain.
pub const TRACE_CHAIN: &str = "prerouting";
/// Its priority: before nft's `raw` (-300), so before every other table's chains.
pub const TRACE_PRIORITY: i32 = -301;
/// The comment of the tracing rule.
const TRACE_COMMENT: &str = "loopgate trace: mark for tracing";

/// What to trace: packets arriving on `iface` (a name, or a prefix ending in `*`),
/// optionally only those to transport port `port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceFilter {
    /// The input interface, or a prefix ending in `*`.
    pub iface: String,
    /// The destination port (`th dport`), if any.
    pub port: Option<u16>,
}

impl TraceFilter {
    /// The rule in nft syntax, for messages.
    pub fn describe(&self) -> String {
        let mut s = format!("iifname \"{}\"", self.iface);
        if let Some(p) = self.port {
            s.push_str(&format!(" th dport {p}"));
        }
        s + " meta nftrace set 1"
    }
}

/// The errno of the first I/O error in `e`'s chain.
fn errno(e: &anyhow::Error) -> Option<i32> {
    e.chain()
        .find_map(|c| c.downcast_ref::<io::Error>())
        .and_then(|e| e.raw_os_error())
}

fn table(flags: Option<u32>) -> Obj {
    let t = Owned::<sys::nftnl_table>::new();
    t.set_str(sys::NFTNL_TABLE_NAME, TRACE_TABLE);
    t.set_u32(sys::NFTNL_TABLE_FAMILY, NFPROTO_IPV4 as u32);
    if let Some(f) = flags {
        t.set_u32(sys::NFTNL_TABLE_FLAGS, f);
    }
    t.into_obj()
}

fn chain() -> Obj {
    let c = Owned::<sys::nftnl_chain>::new();
    c.set_str(sys::NFTNL_CHAIN_TABLE, TRACE_TABLE);
    c.set_str(sys::NFTNL_CHAIN_NAME, TRACE_CHAIN);
    c.set_u32(sys::NFTNL_CHAIN_FAMILY, NFPROTO_IPV4 as u32);
    c.set_u32(sys::NFTNL_CHAIN_HOOKNUM, libc::NF_INET_PRE_ROUTING as u32);
    // The kernel's priority is a signed 32-bit number; libnftnl stores the same bytes.
    c.set_u32(sys::NFTNL_CHAIN_PRIO, TRACE_PRIORITY as u32);
    c.set_str(sys::NFTNL_CHAIN_TYPE, "filter");
    c.set_u32(sys::NFTNL_CHAIN_POLICY, NF_ACCEPT);
    c.into_obj()
}

/// The trace table while it is in the kernel. Dropping it deletes the table (errors
/// ignored: the kernel deletes an owned table anyway when the socket closes).
pub struct TraceTable {
    /// The socket that created (and, where supported, owns) the table.
    sock: NlSocket,
    removed: bool,
}

impl TraceTable {
    /// Creates the trace table in one batch, replacing one a crashed run left behind.
    ///
    /// Errors: another running `loopgate trace` owns the table (EPERM), or the kernel
    /// refused the batch.
    pub fn install(filter: &TraceFilter) -> Result<TraceTable> {
        let mut sock = NlSocket::netfilter()?;
        let attempt = |sock: &mut NlSocket, owned: bool| {
            let mut w = BatchWriter::new(None, sock.next_seq());
            // add + delete makes the delete succeed whether or not a table was left.
            w.add(&table(None), false, "table ip loopgate_trace (create)");
            w.add(&table(None), true, "table ip loopgate_trace (clear)");
            let flags = owned.then_some(NFT_TABLE_F_OWNER);
            w.add(&table(flags), false, "table ip loopgate_trace");
            w.add(
                &chain(),
                false,
                "chain prerouting of table ip loopgate_trace",
            );
            let rule = new_trace_rule(
                TRACE_TABLE,
                TRACE_CHAIN,
                &filter.iface,
                filter.port,
                TRACE_COMMENT,
            );
            w.add(
                &rule,
                false,
                &format!("the rule {} (needs nftables tracing)", filter.describe()),
            );
            w.commit(sock, Send::Commit).map(|_| ())
        };
        let done = match attempt(&mut sock, true) {
            // Kernels before 5.12 know no owner flag: a plain table, deleted on exit.
            Err(e) if errno(&e) == Some(libc::EOPNOTSUPP) => attempt(&mut sock, false),
            other => other,
        };
        match done {
            Ok(()) => Ok(TraceTable {
                sock,
                removed: false,
            }),
            Err(e) if errno(&e) == Some(libc::EPERM) => Err(e.context(
                "table ip loopgate_trace belongs to another running `loopgate trace`; stop it first",
            )),
            Err(e) => Err(e.context("switching on tracing (table ip loopgate_trace)")),
        }
    }

    fn delete(&mut self) -> Result<()> {
        self.removed = true;
        let mut w = BatchWriter::new(None, self.sock.next_seq());
        w.add(&table(None), true, "table ip loopgate_trace (delete)");
        match w.commit(&mut self.sock, Send::Commit).map(|_| ()) {
            // Already gone (`nft flush ruleset`): nothing is left to remove.
            Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// Deletes the trace table.
    ///
    /// Errors: the kernel refused (the table stays until this process exits, when the
    /// kernel removes an owned table by itself).
    pub fn remove(mut self) -> Result<()> {
        self.delete().with_context(|| {
            format!("removing table ip {TRACE_TABLE}; remove it with `nft delete table ip {TRACE_TABLE}`")
        })
    }
}

impl Drop for TraceTable {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self.delete();
        }
    }
}

/// What a rule is, as far as a trace needs to say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleInfo {
    /// The rule's comment ("" when it has none).
    pub comment: String,
    /// What the rule does besides its verdict, in a word: `DNAT`, `SNAT`,
    /// `masquerade`, `redirect`, `reject`, `queue`; `None` for a plain rule.
    pub action: Option<&'static str>,
}

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_NAT_TYPE: u16 = 1;
const NFT_NAT_SNAT: u32 = 0;

/// Reads a rule's description from the attributes of a NEWRULE message (what follows
/// the nfgenmsg).
pub fn rule_info_from_attrs(body: &[u8]) -> RuleInfo {
    let mut info = RuleInfo::default();
    for (t, v) in attrs(body) {
        match t {
            NFTA_RULE_EXPRESSIONS => {
                for (_, expr) in attrs(v) {
                    let mut name = "";
                    let mut data: &[u8] = &[];
                    for (et, ev) in attrs(expr) {
                        match et {
                            NFTA_EXPR_NAME => {
                                name = std::str::from_utf8(
                                    ev.split(|b| *b == 0).next().unwrap_or_default(),
                                )
                                .unwrap_or("")
                            }
                            NFTA_EXPR_DATA => data = ev,
                            _ => {}
                        }
                    }
                    let action = match name {
                        "nat" => {
                            let ty = attrs(data).find(|(t, _)| *t == NFTA_NAT_TYPE).and_then(
                                |(_, v)| Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?)),
                            );
                            Some(if ty == Some(NFT_NAT_SNAT) {
                                "SNAT"
                            } else {
                                "DNAT"
                            })
                        }
                        "masq" => Some("masquerade"),
                        "redir" => Some("redirect"),
                        "reject" => Some("reject"),
                        "queue" => Some("queue"),
                        _ => None,
                    };
                    info.action = info.action.or(action);
                }
            }
            NFTA_RULE_USERDATA => {
                // Type-length-value records; type 0 is the comment (NUL-terminated).
                let mut rest = v;
                while let [ty, l, tail @ ..] = rest {
                    let (value, next) = tail.split_at((*l as usize).min(tail.len()));
                    if u32::from(*ty) == sys::NFTNL_UDATA_RULE_COMMENT {
                        let text = value.split(|b| *b == 0).next().unwrap_or_default();
                        info.comment = String::from_utf8_lossy(text).into_owned();
                    }
                    rest = next;
                }
            }
            _ => {}
        }
    }
    info
}

/// Reads one rule of any table by its handle. `Ok(None)` when it is gone.
///
/// Errors: the kernel refused the request for another reason.
pub fn lookup_rule(
    sock: &mut NlSocket,
    family: u8,
    table: &str,
    chain: &str,
    handle: u64,
) -> Result<Option<RuleInfo>> {
    let mut body = vec![family, 0, 0, 0];
    let strz = |s: &str| [s.as_bytes(), &[0]].concat();
    netlink::put_attr(&mut body, NFTA_RULE_TABLE, &strz(table));
    netlink::put_attr(&mut body, NFTA_RULE_CHAIN, &strz(chain));
    netlink::put_attr(&mut body, NFTA_RULE_HANDLE, &handle.to_be_bytes());
    let mut req = Vec::with_capacity(16 + body.len());
    req.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    let ty = ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | libc::NFT_MSG_GETRULE as u16;
    req.extend_from_slice(&ty.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    req.extend_from_slice(&flags.to_ne_bytes());
    req.extend_from_slice(&[0u8; 8]); // sequence (set by dump) and port id
    req.extend(body);
    let rows = match sock.dump(&req) {
        Ok(rows) => rows,
        Err(e) if errno(&e) == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e.context(format!("reading rule {handle} of {table} {chain}"))),
    };
    Ok(rows
        .first()
        .and_then(|m| m.get(16 + 4..))
        .map(rule_info_from_attrs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::netlink::{nest_attr, put_attr};

    fn expr(name: &str, data: impl FnOnce(&mut Vec<u8>)) -> impl FnOnce(&mut Vec<u8>) {
        let name = [name.as_bytes(), &[0]].concat();
        move |b: &mut Vec<u8>| {
            put_attr(b, NFTA_EXPR_NAME, &name);
            nest_attr(b, NFTA_EXPR_DATA, data);
        }
    }

    #[test]
    fn a_rules_comment_and_action_are_read_from_its_attributes() {
        let mut body = Vec::new();
        put_attr(&mut body, NFTA_RULE_TABLE, b"loopgate\0");
        nest_attr(&mut body, NFTA_RULE_EXPRESSIONS, |b| {
            nest_attr(b, 1, expr("immediate", |_| {}));
            nest_attr(
                b,
                1,
                expr("nat", |d| put_attr(d, NFTA_NAT_TYPE, &1u32.to_be_bytes())),
            );
        });
        let comment = b"grant br0-tcp-3306\0";
        let mut udata = vec![0u8, comment.len() as u8];
        udata.extend_from_slice(comment);
        put_attr(&mut body, NFTA_RULE_USERDATA, &udata);
        assert_eq!(
            rule_info_from_attrs(&body),
            RuleInfo {
                comment: "grant br0-tcp-3306".into(),
                action: Some("DNAT")
            }
        );

        let mut reject = Vec::new();
        nest_attr(&mut reject, NFTA_RULE_EXPRESSIONS, |b| {
            nest_attr(b, 1, expr("reject", |_| {}));
        });
        assert_eq!(rule_info_from_attrs(&reject).action, Some("reject"));
        assert_eq!(rule_info_from_attrs(&[]), RuleInfo::default());
    }

    #[test]
    fn the_filter_reads_as_nft_syntax() {
        let f = TraceFilter {
            iface: "br0".into(),
            port: Some(3306),
        };
        assert_eq!(
            f.describe(),
            "iifname \"br0\" th dport 3306 meta nftrace set 1"
        );
    }
}
