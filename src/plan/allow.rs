//! Allow sets: the named address sets that say which sources a grant admits.
//!
//! A set exists per distinct allow list, not per grant: grants that allow the same
//! networks (the usual case for `ports: [..]` and `proto: both`) share one set, so a
//! 100,000-network list is sent to the kernel once however many ports publish it. Both
//! the DNAT chains ([`super::nat`]) and the input accepts ([`super::targets`]) match
//! against these sets, which is why they are planned first and on their own. A set is
//! named after a hash of its networks (`allow_HASH`), so a list added, edited or
//! dropped leaves every other set's name, and the chains that use it, as they were.

use super::names::{self, Naming};
use crate::cidr;
use crate::grant::Grant;
use crate::ruleset::AddrSet;
use std::collections::{BTreeMap, BTreeSet};

/// From this many single addresses on, an allow list keeps them in a hash set of their
/// own: inserting 100,000 hosts into an interval set (start and end element each) was
/// most of the kernel's work in `apply`. Shorter lists stay in one interval set.
pub const HOSTS_SET_FROM: usize = 64;

/// The planned sets and, for each grant, the names of the sets its allow list became.
pub(super) struct AllowSets {
    /// Every set of the table, in the order their allow lists were first met.
    pub sets: Vec<AddrSet>,
    /// `names_of[i]` are the sets of the i-th grant (in the order given to
    /// [`AllowSets::plan`]): one, or two when its single addresses went to a hash set.
    /// A grant admits the union of its sets.
    pub names_of: Vec<Vec<String>>,
}

impl AllowSets {
    /// Plans the sets of `grants` (already in canonical order, so the sets' order, and
    /// the rare hash collision's resolution, are deterministic), named by `naming`.
    pub fn plan(grants: &[&Grant], naming: Naming) -> AllowSets {
        let mut sets: Vec<AddrSet> = Vec::new();
        // Keyed by the merged ranges: two lists that cover the same addresses written
        // differently (`10.0.0.0/25` + `10.0.0.128/25` and `10.0.0.0/24`) share a set.
        let mut sets_of: BTreeMap<Vec<cidr::Range>, Vec<String>> = BTreeMap::new();
        // The ids taken, for the (astronomically rare) hash collision.
        let mut taken: BTreeSet<u64> = BTreeSet::new();
        let mut names_of = Vec::with_capacity(grants.len());
        for g in grants {
            let ranges = cidr::merge(&g.allow);
            let n = sets_of.len() as u64;
            let names = sets_of
                .entry(ranges.clone())
                .or_insert_with(|| {
                    let mut id = match naming {
                        Naming::Stable => names::ranges_hash(&ranges),
                        Naming::Positional => n,
                    };
                    while !taken.insert(id) {
                        id = id.wrapping_add(1);
                    }
                    split_hosts(ranges)
                        .into_iter()
                        .map(|(hosts, ranges)| {
                            // set allow_H_hosts { type ipv4_addr; size N; elements = { a, b } }
                            // set allow_H { type ipv4_addr; flags interval; elements = { n/p } }
                            let name = naming.set(id, hosts);
                            sets.push(AddrSet {
                                name: name.clone(),
                                hosts,
                                ranges,
                            });
                            name
                        })
                        .collect()
                })
                .clone();
            names_of.push(names);
        }
        AllowSets { sets, names_of }
    }
}

/// Splits merged ranges into (hosts?, ranges) groups, each a set to create: single
/// addresses apart once there are [`HOSTS_SET_FROM`] of them.
fn split_hosts(ranges: Vec<cidr::Range>) -> Vec<(bool, Vec<cidr::Range>)> {
    let (hosts, nets): (Vec<_>, Vec<_>) = ranges.iter().partition(|(a, b)| a == b);
    if hosts.len() < HOSTS_SET_FROM {
        return vec![(false, ranges)];
    }
    let mut out = vec![(true, hosts)];
    if !nets.is_empty() {
        out.push((false, nets));
    }
    out
}
