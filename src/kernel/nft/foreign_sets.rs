//! The members of the other tables' sets and maps, read so a lookup is evaluated
//! rather than called unknown: an anonymous set (`ct state { established, related }`,
//! `tcp dport { 80, 443 }`, as firewalld and Incus write them), a named set, and a
//! verdict map (kube-proxy's `@firewall-ips`). Sets updated from the packet path
//! (`NFT_SET_EVAL`), object maps and sets too large to read stay unread: their
//! lookups are unknown, as before.

use super::abi::{
    NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_KEY,
    NFTA_VERDICT_CHAIN, NFTA_VERDICT_CODE, NFT_SET_ELEM_INTERVAL_END, NFT_SET_INTERVAL,
};
use super::objects::Owned;
use super::readback::{dump_rows_in, message_attrs};
use crate::kernel::firewall::{Jump, Member, Members};
use crate::kernel::netlink::{as_bytes, attrs, NlSocket};
use anyhow::Result;
use nftnl::nftnl_sys as sys;
use std::collections::HashMap;

/// `NFTA_SET_*` attributes of a GETSET dump.
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
/// `NFTA_SET_ELEM_KEY_END`: the inclusive end of a concatenated interval.
const NFTA_SET_ELEM_KEY_END: u16 = 10;
/// `NFT_SET_OBJECT`, `NFT_SET_EVAL` (updated from the packet path), `NFT_SET_CONCAT`.
const NFT_SET_OBJECT: u32 = 0x40;
const NFT_SET_EVAL: u32 = 0x20;
const NFT_SET_CONCAT: u32 = 0x80;
/// More elements than this in one set are not read (its lookups stay unknown).
const MAX_ELEMENTS: usize = 500_000;

