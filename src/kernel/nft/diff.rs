//! Changing loopgate's table in place: the batch that turns one planned table into
//! another by adding and deleting only what differs (a new interface's guard chains
//! and map elements, a grant's DNAT chain, a changed allow list's elements), instead
//! of rewriting every set. At 1,000 allow lists and 100,000 allowed networks a full
//! rewrite made the kernel look up 1,000 sets by name for every message and notify
//! every element; a new interface now costs a dozen messages.
//!
//! The batch is bound to the generation at which the table was found to be exactly
//! `from` (the engine's read, vouched or listed): the kernel applies it only if nothing
//! committed since, and then applies all of it or none (set element updates included).
//! What cannot be expressed as such a batch (a base chain or a map's definition
//! changed, a sized hash set whose size changes) returns `None`, and the caller
//! rewrites the table whole.

use super::batch::{append_poison, BatchWriter, Send};
use super::elements::{self, ElemBlock};
use super::encode::{new_chain, new_set};
use super::expr::new_rule;
use super::objects::{Obj, Owned};
use crate::kernel::netlink::NlSocket;
use crate::ruleset::{AddrSet, Chain, KeyValue, Ruleset};
use anyhow::Result;
use nftnl::nftnl_sys as sys;
use std::collections::BTreeMap;

/// The messages of an in-place change, in an order the kernel accepts in one batch:
/// new sets with their elements, refilled sets, new chains, the rules of new and
/// changed chains, map elements out and in, then removed chains and sets (nothing
/// refers to them any more by then).
pub struct Diff {
    pub(super) objs: Vec<(Obj, bool, String)>,
}

impl Diff {
    /// How many messages the batch holds.
    pub fn len(&self) -> usize {
        self.objs.len()
    }

    /// True when the two tables are the same.
    pub fn is_empty(&self) -> bool {
        self.objs.is_empty()
    }

    /// What each message does, in batch order, as errors name it (`chain raw_if_br0`,
    /// `elements of set allow_HASH (flush)`, `chain post_if_br0 (delete)`).
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.objs.iter().map(|(_, _, label)| label.as_str())
    }
}

/// The set's elements as encoded for a NEWSETELEM.
fn set_blocks(set: &AddrSet, id: u32) -> Vec<ElemBlock> {
    match set.hosts {
        true => elements::host_blocks(set, id),
        false => elements::interval_blocks(set, id),
    }
}

/// A chain object naming only its table and name, to delete it or flush its rules.
fn named_chain(name: &str) -> Obj {
    let chain = Owned::<sys::nftnl_chain>::naming_table();
    chain.set_u32(sys::NFTNL_CHAIN_FAMILY, super::abi::NFPROTO_IPV4 as u32);
    chain.set_str(sys::NFTNL_CHAIN_NAME, name);
    chain.into_obj()
}

/// A rule object naming only its table and chain: deleted, every rule of the chain.
fn chain_rules(name: &str) -> Obj {
    let rule = Owned::<sys::nftnl_rule>::naming_table();
    rule.set_u32(sys::NFTNL_RULE_FAMILY, super::abi::NFPROTO_IPV4 as u32);
    rule.set_str(sys::NFTNL_RULE_CHAIN, name);
    rule.into_obj()
}

/// A set object naming only its table and name, to delete it.
fn named_set(name: &str) -> Obj {
    let set = Owned::<sys::nftnl_set>::naming_table();
    set.set_u32(sys::NFTNL_SET_FAMILY, super::abi::NFPROTO_IPV4 as u32);
    set.set_str(sys::NFTNL_SET_NAME, name);
    set.into_obj()
}

/// The regular chains an in-place change from `from` to `to` touches, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// New chains and chains whose rules change: what the batch writes, and all a
    /// read back after it needs to read (the rest is vouched for by the generation).
    pub written: Vec<String>,
    /// Chains whose rules are flushed or that are deleted: their counters start again,
    /// so what they counted is read before the batch.
    pub reset: Vec<String>,
}

