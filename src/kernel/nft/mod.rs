//! loopgate's table in the kernel: encode a [`Ruleset`] into one atomic nf_tables
//! batch, read the table back, and restore a snapshot of it.
//!
//! libnftnl (through `nftnl::nftnl_sys`) builds and parses the messages; the safe
//! `nftnl` API stops short of interval sets, `ct original ...` keys and read-back, so
//! the objects are handled raw here, each behind an owning wrapper that frees it.
//! Every change replaces the whole table in one batch: `add table; delete table; add
//! table; ...` so the kernel applies all of it or none of it.

pub mod elements;

use super::netlink::{self, NlSocket};
use crate::ruleset::{
    AddrSet, Attachment, Chain, ChainKind, CtDir, Hook, KeyField, Match, Rule, Ruleset, Verdict,
    VerdictMap, TABLE,
};
use anyhow::{anyhow, Context, Result};
pub use elements::Elem;
use elements::ElemBlock;
use nftnl::nftnl_sys as sys;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, CString};
use std::io;
use std::os::raw::{c_char, c_int, c_void};
use std::ptr::NonNull;

const NFPROTO_IPV4: u16 = libc::NFPROTO_IPV4 as u16;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
/// The data type of a verdict map (`NFT_DATA_VERDICT`).
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
/// nft composes a concatenated key's datatype by shifting in 6 bits per field.
const TYPE_BITS: u32 = 6;
/// `ipv4_addr` in nft's datatype numbering; lets `nft list` print the set readably.
const TYPE_IPV4_ADDR: u32 = 7;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_IFNAME: u32 = 41;
/// nft's byte order names, stored in a set's userdata so `nft list` prints its keys.
const BYTEORDER_HOST_ENDIAN: u32 = 1;
const BYTEORDER_BIG_ENDIAN: u32 = 2;

// nf_tables expression constants (linux/netfilter/nf_tables.h).
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
const REG_2: u32 = 2;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const PAYLOAD_NETWORK: u32 = 1;
const PAYLOAD_TRANSPORT: u32 = 2;
const META_IIFNAME: u32 = 6;
const META_OIFNAME: u32 = 7;
const META_L4PROTO: u32 = 16;
const CT_DIRECTION: u32 = 1;
const CT_STATUS: u32 = 2;
const CT_PROTOCOL: u32 = 10;
const CT_PROTO_DST: u32 = 12;
const CT_DST_IP: u32 = 20;
const IPS_DST_NAT: u32 = 1 << 5;
const NAT_DNAT: u32 = 1;
const NAT_RANGE_MAP_IPS: u32 = 1;
const NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;

fn cstr(s: &str) -> CString {
    // Names reaching here were validated (no NUL bytes); a NUL would be a bug.
    CString::new(s).expect("object names contain no NUL byte")
}

/// An owned libnftnl object, freed on drop.
enum Obj {
    Table(NonNull<sys::nftnl_table>),
    Chain(NonNull<sys::nftnl_chain>),
    Set(NonNull<sys::nftnl_set>),
    /// Elements of one set, sent as NEWSETELEM (encoded without libnftnl).
    Elems(ElemBlock),
    Rule(NonNull<sys::nftnl_rule>),
}

impl Drop for Obj {
    fn drop(&mut self) {
        // SAFETY: each pointer was allocated by the matching libnftnl *_alloc and is
        // owned exclusively by this value.
        unsafe {
            match self {
                Obj::Table(p) => sys::nftnl_table_free(p.as_ptr()),
                Obj::Chain(p) => sys::nftnl_chain_free(p.as_ptr()),
                Obj::Set(p) => sys::nftnl_set_free(p.as_ptr()),
                Obj::Elems(_) => {}
                Obj::Rule(p) => sys::nftnl_rule_free(p.as_ptr()),
            }
        }
    }
}

fn alloc<T>(p: *mut T) -> NonNull<T> {
    // libnftnl returns NULL only when malloc fails; like std, treat OOM as fatal.
    NonNull::new(p).unwrap_or_else(|| std::process::abort())
}

fn new_table() -> Obj {
    // SAFETY: fresh allocation; the strings are copied by libnftnl.
    unsafe {
        let t = alloc(sys::nftnl_table_alloc());
        sys::nftnl_table_set_str(
            t.as_ptr(),
            sys::NFTNL_TABLE_NAME as u16,
            cstr(TABLE).as_ptr(),
        );
        sys::nftnl_table_set_u32(
            t.as_ptr(),
            sys::NFTNL_TABLE_FAMILY as u16,
            NFPROTO_IPV4 as u32,
        );
        Obj::Table(t)
    }
}

fn new_chain(c: &Chain) -> Obj {
    // SAFETY: fresh allocation; strings are copied.
    unsafe {
        let p = alloc(sys::nftnl_chain_alloc());
        let ch = p.as_ptr();
        sys::nftnl_chain_set_str(ch, sys::NFTNL_CHAIN_TABLE as u16, cstr(TABLE).as_ptr());
        sys::nftnl_chain_set_str(ch, sys::NFTNL_CHAIN_NAME as u16, cstr(&c.name).as_ptr());
        sys::nftnl_chain_set_u32(ch, sys::NFTNL_CHAIN_FAMILY as u16, NFPROTO_IPV4 as u32);
        if let Some(a) = c.attach {
            let hook = match a.hook {
                Hook::Prerouting => libc::NF_INET_PRE_ROUTING,
                Hook::Input => libc::NF_INET_LOCAL_IN,
                Hook::Postrouting => libc::NF_INET_POST_ROUTING,
            } as u32;
            sys::nftnl_chain_set_u32(ch, sys::NFTNL_CHAIN_HOOKNUM as u16, hook);
            sys::nftnl_chain_set_s32(ch, sys::NFTNL_CHAIN_PRIO as u16, a.priority);
            sys::nftnl_chain_set_str(
                ch,
                sys::NFTNL_CHAIN_TYPE as u16,
                cstr(a.kind.name()).as_ptr(),
            );
            sys::nftnl_chain_set_u32(ch, sys::NFTNL_CHAIN_POLICY as u16, NF_ACCEPT);
        }
        Obj::Chain(p)
    }
}

fn set_header(name: &str, id: u32) -> NonNull<sys::nftnl_set> {
    // SAFETY: fresh allocation; strings are copied.
    unsafe {
        let p = alloc(sys::nftnl_set_alloc());
        let s = p.as_ptr();
        sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, cstr(TABLE).as_ptr());
        sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, cstr(name).as_ptr());
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FAMILY as u16, NFPROTO_IPV4 as u32);
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_ID as u16, id);
        p
    }
}

fn new_set(set: &AddrSet, id: u32) -> Obj {
    let p = set_header(&set.name, id);
    // SAFETY: p is a live set we own.
    unsafe {
        let s = p.as_ptr();
        let flags = if set.hosts { 0 } else { NFT_SET_INTERVAL };
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FLAGS as u16, flags);
        if set.hosts {
            // Sized up front, the kernel's hash set never grows while 100,000 elements
            // arrive; growing it was most of the kernel's work.
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DESC_SIZE as u16, set.ranges.len() as u32);
        }
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_TYPE as u16, TYPE_IPV4_ADDR);
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_LEN as u16, 4);
    }
    set_key_byteorder(p, BYTEORDER_BIG_ENDIAN);
    Obj::Set(p)
}

/// nft reads a key's byte order from the set's userdata to print elements: without it
/// addresses come out as numbers and interface names as "".
fn set_key_byteorder(set: NonNull<sys::nftnl_set>, order: u32) {
    // SAFETY: `set` is live; the udata buffer is ours until freed and is copied.
    unsafe {
        let buf = alloc(sys::nftnl_udata_buf_alloc(16));
        sys::nftnl_udata_put_u32(buf.as_ptr(), sys::NFTNL_UDATA_SET_KEYBYTEORDER as u8, order);
        sys::nftnl_set_set_data(
            set.as_ptr(),
            sys::NFTNL_SET_USERDATA as u16,
            sys::nftnl_udata_buf_data(buf.as_ptr()),
            sys::nftnl_udata_buf_len(buf.as_ptr()),
        );
        sys::nftnl_udata_buf_free(buf.as_ptr());
    }
}

fn key_type(field: KeyField) -> u32 {
    match field {
        KeyField::IifName | KeyField::OifName => TYPE_IFNAME,
        KeyField::Daddr => TYPE_IPV4_ADDR,
        KeyField::L4Proto => TYPE_INET_PROTOCOL,
        KeyField::Dport => TYPE_INET_SERVICE,
    }
}

