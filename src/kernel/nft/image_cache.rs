//! The planned image of a table, chain by chain and set by set from what the last
//! plan's image already printed. Imaging a plan prints every rule through libnftnl and
//! encodes every element: at 1,000 grants and 100,000 allowed networks that was about
//! a sixth of watch's reaction to a new interface, for a plan that differs from the
//! last one by a few chains. [`ImageCache`] keeps each chain's and each set's lines (and
//! a set's encoded elements) keyed by name and checked by value, so only what changed
//! is printed again; the result is the same image [`planned_image`] gives (a unit test
//! compares them across changes).
//!
//! [`planned_image`]: super::planned_image

use super::elements::{self, digest_blocks, ElemBlock};
use super::encode::{new_chain, new_map, new_set};
use super::expr::new_rule;
use super::image::{chain_text, rule_text, set_text, table_description, Elements, TableImage};
use super::objects::Obj;
use crate::ruleset::{AddrSet, Chain, Ruleset};
use std::collections::{HashMap, HashSet};

/// What the last planned images printed, for the next one: one entry per chain and
/// per allow set of the last plan imaged (entries of objects no longer planned are
/// dropped after each image). A value its holder keeps (`watch` keeps it in
/// [`crate::state::Memo`]), not process-wide state.
#[derive(Debug, Default)]
pub struct ImageCache {
    /// Chain name → the chain as planned, its line and its rules' lines.
    chains: HashMap<String, (Chain, String, Vec<String>)>,
    /// Set name → the set as planned, its line and its encoded elements.
    sets: HashMap<String, (AddrSet, String, Vec<ElemBlock>)>,
}

/// The line of one object, printed from its libnftnl form.
fn line(obj: &Obj) -> String {
    match obj {
        Obj::Chain(c) => chain_text(*c),
        Obj::Set(s) => set_text(*s),
        Obj::Rule(r) => rule_text(*r),
        Obj::Table(_) | Obj::Elems(_) => unreachable!("only chains, sets and rules are printed"),
    }
}

/// [`planned_image`](super::planned_image) of `ruleset`, reusing what `cache` holds of
/// unchanged chains and sets and leaving in it what this plan printed.
pub fn planned_image_cached(ruleset: &Ruleset, cache: &mut ImageCache) -> TableImage {
    let mut sets = Vec::with_capacity(ruleset.sets.len() + ruleset.maps.len());
    let mut blocks: Vec<ElemBlock> = Vec::new();
    // Batch-local ids in encoding order: sets first, then maps (see `encode`).
    let mut id = 0u32;
    for set in &ruleset.sets {
        id += 1;
        let hit = cache
            .sets
            .get(&set.name)
            .filter(|(planned, ..)| planned == set);
        let (text, set_blocks) = match hit {
            Some((_, text, b)) => (text.clone(), b.clone()),
            None => {
                let text = line(&new_set(set, id));
                let b = match set.hosts {
                    true => elements::host_blocks(set, id),
                    false => elements::interval_blocks(set, id),
                };
                cache
                    .sets
                    .insert(set.name.clone(), (set.clone(), text.clone(), b.clone()));
                (text, b)
            }
        };
        sets.push(text);
        blocks.extend(
            set_blocks
                .into_iter()
                .map(|b| ElemBlock { set_id: id, ..b }),
        );
    }
    for map in &ruleset.maps {
        id += 1;
        sets.push(line(&new_map(map, id)));
        blocks.extend(elements::map_blocks(map, id));
    }
    let mut chains = Vec::with_capacity(ruleset.chains.len());
    let mut rules: Vec<String> = Vec::new();
    // Chains by name: their rules then come out as `TableObjects::image_with` orders
    // them (by chain, each chain's in its order) without sorting every rule line.
    let mut by_name: Vec<&Chain> = ruleset.chains.iter().collect();
    by_name.sort_by(|a, b| a.name.cmp(&b.name));
    for chain in by_name {
        let hit = cache
            .chains
            .get(&chain.name)
            .filter(|(planned, ..)| planned == chain);
        let (text, rule_lines) = match hit {
            Some((_, text, r)) => (text.clone(), r.clone()),
            None => {
                let text = line(&new_chain(chain));
                let r: Vec<String> = chain
                    .rules
                    .iter()
                    .map(|rule| line(&new_rule(&chain.name, rule)))
                    .collect();
                cache
                    .chains
                    .insert(chain.name.clone(), (chain.clone(), text.clone(), r.clone()));
                (text, r)
            }
        };
        chains.push(text);
        rules.extend(rule_lines);
    }
    // Only this plan's objects are kept: the cache holds one plan's worth.
    let sets_planned: HashSet<&str> = ruleset.sets.iter().map(|s| s.name.as_str()).collect();
    cache
        .sets
        .retain(|name, _| sets_planned.contains(name.as_str()));
    let chains_planned: HashSet<&str> = ruleset.chains.iter().map(|c| c.name.as_str()).collect();
    cache
        .chains
        .retain(|name, _| chains_planned.contains(name.as_str()));

    chains.sort();
    sets.sort();
    TableImage {
        table: table_description(0, None, None),
        chains,
        sets,
        rules,
        elements: Elements::Planned {
            digest: digest_blocks(&blocks),
            blocks,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::{Grant, Proto};
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn grant(iface: &str, port: u16, allow: &[&str]) -> Grant {
        Grant {
            name: format!("{iface}-{port}"),
            iface: iface.into(),
            proto: Proto::Tcp,
            listen: Ipv4Addr::new(192, 0, 2, 1),
            port,
            to: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            allow: allow.iter().map(|a| a.parse().unwrap()).collect(),
            network: None,
        }
    }

    #[test]
    fn a_cached_image_is_the_planned_image_across_changes_and_keeps_one_plan() {
        let hosts: Vec<String> = (0..300)
            .map(|i| format!("198.51.100.{}", i % 250))
            .collect();
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let base = vec![
            grant("br0", 3306, &["192.0.2.0/24"]),
            grant("br1", 5432, &hosts),
            grant("br2", 6379, &["203.0.113.0/24", "192.0.2.7/32"]),
        ];
        let mut steps = vec![base.clone()];
        // A new interface that sorts first, one last; an allow list changed; a grant
        // gone; the hosts set grown; back to the start.
        let mut s = base.clone();
        s.push(grant("a0", 80, &["192.0.2.0/25"]));
        steps.push(s.clone());
        s.push(grant("zz9", 81, &["192.0.2.0/25"]));
        steps.push(s.clone());
        s[0] = grant("br0", 3306, &["192.0.2.0/26"]);
        steps.push(s.clone());
        s.remove(2);
        steps.push(s.clone());
        let mut more = hosts.clone();
        more.push("203.0.113.9");
        s[1] = grant("br1", 5432, &more);
        steps.push(s.clone());
        steps.push(base);
        let mut cache = ImageCache::default();
        for (i, grants) in steps.iter().enumerate() {
            let ruleset = crate::plan::ruleset(grants).unwrap();
            let cached = planned_image_cached(&ruleset, &mut cache);
            let whole = super::super::planned_image(&ruleset);
            assert_eq!(cached, whole, "step {i}");
            assert_eq!(
                cached.elements.digest(),
                whole.elements.digest(),
                "step {i}"
            );
            assert_eq!(cache.chains.len(), ruleset.chains.len(), "step {i}");
            assert_eq!(cache.sets.len(), ruleset.sets.len(), "step {i}");
        }
    }
}
