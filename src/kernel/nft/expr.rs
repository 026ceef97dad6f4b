//! The expression compiler: one planned [`Rule`] into the raw nf_tables expressions
//! nft would generate for it (`nft --debug=netlink` prints the same lines), so a rule
//! read back from the kernel compares equal to the planned one. Registers, byte orders
//! and match shortcuts follow nft exactly for that reason.

use super::abi::*;
use super::objects::{alloc, cstr, Obj, Owned};
use crate::ruleset::{CtDir, KeyField, Match, Rule, Verdict, TABLE};
use nftnl::nftnl_sys as sys;
use std::ptr::NonNull;

/// The register number for the 32-bit slot `slot` (0-based) of the register file, the
/// way the kernel reports it back: a 16-byte-aligned slot by its legacy number
/// (`NFT_REG_1..4`), any other by its 32-bit number (`NFT_REG32_xx`). Encoding it the
/// same way keeps planned and read-back tables comparable.
fn reg32(slot: usize) -> u32 {
    if slot.is_multiple_of(4) {
        slot as u32 / 4 + 1
    } else {
        NFT_REG32_00 + slot as u32
    }
}

/// Builds raw expressions into a rule; each helper mirrors one nft debug line.
struct ExprWriter {
    rule: NonNull<sys::nftnl_rule>,
}

impl ExprWriter {
    fn expr(&mut self, kind: &str, attrs: &[(u32, Attr)]) {
        // SAFETY: the expression is handed to the rule, which frees it; data pointers
        // are valid for the given lengths (at most 16 bytes, an interface name, where
        // libnftnl's data registers hold 64) and libnftnl copies them.
        unsafe {
            let e = alloc(sys::nftnl_expr_alloc(cstr(kind).as_ptr())).as_ptr();
            for (attr, value) in attrs {
                let attr = *attr as u16;
                match value {
                    Attr::U32(v) => sys::nftnl_expr_set_u32(e, attr, *v),
                    Attr::Bytes(b) => {
                        sys::nftnl_expr_set(e, attr, b.as_ptr().cast(), b.len() as u32);
                    }
                    Attr::Str(s) => {
                        sys::nftnl_expr_set_str(e, attr, cstr(s).as_ptr());
                    }
                }
            }
            sys::nftnl_rule_add_expr(self.rule.as_ptr(), e);
        }
    }

    /// `[ meta load KEY => reg 1 ]`
    fn meta(&mut self, key: u32) {
        self.meta_to(key, REG_1);
    }

    fn meta_to(&mut self, key: u32, dreg: u32) {
        self.expr(
            "meta",
            &[
                (sys::NFTNL_EXPR_META_KEY, Attr::U32(key)),
                (sys::NFTNL_EXPR_META_DREG, Attr::U32(dreg)),
            ],
        );
    }

    /// `[ cmp OP reg 1 DATA ]`
    fn cmp(&mut self, op: u32, data: &[u8]) {
        self.expr(
            "cmp",
            &[
                (sys::NFTNL_EXPR_CMP_SREG, Attr::U32(REG_1)),
                (sys::NFTNL_EXPR_CMP_OP, Attr::U32(op)),
                (sys::NFTNL_EXPR_CMP_DATA, Attr::Bytes(data.to_vec())),
            ],
        );
    }

    /// `[ payload load LEN b @ BASE header + OFFSET => reg 1 ]`
    fn payload(&mut self, base: u32, offset: u32, len: u32) {
        self.payload_to(base, offset, len, REG_1);
    }

    fn payload_to(&mut self, base: u32, offset: u32, len: u32, dreg: u32) {
        self.expr(
            "payload",
            &[
                (sys::NFTNL_EXPR_PAYLOAD_DREG, Attr::U32(dreg)),
                (sys::NFTNL_EXPR_PAYLOAD_BASE, Attr::U32(base)),
                (sys::NFTNL_EXPR_PAYLOAD_OFFSET, Attr::U32(offset)),
                (sys::NFTNL_EXPR_PAYLOAD_LEN, Attr::U32(len)),
            ],
        );
    }

