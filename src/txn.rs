//! Moving the host from one set of grants to another as one transaction.
//!
//! The order of steps is what keeps the promise "route_localnet is never 1 on a managed
//! interface without its guard": sysctls that go down are written before the rules
//! change, sysctls that go up after. Each step that succeeded registers its undo; when
//! a later step fails the undos run in reverse, which restores the same order in the
//! other direction. If the previous table cannot be put back, the interfaces are closed
//! (route_localnet=0) rather than left open: failing closed beats failing open.

use crate::grant::Grant;
use crate::kernel::{conntrack, nft, sysctl};
use crate::plan;
use crate::ruleset::Ruleset;
use crate::state::{KnownFeatures, State, Store, STATE_VERSION};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One route_localnet write the transaction will make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlChange {
    pub iface: String,
    pub from: u8,
    pub to: u8,
}

impl fmt::Display for SysctlChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "net.ipv4.conf.{}.route_localnet: {} -> {}",
            self.iface, self.from, self.to
        )
    }
}

/// Everything a command would change, computed without changing anything.
#[derive(Debug)]
pub struct Change {
    pub old: State,
    pub grants: Vec<Grant>,
    pub ruleset: Option<Ruleset>,
    /// True when the kernel table already equals the planned one.
    pub table_matches: bool,
    /// When it does: the digest of its elements, to vouch for it at commit.
    pub matched_elements: Option<u64>,
    pub originals: BTreeMap<String, u8>,
    pub sysctls: Vec<SysctlChange>,
}

impl Change {
    /// Computes the change from the recorded state, the target grants and what the
    /// kernel holds now: `current` route_localnet values and loopgate's table.
    pub fn compute(
        old: State,
        grants: Vec<Grant>,
        current: &BTreeMap<String, u8>,
        kernel_table: Option<&nft::TableImage>,
    ) -> Change {
        let grants = crate::grant::normalize(grants);
        let managed: BTreeSet<String> = plan::interfaces(&grants).into_iter().collect();
        let mut originals = BTreeMap::new();
        let mut sysctls = Vec::new();
        for iface in &managed {
            // A managed interface that is gone (dockerd deleted it) has no sysctl to
            // write: keep its recorded original and leave it to `watch` or the next
            // apply, instead of failing every change on other interfaces.
            let Some(&now) = current.get(iface) else {
                if let Some(&original) = old.originals.get(iface) {
                    originals.insert(iface.clone(), original);
                }
                continue;
            };
            originals.insert(
                iface.clone(),
                old.originals.get(iface).copied().unwrap_or(now),
            );
            if now != 1 {
                sysctls.push(SysctlChange {
                    iface: iface.clone(),
                    from: now,
                    to: 1,
                });
            }
        }
        for (iface, &original) in &old.originals {
            if managed.contains(iface) {
                continue;
            }
            // An interface that is gone has nothing left to restore.
            if let Some(&now) = current.get(iface) {
                if now != original {
                    sysctls.push(SysctlChange {
                        iface: iface.clone(),
                        from: now,
                        to: original,
                    });
                }
            }
        }
        let ruleset = plan::ruleset(&grants);
        let (table_matches, matched_elements) = match (kernel_table, &ruleset) {
            (None, None) => (true, None),
            (Some(have), Some(want)) => {
                let want = nft::planned_image(want);
                match *have == want {
                    true => (true, want.elements.digest()),
                    false => (false, None),
                }
            }
            _ => (false, None),
        };
        Change {
            old,
            grants,
            ruleset,
            table_matches,
            matched_elements,
            originals,
            sysctls,
        }
    }

    /// True when the host already matches: nothing would be written.
    pub fn is_noop(&self) -> bool {
        self.table_matches
            && self.sysctls.is_empty()
            && self.old.pending.is_none()
            && self.old.grants == self.grants
            && self.old.originals == self.originals
    }

