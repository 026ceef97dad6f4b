//! Set and map elements as netlink attributes, written and read without libnftnl.
//!
//! A 100,000-network allow list is 200,000 interval elements. libnftnl allocates about
//! 300 bytes per element object, on encode and again on read-back; at that size those
//! objects were most of loopgate's memory and a good part of its time. Elements are
//! simple (a key, maybe flags, maybe a verdict), so they are kept here as the attribute
//! bytes the kernel receives and dumps (`NFTA_LIST_ELEM` records, back to back), and
//! parsed into a canonical form only to compare tables.

use super::abi::{
    NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_LIST_ELEM, NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_FLAGS,
    NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_VERDICT_CHAIN, NFTA_VERDICT_CODE,
    NFT_JUMP, NFT_SET_ELEM_INTERVAL_END,
};
use crate::kernel::netlink::{attrs, nest_attr as nest, put_attr as put};
use crate::ruleset::{AddrSet, VerdictMap};

/// Element bytes per NEWSETELEM message: well inside one batch page and under the
/// largest message libnftnl's batch accepts.
const BLOCK_BYTES: usize = 16 * 1024;

/// Elements of one set, in messages of bounded size.
#[derive(Debug, Clone)]
pub struct ElemBlock {
    /// The name of the set or map the elements belong to.
    pub set: String,
    /// The batch-local id of the set, so elements can follow a set created in the same
    /// batch.
    pub set_id: u32,
    /// `NFTA_LIST_ELEM` attributes, back to back.
    pub attrs: Vec<u8>,
}

/// Splits element records into blocks of at most [`BLOCK_BYTES`].
struct Blocks {
    set: String,
    set_id: u32,
    done: Vec<ElemBlock>,
    current: Vec<u8>,
}

impl Blocks {
    fn new(set: &str, set_id: u32) -> Self {
        Blocks {
            set: set.to_string(),
            set_id,
            done: Vec::new(),
            current: Vec::new(),
        }
    }

    fn push(&mut self, fill: impl FnOnce(&mut Vec<u8>)) {
        nest(&mut self.current, NFTA_LIST_ELEM, fill);
        if self.current.len() >= BLOCK_BYTES {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.current.is_empty() {
            self.done.push(ElemBlock {
                set: self.set.clone(),
                set_id: self.set_id,
                attrs: std::mem::take(&mut self.current),
            });
        }
    }

    fn finish(mut self) -> Vec<ElemBlock> {
        self.flush();
        self.done
    }
}

fn put_key(buf: &mut Vec<u8>, key: &[u8]) {
    nest(buf, NFTA_SET_ELEM_KEY, |b| put(b, NFTA_DATA_VALUE, key));
}

/// Interval elements of an address set: a start element per range and an end element
/// one past it (none when the range reaches 255.255.255.255). Like nft, the gap below
/// the first range is opened with an end element at 0.0.0.0, which the kernel's
/// interval backend expects.
pub fn interval_blocks(set: &AddrSet, set_id: u32) -> Vec<ElemBlock> {
    let mut blocks = Blocks::new(&set.name, set_id);
    let end = |b: &mut Vec<u8>, at: u32| {
        put_key(b, &at.to_be_bytes());
        put(
            b,
            NFTA_SET_ELEM_FLAGS,
            &NFT_SET_ELEM_INTERVAL_END.to_be_bytes(),
        );
    };
    if set.ranges.first().is_some_and(|r| r.0 != 0) {
        blocks.push(|b| end(b, 0));
    }
    for &(start, last) in &set.ranges {
        blocks.push(|b| put_key(b, &start.to_be_bytes()));
        if let Some(past) = last.checked_add(1) {
            blocks.push(|b| end(b, past));
        }
    }
    blocks.finish()
}

/// The elements of a hash set of single addresses: one key each.
pub fn host_blocks(set: &AddrSet, set_id: u32) -> Vec<ElemBlock> {
    let mut blocks = Blocks::new(&set.name, set_id);
    for &(addr, _) in &set.ranges {
        blocks.push(|b| put_key(b, &addr.to_be_bytes()));
    }
    blocks.finish()
}

/// The elements of a verdict map, each `key : jump chain`.
pub fn map_blocks(map: &VerdictMap, set_id: u32) -> Vec<ElemBlock> {
    let mut blocks = Blocks::new(&map.name, set_id);
    for e in &map.elements {
        let key: Vec<u8> = e.key.iter().flat_map(|v| v.key_bytes()).collect();
        blocks.push(|b| {
            put_key(b, &key);
            nest(b, NFTA_SET_ELEM_DATA, |b| {
                nest(b, NFTA_DATA_VERDICT, |b| {
                    put(b, NFTA_VERDICT_CODE, &NFT_JUMP.to_be_bytes());
                    let mut chain = e.jump.as_bytes().to_vec();
                    chain.push(0);
                    put(b, NFTA_VERDICT_CHAIN, &chain);
                });
            });
        });
    }
    blocks.finish()
}

/// Elements of map `map` named by their keys alone: what a DELSETELEM needs to delete
/// them (the kernel finds an element by its key).
pub fn key_blocks<'a>(
    map: &str,
    keys: impl IntoIterator<Item = &'a [crate::ruleset::KeyValue]>,
) -> Vec<ElemBlock> {
    let mut blocks = Blocks::new(map, 0);
    for k in keys {
        let key: Vec<u8> = k.iter().flat_map(|v| v.key_bytes()).collect();
        blocks.push(|b| put_key(b, &key));
    }
    blocks.finish()
}