    /// `[ bitwise reg 1 = ( reg 1 & MASK ) ^ 0 ]`
    fn mask(&mut self, mask: &[u8]) {
        self.expr(
            "bitwise",
            &[
                (sys::NFTNL_EXPR_BITWISE_SREG, Attr::U32(REG_1)),
                (sys::NFTNL_EXPR_BITWISE_DREG, Attr::U32(REG_1)),
                (sys::NFTNL_EXPR_BITWISE_LEN, Attr::U32(mask.len() as u32)),
                (sys::NFTNL_EXPR_BITWISE_MASK, Attr::Bytes(mask.to_vec())),
                (
                    sys::NFTNL_EXPR_BITWISE_XOR,
                    Attr::Bytes(vec![0; mask.len()]),
                ),
            ],
        );
    }

    /// `[ ct load KEY => reg 1 , dir DIR ]`
    fn ct(&mut self, key: u32, dir: Option<CtDir>) {
        let mut attrs = vec![
            (sys::NFTNL_EXPR_CT_KEY, Attr::U32(key)),
            (sys::NFTNL_EXPR_CT_DREG, Attr::U32(REG_1)),
        ];
        if let Some(d) = dir {
            let d = match d {
                CtDir::Original => 0u8,
                CtDir::Reply => 1u8,
            };
            attrs.push((sys::NFTNL_EXPR_CT_DIR, Attr::Bytes(vec![d])));
        }
        self.expr("ct", &attrs);
    }

    /// `[ immediate reg DREG DATA ]` or a verdict.
    fn immediate(&mut self, dreg: u32, data: &[u8]) {
        self.expr(
            "immediate",
            &[
                (sys::NFTNL_EXPR_IMM_DREG, Attr::U32(dreg)),
                (sys::NFTNL_EXPR_IMM_DATA, Attr::Bytes(data.to_vec())),
            ],
        );
    }

    fn verdict(&mut self, verdict: u32) {
        self.expr(
            "immediate",
            &[
                (sys::NFTNL_EXPR_IMM_DREG, Attr::U32(REG_VERDICT)),
                (sys::NFTNL_EXPR_IMM_VERDICT, Attr::U32(verdict)),
            ],
        );
    }

    fn ip_field(&mut self, offset: u32) {
        self.payload(PAYLOAD_NETWORK, offset, 4);
    }

    fn add_match(&mut self, m: &Match) {
        match m {
            Match::IifName(n) | Match::OifName(n) => {
                let key = if matches!(m, Match::IifName(_)) {
                    META_IIFNAME
                } else {
                    META_OIFNAME
                };
                self.meta(key);
                // Padded to IFNAMSIZ with NULs: an exact match, not a prefix match.
                let mut name = [0u8; libc::IFNAMSIZ];
                name[..n.len()].copy_from_slice(n.as_bytes());
                self.cmp(CMP_EQ, &name);
            }
            Match::SaddrIn(net) | Match::DaddrIn(net) => {
                let offset = if matches!(m, Match::SaddrIn(_)) {
                    12
                } else {
                    16
                };
                let whole_bytes = usize::from(net.prefix() / 8);
                if net.prefix() % 8 == 0 && whole_bytes > 0 {
                    // As nft does: compare only the prefix's bytes (127.0.0.0/8 is one
                    // byte), no mask needed. These rules see every packet.
                    self.payload(PAYLOAD_NETWORK, offset, whole_bytes as u32);
                    self.cmp(CMP_EQ, &net.network().octets()[..whole_bytes]);
                } else {
                    self.ip_field(offset);
                    self.mask(&net.mask().octets());
                    self.cmp(CMP_EQ, &net.network().octets());
                }
            }
            Match::Daddr(a) => {
                self.ip_field(16);
                self.cmp(CMP_EQ, &a.octets());
            }
            Match::SaddrInSet(set) => {
                self.ip_field(12);
                self.expr(
                    "lookup",
                    &[
                        (sys::NFTNL_EXPR_LOOKUP_SREG, Attr::U32(REG_1)),
                        (sys::NFTNL_EXPR_LOOKUP_SET, Attr::Str(set.clone())),
                        (sys::NFTNL_EXPR_LOOKUP_FLAGS, Attr::U32(0)),
                    ],
                );
            }
            Match::L4Proto(proto) => {
                self.meta(META_L4PROTO);
                self.cmp(CMP_EQ, &[proto.number()]);
            }
            Match::Dport(proto, port) => {
                self.meta(META_L4PROTO);
                self.cmp(CMP_EQ, &[proto.number()]);
                self.payload(PAYLOAD_TRANSPORT, 2, 2);
                self.cmp(CMP_EQ, &port.to_be_bytes());
            }
            Match::CtDirection(d) => {
                self.ct(CT_DIRECTION, None);
                self.cmp(CMP_EQ, &[if *d == CtDir::Original { 0 } else { 1 }]);
            }
            Match::CtStatusDnat => {
                self.ct(CT_STATUS, None);
                self.mask(&IPS_DST_NAT.to_ne_bytes());
                self.cmp(CMP_NEQ, &0u32.to_ne_bytes());
            }
            Match::CtOriginalDaddr(a) => {
                self.ct(CT_DST_IP, Some(CtDir::Original));
                self.cmp(CMP_EQ, &a.octets());
            }
            Match::CtOriginalDaddrNotIn(net) => {
                self.ct(CT_DST_IP, Some(CtDir::Original));
                self.mask(&net.mask().octets());
                self.cmp(CMP_NEQ, &net.network().octets());
            }
            Match::CtOriginalProtoDst(proto, port) => {
                // The protocol is the same in both directions; the kernel keeps no
                // direction for this key, so none is sent (and none comes back).
                self.ct(CT_PROTOCOL, None);
                self.cmp(CMP_EQ, &[proto.number()]);
                self.ct(CT_PROTO_DST, Some(CtDir::Original));
                self.cmp(CMP_EQ, &port.to_be_bytes());
            }
        }
    }