fn be32(p: &[u8]) -> u32 {
    p.get(..4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn text(p: &[u8]) -> String {
    String::from_utf8_lossy(p.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
}

fn value(p: &[u8]) -> Vec<u8> {
    attrs(p)
        .find(|(t, _)| *t == NFTA_DATA_VALUE)
        .map(|(_, v)| v.to_vec())
        .unwrap_or_default()
}

/// One element as dumped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Dumped {
    pub(super) key: Vec<u8>,
    pub(super) key_end: Option<Vec<u8>>,
    pub(super) end: bool,
    pub(super) verdict: Option<Jump>,
}

fn verdict(p: &[u8]) -> Option<Jump> {
    let v = attrs(p).find(|(t, _)| *t == NFTA_DATA_VERDICT)?.1;
    let mut code = 0i32;
    let mut chain = String::new();
    for (t, b) in attrs(v) {
        match t {
            NFTA_VERDICT_CODE => code = be32(b) as i32,
            NFTA_VERDICT_CHAIN => chain = text(b),
            _ => {}
        }
    }
    Some(match code {
        0 => Jump::Drop,
        1 => Jump::Accept,
        -1 => Jump::Continue,
        -3 => Jump::Jump(chain),
        -4 => Jump::Goto(chain),
        -5 => Jump::Return,
        _ => return None,
    })
}

fn parse_elem(record: &[u8]) -> Dumped {
    let mut e = Dumped {
        key: Vec::new(),
        key_end: None,
        end: false,
        verdict: None,
    };
    for (t, p) in attrs(record) {
        match t {
            NFTA_SET_ELEM_KEY => e.key = value(p),
            NFTA_SET_ELEM_KEY_END => e.key_end = Some(value(p)),
            NFTA_SET_ELEM_FLAGS => e.end = be32(p) & NFT_SET_ELEM_INTERVAL_END != 0,
            NFTA_SET_ELEM_DATA => e.verdict = verdict(p),
            _ => {}
        }
    }
    e
}

/// `key - 1` (big-endian, memcmp order), saturating at zero.
fn before(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    for b in k.iter_mut().rev() {
        let (v, borrow) = b.overflowing_sub(1);
        *b = v;
        if !borrow {
            return k;
        }
    }
    vec![0; key.len()]
}

/// The members of a set from its dumped elements. An interval set (`NFT_SET_INTERVAL`)
/// without end keys is stored as start elements and end elements (the first key
/// past the interval, flagged `INTERVAL_END`); with `KEY_END` (concatenations) each
/// element is a whole interval.
pub(super) fn members(flags: u32, mut elems: Vec<Dumped>) -> Members {
    let by_word = flags & NFT_SET_CONCAT != 0 || elems.iter().any(|e| e.key_end.is_some());
    if by_word || flags & NFT_SET_INTERVAL == 0 {
        let items = elems
            .into_iter()
            .filter(|e| !e.end)
            .map(|e| Member {
                to: e.key_end.unwrap_or_else(|| e.key.clone()),
                from: e.key,
                verdict: e.verdict,
            })
            .collect();
        return Members { by_word, items };
    }
    elems.sort_by(|a, b| a.key.cmp(&b.key).then(b.end.cmp(&a.end)));
    let mut items = Vec::new();
    for (i, e) in elems.iter().enumerate() {
        if e.end {
            continue;
        }
        let to = match elems.get(i + 1) {
            Some(next) => before(&next.key),
            None => vec![0xff; e.key.len()],
        };
        items.push(Member {
            from: e.key.clone(),
            to,
            verdict: e.verdict.clone(),
        });
    }
    Members {
        by_word: false,
        items,
    }
}

/// The members of the readable sets `table_name` names (given a set's family, table
/// and name, the table as messages name it, `inet filter`, or `None` to skip it), by
/// (that table name, the set's name).
pub(super) fn read(
    sock: &mut NlSocket,
    table_name: impl Fn(u32, &str, &str) -> Option<String>,
) -> Result<HashMap<(String, String), Members>> {
    let unspec = libc::NFPROTO_UNSPEC as u16;
    let mut sets = Vec::new();
    for row in dump_rows_in(sock, unspec, libc::NFT_MSG_GETSET, |_| {})? {
        let family = u32::from(as_bytes(&row).get(16).copied().unwrap_or(0));
        let (mut table, mut name, mut flags) = (String::new(), String::new(), 0);
        for (t, p) in attrs(message_attrs(&row)) {
            match t {
                NFTA_SET_TABLE => table = text(p),
                NFTA_SET_NAME => name = text(p),
                NFTA_SET_FLAGS => flags = be32(p),
                _ => {}
            }
        }
        if flags & (NFT_SET_EVAL | NFT_SET_OBJECT) != 0 {
            continue;
        }
        if let Some(shown) = table_name(family, &table, &name) {
            sets.push((family, table, name, flags, shown));
        }
    }
    let mut out = HashMap::new();
    for (family, table, name, flags, shown) in sets {
        let header = Owned::<sys::nftnl_set>::new();
        header.set_str(sys::NFTNL_SET_TABLE, &table);
        header.set_str(sys::NFTNL_SET_NAME, &name);
        header.set_u32(sys::NFTNL_SET_FAMILY, family);
        let rows = dump_rows_in(sock, family as u16, libc::NFT_MSG_GETSETELEM, |nlh| {
            // SAFETY: `header` is live for the call; the payload names a table and a
            // set, far below the 4 KiB request buffer.
            unsafe { sys::nftnl_set_elems_nlmsg_build_payload(nlh, header.ptr().as_ptr()) }
        });
        // A set deleted since the set dump: its lookups stay unknown.
        let Ok(rows) = rows else { continue };
        let mut elems = Vec::new();
        for row in &rows {
            let mut list = Vec::new();
            super::elements::take_dumped(message_attrs(row), &mut list);
            elems.extend(attrs(&list).map(|(_, record)| parse_elem(record)));
        }
        if elems.len() <= MAX_ELEMENTS {
            out.insert((shown, name), members(flags, elems));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elem(key: &[u8], end: bool) -> Dumped {
        Dumped {
            key: key.to_vec(),
            key_end: None,
            end,
            verdict: None,
        }
    }

    #[test]
    fn interval_elements_become_inclusive_ranges() {
        // { 80, 1000-2000 } as the rbtree dumps it (descending): end 2001, start 1000,
        // end 81, start 80.
        let dumped = vec![
            elem(&2001u16.to_be_bytes(), true),
            elem(&1000u16.to_be_bytes(), false),
            elem(&81u16.to_be_bytes(), true),
            elem(&80u16.to_be_bytes(), false),
        ];
        let m = members(NFT_SET_INTERVAL, dumped);
        let ranges: Vec<(Vec<u8>, Vec<u8>)> = m.items.into_iter().map(|i| (i.from, i.to)).collect();
        assert_eq!(
            ranges,
            vec![
                (80u16.to_be_bytes().to_vec(), 80u16.to_be_bytes().to_vec()),
                (
                    1000u16.to_be_bytes().to_vec(),
                    2000u16.to_be_bytes().to_vec()
                )
            ]
        );
        // An open interval to the top of the key space has no end element.
        let m = members(NFT_SET_INTERVAL, vec![elem(&[10, 0, 0, 0], false)]);
        assert_eq!(m.items[0].to, vec![0xff; 4]);
        // Plain sets are exact keys.
        let m = members(0, vec![elem(&[2], false)]);
        assert_eq!(
            (m.items[0].from.clone(), m.items[0].to.clone()),
            (vec![2], vec![2])
        );
        assert_eq!(before(&[1, 0]), vec![0, 0xff]);
    }
}