/// A verdict map; nft derives how to print its keys from the composed datatype.
fn new_map(map: &VerdictMap, id: u32) -> Obj {
    let p = set_header(&map.name, id);
    let key_type = map
        .key
        .iter()
        .fold(0, |t, f| (t << TYPE_BITS) | key_type(*f));
    let key_len: usize = map.key.iter().map(|f| f.padded_len()).sum();
    // SAFETY: p is a live set we own.
    unsafe {
        let s = p.as_ptr();
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FLAGS as u16, NFT_SET_MAP);
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_TYPE as u16, key_type);
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_LEN as u16, key_len as u32);
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DATA_TYPE as u16, NFT_DATA_VERDICT);
        sys::nftnl_set_set_u32(
            s,
            sys::NFTNL_SET_DESC_SIZE as u16,
            map.elements.len() as u32,
        );
    }
    // A concatenation's fields each carry their own order (nft stores none for the
    // whole key); a single field needs it spelled out.
    if let [field] = map.key.as_slice() {
        let order = match field {
            KeyField::IifName | KeyField::OifName | KeyField::L4Proto => BYTEORDER_HOST_ENDIAN,
            KeyField::Daddr | KeyField::Dport => BYTEORDER_BIG_ENDIAN,
        };
        set_key_byteorder(p, order);
    }
    Obj::Set(p)
}

/// The register number for the 32-bit slot `slot` (0-based) of the register file, the
/// way the kernel reports it back: a 16-byte-aligned slot by its legacy number
/// (`NFT_REG_1..4`), any other by its 32-bit number (`NFT_REG32_xx`). Encoding it the
/// same way keeps planned and read-back tables comparable.
fn reg32(slot: usize) -> u32 {
    const NFT_REG32_00: u32 = 8;
    if slot % 4 == 0 {
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
        // are valid for the given lengths and libnftnl copies them.
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

fn new_rule(chain: &str, rule: &Rule) -> Obj {
    // SAFETY: fresh allocation; strings and userdata are copied by libnftnl.
    let p = unsafe {
        let p = alloc(sys::nftnl_rule_alloc());
        let r = p.as_ptr();
        sys::nftnl_rule_set_str(r, sys::NFTNL_RULE_TABLE as u16, cstr(TABLE).as_ptr());
        sys::nftnl_rule_set_str(r, sys::NFTNL_RULE_CHAIN as u16, cstr(chain).as_ptr());
        sys::nftnl_rule_set_u32(r, sys::NFTNL_RULE_FAMILY as u16, NFPROTO_IPV4 as u32);
        p
    };
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
    Obj::Rule(p)
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

/// The objects of one table, in the order they must be created.
pub struct TableObjects {
    objs: Vec<(Obj, String)>,
}

/// Encodes the planned table into libnftnl objects, in an order the kernel accepts in
/// one batch: sets and maps, then chains, then map elements (which name chains), then
/// rules (which name sets, maps and chains).
pub fn encode(ruleset: &Ruleset) -> TableObjects {
    let mut objs = vec![(new_table(), format!("table ip {TABLE} (needs nf_tables)"))];
    let mut id = 0;
    for set in &ruleset.sets {
        id += 1;
        let what = match set.hosts {
            true => format!("set {} (needs hash sets, nft_set_hash)", set.name),
            false => format!("set {} (needs interval sets, nft_set_rbtree)", set.name),
        };
        objs.push((new_set(set, id), what));
        let blocks = match set.hosts {
            true => elements::host_blocks(set, id),
            false => elements::interval_blocks(set, id),
        };
        for block in blocks {
            objs.push((Obj::Elems(block), format!("elements of set {}", set.name)));
        }
    }
    let mut map_elems = Vec::new();
    for map in &ruleset.maps {
        id += 1;
        let what = format!(
            "map {} (needs verdict maps with concatenated keys, nft_set_hash)",
            map.name
        );
        objs.push((new_map(map, id), what));
        for block in elements::map_blocks(map, id) {
            map_elems.push((Obj::Elems(block), format!("elements of map {}", map.name)));
        }
    }
    for chain in &ruleset.chains {
        let needs = match chain.attach.map(|a| a.kind) {
            Some(ChainKind::Nat) => "NAT chains, nft_chain_nat",
            Some(ChainKind::Filter) => "base chains",
            None => "regular chains",
        };
        objs.push((
            new_chain(chain),
            format!("chain {} (needs {needs})", chain.name),
        ));
    }
    objs.extend(map_elems);
    for chain in &ruleset.chains {
        for rule in &chain.rules {
            objs.push((
                new_rule(&chain.name, rule),
                format!(
                    "rule \"{}\" in chain {} (needs {})",
                    rule.comment,
                    chain.name,
                    rule_needs(rule)
                ),
            ));
        }
    }
    TableObjects { objs }
}

/// The kernel features a rule depends on, for a message that names what is missing.
fn rule_needs(rule: &Rule) -> &'static str {
    let ct = rule.matches.iter().any(|m| {
        matches!(
            m,
            Match::CtDirection(_)
                | Match::CtStatusDnat
                | Match::CtOriginalDaddr(_)
                | Match::CtOriginalProtoDst(..)
        )
    });
    match (&rule.verdict, ct) {
        (Verdict::Dnat(_), _) => "the nat expression, nft_nat, and set lookups",
        (Verdict::Vmap { .. }, _) => "verdict map lookups",
        (_, true) => "conntrack expressions, nft_ct",
        _ => "payload, meta and cmp expressions",
    }
}

/// Writes a NEWSETELEM payload for `block` after the message header `nlh`, as
/// `nftnl_set_elems_nlmsg_build_payload` would, from loopgate's own element bytes.
///
/// # Safety
/// `nlh` must point at a message header in a buffer with room for one maximal message
/// (`nft_nlmsg_maxsize`); blocks are bounded well below that.
unsafe fn append_elements(nlh: *mut libc::nlmsghdr, block: &ElemBlock) {
    const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
    const NFTA_SET_ELEM_LIST_SET: u16 = 2;
    const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
    let mut payload = Vec::with_capacity(block.attrs.len() + 64);
    let strz = |s: &str| [s.as_bytes(), &[0]].concat();
    netlink::put_attr(&mut payload, NFTA_SET_ELEM_LIST_TABLE, &strz(TABLE));
    netlink::put_attr(&mut payload, NFTA_SET_ELEM_LIST_SET, &strz(&block.set));
    netlink::put_attr(
        &mut payload,
        NFTA_SET_ELEM_LIST_SET_ID,
        &block.set_id.to_be_bytes(),
    );
    netlink::nest_attr(&mut payload, elements::NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
        b.extend_from_slice(&block.attrs)
    });
    // SAFETY: per the contract, the buffer behind `nlh` has room for the payload.
    unsafe { append_attrs(nlh, &payload) }
}

/// Appends already encoded attributes to the message at `nlh`.
///
/// # Safety
/// `nlh` must point at a message header in a buffer with room for one maximal message,
/// and the message plus `attrs` must fit in it.
unsafe fn append_attrs(nlh: *mut libc::nlmsghdr, attrs: &[u8]) {
    debug_assert!(attrs.len() + 64 < nftnl::nft_nlmsg_maxsize() as usize);
    // SAFETY: per the contract.
    unsafe {
        let at = nlh.cast::<u8>().add((*nlh).nlmsg_len as usize);
        std::ptr::copy_nonoverlapping(attrs.as_ptr(), at, attrs.len());
        (*nlh).nlmsg_len += attrs.len() as u32;
    }
}

/// One batch being written: libnftnl's paged buffer plus a label per sequence number.
struct BatchWriter {
    batch: NonNull<sys::nftnl_batch>,
    /// The batch-begin message's number: errors about the whole batch (a stale
    /// generation's ERESTART) answer it.
    begin_seq: u32,
    seq: u32,
    labels: Vec<(u32, String)>,
}

impl Drop for BatchWriter {
    fn drop(&mut self) {
        // SAFETY: allocated by nftnl_batch_alloc, owned by this value.
        unsafe { sys::nftnl_batch_free(self.batch.as_ptr()) }
    }
}

impl BatchWriter {
    /// A batch whose messages are numbered from `first_seq`; with `generation`, the
    /// kernel applies it only if the nftables generation is still that one (else it
    /// answers ERESTART and changes nothing).
    fn new(generation: Option<u32>, first_seq: u32) -> Self {
        // SAFETY: plain allocation; begin message written into the first page.
        let batch = alloc(unsafe {
            sys::nftnl_batch_alloc(nftnl::default_batch_page_size(), nftnl::nft_nlmsg_maxsize())
        });
        let mut w = BatchWriter {
            batch,
            begin_seq: first_seq,
            seq: first_seq,
            labels: Vec::new(),
        };
        // SAFETY: the buffer has room for at least one maximal message; the begin
        // message is a few bytes, and so is the attribute added to it.
        unsafe {
            let nlh = sys::nftnl_batch_begin(
                sys::nftnl_batch_buffer(w.batch.as_ptr()).cast::<c_char>(),
                w.seq,
            );
            if let Some(g) = generation {
                let mut attr = Vec::new();
                netlink::put_attr(&mut attr, libc::NFNL_BATCH_GENID as u16, &g.to_be_bytes());
                append_attrs(nlh, &attr);
            }
        }
        w.advance();
        w
    }

    fn advance(&mut self) {
        // SAFETY: live batch; a failure means malloc failed.
        if unsafe { sys::nftnl_batch_update(self.batch.as_ptr()) } < 0 {
            std::process::abort();
        }
        // 0 means "no sequence number" to netlink; skip it on wrap-around.
        self.seq = self.seq.wrapping_add(1).max(1);
    }

    fn add(&mut self, obj: &Obj, delete: bool, label: &str) {
        let ack = libc::NLM_F_ACK as u16;
        let create = libc::NLM_F_CREATE as u16;
        let (ty, flags) = match (obj, delete) {
            (Obj::Table(_), false) => (libc::NFT_MSG_NEWTABLE, create | ack),
            (Obj::Table(_), true) => (libc::NFT_MSG_DELTABLE, ack),
            (Obj::Chain(_), _) => (libc::NFT_MSG_NEWCHAIN, create | ack),
            (Obj::Set(_), _) => (libc::NFT_MSG_NEWSET, create | ack),
            (Obj::Elems(_), _) => (libc::NFT_MSG_NEWSETELEM, create | ack),
            (Obj::Rule(_), _) => (
                libc::NFT_MSG_NEWRULE,
                create | libc::NLM_F_APPEND as u16 | ack,
            ),
        };
        // SAFETY: the batch buffer has room for one maximal message (nft_nlmsg_maxsize),
        // and each object pointer is live.
        unsafe {
            let buf = sys::nftnl_batch_buffer(self.batch.as_ptr()).cast::<c_char>();
            let nlh = sys::nftnl_nlmsg_build_hdr(buf, ty as u16, NFPROTO_IPV4, flags, self.seq);
            match obj {
                Obj::Table(p) => sys::nftnl_table_nlmsg_build_payload(nlh, p.as_ptr()),
                Obj::Chain(p) => sys::nftnl_chain_nlmsg_build_payload(nlh, p.as_ptr()),
                Obj::Set(p) => sys::nftnl_set_nlmsg_build_payload(nlh, p.as_ptr()),
                Obj::Elems(block) => append_elements(nlh, block),
                Obj::Rule(p) => sys::nftnl_rule_nlmsg_build_payload(nlh, p.as_ptr()),
            }
        }
        self.labels.push((self.seq, label.to_string()));
        self.advance();
    }

    /// Finishes the batch and sends it as one datagram, then reads every reply. Returns
    /// the first error, named by the label of the message the kernel refused.
    ///
    /// With `Send::ValidateOnly` the batch-end message is left out: the kernel then
    /// checks every message (loading modules, resolving expression types) and aborts
    /// the whole batch, which is how `nft -c` checks a ruleset.
    fn commit(mut self, sock: &mut NlSocket, mode: Send) -> Result<()> {
        if mode == Send::Commit {
            // SAFETY: room for the end message is guaranteed as for any message.
            unsafe {
                sys::nftnl_batch_end(
                    sys::nftnl_batch_buffer(self.batch.as_ptr()).cast::<c_char>(),
                    self.seq,
                );
            }
            self.advance();
        }
        // SAFETY: the iovecs point into the batch's pages, which live as long as `self`.
        let pages: Vec<&[u8]> = unsafe {
            let n = sys::nftnl_batch_iovec_len(self.batch.as_ptr());
            let mut iov = vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                n as usize
            ];
            sys::nftnl_batch_iovec(self.batch.as_ptr(), iov.as_mut_ptr(), n as u32);
            iov.iter()
                .map(|v| std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len))
                .collect()
        };
        let total: usize = pages.iter().map(|p| p.len()).sum();
        sock.size_buffers(total * 2)?;
        sock.used_seq_through(self.seq);
        sock.send_pages(&pages)?;
        let portid = sock.portid();
        // nfnetlink processes the batch synchronously inside sendmsg, so every reply is
        // already queued: drain without blocking and report the first error.
        let mut first_error: Option<(i32, u32)> = None;
        let mut acks = 0usize;
        while sock.recv_each(false, |r| {
            // Only replies to this batch's messages, sent to this socket, count.
            let seq = r.header.nlmsg_seq;
            let ours = (seq == self.begin_seq || self.labels.iter().any(|(s, _)| *s == seq))
                && (r.header.nlmsg_pid == 0 || r.header.nlmsg_pid == portid);
            if !ours {
                return Ok(());
            }
            if let Some(code) = r.error_code() {
                if code == 0 {
                    acks += 1;
                } else if first_error.is_none() {
                    first_error = Some((code, r.error_seq().unwrap_or(0)));
                }
            }
            Ok(())
        })? {}
        if let Some((code, seq)) = first_error {
            let label = self
                .labels
                .iter()
                .find(|(s, _)| *s == seq)
                .map(|(_, l)| l.as_str())
                .unwrap_or("the batch");
            let err = anyhow!(io::Error::from_raw_os_error(code));
            return Err(match mode {
                Send::Commit => err.context(format!(
                    "the kernel refused {label}; the whole batch was discarded"
                )),
                Send::ValidateOnly => err.context(format!(
                    "this kernel cannot load {label}: a netfilter feature loopgate needs is missing"
                )),
            });
        }
        if mode == Send::Commit && acks < self.labels.len() {
            anyhow::bail!(
                "the kernel acknowledged {acks} of {} batch messages",
                self.labels.len()
            );
        }
        Ok(())
    }
}