    /// Loads the key fields into consecutive registers, as nft builds a concatenation,
    /// and returns the first register.
    fn load_key(&mut self, key: &[KeyField]) -> u32 {
        let mut slot = 0;
        for field in key {
            let reg = reg32(slot);
            match field {
                KeyField::IifName => self.meta_to(META_IIFNAME, reg),
                KeyField::OifName => self.meta_to(META_OIFNAME, reg),
                KeyField::Daddr => self.payload_to(PAYLOAD_NETWORK, 16, 4, reg),
                KeyField::L4Proto => self.meta_to(META_L4PROTO, reg),
                KeyField::Dport => self.payload_to(PAYLOAD_TRANSPORT, 2, 2, reg),
            }
            slot += field.padded_len() / 4;
        }
        reg32(0)
    }

    fn add_verdict(&mut self, v: &Verdict) {
        match v {
            Verdict::Vmap { key, map } => {
                let sreg = self.load_key(key);
                self.expr(
                    "lookup",
                    &[
                        (sys::NFTNL_EXPR_LOOKUP_SREG, Attr::U32(sreg)),
                        (sys::NFTNL_EXPR_LOOKUP_DREG, Attr::U32(REG_VERDICT)),
                        (sys::NFTNL_EXPR_LOOKUP_SET, Attr::Str(map.clone())),
                        (sys::NFTNL_EXPR_LOOKUP_FLAGS, Attr::U32(0)),
                    ],
                );
            }
            Verdict::Accept => self.verdict(NF_ACCEPT),
            Verdict::Drop => self.verdict(NF_DROP),
            Verdict::Dnat(to) => {
                self.immediate(REG_1, &to.ip().octets());
                self.immediate(REG_2, &to.port().to_be_bytes());
                self.expr(
                    "nat",
                    &[
                        (sys::NFTNL_EXPR_NAT_TYPE, Attr::U32(NAT_DNAT)),
                        (sys::NFTNL_EXPR_NAT_FAMILY, Attr::U32(NFPROTO_IPV4 as u32)),
                        (sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, Attr::U32(REG_1)),
                        (sys::NFTNL_EXPR_NAT_REG_ADDR_MAX, Attr::U32(REG_1)),
                        (sys::NFTNL_EXPR_NAT_REG_PROTO_MIN, Attr::U32(REG_2)),
                        (sys::NFTNL_EXPR_NAT_REG_PROTO_MAX, Attr::U32(REG_2)),
                        (
                            sys::NFTNL_EXPR_NAT_FLAGS,
                            Attr::U32(NAT_RANGE_MAP_IPS | NAT_RANGE_PROTO_SPECIFIED),
                        ),
                    ],
                );
            }
        }
    }
}