    /// Grants that exist now and not after, or whose allowed sources changed.
    pub fn revoked(&self) -> Vec<(&Grant, Option<&Grant>)> {
        self.old
            .grants
            .iter()
            .filter_map(|old| {
                let new = self.grants.iter().find(|g| g.key() == old.key());
                match new {
                    Some(n) if n.allow == old.allow && n.to == old.to => None,
                    _ => Some((old, new)),
                }
            })
            .collect()
    }

    /// A human summary of the change, one line per item.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        for g in &self.grants {
            match self.old.grants.iter().find(|o| o.key() == g.key()) {
                None => out.push(format!("add grant {g}")),
                Some(o) if o != g => out.push(format!("change grant {g}")),
                _ => {}
            }
        }
        for o in &self.old.grants {
            if !self.grants.iter().any(|g| g.key() == o.key()) {
                out.push(format!("remove grant {o}"));
            }
        }
        for s in &self.sysctls {
            out.push(format!("set {s}"));
        }
        if !self.table_matches {
            match &self.ruleset {
                Some(r) => out.push(format!(
                    "replace table ip {} ({} sets, {} maps, {} chains, {} rules)",
                    crate::ruleset::TABLE,
                    r.sets.len(),
                    r.maps.len(),
                    r.chains.len(),
                    r.rule_count()
                )),
                None => out.push(format!("remove table ip {}", crate::ruleset::TABLE)),
            }
        }
        if self.old.pending.is_some() {
            out.push("finish an interrupted transaction".to_string());
        }
        out
    }
}

/// Reads the route_localnet values a change depends on.
pub fn current_sysctls(old: &State, grants: &[Grant]) -> BTreeMap<String, u8> {
    let mut ifaces: BTreeSet<String> = old.originals.keys().cloned().collect();
    ifaces.extend(grants.iter().map(|g| g.iface.clone()));
    ifaces
        .into_iter()
        .filter_map(|i| sysctl::read(&i).ok().map(|v| (i, v)))
        .collect()
}

/// What a finished transaction did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub connections_cut: usize,
}

enum Undo {
    StateFile(Option<Vec<u8>>),
    Sysctl { iface: String, value: u8 },
    Table,
}

/// Applies `change` to the host; on failure undoes every step that succeeded.
pub fn execute(store: &Store, change: &Change, snapshot: &nft::Snapshot) -> Result<Outcome> {
    // Refuse up front, with the missing feature named, rather than fail halfway; once
    // per boot for each feature (the test hook always probes).
    if let (false, Some(ruleset)) = (change.table_matches, &change.ruleset) {
        let needs = nft::features(ruleset);
        if crate::failpoint::armed("probe") || !KnownFeatures::cover(&needs) {
            nft::probe(ruleset).context("kernel feature check failed; nothing was changed")?;
            KnownFeatures::remember(&needs);
        }
    }
    let mut undo: Vec<Undo> = Vec::new();
    match run_steps(store, change, snapshot.generation(), &mut undo) {
        Ok(outcome) => Ok(outcome),
        Err(err) => {
            let rollback = roll_back(store, undo, snapshot, change);
            match rollback {
                Ok(()) => Err(err.context("rolled back: the ruleset and sysctls are as they were")),
                Err(rb) => Err(err.context(format!("ROLLBACK INCOMPLETE ({rb:#})"))),
            }
        }
    }
}

/// Runs one step: the test hooks can fail it before it starts or crash right after it.
fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let after = format!("after-{name}");
    let result = crate::failpoint::check(name)
        .and_then(|_| f())
        .and_then(|v| crate::failpoint::check(&after).map(|_| v))
        .with_context(|| format!("step {name} failed"));
    crate::failpoint::crash_point(&after);
    result
}

