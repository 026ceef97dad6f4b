//! Running totals of what the guards dropped, kept across table rewrites.
//!
//! A rule's counter starts at 0 whenever loopgate writes its table (every repair,
//! every change) and is gone when another process deletes the table, so the counters
//! the kernel shows go down again and again. Monitoring needs counters that only go
//! up (`loopgate_blocked_packets_total`). loopgate keeps, per interface and kind, what
//! earlier copies of the table had counted (`folded`) and the last value it saw of the
//! current copy (`last`), in the namespace's state directory ([`FILE`]). A value lower
//! than the last one seen means the rule was written anew: the last one is folded in.
//! Every transaction that writes the table (commands and watch's repairs alike) folds
//! the counters it read just before the write and those it read back right after it,
//! so what was counted up to the rewrite is kept and the restart is seen; every audit
//! folds what it reads. What a table deleted by another process had
//! counted since the last audit or transaction is lost; the totals never go down.

use super::Blocked;
use crate::kernel::nft::RuleCounter;
use crate::state::Store;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The side file of the state directory that keeps the totals (JSON).
pub const FILE: &str = "blocked-totals.json";

/// One series: what earlier copies of the rule counted, and the last value seen of
/// the current one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Series {
    folded_packets: u64,
    folded_bytes: u64,
    last_packets: u64,
    last_bytes: u64,
}

/// Every series, by interface and kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// `"<interface> <kind>"` → its series.
    series: BTreeMap<String, Series>,
}

fn key(b: &Blocked) -> String {
    format!("{} {}", b.interface, b.kind)
}

impl Totals {
    /// Folds the counters read now (`now`) in. A series missing from `now` (the table
    /// is gone, or the interface lost its guard) had its counters reset to nothing:
    /// its last value is folded in, and the series is kept only while `keep` says its
    /// interface is still guarded (so that a pattern's thousand veths do not pile up).
    pub fn fold(&mut self, now: &[Blocked], keep: &dyn Fn(&str) -> bool) {
        self.fold_seen(now);
        let present: std::collections::BTreeSet<String> = now.iter().map(key).collect();
        self.series.retain(|k, s| {
            if present.contains(k) {
                return true;
            }
            s.folded_packets = s.folded_packets.saturating_add(s.last_packets);
            s.folded_bytes = s.folded_bytes.saturating_add(s.last_bytes);
            s.last_packets = 0;
            s.last_bytes = 0;
            let iface = k.rsplit_once(' ').map_or(k.as_str(), |(i, _)| i);
            keep(iface)
        });
    }

    /// Folds in the counters of some rules only (`seen`: the chains an in-place change
    /// flushes, read before it, or writes, read after it): each series in `seen` is
    /// folded as by [`Totals::fold`]; a series not in `seen` is left as it was, not
    /// taken as reset.
    pub fn fold_seen(&mut self, seen: &[Blocked]) {
        for b in seen {
            let s = self.series.entry(key(b)).or_default();
            if b.packets < s.last_packets || b.bytes < s.last_bytes {
                s.folded_packets = s.folded_packets.saturating_add(s.last_packets);
                s.folded_bytes = s.folded_bytes.saturating_add(s.last_bytes);
            }
            s.last_packets = b.packets;
            s.last_bytes = b.bytes;
        }
    }

    /// Moves what some chains of a series had counted into its totals as those chains
    /// start again while the series' other chains go on (an in-place change flushing or
    /// deleting them): `reset` holds, per series, what the reset chains counted just
    /// before. The series' last value goes down by as much, so the next fold does not
    /// take the smaller sum for a reset of the whole series.
    pub fn fold_reset(&mut self, reset: &[Blocked]) {
        for r in reset {
            let s = self.series.entry(key(r)).or_default();
            s.folded_packets = s.folded_packets.saturating_add(r.packets);
            s.folded_bytes = s.folded_bytes.saturating_add(r.bytes);
            s.last_packets = s.last_packets.saturating_sub(r.packets);
            s.last_bytes = s.last_bytes.saturating_sub(r.bytes);
        }
    }