enum Attr {
    U32(u32),
    Bytes(Vec<u8>),
    Str(String),
}

pub(super) fn new_rule(chain: &str, rule: &Rule) -> Obj {
    let r = rule_in(TABLE, chain);
    let p = r.ptr();
    let mut w = ExprWriter { rule: p };
    for m in &rule.matches {
        w.add_match(m);
    }
    // Deciding rules count what they matched: audit and monitoring read what was dropped.
    if rule.counts() {
        w.expr("counter", &[]);
    }
    w.add_verdict(&rule.verdict);
    set_comment(p, &rule.comment);
    r.into_obj()
}

/// A new rule of family ip in `table`, chain `chain`, with no expressions yet.
fn rule_in(table: &str, chain: &str) -> Owned<sys::nftnl_rule> {
    let r = Owned::<sys::nftnl_rule>::new();
    r.set_str(sys::NFTNL_RULE_TABLE, table);
    r.set_str(sys::NFTNL_RULE_CHAIN, chain);
    r.set_u32(sys::NFTNL_RULE_FAMILY, NFPROTO_IPV4 as u32);
    r
}

fn set_comment(rule: NonNull<sys::nftnl_rule>, comment: &str) {
    // SAFETY: the udata buffer is ours until freed below; nftnl_rule_set_data copies it.
    unsafe {
        let buf = alloc(sys::nftnl_udata_buf_alloc(sys::NFTNL_UDATA_COMMENT_MAXLEN));
        let text = cstr(
            &comment[..comment
                .len()
                .min(sys::NFTNL_UDATA_COMMENT_MAXLEN as usize - 1)],
        );
        sys::nftnl_udata_put_strz(
            buf.as_ptr(),
            sys::NFTNL_UDATA_RULE_COMMENT as u8,
            text.as_ptr(),
        );
        sys::nftnl_rule_set_data(
            rule.as_ptr(),
            sys::NFTNL_RULE_USERDATA as u16,
            sys::nftnl_udata_buf_data(buf.as_ptr()),
            sys::nftnl_udata_buf_len(buf.as_ptr()),
        );
        sys::nftnl_udata_buf_free(buf.as_ptr());
    }
}

/// The one rule of `loopgate trace`'s own table: `iifname IFACE [th dport PORT] meta
/// nftrace set 1`, in table `table`, chain `chain`. `iface` ending in `*` matches every
/// interface whose name starts with what precedes it, as nft's `iifname "br-*"` does.
pub(super) fn new_trace_rule(
    table: &str,
    chain: &str,
    iface: &str,
    port: Option<u16>,
    comment: &str,
) -> Obj {
    let r = rule_in(table, chain);
    let p = r.ptr();
    let mut w = ExprWriter { rule: p };
    match iface.strip_suffix('*') {
        // A prefix: compare only its bytes, no NUL padding.
        Some(prefix) => {
            w.meta(META_IIFNAME);
            w.cmp(CMP_EQ, prefix.as_bytes());
        }
        None => w.add_match(&Match::IifName(iface.to_string())),
    }
    if let Some(port) = port {
        // `th dport`: the 16 bits at offset 2 of the transport header (TCP, UDP, SCTP).
        w.payload(PAYLOAD_TRANSPORT, 2, 2);
        w.cmp(CMP_EQ, &port.to_be_bytes());
    }
    w.immediate(REG_1, &[1]);
    w.expr(
        "meta",
        &[
            (
                sys::NFTNL_EXPR_META_KEY,
                Attr::U32(libc::NFT_META_NFTRACE as u32),
            ),
            (sys::NFTNL_EXPR_META_SREG, Attr::U32(REG_1)),
        ],
    );
    set_comment(p, comment);
    r.into_obj()
}