/// The chains [`diff`] writes and resets (base chains are never changed in place).
pub fn touched(from: &Ruleset, to: &Ruleset) -> Touched {
    let old: BTreeMap<&str, &Chain> = from
        .chains
        .iter()
        .filter(|c| c.attach.is_none())
        .map(|c| (c.name.as_str(), c))
        .collect();
    let new: BTreeMap<&str, &Chain> = to
        .chains
        .iter()
        .filter(|c| c.attach.is_none())
        .map(|c| (c.name.as_str(), c))
        .collect();
    let mut out = Touched::default();
    for (name, chain) in &new {
        if old.get(name) != Some(chain) {
            out.written.push(name.to_string());
        }
    }
    for (name, chain) in &old {
        match new.get(name) {
            Some(c) if c == chain => {}
            _ => out.reset.push(name.to_string()),
        }
    }
    out
}

/// The batch that turns table `from` into table `to`; `None` when the change cannot
/// be made in place (see the module documentation).
pub fn diff(from: &Ruleset, to: &Ruleset) -> Option<Diff> {
    // The maps are the same five in every plan; their headers must not change (an
    // in-place batch only moves their elements).
    let map_shape = |r: &Ruleset| -> Vec<(String, Vec<crate::ruleset::KeyField>)> {
        r.maps
            .iter()
            .map(|m| (m.name.clone(), m.key.clone()))
            .collect()
    };
    if map_shape(from) != map_shape(to) {
        return None;
    }
    let old_chains: BTreeMap<&str, &Chain> =
        from.chains.iter().map(|c| (c.name.as_str(), c)).collect();
    let new_chains: BTreeMap<&str, &Chain> =
        to.chains.iter().map(|c| (c.name.as_str(), c)).collect();
    // Base chains are the table's entry points: never changed in place.
    fn bases(r: &Ruleset) -> impl Iterator<Item = &Chain> {
        r.chains.iter().filter(|c| c.attach.is_some())
    }
    if !bases(from).eq(bases(to)) {
        return None;
    }
    let old_sets: BTreeMap<&str, &AddrSet> =
        from.sets.iter().map(|s| (s.name.as_str(), s)).collect();
    let new_sets: BTreeMap<&str, &AddrSet> = to.sets.iter().map(|s| (s.name.as_str(), s)).collect();

    let mut objs: Vec<(Obj, bool, String)> = Vec::new();
    let mut id = 0u32;
    // 1. New sets, with their elements; 2. changed sets refilled (same header only).
    for set in &to.sets {
        match old_sets.get(set.name.as_str()) {
            None => {
                id += 1;
                objs.push((new_set(set, id), false, format!("set {}", set.name)));
                for block in set_blocks(set, id) {
                    objs.push((
                        Obj::Elems(block),
                        false,
                        format!("elements of set {}", set.name),
                    ));
                }
            }
            Some(old) if *old == set => {}
            Some(old) => {
                // A hash set is created with its size: another size is another header.
                if old.hosts != set.hosts || (set.hosts && old.ranges.len() != set.ranges.len()) {
                    return None;
                }
                let flush = ElemBlock {
                    set: set.name.clone(),
                    set_id: 0,
                    attrs: Vec::new(),
                };
                objs.push((
                    Obj::Elems(flush),
                    true,
                    format!("elements of set {} (flush)", set.name),
                ));
                for block in set_blocks(set, 0) {
                    objs.push((
                        Obj::Elems(block),
                        false,
                        format!("elements of set {}", set.name),
                    ));
                }
            }
        }
    }
    // 3. New chains; 4. changed chains emptied; 5. their rules.
    let mut rules_of: Vec<&Chain> = Vec::new();
    for chain in to.chains.iter().filter(|c| c.attach.is_none()) {
        match old_chains.get(chain.name.as_str()) {
            None => {
                objs.push((new_chain(chain), false, format!("chain {}", chain.name)));
                rules_of.push(chain);
            }
            Some(old) if *old == chain => {}
            Some(_) => {
                objs.push((
                    chain_rules(&chain.name),
                    true,
                    format!("the rules of chain {} (flush)", chain.name),
                ));
                rules_of.push(chain);
            }
        }
    }
    for chain in rules_of {
        for rule in &chain.rules {
            objs.push((
                new_rule(&chain.name, rule),
                false,
                format!("rule \"{}\" in chain {}", rule.comment, chain.name),
            ));
        }
    }
    // 6. Map elements: out first (a changed jump is deleted and added again), then in.
    for (old, new) in from.maps.iter().zip(&to.maps) {
        let was: BTreeMap<&[KeyValue], &str> = old
            .elements
            .iter()
            .map(|e| (e.key.as_slice(), e.jump.as_str()))
            .collect();
        let now: BTreeMap<&[KeyValue], &str> = new
            .elements
            .iter()
            .map(|e| (e.key.as_slice(), e.jump.as_str()))
            .collect();
        let gone = was
            .iter()
            .filter(|(k, j)| now.get(*k) != Some(*j))
            .map(|(k, _)| *k);
        for block in elements::key_blocks(&old.name, gone) {
            objs.push((
                Obj::Elems(block),
                true,
                format!("elements of map {} (delete)", old.name),
            ));
        }
        let added =
            elements::map_blocks_of(new, |e| was.get(e.key.as_slice()) != Some(&e.jump.as_str()));
        for block in added {
            objs.push((
                Obj::Elems(block),
                false,
                format!("elements of map {}", new.name),
            ));
        }
    }
    // 7. Removed chains (their rules go with them); 8. removed sets.
    for chain in from.chains.iter().filter(|c| c.attach.is_none()) {
        if !new_chains.contains_key(chain.name.as_str()) {
            objs.push((
                named_chain(&chain.name),
                true,
                format!("chain {} (delete)", chain.name),
            ));
        }
    }
    for set in &from.sets {
        if !new_sets.contains_key(set.name.as_str()) {
            objs.push((
                named_set(&set.name),
                true,
                format!("set {} (delete)", set.name),
            ));
        }
    }
    Some(Diff { objs })
}

