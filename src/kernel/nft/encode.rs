//! The planned table as libnftnl objects, in the order one batch must create them:
//! the table, sets and maps with their elements, chains, map elements, rules. Each
//! object carries a label naming it and the kernel feature it needs, so a refusal (or
//! the feature probe) says what is missing. Rules are compiled in `expr`; elements are
//! written as raw attributes in [`elements`].

use super::abi::*;
use super::elements::{self, ElemBlock};
use super::expr::new_rule;
use super::objects::{alloc, Obj, Owned};
use crate::ruleset::{
    AddrSet, Chain, ChainKind, Hook, KeyField, Match, Rule, Ruleset, Verdict, VerdictMap, TABLE,
};
use nftnl::nftnl_sys as sys;

pub(super) fn new_table() -> Obj {
    let t = Owned::<sys::nftnl_table>::naming_table();
    t.set_u32(sys::NFTNL_TABLE_FAMILY, NFPROTO_IPV4 as u32);
    t.into_obj()
}

pub(super) fn new_chain(c: &Chain) -> Obj {
    let ch = Owned::<sys::nftnl_chain>::naming_table();
    ch.set_str(sys::NFTNL_CHAIN_NAME, &c.name);
    ch.set_u32(sys::NFTNL_CHAIN_FAMILY, NFPROTO_IPV4 as u32);
    if let Some(a) = c.attach {
        let hook = match a.hook {
            Hook::Prerouting => libc::NF_INET_PRE_ROUTING,
            Hook::Input => libc::NF_INET_LOCAL_IN,
            Hook::Postrouting => libc::NF_INET_POST_ROUTING,
        } as u32;
        ch.set_u32(sys::NFTNL_CHAIN_HOOKNUM, hook);
        // nftnl_chain_set_s32 stores the same 4 bytes as set_u32 of the same bits.
        ch.set_u32(sys::NFTNL_CHAIN_PRIO, a.priority as u32);
        ch.set_str(sys::NFTNL_CHAIN_TYPE, a.kind.name());
        ch.set_u32(sys::NFTNL_CHAIN_POLICY, NF_ACCEPT);
    }
    ch.into_obj()
}

pub(super) fn set_header(name: &str, id: u32) -> Owned<sys::nftnl_set> {
    let s = Owned::<sys::nftnl_set>::naming_table();
    s.set_str(sys::NFTNL_SET_NAME, name);
    s.set_u32(sys::NFTNL_SET_FAMILY, NFPROTO_IPV4 as u32);
    s.set_u32(sys::NFTNL_SET_ID, id);
    s
}

pub(super) fn new_set(set: &AddrSet, id: u32) -> Obj {
    let s = set_header(&set.name, id);
    let flags = if set.hosts { 0 } else { NFT_SET_INTERVAL };
    s.set_u32(sys::NFTNL_SET_FLAGS, flags);
    if set.hosts {
        // Sized up front, the kernel's hash set never grows while 100,000 elements
        // arrive; growing it was most of the kernel's work.
        s.set_u32(sys::NFTNL_SET_DESC_SIZE, set.ranges.len() as u32);
    }
    s.set_u32(sys::NFTNL_SET_KEY_TYPE, TYPE_IPV4_ADDR);
    s.set_u32(sys::NFTNL_SET_KEY_LEN, 4);
    set_key_byteorder(&s, BYTEORDER_BIG_ENDIAN);
    s.into_obj()
}

/// nft reads a key's byte order from the set's userdata to print elements: without it
/// addresses come out as numbers and interface names as "".
fn set_key_byteorder(set: &Owned<sys::nftnl_set>, order: u32) {
    // SAFETY: `set` is live; the udata buffer is ours until freed and is copied.
    unsafe {
        let buf = alloc(sys::nftnl_udata_buf_alloc(16));
        sys::nftnl_udata_put_u32(buf.as_ptr(), sys::NFTNL_UDATA_SET_KEYBYTEORDER as u8, order);
        sys::nftnl_set_set_data(
            set.ptr().as_ptr(),
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
pub(super) fn new_map(map: &VerdictMap, id: u32) -> Obj {
    let s = set_header(&map.name, id);
    let key_type = map
        .key
        .iter()
        .fold(0, |t, f| (t << TYPE_BITS) | key_type(*f));
    let key_len: usize = map.key.iter().map(|f| f.padded_len()).sum();
    s.set_u32(sys::NFTNL_SET_FLAGS, NFT_SET_MAP);
    s.set_u32(sys::NFTNL_SET_KEY_TYPE, key_type);
    s.set_u32(sys::NFTNL_SET_KEY_LEN, key_len as u32);
    s.set_u32(sys::NFTNL_SET_DATA_TYPE, NFT_DATA_VERDICT);
    // No size: a map created with one is full at it (ENFILE), and a new interface's
    // elements are added to the map in place (see `diff`).
    // A concatenation's fields each carry their own order (nft stores none for the
    // whole key); a single field needs it spelled out.
    if let [field] = map.key.as_slice() {
        let order = match field {
            KeyField::IifName | KeyField::OifName | KeyField::L4Proto => BYTEORDER_HOST_ENDIAN,
            KeyField::Daddr | KeyField::Dport => BYTEORDER_BIG_ENDIAN,
        };
        set_key_byteorder(&s, order);
    }
    s.into_obj()
}

/// The objects of one table, in the order they must be created.
pub struct TableObjects {
    pub(super) objs: Vec<(Obj, String)>,
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
                | Match::CtOriginalDaddrNotIn(_)
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

impl TableObjects {
    pub(super) fn element_blocks(&self) -> impl Iterator<Item = &ElemBlock> {
        self.objs.iter().filter_map(|(obj, _)| match obj {
            Obj::Elems(block) => Some(block),
            _ => None,
        })
    }

    /// A digest of the encoded elements, in order. Only ever compared with digests of
    /// loopgate's own encoding, which is deterministic, so no sorting is needed.
    pub(super) fn elements_digest(&self) -> u64 {
        elements::digest_blocks(self.element_blocks())
    }
}