/// Whether a batch is committed or only checked by the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Send {
    Commit,
    ValidateOnly,
}

/// Replaces loopgate's table with `objects` (or removes it when `None`) in one batch.
/// With `poison`, a rule referring to a missing set is appended so the kernel rejects the
/// batch: the test hook that proves the batch is all-or-nothing.
fn replace_table(
    sock: &mut NlSocket,
    objects: Option<&TableObjects>,
    poison: bool,
    mode: Send,
    flush: FlushFirst,
    generation: Option<u32>,
) -> Result<()> {
    let mut w = BatchWriter::new(generation, sock.next_seq());
    let table = new_table();
    match flush {
        // add + delete makes the delete succeed whether or not the table exists.
        FlushFirst::Yes => {
            w.add(&table, false, "table ip loopgate (create)");
            w.add(&table, true, "table ip loopgate (flush)");
        }
        FlushFirst::Existing => w.add(&table, true, "table ip loopgate (flush)"),
        FlushFirst::No => {}
    }
    if let Some(objs) = objects {
        for (obj, label) in &objs.objs {
            w.add(obj, false, label);
        }
    }
    if poison {
        let chain = new_chain(&Chain {
            name: "poison".to_string(),
            attach: Some(Attachment {
                kind: ChainKind::Filter,
                hook: Hook::Input,
                priority: 0,
            }),
            rules: vec![],
        });
        let rule = new_rule(
            "poison",
            &Rule {
                matches: vec![Match::SaddrInSet("no_such_set".into())],
                verdict: Verdict::Drop,
                comment: "injected failure".into(),
            },
        );
        if objects.is_none() {
            w.add(&new_table(), false, "table ip loopgate (poison)");
        }
        w.add(&chain, false, "chain poison");
        w.add(
            &rule,
            false,
            "injected failure rule (needs a set that does not exist)",
        );
    }
    w.commit(sock, mode)
}

/// Checks, before anything changes, that the kernel supports everything the planned
/// table uses (nf_tables, NAT chains, interval sets, ct and nat expressions): the whole
/// batch is validated by the kernel and then discarded.
/// The test hook `probe` adds a rule the kernel cannot load, as a kernel lacking a
/// feature would refuse one.
pub fn probe(ruleset: &Ruleset) -> Result<()> {
    let mut sock = NlSocket::netfilter()?;
    let poison = crate::failpoint::armed("probe");
    replace_table(
        &mut sock,
        Some(&encode(&feature_sample(ruleset))),
        poison,
        Send::ValidateOnly,
        FlushFirst::Yes,
        None,
    )
}