/// Sends `diff` as one batch bound to `generation`: the kernel refuses it with ERESTART
/// when anything committed since. Returns the generation the batch created when the
/// kernel's generation shows it (see [`BatchWriter::commit`]). The `ruleset-batch`
/// failpoint poisons it as it does a full rewrite.
pub(super) fn send(sock: &mut NlSocket, diff: &Diff, generation: u32) -> Result<Option<u32>> {
    let mut w = BatchWriter::new(Some(generation), sock.next_seq());
    for (obj, delete, label) in &diff.objs {
        w.add(obj, *delete, label);
    }
    if crate::failpoint::armed("ruleset-batch") {
        append_poison(&mut w);
    }
    w.commit(sock, Send::Commit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::{Grant, Proto};
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn grant(iface: &str, port: u16, allow: &str) -> Grant {
        Grant {
            name: format!("{iface}-{port}"),
            iface: iface.into(),
            proto: Proto::Tcp,
            listen: Ipv4Addr::new(192, 0, 2, 1),
            port,
            to: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            allow: vec![allow.parse().unwrap()],
            network: None,
        }
    }

    fn labels(d: &Diff) -> Vec<String> {
        d.objs
            .iter()
            .map(|(_, del, l)| format!("{}{l}", if *del { "-" } else { "+" }))
            .collect()
    }

    #[test]
    fn a_new_interface_adds_its_guard_its_grant_and_their_map_elements_only() {
        let before: Vec<Grant> = (0..50)
            .map(|i| grant("br0", 6000 + i, "192.0.2.0/25"))
            .collect();
        let mut after = before.clone();
        after.push(grant("lgr0", 7000, "198.51.100.0/24"));
        let d = diff(
            &crate::plan::ruleset(&before).unwrap(),
            &crate::plan::ruleset(&after).unwrap(),
        )
        .unwrap();
        let l = labels(&d);
        assert!(l.iter().all(|l| l.starts_with('+')), "{l:?}");
        // One set, three guard chains, one DNAT chain and one input target chain,
        // their rules, five map elements: independent of the 50 grants already there.
        assert_eq!(
            l.iter().filter(|l| l.starts_with("+set ")).count(),
            1,
            "{l:?}"
        );
        assert_eq!(
            l.iter().filter(|l| l.starts_with("+chain ")).count(),
            5,
            "{l:?}"
        );
        assert_eq!(
            l.iter()
                .filter(|l| l.starts_with("+elements of map"))
                .count(),
            5,
            "{l:?}"
        );
        assert!(d.len() < 30, "{l:?}");
        // And back: everything it added goes, nothing else.
        let back = diff(
            &crate::plan::ruleset(&after).unwrap(),
            &crate::plan::ruleset(&before).unwrap(),
        )
        .unwrap();
        let l = labels(&back);
        assert!(l.iter().all(|l| l.starts_with('-')), "{l:?}");
        assert_eq!(l.len(), 1 + 5 + 5, "{l:?}");
    }

    #[test]
    fn equal_tables_need_no_message_and_a_changed_allow_list_is_a_new_set() {
        let g = vec![
            grant("br0", 6000, "192.0.2.0/25"),
            grant("br1", 6001, "192.0.2.128/25"),
        ];
        let r = crate::plan::ruleset(&g).unwrap();
        assert!(diff(&r, &r).unwrap().is_empty());
        let mut h = g.clone();
        h[1].allow = vec!["198.51.100.0/24".parse().unwrap()];
        let to = crate::plan::ruleset(&h).unwrap();
        let (old, new) = (&r.sets[1].name, &to.sets[1].name);
        assert_ne!(old, new);
        let l = labels(&diff(&r, &to).unwrap());
        // The new set and its elements, br1's DNAT and target chains refilled to use
        // it, the old set gone; br0's objects untouched.
        assert_eq!(l[0], format!("+set {new}"), "{l:?}");
        assert_eq!(l.last().unwrap(), &format!("-set {old} (delete)"), "{l:?}");
        assert!(!l.iter().any(|l| l.contains("br0")), "{l:?}");
        // A set whose name stays and whose networks change (only a hash collision
        // does that) is refilled in place.
        let mut same_name = r.clone();
        same_name.sets[1].ranges = vec![(1, 2)];
        let l = labels(&diff(&r, &same_name).unwrap());
        assert_eq!(l[0], format!("-elements of set {old} (flush)"), "{l:?}");
        assert!(
            l[1..]
                .iter()
                .all(|l| l == &format!("+elements of set {old}")),
            "{l:?}"
        );
    }

    /// `n` grants over eight interfaces (`br0`..`br7`), each with its own allow list.
    fn spread(n: usize) -> Vec<Grant> {
        (0..n)
            .map(|i| {
                let mut g = grant(&format!("br{}", i % 8), 6000 + i as u16, "192.0.2.0/24");
                g.allow = vec![
                    format!("192.0.2.{}/32", i % 256).parse().unwrap(),
                    format!("198.51.100.{}/32", i / 256).parse().unwrap(),
                ];
                g
            })
            .collect()
    }

    /// The batch of one change, as the stable names (`plan::ruleset`) and as the
    /// previous versions' positional names give it.
    fn both_lengths(before: &[Grant], after: &[Grant]) -> (usize, usize) {
        let stable = |g: &[Grant]| crate::plan::ruleset(g).unwrap();
        let positional = |g: &[Grant]| crate::plan::legacy_ruleset_admitting(g, &[], &[]).unwrap();
        (
            diff(&stable(before), &stable(after)).unwrap().len(),
            diff(&positional(before), &positional(after)).unwrap().len(),
        )
    }

    /// The point of naming objects by their own key: a new interface that sorts
    /// before every other one, or a grant whose port moves it to the end of the order,
    /// costs a batch of the same length at 10, 100 and 1,000 grants; under positional
    /// names the batch grew with the number of other grants (every later chain renamed).
    #[test]
    fn one_interface_or_one_grant_more_costs_the_same_batch_at_every_size() {
        let (mut added, mut moved) = (Vec::new(), Vec::new());
        for n in [10, 100, 1000] {
            let before = spread(n);
            // (a) A new interface that sorts first, with a grant and an allow list of its own.
            let mut after = before.clone();
            after.push(grant("aa0", 7000, "203.0.113.0/24"));
            added.push(both_lengths(&before, &after));
            // (b) The first grant in canonical order moves its port past every other.
            let mut after = before.clone();
            after[0].port = 65000;
            moved.push(both_lengths(&before, &after));
        }
        eprintln!("new interface first (stable, positional): {added:?}");
        eprintln!("one grant's port moved last (stable, positional): {moved:?}");
        for lens in [&added, &moved] {
            assert!(lens.iter().all(|l| l.0 == lens[0].0), "{lens:?}");
            assert!(lens[0].0 < 30, "{lens:?}");
            // The control: positional names made the same change grow with the table.
            assert!(
                lens.windows(2).all(|w| w[1].1 > w[0].1) && lens[2].1 > 10 * lens[0].0,
                "{lens:?}"
            );
        }
    }

    #[test]
    fn a_guard_only_table_and_a_table_with_grants_differ_in_place() {
        let guard = crate::plan::ruleset_with(&[], &["br9".to_string()]).unwrap();
        let both =
            crate::plan::ruleset_with(&[grant("br0", 6000, "192.0.2.0/25")], &["br9".to_string()])
                .unwrap();
        assert!(diff(&guard, &both).is_some());
    }
}