/// The elements of `map` whose keys are in `keys`, each `key : jump chain`.
pub fn map_blocks_of(
    map: &VerdictMap,
    keep: impl Fn(&crate::ruleset::MapElement) -> bool,
) -> Vec<ElemBlock> {
    let only = VerdictMap {
        name: map.name.clone(),
        key: map.key.clone(),
        elements: map.elements.iter().filter(|e| keep(e)).cloned().collect(),
    };
    map_blocks(&only, 0)
}

/// One element reduced to what identifies it, for comparing tables.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Elem {
    /// The key's bytes as the kernel stores them (`NFTA_DATA_VALUE` of
    /// `NFTA_SET_ELEM_KEY`): network byte order, each field padded to 4 bytes.
    pub key: Vec<u8>,
    /// `NFTA_SET_ELEM_FLAGS`, e.g. `NFT_SET_ELEM_INTERVAL_END` (1) on the element that
    /// closes an interval; 0 when absent.
    pub flags: u32,
    /// `jump chain` for a verdict map, the data in hex for a data map, else empty.
    pub data: String,
    /// Attributes loopgate never writes (comments, timeouts, ...), kept so an element
    /// someone edited does not compare equal.
    pub other: Vec<(u16, Vec<u8>)>,
}

impl std::fmt::Display for Elem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.key {
            write!(f, "{b:02x}")?;
        }
        if self.flags & NFT_SET_ELEM_INTERVAL_END != 0 {
            f.write_str(" (interval end)")?;
        }
        if !self.data.is_empty() {
            write!(f, " : {}", self.data)?;
        }
        if !self.other.is_empty() {
            write!(f, " (+{} other attributes)", self.other.len())?;
        }
        Ok(())
    }
}