/// The planned table with one element per set and map: features do not depend on how
/// many elements a set holds, and this keeps the check cheap at 100,000 networks.
fn feature_sample(ruleset: &Ruleset) -> Ruleset {
    let mut sample = ruleset.clone();
    for set in &mut sample.sets {
        set.ranges.truncate(1);
    }
    for map in &mut sample.maps {
        map.elements.truncate(1);
    }
    sample
}

/// The kernel features the planned table needs, one line each (as the probe's error
/// messages name them), for remembering which were already probed on this boot.
pub fn features(ruleset: &Ruleset) -> BTreeSet<String> {
    encode(&feature_sample(ruleset))
        .objs
        .iter()
        .filter_map(|(_, label)| label.split("(needs ").nth(1))
        .map(|needs| needs.trim_end_matches(')').to_string())
        .collect()
}

/// Whether a batch first clears loopgate's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlushFirst {
    /// `add table; delete table`: replaces whatever is there.
    Yes,
    /// `delete table`: the table is known to exist.
    Existing,
    /// The table is known to be absent (at the generation the batch is bound to):
    /// deleting it would only leave the kernel an object to free on a later RCU grace
    /// period, which a fresh `expose` would wait for.
    No,
}

/// Whether loopgate's table exists now.
fn table_exists(sock: &mut NlSocket) -> Result<bool> {
    Ok(match get_table(sock)? {
        Some(t) => {
            // SAFETY: allocated by get_table and owned here.
            unsafe { sys::nftnl_table_free(t.as_ptr()) };
            true
        }
        None => false,
    })
}

/// What vouches for loopgate's table without reading it back: the nftables generation
/// (a per-namespace counter the kernel bumps on every committed change to any table)
/// right after loopgate's own batch, and the digest of the elements that batch wrote.
/// While the generation stays put nothing in nftables has changed, so a 200,000-element
/// set need not be dumped to know it is intact. Dumping one costs seconds: the kernel
/// walks its interval tree from the start again for every 32 KiB of output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Vouch {
    pub generation: u32,
    pub elements: u64,
}

/// The nftables generation of the current namespace.
fn generation(sock: &mut NlSocket) -> Result<u32> {
    const NFTA_GEN_ID: u16 = 1;
    let req = request(libc::NFT_MSG_GETGEN as u16, libc::NLM_F_ACK as u16, |_| {});
    let replies = sock.dump(&req).context("reading the nftables generation")?;
    replies
        .iter()
        .find_map(|m| {
            let attrs = m.get(16 + 4..)?;
            netlink::attrs(attrs)
                .find(|(t, _)| *t == NFTA_GEN_ID)
                .and_then(|(_, v)| Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?)))
        })
        .context("the kernel did not report the nftables generation")
}

fn is_restart(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|e| e.raw_os_error() == Some(libc::ERESTART))
    })
}

/// Installs the planned table (or removes it when there are no grants), atomically.
/// Returns what vouches for the installed table.
pub fn apply(ruleset: Option<&Ruleset>) -> Result<Option<Vouch>> {
    let mut sock = NlSocket::netfilter()?;
    let objects = ruleset.map(encode);
    let mut attempts = 0;
    loop {
        // Tied to the generation it was read at, the batch tells us the generation
        // that follows it: nothing else can commit in between.
        let before = generation(&mut sock)?;
        let flush = match table_exists(&mut sock)? {
            true => FlushFirst::Existing,
            false => FlushFirst::No,
        };
        let poison = crate::failpoint::armed("ruleset-batch");
        if flush == FlushFirst::No && objects.is_none() && !poison {
            return Ok(None); // nothing to remove
        }
        match replace_table(
            &mut sock,
            objects.as_ref(),
            poison,
            Send::Commit,
            flush,
            Some(before),
        ) {
            Ok(()) => {
                let after = match before.wrapping_add(1) {
                    0 => 1, // the kernel skips 0
                    g => g,
                };
                return Ok(objects.as_ref().map(|o| Vouch {
                    generation: after,
                    elements: o.elements_digest(),
                }));
            }
            // Someone else committed in between: read the generation again.
            Err(e) if is_restart(&e) && attempts < 5 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

/// What the kernel holds of loopgate's table, kept both to compare and to restore.
pub struct Snapshot {
    objects: Option<TableObjects>,
    /// The table object as the kernel described it (flags and all), for the image.
    table: Option<String>,
    /// The nftables generation read before the table was.
    generation: u32,
    /// Set when the elements were not read back but vouched for (their digest).
    vouched: Option<u64>,
    /// Netlink messages the final read took: a measure of how well the dumps are
    /// filtered to loopgate's table.
    messages: usize,
    /// Reads it took to see the table unchanged from start to end (1 when nothing
    /// committed meanwhile).
    attempts: usize,
}

impl Snapshot {
    pub fn present(&self) -> bool {
        self.objects.is_some()
    }

    /// Puts the table back as it was when the snapshot was taken (without owner flags,
    /// which would tie it to this process's socket; see [`restorable_table`]). The
    /// snapshot is one state of the table: [`snapshot`] never returns a torn read.
    pub fn restore(&self) -> Result<()> {
        let mut sock = NlSocket::netfilter()?;
        replace_table(
            &mut sock,
            self.objects.as_ref(),
            false,
            Send::Commit,
            FlushFirst::Yes,
            None,
        )
    }

    /// A canonical description for comparison with a planned table.
    pub fn image(&self) -> Option<TableImage> {
        self.objects.as_ref().map(|o| {
            let mut image = match self.vouched {
                Some(d) => o.image_with(Elements::Vouched(d)),
                None => o.image(),
            };
            // As read, not as a restore would write it (which drops owner flags).
            if let Some(table) = &self.table {
                image.table = table.clone();
            }
            image
        })
    }

    /// Netlink messages the read took (see the field); for tests and benchmarks.
    #[doc(hidden)]
    pub fn messages_read(&self) -> usize {
        self.messages
    }

    /// Reads of the whole table it took to get one not torn by a concurrent commit.
    #[doc(hidden)]
    pub fn attempts(&self) -> usize {
        self.attempts
    }

    /// The nftables generation read before the table: a vouch made from this snapshot
    /// stays valid only while nothing commits after it.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// True when the elements were vouched for instead of read back.
    pub fn vouched(&self) -> bool {
        self.vouched.is_some()
    }
}

/// A request message; [`NlSocket::dump`] gives it its sequence number.
fn request(ty: u16, flags: u16, payload: impl FnOnce(*mut libc::nlmsghdr)) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: the buffer is large enough for a header plus a small request payload.
    let len = unsafe {
        let nlh = sys::nftnl_nlmsg_build_hdr(buf.as_mut_ptr().cast(), ty, NFPROTO_IPV4, flags, 0);
        payload(nlh);
        (*nlh).nlmsg_len as usize
    };
    buf.truncate(len);
    buf
}

/// Copies a reply into u64-aligned storage, as libnftnl's parsers require.
fn aligned(bytes: &[u8]) -> Vec<u64> {
    let mut v = vec![0u64; bytes.len().div_ceil(8)];
    // SAFETY: v has at least bytes.len() bytes of storage.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr().cast::<u8>(), bytes.len())
    };
    v
}

fn dump_rows(
    sock: &mut NlSocket,
    ty: i32,
    payload: impl FnOnce(*mut libc::nlmsghdr),
) -> Result<Vec<Vec<u64>>> {
    let flags = (libc::NLM_F_DUMP | libc::NLM_F_ACK) as u16;
    let req = request(ty as u16, flags, payload);
    Ok(sock.dump(&req)?.iter().map(|m| aligned(m)).collect())
}

/// The attributes of one dumped nf_tables message: what follows its netlink header
/// and nfgenmsg.
fn message_attrs(row: &[u64]) -> &[u8] {
    // SAFETY: `row` is an aligned copy of one complete message; its bytes are plain data.
    let bytes = unsafe {
        std::slice::from_raw_parts(row.as_ptr().cast::<u8>(), std::mem::size_of_val(row))
    };
    let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    const HEADERS: usize = 16 + 4;
    bytes.get(HEADERS..len.min(bytes.len())).unwrap_or_default()
}

fn get_str(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: libnftnl returns NUL-terminated strings owned by the object.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// How often [`snapshot`] reads the table again because something committed while it
/// was being read.
const SNAPSHOT_TRIES: usize = 5;

/// Reads loopgate's table from the kernel: the table object, chains, sets with
/// elements, rules.
///
/// The kernel has no single dump of one table, so the table is read in several dumps;
/// a commit by another process between two of them would leave a mix of two states
/// (chains of one, rules of the other). The nftables generation is read before and
/// after, and the whole read is repeated while it moves: a snapshot returned is one
/// state of the table, safe to compare and to [`Snapshot::restore`].
///
/// With `trust` (the vouch recorded at the last commit and the image planned from the
/// recorded grants): if the nftables generation has not moved since and the plan's
/// elements have the vouched digest, the elements are taken from the plan instead of
/// being dumped. Everything else is always read back.
pub fn snapshot(trust: Option<(&Vouch, &TableImage)>) -> Result<Snapshot> {
    let mut sock = NlSocket::netfilter()?;
    sock.size_buffers(8 << 20)?;
    for attempt in 1..=SNAPSHOT_TRIES {
        // First: a change after this point moves the generation past the one recorded.
        let before = generation(&mut sock)?;
        let read = read_table(&mut sock, before, trust);
        if generation(&mut sock)? == before {
            return read.map(|snapshot| Snapshot {
                attempts: attempt,
                ..snapshot
            });
        }
        // Torn: read again. A dump that failed meanwhile (a set deleted under it
        // answers ENOENT) failed because of that change, so it is retried too.
    }
    anyhow::bail!(
        "the nftables ruleset changed {SNAPSHOT_TRIES} times while table ip {TABLE} was being read; try again"
    )
}

/// Flags of a table that tie it to one netlink socket: a table restored with them would
/// belong to loopgate's own short-lived socket and vanish when it closes.
const NFT_TABLE_F_OWNER: u32 = 0x2;
const NFT_TABLE_F_PERSIST: u32 = 0x4;
const NFT_TABLE_F_DORMANT: u32 = 0x1;

/// Looks up loopgate's table alone (a get, not a dump of every table).
fn get_table(sock: &mut NlSocket) -> Result<Option<NonNull<sys::nftnl_table>>> {
    let req = request(
        libc::NFT_MSG_GETTABLE as u16,
        libc::NLM_F_ACK as u16,
        |nlh| {
            let table = new_table();
            if let Obj::Table(t) = &table {
                // SAFETY: `table` owns `t` and outlives this call; the payload is a
                // name, far below the 4 KiB request buffer.
                unsafe { sys::nftnl_table_nlmsg_build_payload(nlh, t.as_ptr()) };
            }
        },
    );
    let rows = match sock.dump(&req) {
        Ok(rows) => rows,
        Err(e)
            if e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.raw_os_error() == Some(libc::ENOENT)) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e).context("looking up table ip loopgate"),
    };
    let row = rows
        .first()
        .map(|m| aligned(m))
        .context("the kernel answered the table lookup without the table")?;
    // SAFETY: `row` holds one complete aligned netlink message; the table is owned by
    // the caller.
    unsafe {
        let t = alloc(sys::nftnl_table_alloc());
        if sys::nftnl_table_nlmsg_parse(row.as_ptr().cast(), t.as_ptr()) < 0 {
            sys::nftnl_table_free(t.as_ptr());
            anyhow::bail!("cannot parse the kernel's description of table ip loopgate");
        }
        Ok(Some(t))
    }
}

