//! Since when each spec has been pending, so that pending turns into a warning after a
//! grace period: a typo in a policy (`docker_network: myproj_defualt`) must not stay
//! green for ever, while a bridge that a runtime re-creates, or a pattern that matches
//! nothing yet, is rightly waiting.
//!
//! Kept in the namespace's state directory ([`FILE`]) by `audit`: the first audit that
//! sees a spec pending records the time; later ones measure from it. A spec that is
//! served again leaves the record; those seen served are remembered while they exist
//! (a runtime network that was there and is gone is a project that is down, not a
//! typo). The grace is [`DEFAULT_GRACE`] seconds, or `LOOPGATE_PENDING_GRACE`.
//!
//! The record is in /run and goes with a reboot: a project that is down at boot looks
//! like a network never seen. So the warning claims no typo: it says the network does
//! not exist, "a typo, or the project is down", beside the runtime's networks that do,
//! closest first.

use crate::state::Store;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The side file of the state directory (JSON).
pub const FILE: &str = "pending-since.json";

/// How long a spec may be pending before `audit` warns, in seconds, by default: long
/// enough for a runtime to re-create a bridge, short enough for a typo to show.
pub const DEFAULT_GRACE: u64 = 60;

/// The grace period in seconds: `LOOPGATE_PENDING_GRACE`, else [`DEFAULT_GRACE`].
/// Errors (bad input): the variable is not a whole number of seconds.
pub fn grace() -> anyhow::Result<u64> {
    match std::env::var("LOOPGATE_PENDING_GRACE") {
        Err(_) => Ok(DEFAULT_GRACE),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(n) => Ok(n),
            Err(_) => {
                crate::bad_input!("LOOPGATE_PENDING_GRACE={v:?} is not a whole number of seconds")
            }
        },
    }
}

/// The record: since when each pending spec (by label) is pending, in seconds since
/// the epoch, and the specs seen served.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    since: BTreeMap<String, u64>,
    served: BTreeSet<String>,
}

impl Record {
    /// The record in `store`'s directory; empty when there is none or it is unreadable.
    pub fn load(store: &Store) -> Record {
        store
            .read_aside(FILE)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Notes what is pending (`pending`) and what is asked for (`specs`) at `now`
    /// (seconds since the epoch); returns how long each pending one has been so, and
    /// which of them were seen served before.
    pub fn note(
        &mut self,
        pending: &[String],
        specs: &[String],
        now: u64,
    ) -> (BTreeMap<String, u64>, BTreeSet<String>) {
        let pending_set: BTreeSet<&String> = pending.iter().collect();
        let was_served: BTreeSet<String> = pending
            .iter()
            .filter(|p| self.served.contains(*p))
            .cloned()
            .collect();
        self.since.retain(|k, _| pending_set.contains(k));
        for p in pending {
            self.since.entry(p.clone()).or_insert(now);
        }
        self.served.retain(|s| specs.contains(s));
        for s in specs {
            if !pending_set.contains(s) {
                self.served.insert(s.clone());
            }
        }
        let ages = self
            .since
            .iter()
            .map(|(k, t)| (k.clone(), now.saturating_sub(*t)))
            .collect();
        (ages, was_served)
    }

    /// Writes the record to `store`'s directory.
    pub fn save(&self, store: &Store) -> anyhow::Result<()> {
        store.write_aside(FILE, &serde_json::to_vec(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_run_from_the_first_sight_and_a_served_spec_is_remembered() {
        let mut r = Record::default();
        let specs = ["a".to_string(), "typo".to_string()];
        let (ages, served) = r.note(&["typo".into()], &specs, 100);
        assert_eq!(ages["typo"], 0);
        assert!(served.is_empty());
        let (ages, _) = r.note(&["typo".into()], &specs, 170);
        assert_eq!(ages["typo"], 70);
        // `a` was served; now its network is gone: pending, seen served before.
        let (ages, served) = r.note(&["a".into(), "typo".into()], &specs, 200);
        assert_eq!((ages["a"], ages["typo"]), (0, 100));
        assert!(served.contains("a") && !served.contains("typo"));
        // Served again: its record goes; a spec no longer asked for is forgotten.
        let (ages, _) = r.note(&[], &["a".to_string()], 300);
        assert!(ages.is_empty());
        assert!(!r.served.contains("typo"));
    }
}