fn be32(p: &[u8]) -> u32 {
    p.get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

fn value_of(nested: &[u8]) -> Vec<u8> {
    attrs(nested)
        .find(|(t, _)| *t == NFTA_DATA_VALUE)
        .map(|(_, v)| v.to_vec())
        .unwrap_or_default()
}

fn parse_elem(record: &[u8]) -> Elem {
    let mut e = Elem {
        key: Vec::new(),
        flags: 0,
        data: String::new(),
        other: Vec::new(),
    };
    for (ty, p) in attrs(record) {
        match ty {
            NFTA_SET_ELEM_KEY => e.key = value_of(p),
            NFTA_SET_ELEM_FLAGS => e.flags = be32(p),
            NFTA_SET_ELEM_DATA => {
                for (dty, dp) in attrs(p) {
                    match dty {
                        NFTA_DATA_VERDICT => {
                            let mut code = 0;
                            let mut chain = String::new();
                            for (vty, vp) in attrs(dp) {
                                match vty {
                                    NFTA_VERDICT_CODE => code = be32(vp) as i32,
                                    NFTA_VERDICT_CHAIN => {
                                        let s = vp.split(|b| *b == 0).next().unwrap_or_default();
                                        chain = String::from_utf8_lossy(s).into_owned();
                                    }
                                    _ => {}
                                }
                            }
                            e.data = if code == NFT_JUMP as i32 {
                                format!("jump {chain}")
                            } else {
                                format!("verdict {code} {chain}")
                            };
                        }
                        _ => e.data = dp.iter().map(|b| format!("{b:02x}")).collect(),
                    }
                }
            }
            _ => e.other.push((ty, p.to_vec())),
        }
    }
    e
}

/// Every element in `blocks`, canonical and sorted.
pub fn canonical(blocks: &[&ElemBlock]) -> Vec<Elem> {
    let mut out: Vec<Elem> = blocks
        .iter()
        .flat_map(|b| attrs(&b.attrs).map(|(_, record)| parse_elem(record)))
        .collect();
    out.sort_unstable();
    out
}

/// The elements of a NEWSETELEM message (as dumped by the kernel), appended to
/// `out`: the payload of its `NFTA_SET_ELEM_LIST_ELEMENTS`. `message_attrs` are the
/// attributes after the netlink and nfgenmsg headers.
pub fn take_dumped(message_attrs: &[u8], out: &mut Vec<u8>) {
    for (ty, payload) in attrs(message_attrs) {
        if ty == NFTA_SET_ELEM_LIST_ELEMENTS {
            out.extend_from_slice(payload);
        }
    }
}

/// A stable 64-bit digest (FNV-1a) of element blocks as encoded: set names and
/// element bytes in order. Stored with the nftables generation so a later run can trust
/// an unchanged table without reading every element back.
pub fn digest_blocks<'a>(blocks: impl IntoIterator<Item = &'a ElemBlock>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for block in blocks {
        eat(block.set.as_bytes());
        eat(&[0xff]);
        eat(&block.attrs);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::Proto;
    use crate::ruleset::{KeyField, KeyValue, MapElement};
    use std::net::Ipv4Addr;

    #[test]
    fn interval_elements_parse_back_to_what_was_written() {
        let set = AddrSet {
            name: "allow_0".into(),
            hosts: false,
            ranges: vec![(10, 20), (100, u32::MAX)],
        };
        let blocks = interval_blocks(&set, 1);
        let elems = canonical(&blocks.iter().collect::<Vec<_>>());
        let keys: Vec<(u32, u32)> = elems.iter().map(|e| (be32(&e.key), e.flags)).collect();
        // 0.0.0.0 end, 10 start, 21 end, 100 start; nothing past 255.255.255.255.
        assert_eq!(keys, vec![(0, 1), (10, 0), (21, 1), (100, 0)]);
    }

    #[test]
    fn map_elements_carry_their_jump_and_split_into_bounded_blocks() {
        let map = VerdictMap {
            name: "nat_grants".into(),
            key: vec![
                KeyField::IifName,
                KeyField::Daddr,
                KeyField::L4Proto,
                KeyField::Dport,
            ],
            elements: (0..2000)
                .map(|i| MapElement {
                    key: vec![
                        KeyValue::Name("br0".into()),
                        KeyValue::Addr(Ipv4Addr::new(192, 0, 2, 1)),
                        KeyValue::Proto(Proto::Tcp),
                        KeyValue::Port(i),
                    ],
                    jump: format!("nat_g{i}"),
                })
                .collect(),
        };
        let blocks = map_blocks(&map, 7);
        assert!(blocks.len() > 1);
        assert!(blocks.iter().all(|b| b.attrs.len() < BLOCK_BYTES + 256));
        let elems = canonical(&blocks.iter().collect::<Vec<_>>());
        assert_eq!(elems.len(), 2000);
        assert!(elems
            .iter()
            .all(|e| e.key.len() == 28 && e.data.starts_with("jump nat_g")));
        let a = digest_blocks(&blocks);
        let mut other = map.clone();
        other.elements[5].jump = "elsewhere".into();
        assert_ne!(a, digest_blocks(&map_blocks(&other, 7)));
        assert_eq!(a, digest_blocks(&map_blocks(&map, 7)));
    }
}