/// The table object a restore writes: as read, less the flags that would hand the
/// table to loopgate's own socket (see [`NFT_TABLE_F_OWNER`]).
fn restorable_table(read: NonNull<sys::nftnl_table>) -> Obj {
    let table = new_table();
    if let Obj::Table(t) = &table {
        // SAFETY: both tables are live; get_data's pointer is valid for `len` bytes
        // while `read` lives, and set_data copies it.
        unsafe {
            let flags = sys::nftnl_table_get_u32(read.as_ptr(), sys::NFTNL_TABLE_FLAGS as u16);
            let kept = flags & !(NFT_TABLE_F_OWNER | NFT_TABLE_F_PERSIST);
            if kept != 0 {
                sys::nftnl_table_set_u32(t.as_ptr(), sys::NFTNL_TABLE_FLAGS as u16, kept);
            }
            let mut len = 0u32;
            let udata = sys::nftnl_table_get_data(
                read.as_ptr(),
                sys::NFTNL_TABLE_USERDATA as u16,
                &mut len,
            );
            if !udata.is_null() {
                sys::nftnl_table_set_data(t.as_ptr(), sys::NFTNL_TABLE_USERDATA as u16, udata, len);
            }
        }
    }
    table
}

/// One read of the table (see [`snapshot`], which checks that no commit overlapped it).
fn read_table(
    sock: &mut NlSocket,
    generation: u32,
    trust: Option<(&Vouch, &TableImage)>,
) -> Result<Snapshot> {
    let mut messages = 0;
    let Some(read) = get_table(sock)? else {
        return Ok(Snapshot {
            objects: None,
            table: None,
            generation,
            vouched: None,
            messages,
            attempts: 0,
        });
    };
    messages += 1;
    let table_text = table_text(read);
    let table = restorable_table(read);
    // SAFETY: allocated by get_table, owned here, not used after.
    unsafe { sys::nftnl_table_free(read.as_ptr()) };
    let mut objs = vec![(table, format!("table ip {TABLE}"))];

    let in_table =
        |name: *const c_char, fam: u32| get_str(name) == TABLE && fam == NFPROTO_IPV4 as u32;

    let mut set_names = Vec::new();
    // The kernel lists only the sets of the table the request names.
    let rows = dump_rows(sock, libc::NFT_MSG_GETSET, |nlh| unsafe {
        // SAFETY: nlh is a header built in a 4 KiB buffer; the payload is tiny.
        let s = set_header("", 0);
        sys::nftnl_set_unset(s.as_ptr(), sys::NFTNL_SET_NAME as u16);
        sys::nftnl_set_unset(s.as_ptr(), sys::NFTNL_SET_ID as u16);
        sys::nftnl_set_nlmsg_build_payload(nlh, s.as_ptr());
        sys::nftnl_set_free(s.as_ptr());
    })?;
    messages += rows.len();
    for row in rows {
        // SAFETY: aligned complete message; the set is owned by `Obj` below.
        unsafe {
            let s = alloc(sys::nftnl_set_alloc());
            sys::nftnl_set_nlmsg_parse(row.as_ptr().cast(), s.as_ptr());
            let fam = sys::nftnl_set_get_u32(s.as_ptr(), sys::NFTNL_SET_FAMILY as u16);
            if !in_table(
                sys::nftnl_set_get_str(s.as_ptr(), sys::NFTNL_SET_TABLE as u16),
                fam,
            ) {
                sys::nftnl_set_free(s.as_ptr());
                continue;
            }
            sys::nftnl_set_unset(s.as_ptr(), sys::NFTNL_SET_HANDLE as u16);
            let name = get_str(sys::nftnl_set_get_str(
                s.as_ptr(),
                sys::NFTNL_SET_NAME as u16,
            ));
            // A batch-local id, shared with the elements below, so a restore can add
            // both in one batch.
            set_names.push(name.clone());
            sys::nftnl_set_set_u32(s.as_ptr(), sys::NFTNL_SET_ID as u16, set_names.len() as u32);
            objs.push((Obj::Set(s), format!("set {name}")));
        }
    }
    // Elements are restored after the chains: a verdict map's elements name them.
    let mut elem_objs = Vec::new();
    let planned = trust.and_then(|(v, image)| match &image.elements {
        Elements::Planned { digest, blocks }
            if v.generation == generation && *digest == v.elements =>
        {
            Some((*digest, blocks))
        }
        _ => None,
    });
    let vouched = planned.map(|(digest, _)| digest);
    for block in planned
        .map(|(_, blocks)| blocks.iter())
        .into_iter()
        .flatten()
    {
        let mut block = block.clone();
        // Batch-local ids follow this snapshot's set order.
        if let Some(i) = set_names.iter().position(|n| *n == block.set) {
            block.set_id = i as u32 + 1;
        }
        let label = format!("elements of set {}", block.set);
        elem_objs.push((Obj::Elems(block), label));
    }
    for (i, name) in set_names.iter().enumerate() {
        if vouched.is_some() {
            break;
        }
        let id = i as u32 + 1;
        // SAFETY: the header set is live for the duration of the closure.
        let header = set_header(name, id);
        let rows = dump_rows(sock, libc::NFT_MSG_GETSETELEM, |nlh| unsafe {
            sys::nftnl_set_elems_nlmsg_build_payload(nlh, header.as_ptr());
        });
        // SAFETY: header is ours.
        unsafe { sys::nftnl_set_free(header.as_ptr()) };
        // One block per dumped message: each is bounded by the dump buffer (32 KiB).
        let rows = rows?;
        messages += rows.len();
        for row in rows {
            let mut block = ElemBlock {
                set: name.clone(),
                set_id: id,
                attrs: Vec::new(),
            };
            elements::take_dumped(message_attrs(&row), &mut block.attrs);
            if !block.attrs.is_empty() {
                elem_objs.push((Obj::Elems(block), format!("elements of set {name}")));
            }
        }
    }

    // Named in the request, the table filters the rule dump in the kernel: a large
    // ruleset of someone else's is neither serialised nor parsed. Chain dumps may not
    // be filtered by the kernel, so both are also checked here.
    let rows = dump_rows(sock, libc::NFT_MSG_GETCHAIN, |nlh| unsafe {
        // SAFETY: nlh is a header built in a 4 KiB buffer; the payload is a name.
        let c = alloc(sys::nftnl_chain_alloc());
        sys::nftnl_chain_set_str(
            c.as_ptr(),
            sys::NFTNL_CHAIN_TABLE as u16,
            cstr(TABLE).as_ptr(),
        );
        sys::nftnl_chain_nlmsg_build_payload(nlh, c.as_ptr());
        sys::nftnl_chain_free(c.as_ptr());
    })?;
    messages += rows.len();
    for row in rows {
        // SAFETY: aligned complete message; ownership moves into `Obj`.
        unsafe {
            let c = alloc(sys::nftnl_chain_alloc());
            sys::nftnl_chain_nlmsg_parse(row.as_ptr().cast(), c.as_ptr());
            let fam = sys::nftnl_chain_get_u32(c.as_ptr(), sys::NFTNL_CHAIN_FAMILY as u16);
            if !in_table(
                sys::nftnl_chain_get_str(c.as_ptr(), sys::NFTNL_CHAIN_TABLE as u16),
                fam,
            ) {
                sys::nftnl_chain_free(c.as_ptr());
                continue;
            }
            for attr in [
                sys::NFTNL_CHAIN_HANDLE,
                sys::NFTNL_CHAIN_USE,
                sys::NFTNL_CHAIN_BYTES,
                sys::NFTNL_CHAIN_PACKETS,
            ] {
                sys::nftnl_chain_unset(c.as_ptr(), attr as u16);
            }
            let name = get_str(sys::nftnl_chain_get_str(
                c.as_ptr(),
                sys::NFTNL_CHAIN_NAME as u16,
            ));
            objs.push((Obj::Chain(c), format!("chain {name}")));
        }
    }
    objs.extend(elem_objs);
    let rows = dump_rows(sock, libc::NFT_MSG_GETRULE, |nlh| unsafe {
        // SAFETY: nlh is a header built in a 4 KiB buffer; the payload is a name.
        let r = alloc(sys::nftnl_rule_alloc());
        sys::nftnl_rule_set_str(
            r.as_ptr(),
            sys::NFTNL_RULE_TABLE as u16,
            cstr(TABLE).as_ptr(),
        );
        sys::nftnl_rule_nlmsg_build_payload(nlh, r.as_ptr());
        sys::nftnl_rule_free(r.as_ptr());
    })?;
    messages += rows.len();
    for row in rows {
        // SAFETY: aligned complete message; ownership moves into `Obj`.
        unsafe {
            let r = alloc(sys::nftnl_rule_alloc());
            sys::nftnl_rule_nlmsg_parse(row.as_ptr().cast(), r.as_ptr());
            let fam = sys::nftnl_rule_get_u32(r.as_ptr(), sys::NFTNL_RULE_FAMILY as u16);
            if !in_table(
                sys::nftnl_rule_get_str(r.as_ptr(), sys::NFTNL_RULE_TABLE as u16),
                fam,
            ) {
                sys::nftnl_rule_free(r.as_ptr());
                continue;
            }
            sys::nftnl_rule_unset(r.as_ptr(), sys::NFTNL_RULE_HANDLE as u16);
            sys::nftnl_rule_unset(r.as_ptr(), sys::NFTNL_RULE_POSITION as u16);
            let chain = get_str(sys::nftnl_rule_get_str(
                r.as_ptr(),
                sys::NFTNL_RULE_CHAIN as u16,
            ));
            objs.push((Obj::Rule(r), format!("rule in chain {chain}")));
        }
    }
    Ok(Snapshot {
        objects: Some(TableObjects { objs }),
        table: Some(table_text),
        generation,
        vouched,
        messages,
        attempts: 0,
    })
}