fn run_steps(
    store: &Store,
    change: &Change,
    generation: u32,
    undo: &mut Vec<Undo>,
) -> Result<Outcome> {
    // 1. Journal: record originals before any sysctl moves, so a crash cannot lose them.
    undo.push(Undo::StateFile(store.read_raw()?));
    step("journal", || {
        let mut originals = change.old.originals.clone();
        for (i, v) in &change.originals {
            originals.entry(i.clone()).or_insert(*v);
        }
        store.save(&State {
            version: STATE_VERSION,
            grants: change.old.grants.clone(),
            originals,
            pending: Some(change.grants.clone()),
            vouch: change.old.vouch,
        })
    })?;

    // 2. Close first: sysctls going down are written while the old guards still stand.
    step("sysctl-lower", || {
        for s in change.sysctls.iter().filter(|s| s.to < s.from) {
            sysctl::write(&s.iface, s.to)?;
            undo.push(Undo::Sysctl {
                iface: s.iface.clone(),
                value: s.from,
            });
        }
        Ok(())
    })?;

    // 3. The whole table in one atomic batch.
    let vouch = if change.table_matches {
        // Unchanged: it equalled the plan when read at `generation`.
        change.matched_elements.map(|elements| nft::Vouch {
            generation,
            elements,
        })
    } else {
        // Registered before the attempt: should the batch commit and its reply be lost,
        // the rollback must still put the old table back. Restoring an unchanged table
        // is harmless.
        undo.push(Undo::Table);
        step("ruleset", || nft::apply(change.ruleset.as_ref()))?
    };

    // 4. Open last: only now that the guards are in place.
    step("sysctl-raise", || {
        for s in change.sysctls.iter().filter(|s| s.to > s.from) {
            sysctl::write(&s.iface, s.to)?;
            undo.push(Undo::Sysctl {
                iface: s.iface.clone(),
                value: s.from,
            });
        }
        Ok(())
    })?;

    // 5. Cut flows the new rules no longer allow.
    let cut = step("conntrack", || cut_revoked_flows(change))?;

    // 6. Commit.
    step("commit", || {
        store.save(&State {
            version: STATE_VERSION,
            grants: change.grants.clone(),
            originals: change.originals.clone(),
            pending: None,
            vouch,
        })
    })?;
    Ok(Outcome {
        connections_cut: cut,
    })
}

fn cut_revoked_flows(change: &Change) -> Result<usize> {
    let revoked = change.revoked();
    if revoked.is_empty() || conntrack::count() == Some(0) {
        return Ok(0);
    }
    let flows = conntrack::list()?;
    let doomed: Vec<conntrack::Flow> = flows
        .into_iter()
        .filter(|f| {
            revoked.iter().any(|(old, new)| {
                conntrack::matches(f, old.listen, old.proto, old.port)
                    && match new {
                        None => true,
                        Some(n) => n.to != old.to || !n.allow.iter().any(|net| net.contains(f.src)),
                    }
            })
        })
        .collect();
    conntrack::delete(&doomed)
}

fn roll_back(
    store: &Store,
    undo: Vec<Undo>,
    snapshot: &nft::Snapshot,
    change: &Change,
) -> Result<()> {
    let mut errors = Vec::new();
    let mut table_restored = true;
    for u in undo.into_iter().rev() {
        let result = match &u {
            Undo::Sysctl { iface, value } => {
                // Re-opening an interface is only safe if its guards are back.
                if *value == 1 && !table_restored {
                    continue;
                }
                sysctl::write(iface, *value)
            }
            Undo::Table => {
                let r = snapshot.restore();
                table_restored = r.is_ok();
                r.context("restoring the previous table")
            }
            Undo::StateFile(bytes) => store.write_raw(bytes.as_deref()),
        };
        if let Err(e) = result {
            errors.push(format!("{e:#}"));
        }
    }
    if !table_restored {
        // Fail closed: no interface loopgate touched stays open without known guards.
        for iface in change.originals.keys().chain(change.old.originals.keys()) {
            if sysctl::read(iface).is_ok_and(|v| v == 1) {
                if let Err(e) = sysctl::write(iface, 0) {
                    errors.push(format!("{e:#}"));
                }
            }
        }
        errors.push("the previous table could not be restored, so route_localnet was turned off on every interface loopgate manages".into());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(errors.join("; "))
    }
}