    /// The running totals of `now`'s series (and of those kept without a counter now,
    /// at what they had), in `now`'s order then by name.
    pub fn totals(&self, now: &[Blocked]) -> Vec<Blocked> {
        let mut out: Vec<Blocked> = now
            .iter()
            .map(|b| {
                let s = self.series.get(&key(b)).copied().unwrap_or_default();
                Blocked {
                    packets: s.folded_packets.saturating_add(b.packets),
                    bytes: s.folded_bytes.saturating_add(b.bytes),
                    ..b.clone()
                }
            })
            .collect();
        for (k, s) in &self.series {
            if now.iter().any(|b| &key(b) == k) {
                continue;
            }
            let Some((iface, kind)) = k.rsplit_once(' ') else {
                continue;
            };
            let Some((_, kind)) = crate::plan::GUARD_DROPS.iter().find(|(_, n)| *n == kind) else {
                continue;
            };
            out.push(Blocked {
                interface: iface.to_string(),
                kind,
                packets: s.folded_packets,
                bytes: s.folded_bytes,
            });
        }
        out
    }

    /// The totals kept in `store`'s directory; empty when there are none or the file
    /// cannot be read (totals then start again: a reset, which monitoring tolerates).
    pub fn load(store: &Store) -> Totals {
        store
            .read_aside(FILE)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes the totals to `store`'s directory. Errors: it cannot be written.
    pub fn save(&self, store: &Store) -> anyhow::Result<()> {
        store.write_aside(FILE, &serde_json::to_vec(self)?)
    }
}

/// For a transaction that writes loopgate's table: folds the guards' `counters` of the
/// table as read just before the write, and again as read back right after it (where
/// a rule was written anew its counter is lower, and what it had is kept). Nothing is
/// pruned here (the audit does that). A failure to write the file is not the
/// transaction's: the totals then lose what this copy counted.
pub fn fold_counters(store: &Store, counters: &[RuleCounter]) {
    let now = super::reachability::blocked_of(counters);
    let mut totals = Totals::load(store);
    let before = totals.clone();
    totals.fold(&now, &|_| true);
    if totals != before {
        let _ = totals.save(store);
    }
}

/// Folds the counters of some chains only into the totals kept in `store`'s
/// directory (see [`Totals::fold_seen`]): a series counted by a rule outside them is
/// not taken as reset. A series may span chains (an interface's input drops are in its
/// guard chain and in each of its targets' chains): `counters` must hold every chain of
/// each series it holds.
pub fn fold_counters_seen(store: &Store, counters: &[RuleCounter]) {
    let seen = super::reachability::blocked_of(counters);
    if seen.is_empty() {
        return;
    }
    let mut totals = Totals::load(store);
    let before = totals.clone();
    totals.fold_seen(&seen);
    if totals != before {
        let _ = totals.save(store);
    }
}

/// [`Totals::fold_reset`] of `reset` (the counters of the chains an in-place change
/// flushed or deleted, read just before it) into the totals kept in `store`'s
/// directory.
pub fn fold_reset(store: &Store, reset: &[RuleCounter]) {
    let reset = super::reachability::blocked_of(reset);
    if reset.is_empty() {
        return;
    }
    let mut totals = Totals::load(store);
    totals.fold_reset(&reset);
    let _ = totals.save(store);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(iface: &str, kind: &'static str, packets: u64) -> Blocked {
        Blocked {
            interface: iface.into(),
            kind,
            packets,
            bytes: packets * 60,
        }
    }

    const D: &str = "direct-to-loopback";

    fn packets(t: &Totals, now: &[Blocked]) -> Vec<u64> {
        t.totals(now).iter().map(|b| b.packets).collect()
    }

    /// An interface's input drops count in its guard chain and in each target's chain;
    /// an in-place change that flushes one of them must not take the smaller sum for a
    /// reset of the whole series (that counted the other chains twice).
    #[test]
    fn a_chain_of_a_series_starting_again_keeps_the_total_continuous() {
        let mut t = Totals::default();
        // Guard chain 70 + target chain 30 = 100, as the last audit saw.
        t.fold(&[b("br0", D, 100)], &|_| true);
        // The target chain (30) is flushed in place; the guard chain goes on to 75.
        t.fold_reset(&[b("br0", D, 30)]);
        t.fold(&[b("br0", D, 75)], &|_| true);
        assert_eq!(
            packets(&t, &[b("br0", D, 75)]),
            [105],
            "100 before, 5 more since"
        );
        // Control: folding the smaller sum as a reset of the whole series.
        let mut whole = Totals::default();
        whole.fold(&[b("br0", D, 100)], &|_| true);
        whole.fold(&[b("br0", D, 75)], &|_| true);
        assert_eq!(packets(&whole, &[b("br0", D, 75)]), [175], "counted twice");
        // Last seen before the reset lower than the sum then (counted since the audit).
        let mut t = Totals::default();
        t.fold(&[b("br0", D, 90)], &|_| true);
        t.fold_reset(&[b("br0", D, 30)]);
        t.fold(&[b("br0", D, 70)], &|_| true);
        assert_eq!(packets(&t, &[b("br0", D, 70)]), [100]);
    }

    #[test]
    fn a_partial_fold_leaves_the_series_it_did_not_see_alone() {
        let mut t = Totals::default();
        t.fold(&[b("br0", D, 10), b("br1", D, 7)], &|_| true);
        // br0's chain is read before an in-place batch flushes it (12), then after (0):
        // br1's chain was not read either time and keeps counting (9 later).
        t.fold_seen(&[b("br0", D, 12)]);
        t.fold_seen(&[b("br0", D, 0)]);
        assert_eq!(packets(&t, &[b("br0", D, 0), b("br1", D, 9)]), [12, 9]);
        // A whole fold later: br1 was never taken as reset (no double count).
        t.fold(&[b("br0", D, 3), b("br1", D, 9)], &|_| true);
        assert_eq!(packets(&t, &[b("br0", D, 3), b("br1", D, 9)]), [15, 9]);
        // Control: the whole fold of the partial read would have taken br1 as reset.
        let mut whole = Totals::default();
        whole.fold(&[b("br0", D, 10), b("br1", D, 7)], &|_| true);
        whole.fold(&[b("br0", D, 12)], &|_| true);
        whole.fold(&[b("br0", D, 12), b("br1", D, 9)], &|_| true);
        assert_eq!(
            packets(&whole, &[b("br1", D, 9)])[0],
            16,
            "9 counted, 16 claimed"
        );
    }

    #[test]
    fn totals_only_go_up_across_rewrites_deletions_and_revokes() {
        assert!(crate::plan::GUARD_DROPS.iter().any(|(_, n)| *n == D));
        let mut t = Totals::default();
        let all = |_: &str| true;
        t.fold(&[b("br0", D, 5)], &all);
        assert_eq!(packets(&t, &[b("br0", D, 5)]), vec![5]);
        // The counter grew: no fold.
        t.fold(&[b("br0", D, 8)], &all);
        assert_eq!(packets(&t, &[b("br0", D, 8)]), vec![8]);
        // A rewrite: the counter starts again; what it had is kept.
        t.fold(&[b("br0", D, 2)], &all);
        assert_eq!(packets(&t, &[b("br0", D, 2)]), vec![10]);
        // The table deleted by another process: the series stays at its total.
        t.fold(&[], &all);
        assert_eq!(packets(&t, &[]), vec![10]);
        // Put back: counting goes on from there.
        t.fold(&[b("br0", D, 1)], &all);
        assert_eq!(packets(&t, &[b("br0", D, 1)]), vec![11]);
        // The interface is no longer guarded: its series goes.
        t.fold(&[], &|i| i != "br0");
        assert_eq!(packets(&t, &[]), Vec::<u64>::new());
    }

    /// A transaction folds just before and right after it rewrites: what was counted
    /// up to the rewrite is kept even when the new copy counts past it before the next
    /// audit (which alone could not see that the counter started again); a write that
    /// kept the rule (its counter goes on) folds nothing.
    #[test]
    fn folds_around_a_rewrite_keep_what_an_audit_would_miss() {
        let mut t = Totals::default();
        let all = |_: &str| true;
        t.fold(&[b("br0", D, 3)], &all); // an audit
        t.fold(&[b("br0", D, 7)], &all); // before a rewrite
        t.fold(&[b("br0", D, 0)], &all); // read back after it
        t.fold(&[b("br0", D, 9)], &all); // the next audit: 9 since the rewrite
        assert_eq!(packets(&t, &[b("br0", D, 9)]), vec![16]);
        t.fold(&[b("br0", D, 10)], &all); // before a write that keeps the rule
        t.fold(&[b("br0", D, 10)], &all); // read back: the same rule
        assert_eq!(packets(&t, &[b("br0", D, 12)]), vec![19]);
    }
}