/// A canonical, comparable description of a table: chains, sets with their elements,
/// and each rule's expressions as libnftnl prints them. Planned and kernel tables are
/// both reduced to this, so "what loopgate would generate" is compared exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableImage {
    /// The table object: its flags (a dormant table hooks none of its chains) and
    /// userdata.
    pub table: String,
    pub chains: Vec<String>,
    pub sets: Vec<String>,
    pub rules: Vec<String>,
    pub elements: Elements,
}

/// The elements part of a [`TableImage`].
#[derive(Debug, Clone)]
pub enum Elements {
    /// Read back from the kernel: every element, canonical and sorted, per set (sets
    /// without elements left out).
    Listed(BTreeMap<String, Vec<Elem>>),
    /// Not read back: the nftables generation has not moved since loopgate committed
    /// elements with this digest (see [`Vouch`]).
    Vouched(u64),
    /// Planned: the encoded elements and their digest. Compared by digest with a
    /// vouched table, element by element with one read back.
    Planned { digest: u64, blocks: Vec<ElemBlock> },
}

impl Elements {
    /// The digest a [`Vouch`] records: of the encoded elements loopgate writes.
    pub fn digest(&self) -> Option<u64> {
        match self {
            Elements::Listed(_) => None,
            Elements::Vouched(d) | Elements::Planned { digest: d, .. } => Some(*d),
        }
    }

    fn listed(&self) -> Option<std::borrow::Cow<'_, BTreeMap<String, Vec<Elem>>>> {
        match self {
            Elements::Listed(sets) => Some(std::borrow::Cow::Borrowed(sets)),
            Elements::Vouched(_) => None,
            Elements::Planned { blocks, .. } => Some(std::borrow::Cow::Owned(listed(blocks))),
        }
    }
}

/// Canonical elements per set.
fn listed<'a>(blocks: impl IntoIterator<Item = &'a ElemBlock>) -> BTreeMap<String, Vec<Elem>> {
    let mut of: BTreeMap<&str, Vec<&ElemBlock>> = BTreeMap::new();
    for block in blocks {
        of.entry(&block.set).or_default().push(block);
    }
    of.into_iter()
        .map(|(name, blocks)| (name.to_string(), elements::canonical(&blocks)))
        .filter(|(_, elems)| !elems.is_empty())
        .collect()
}

impl PartialEq for Elements {
    fn eq(&self, other: &Self) -> bool {
        match (self.digest(), other.digest()) {
            (Some(a), Some(b)) => a == b,
            _ => match (self.listed(), other.listed()) {
                (Some(a), Some(b)) => a == b,
                // Vouched against read back: no common ground, so not known equal.
                _ => false,
            },
        }
    }
}

impl Eq for Elements {}

impl TableImage {
    /// Human-readable differences from `other` (the expected image), at most `limit`.
    pub fn differences(&self, expected: &TableImage, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        // First: a dormant table shows no other difference, and must not be cut off.
        if self.table != expected.table {
            out.push(format!(
                "table altered: {} (loopgate writes {})",
                self.table, expected.table
            ));
        }
        let mut diff = |what: &str, have: &[String], want: &[String]| {
            let before = out.len();
            for w in want.iter().filter(|w| !have.contains(w)) {
                out.push(format!("{what} missing or altered: {}", short(w)));
            }
            for h in have.iter().filter(|h| !want.contains(h)) {
                out.push(format!("unexpected {what}: {}", short(h)));
            }
            if out.len() == before && have != want {
                out.push(format!("{what}s are in a different order"));
            }
        };
        diff("chain", &self.chains, &expected.chains);
        diff("set", &self.sets, &expected.sets);
        diff("rule", &self.rules, &expected.rules);
        match (self.elements.listed(), expected.elements.listed()) {
            (Some(have), Some(want)) => {
                let empty = Vec::new();
                let names: BTreeSet<&String> = have.keys().chain(want.keys()).collect();
                for name in names {
                    let (h, w) = (
                        have.get(name).unwrap_or(&empty),
                        want.get(name).unwrap_or(&empty),
                    );
                    // Both sorted: one merge pass, however large the sets.
                    let (mut i, mut j) = (0, 0);
                    while i < h.len() || j < w.len() {
                        match (h.get(i), w.get(j)) {
                            (Some(a), Some(b)) if a == b => (i, j) = (i + 1, j + 1),
                            (Some(a), Some(b)) if a < b => {
                                out.push(format!("unexpected element in {name}: {a}"));
                                i += 1;
                            }
                            (Some(a), None) => {
                                out.push(format!("unexpected element in {name}: {a}"));
                                i += 1;
                            }
                            (_, Some(b)) => {
                                out.push(format!("element missing from {name}: {b}"));
                                j += 1;
                            }
                            (None, None) => break,
                        }
                        if out.len() > limit {
                            break;
                        }
                    }
                }
            }
            _ if self.elements != expected.elements => {
                out.push("set elements differ from what loopgate wrote".to_string())
            }
            _ => {}
        }
        out.truncate(limit);
        out
    }
}

