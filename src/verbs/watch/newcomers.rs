//! Interfaces a pattern matches that appeared while watch runs (a CNI's pod veths):
//! their grants guard them at once, but watch opens them only [`SETTLE`] after it
//! first saw them.
//!
//! Why: what loopgate records as an interface's original `route_localnet`, and puts
//! back on revoke, must be what its owner set up. A CNI plugin (Calico) writes
//! `route_localnet=1` on the veth right after creating it; if watch opened the veth
//! first, it would record 0 and a later revoke would close an interface the CNI
//! opened. A write of the value already there leaves no trace (the kernel sends no
//! event for it, and 1 is 1), so nothing at revoke time can tell the CNI's 1 from
//! loopgate's: the original has to be read after the owner's set-up. Meanwhile the
//! grant is in the table, so an owner that opens the interface finds the guard in
//! place (never open without the guard); the engine leaves a held-back device as it is
//! ([`crate::txn::Target::held_back`]) and records its original when it opens it. A
//! CNI that writes later than [`SETTLE`] after the interface appeared is not waited
//! for (documented in docs/behaviour.md).
//!
//! Interfaces present when watch starts, and named (not pattern) interfaces, are not
//! held back: the first are set up already; a re-created named interface (a runtime's
//! bridge) is followed by the runtime's own settling ([`crate::spec::Host::unsettled`]).

use crate::spec::Spec;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How long after watch first saw a pattern-matched interface it waits before opening
/// it: long enough for a CNI's own writes right after it creates the veth, short
/// against a pod's start.
pub(super) const SETTLE: Duration = Duration::from_secs(1);

/// The interfaces watch has seen, by name: the device (ifindex) and when watch first
/// saw it, `None` for those present at its first pass.
#[derive(Debug, Default)]
pub struct Newcomers {
    seen: BTreeMap<String, (Option<u32>, Option<Instant>)>,
    started: bool,
}

impl Newcomers {
    /// Updates what was seen with the interfaces `names` of this pass (ifindexes by
    /// `ifindex_of`) and returns those matched by a pattern of `specs` that appeared
    /// less than [`SETTLE`] before `now`. A name that now names another device counts
    /// as appearing now.
    pub fn settling<'a>(
        &mut self,
        names: impl Iterator<Item = &'a String>,
        specs: &[&Spec],
        ifindex_of: impl Fn(&str) -> Option<u32>,
        now: Instant,
    ) -> BTreeSet<String> {
        let patterns: Vec<&&Spec> = specs.iter().filter(|s| s.is_pattern()).collect();
        let first = !std::mem::replace(&mut self.started, true);
        let mut present = BTreeSet::new();
        let mut settling = BTreeSet::new();
        for name in names {
            present.insert(name.clone());
            let known = self.seen.get(name).copied();
            if !first && !patterns.iter().any(|s| s.matches(name)) {
                // Only pattern matches are tracked after the first pass: the lookup is
                // one system call per interface.
                if known.is_none() {
                    self.seen.insert(name.clone(), (None, None));
                }
                continue;
            }
            let index = ifindex_of(name);
            let since = match known {
                _ if first => None,
                Some((Some(was), since)) if Some(was) == index => since,
                // Recorded before a pattern matched it: present since then.
                Some((None, since)) => since,
                _ => Some(now),
            };
            self.seen.insert(name.clone(), (index, since));
            if since.is_some_and(|t| now.duration_since(t) < SETTLE) {
                settling.insert(name.clone());
            }
        }
        self.seen.retain(|n, _| present.contains(n));
        settling
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::Proto;

    fn spec(interface: &str) -> Spec {
        Spec {
            source: crate::spec::Source::Cli,
            name: None,
            interface: interface.into(),
            network: None,
            proto: Proto::Tcp,
            port: 3306,
            to: "127.0.0.1:3306".parse().unwrap(),
            listen: None,
            host_gateway: false,
            allow: vec!["192.0.2.0/24".parse().unwrap()],
            origin: None,
        }
    }

    #[test]
    fn a_veth_matched_by_a_pattern_settles_for_a_while_after_it_appears() {
        let mut n = Newcomers::default();
        let cali = spec("cali*");
        let named = spec("br0");
        let specs = [&cali, &named];
        let t0 = Instant::now();
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let index = |name: &str| Some(name.len() as u32 + u32::from(name.ends_with('x')));
        // Present at the first pass: not held back.
        let first = names(&["br0", "cali0"]);
        assert!(n.settling(first.iter(), &specs, index, t0).is_empty());
        // A new veth and a new named bridge: only the veth settles.
        let later = names(&["br0", "br1", "cali0", "cali1"]);
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(
            n.settling(later.iter(), &specs, index, t1),
            ["cali1".to_string()].into()
        );
        let t2 = t1 + SETTLE / 2;
        assert_eq!(n.settling(later.iter(), &specs, index, t2).len(), 1);
        let t3 = t1 + SETTLE;
        assert!(n.settling(later.iter(), &specs, index, t3).is_empty());
        // Gone and back (another device, here another index): settles again.
        let gone = names(&["br0", "cali0"]);
        assert!(n.settling(gone.iter(), &specs, index, t3).is_empty());
        assert_eq!(n.settling(later.iter(), &specs, index, t3).len(), 1);
        let renumbered = |name: &str| index(name).map(|i| i + 100);
        let t4 = t3 + SETTLE;
        assert_eq!(
            n.settling(later.iter(), &specs, renumbered, t4),
            ["cali0".to_string(), "cali1".to_string()].into()
        );
    }
}