/// Flag bits, by name where nf_tables names them.
fn flag_names(flags: u32, names: &[(u32, &str)]) -> String {
    if flags == 0 {
        return "none".to_string();
    }
    let mut out: Vec<String> = names
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| name.to_string())
        .collect();
    let known = names.iter().fold(0, |all, (bit, _)| all | bit);
    if flags & !known != 0 {
        out.push(format!("{:#x}", flags & !known));
    }
    out.join(",")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a data attribute of a libnftnl object, if set.
///
/// # Safety
/// `get` must return a pointer valid for the length it writes, or NULL, and the bytes
/// must stay valid while the object lives (libnftnl's *_get_data do).
unsafe fn data_of(get: impl FnOnce(&mut u32) -> *const c_void) -> Option<Vec<u8>> {
    let mut len = 0u32;
    let p = get(&mut len);
    // SAFETY: per the contract, `p` is valid for `len` bytes.
    (!p.is_null())
        .then(|| unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len as usize) }.to_vec())
}

/// The table object as compared: everything that decides whether its chains see
/// packets. A dormant table unregisters every base chain: the guard is off, while the
/// chains and rules read back unchanged.
fn table_text(t: NonNull<sys::nftnl_table>) -> String {
    // SAFETY: live table; get_data's pointer is owned by it.
    let (flags, udata) = unsafe {
        let t = t.as_ptr();
        (
            sys::nftnl_table_get_u32(t, sys::NFTNL_TABLE_FLAGS as u16),
            data_of(|len| sys::nftnl_table_get_data(t, sys::NFTNL_TABLE_USERDATA as u16, len)),
        )
    };
    table_description(flags, udata.as_deref())
}

fn table_description(flags: u32, udata: Option<&[u8]>) -> String {
    let mut text = format!(
        "table ip {TABLE} flags {}",
        flag_names(
            flags,
            &[
                (NFT_TABLE_F_DORMANT, "dormant"),
                (NFT_TABLE_F_OWNER, "owner"),
                (NFT_TABLE_F_PERSIST, "persist"),
            ],
        )
    );
    if let Some(u) = udata {
        text += &format!(" userdata {}", hex(u));
    }
    text
}

/// `NFT_CHAIN_BASE`: the kernel reports it on every base chain; loopgate never sends
/// it (a hook makes a chain a base chain), so it is implied by the hook below.
const NFT_CHAIN_BASE: u32 = 0x1;

/// A chain as compared: name, and for a base chain its type, hook, priority and
/// policy; any other flag, device or userdata.
fn chain_text(c: NonNull<sys::nftnl_chain>) -> String {
    // SAFETY: live chain; strings and data are owned by it.
    unsafe {
        let c = c.as_ptr();
        let is = |attr: u32| sys::nftnl_chain_is_set(c, attr as u16);
        let name = get_str(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_NAME as u16));
        let mut text = if is(sys::NFTNL_CHAIN_HOOKNUM) {
            format!(
                "{name} type {} hook {} prio {} policy {}",
                get_str(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_TYPE as u16)),
                sys::nftnl_chain_get_u32(c, sys::NFTNL_CHAIN_HOOKNUM as u16),
                sys::nftnl_chain_get_s32(c, sys::NFTNL_CHAIN_PRIO as u16),
                sys::nftnl_chain_get_u32(c, sys::NFTNL_CHAIN_POLICY as u16),
            )
        } else {
            format!("{name} regular")
        };
        let flags = sys::nftnl_chain_get_u32(c, sys::NFTNL_CHAIN_FLAGS as u16) & !NFT_CHAIN_BASE;
        if flags != 0 {
            text += &format!(" flags {flags:#x}");
        }
        if is(sys::NFTNL_CHAIN_DEV) || is(sys::NFTNL_CHAIN_DEVICES) {
            text += &format!(
                " device {}",
                get_str(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_DEV as u16))
            );
        }
        if let Some(u) =
            data_of(|len| sys::nftnl_chain_get_data(c, sys::NFTNL_CHAIN_USERDATA as u16, len))
        {
            text += &format!(" userdata {}", hex(&u));
        }
        text
    }
}

/// A set or map as compared: how it matches (flags, key and data types and lengths),
/// and what makes its elements change on their own (timeouts, size, expressions).
fn set_text(s: NonNull<sys::nftnl_set>) -> String {
    // SAFETY: live set; strings and data are owned by it.
    unsafe {
        let s = s.as_ptr();
        let is = |attr: u32| sys::nftnl_set_is_set(s, attr as u16);
        let u32_of = |attr: u32| sys::nftnl_set_get_u32(s, attr as u16);
        let data_type = u32_of(sys::NFTNL_SET_DATA_TYPE);
        let mut text = format!(
            "{} flags {} keytype {} keylen {} datatype {}",
            get_str(sys::nftnl_set_get_str(s, sys::NFTNL_SET_NAME as u16)),
            u32_of(sys::NFTNL_SET_FLAGS),
            u32_of(sys::NFTNL_SET_KEY_TYPE),
            u32_of(sys::NFTNL_SET_KEY_LEN),
            data_type,
        );
        // A verdict's length is fixed by its type; the kernel reports it, loopgate
        // does not send it.
        if is(sys::NFTNL_SET_DATA_LEN) && data_type != NFT_DATA_VERDICT {
            text += &format!(" datalen {}", u32_of(sys::NFTNL_SET_DATA_LEN));
        }
        if is(sys::NFTNL_SET_OBJ_TYPE) {
            text += &format!(" objtype {}", u32_of(sys::NFTNL_SET_OBJ_TYPE));
        }
        if is(sys::NFTNL_SET_TIMEOUT) {
            text += &format!(
                " timeout {}",
                sys::nftnl_set_get_u64(s, sys::NFTNL_SET_TIMEOUT as u16)
            );
        }
        if is(sys::NFTNL_SET_GC_INTERVAL) {
            text += &format!(" gc {}", u32_of(sys::NFTNL_SET_GC_INTERVAL));
        }
        if is(sys::NFTNL_SET_POLICY) {
            text += &format!(" policy {}", u32_of(sys::NFTNL_SET_POLICY));
        }
        if is(sys::NFTNL_SET_DESC_SIZE) {
            text += &format!(" size {}", u32_of(sys::NFTNL_SET_DESC_SIZE));
        }
        if is(sys::NFTNL_SET_DESC_CONCAT) {
            text += " concat";
        }
        if is(sys::NFTNL_SET_EXPR) || is(sys::NFTNL_SET_EXPRESSIONS) {
            text += " expressions";
        }
        if let Some(u) =
            data_of(|len| sys::nftnl_set_get_data(s, sys::NFTNL_SET_USERDATA as u16, len))
        {
            text += &format!(" userdata {}", hex(&u));
        }
        text
    }
}

fn short(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.len() > 160 {
        format!(
            "{}...",
            &one[..one
                .char_indices()
                .nth(157)
                .map(|(i, _)| i)
                .unwrap_or(one.len())]
        )
    } else {
        one
    }
}

unsafe extern "C" fn print_expr(e: *mut sys::nftnl_expr, data: *mut c_void) -> c_int {
    // SAFETY: `data` is the &mut Vec<String> passed by `rule_text`; `e` is live during
    // the callback.
    unsafe {
        let out = &mut *data.cast::<Vec<String>>();
        let mut buf = [0 as c_char; 1024];
        sys::nftnl_expr_snprintf(buf.as_mut_ptr(), buf.len(), e, sys::NFTNL_OUTPUT_DEFAULT, 0);
        let name = get_str(sys::nftnl_expr_get_str(e, sys::NFTNL_EXPR_NAME as u16));
        if name == "counter" {
            // Counter values move with traffic; they are not part of what was generated.
            out.push("[counter]".to_string());
        } else {
            out.push(format!("[{name} {}]", get_str(buf.as_ptr())));
        }
    }
    0
}

/// The rule's comment, from its userdata (type-length-value records).
fn rule_comment(r: NonNull<sys::nftnl_rule>) -> String {
    let mut len = 0u32;
    // SAFETY: live rule; the returned pointer is valid for `len` bytes while it lives.
    let udata = unsafe {
        let p = sys::nftnl_rule_get_data(r.as_ptr(), sys::NFTNL_RULE_USERDATA as u16, &mut len);
        if p.is_null() {
            return String::new();
        }
        std::slice::from_raw_parts(p.cast::<u8>(), len as usize)
    };
    let mut rest = udata;
    while let [ty, l, tail @ ..] = rest {
        let (value, next) = tail.split_at((*l as usize).min(tail.len()));
        if u32::from(*ty) == sys::NFTNL_UDATA_RULE_COMMENT {
            let text = value.split(|b| *b == 0).next().unwrap_or_default();
            return String::from_utf8_lossy(text).into_owned();
        }
        rest = next;
    }
    String::new()
}

fn rule_chain(r: NonNull<sys::nftnl_rule>) -> String {
    // SAFETY: live rule; the string is owned by it.
    get_str(unsafe { sys::nftnl_rule_get_str(r.as_ptr(), sys::NFTNL_RULE_CHAIN as u16) })
}

fn rule_text(r: NonNull<sys::nftnl_rule>) -> String {
    let mut exprs: Vec<String> = Vec::new();
    // SAFETY: live rule; the callback only reads expressions and pushes to `exprs`.
    unsafe {
        sys::nftnl_expr_foreach(
            r.as_ptr(),
            Some(print_expr),
            (&mut exprs as *mut Vec<String>).cast(),
        );
    }
    format!(
        "{}: {} comment {:?}",
        rule_chain(r),
        exprs.join(" "),
        rule_comment(r)
    )
}

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
    pub chain: String,
    pub rule: String,
    pub packets: u64,
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
                Obj::Rule(r) => {
                    let mut c: Option<(u64, u64)> = None;
                    // SAFETY: live rule; the callback only reads.
                    unsafe {
                        sys::nftnl_expr_foreach(
                            r.as_ptr(),
                            Some(read_counter),
                            (&mut c as *mut Option<(u64, u64)>).cast(),
                        );
                    }
                    let c = c?;
                    Some(RuleCounter {
                        chain: rule_chain(*r),
                        rule: rule_comment(*r),
                        packets: c.0,
                        bytes: c.1,
                    })
                }
                _ => None,
            })
            .collect()
    }
}

impl TableObjects {
    fn image(&self) -> TableImage {
        self.image_with(self.elements_image())
    }

    fn element_blocks(&self) -> impl Iterator<Item = &ElemBlock> {
        self.objs.iter().filter_map(|(obj, _)| match obj {
            Obj::Elems(block) => Some(block),
            _ => None,
        })
    }

    /// Every element of the table, canonical, per set.
    fn elements_image(&self) -> Elements {
        Elements::Listed(listed(self.element_blocks()))
    }

    /// A digest of the encoded elements, in order. Only ever compared with digests of
    /// loopgate's own encoding, which is deterministic, so no sorting is needed.
    fn elements_digest(&self) -> u64 {
        elements::digest_blocks(self.element_blocks())
    }

    fn image_with(&self, elements: Elements) -> TableImage {
        let mut img = TableImage {
            table: String::new(),
            chains: vec![],
            sets: vec![],
            rules: vec![],
            elements,
        };
        // Every pointer is a live object owned by self, as the *_text helpers need.
        for (obj, _) in &self.objs {
            match obj {
                Obj::Table(t) => img.table = table_text(*t),
                Obj::Chain(c) => img.chains.push(chain_text(*c)),
                Obj::Set(s) => img.sets.push(set_text(*s)),
                Obj::Elems(_) => {}
                Obj::Rule(r) => img.rules.push(rule_text(*r)),
            }
        }
        img.chains.sort();
        img.sets.sort();
        img
    }
}

/// The canonical image of a planned table, for comparison with [`Snapshot::image`].
pub fn planned_image(ruleset: &Ruleset) -> TableImage {
    let objs = encode(ruleset);
    let elements = Elements::Planned {
        digest: objs.elements_digest(),
        blocks: objs.element_blocks().cloned().collect(),
    };
    objs.image_with(elements)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(name: &str) -> Chain {
        Chain {
            name: name.into(),
            attach: Some(Attachment {
                kind: ChainKind::Filter,
                hook: Hook::Prerouting,
                priority: -300,
            }),
            rules: vec![],
        }
    }

    fn chain_of(obj: &Obj) -> NonNull<sys::nftnl_chain> {
        match obj {
            Obj::Chain(c) => *c,
            _ => unreachable!(),
        }
    }

    #[test]
    fn table_flags_are_named_and_unknown_bits_kept() {
        assert_eq!(
            table_description(0, None),
            "table ip loopgate flags none",
            "what loopgate writes"
        );
        assert_eq!(
            table_description(NFT_TABLE_F_DORMANT, None),
            "table ip loopgate flags dormant"
        );
        assert_eq!(
            table_description(
                NFT_TABLE_F_OWNER | NFT_TABLE_F_PERSIST | 0x40,
                Some(b"\x00\x01")
            ),
            "table ip loopgate flags owner,persist,0x40 userdata 0001"
        );
    }

    #[test]
    fn a_planned_table_has_no_flags_and_a_dormant_one_differs_first() {
        let objs = encode(&Ruleset {
            sets: vec![],
            maps: vec![],
            chains: vec![base("raw_prerouting")],
        });
        let planned = objs.image();
        assert_eq!(planned.table, "table ip loopgate flags none");
        let mut dormant = planned.clone();
        dormant.table = table_description(NFT_TABLE_F_DORMANT, None);
        assert_ne!(dormant, planned);
        // Listed first, so a limit never cuts it off behind other differences.
        dormant.chains.push("extra regular".into());
        let diffs = dormant.differences(&planned, 1);
        assert_eq!(diffs.len(), 1);
        assert!(diffs[0].contains("flags dormant"), "{diffs:?}");
    }

    #[test]
    fn a_regular_chain_never_reads_like_a_base_chain_at_hook_zero() {
        let regular = new_chain(&Chain {
            name: "c".into(),
            attach: None,
            rules: vec![],
        });
        assert_eq!(chain_text(chain_of(&regular)), "c regular");
        let planned = new_chain(&base("c"));
        let text = chain_text(chain_of(&planned));
        assert_eq!(text, "c type filter hook 0 prio -300 policy 1");
        // The kernel reports NFT_CHAIN_BASE on a base chain; loopgate never sends it.
        let read = new_chain(&base("c"));
        let c = chain_of(&read);
        // SAFETY: live chain owned by `read`.
        unsafe { sys::nftnl_chain_set_u32(c.as_ptr(), sys::NFTNL_CHAIN_FLAGS as u16, 1) };
        assert_eq!(chain_text(c), text);
        // Any other flag, or a changed policy, is a difference.
        // SAFETY: as above.
        unsafe { sys::nftnl_chain_set_u32(c.as_ptr(), sys::NFTNL_CHAIN_FLAGS as u16, 1 | 4) };
        assert_eq!(chain_text(c), format!("{text} flags 0x4"));
        // SAFETY: as above.
        unsafe { sys::nftnl_chain_set_u32(c.as_ptr(), sys::NFTNL_CHAIN_POLICY as u16, NF_DROP) };
        assert!(chain_text(c).contains("policy 0"));
    }

    #[test]
    fn a_set_that_times_its_elements_out_differs() {
        let set = AddrSet {
            name: "allow_0".into(),
            hosts: false,
            ranges: vec![(1, 2)],
        };
        let planned = new_set(&set, 1);
        let Obj::Set(s) = &planned else {
            unreachable!()
        };
        let text = set_text(*s);
        // SAFETY: live set owned by `planned`.
        unsafe { sys::nftnl_set_set_u64(s.as_ptr(), sys::NFTNL_SET_TIMEOUT as u16, 1000) };
        assert_eq!(
            set_text(*s),
            text.replacen(" userdata", " timeout 1000 userdata", 1)
        );
    }
}
