//! Running a [`Change`] on the host in the order that keeps the guard promise (close
//! first, journal before mutation, the table in and read back before anything opens),
//! each step registering its undo, and [`roll_back`]: the undos in reverse, failing
//! closed when the old table cannot be put back.

use super::cut_flows::cut_flows;
use super::{Change, SysctlChange};
use crate::kernel::nft;
use crate::kernel::seam::{Kernel, TableSnapshot};
use crate::kernel::sysctl;
use crate::state::{Original, State, Store, STATE_VERSION};
use anyhow::{Context, Result};

/// What a finished transaction did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Conntrack entries deleted (revoked grants, and flows that reached 127/8 while
    /// the guard was gone).
    pub connections_cut: usize,
    /// Steps that failed without failing the change, one line each, for stderr.
    pub warnings: Vec<String>,
}

pub(super) enum Undo {
    StateFile(Option<Vec<u8>>),
    Sysctl {
        iface: String,
        ifindex: u32,
        value: i32,
    },
    Table,
}

/// Applies `change` to the host through `kernel`; on failure undoes every step that
/// succeeded. `snapshot` is the table as read when the change was computed: what a
/// rollback puts back.
pub fn execute<K: Kernel>(
    kernel: &K,
    store: &Store,
    change: &Change,
    snapshot: &K::Snapshot,
) -> Result<Outcome> {
    // Refuse up front, with the missing feature named, rather than fail halfway.
    if let (false, Some(ruleset)) = (change.table_matches, &change.ruleset) {
        if let Err(err) = kernel.probe(ruleset) {
            if !change.guard_lost {
                return Err(err.context("kernel feature check failed; nothing was changed"));
            }
            // The guard is already gone: refusing must not leave the interfaces open.
            let closed = roll_back(kernel, store, Vec::new(), snapshot, change);
            return Err(err.context(match closed {
                Ok(()) => "kernel feature check failed; loopgate's table had been deleted or altered, so route_localnet was turned off on the interfaces it manages".to_string(),
                Err(e) => format!("kernel feature check failed; closing the interfaces whose guard is gone also failed ({e:#})"),
            }));
        }
    }
    if !change.table_matches && snapshot.counted() {
        // What the guards counted up to now, before the write starts them again (a
        // table taken as committed was not read: `write_table` reads what it resets).
        crate::audit::totals::fold_counters(store, &snapshot.counters());
    }
    let mut undo: Vec<Undo> = Vec::new();
    match run_steps(kernel, store, change, snapshot, &mut undo) {
        Ok(outcome) => {
            // Committed, nothing left to roll back: the list files only the old state
            // referred to can go (during the change its rollback might have needed
            // them). Housekeeping: a failure leaves them for the next commit.
            let _ = store.collect_lists();
            Ok(outcome)
        }
        Err(err) => {
            let rollback = roll_back(kernel, store, undo, snapshot, change);
            match rollback {
                Ok(()) if change.guard_lost => Err(err.context(
                    "rolled back, except that route_localnet stays 0 on the interfaces loopgate manages: loopgate's table had been deleted or altered before this command, and reopening them without it would leave them unguarded",
                )),
                Ok(()) => Err(err.context("rolled back: the ruleset and sysctls are as they were")),
                Err(rb) => Err(err.context(format!("ROLLBACK INCOMPLETE ({rb:#})"))),
            }
        }
    }
}

/// Runs one step: the test hooks can fail it before it starts or crash right after it.
pub(super) fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let after = format!("after-{name}");
    let result = crate::failpoint::check(name)
        .and_then(|_| f())
        .and_then(|v| crate::failpoint::check(&after).map(|_| v))
        .with_context(|| format!("step {name} failed"));
    crate::failpoint::crash_point(&after);
    result
}

/// Writes `changes` in order, registering the undo of each before the next.
pub(super) fn write_sysctls<K: Kernel>(
    kernel: &K,
    changes: &[SysctlChange],
    undo: &mut Vec<Undo>,
) -> Result<()> {
    for s in changes {
        if crate::failpoint::armed(&format!("sysctl-write-{}-{}", s.iface, s.to)) {
            anyhow::bail!(
                "injected failure writing route_localnet={} on {}",
                s.to,
                s.iface
            );
        }
        kernel.write_route_localnet(&s.iface, s.ifindex, s.to)?;
        undo.push(Undo::Sysctl {
            iface: s.iface.clone(),
            ifindex: s.ifindex,
            value: s.from,
        });
    }
    Ok(())
}

/// The records the journal keeps while a change runs: every device whose value may
/// move, with the value it had before loopgate, so a crash at any later point loses
/// none of them. Earlier records win: they are older truths about the same device.
pub(super) fn journal_originals(change: &Change) -> Vec<Original> {
    let mut all = change.old.originals.clone();
    for o in &change.originals {
        if !all.iter().any(|a| a.ifindex == o.ifindex) {
            all.push(o.clone());
        }
    }
    all.sort_by_key(|o| o.ifindex);
    all
}

pub(super) fn run_steps<K: Kernel>(
    kernel: &K,
    store: &Store,
    change: &Change,
    snapshot: &K::Snapshot,
    undo: &mut Vec<Undo>,
) -> Result<Outcome> {
    let generation = snapshot.generation();
    // 0. The guard is gone: every second counts, and closing needs no new record (each
    //    device closed here has its original in the committed state already).
    //    A device that cannot be closed is no reason to stop: putting the guard back
    //    in front of it is then the only remedy left.
    let mut warnings = Vec::new();
    if change.guard_lost {
        step("sysctl-lower", || {
            for s in &change.lower {
                match write_sysctls(kernel, std::slice::from_ref(s), undo) {
                    Ok(()) => {}
                    Err(e) => warnings.push(format!(
                        "could not close {} while its guard was missing ({}); restoring the guard in front of it",
                        s.iface,
                        crate::error::one_line(&e)
                    )),
                }
            }
            Ok(())
        })?;
    }

    // 1. Journal: record originals before any sysctl moves, so a crash cannot lose them.
    undo.push(Undo::StateFile(store.read_raw()?));
    step("journal", || {
        store.save(&State {
            version: STATE_VERSION,
            grants: change.old.grants.clone(),
            originals: journal_originals(change),
            pending: Some(change.grants.clone()),
            vouch: change.old.vouch,
            writers: change.old.writers_with_me(),
            specs: change.old.specs.clone(),
            guards: change.old.guards.clone(),
            guarded: change.old.guarded.clone(),
            admitted: change.old.admitted.clone(),
        })
    })?;

    // 2. Close first: sysctls going down are written while the old guards still stand.
    if !change.guard_lost {
        step("sysctl-lower", || {
            write_sysctls(kernel, &change.lower, undo)
        })?;
    }

    // 3. The whole table in one atomic batch, then read back.
    let vouch = if change.table_matches {
        // Unchanged: it equalled the plan when read at `generation`.
        change.matched_elements.map(|elements| nft::Vouch {
            generation,
            elements,
            plan: change.want.as_deref().map(nft::TableImage::digest),
        })
    } else {
        // Registered before the attempt: should the batch commit and its reply be lost,
        // the rollback must still put the old table back. Restoring an unchanged table
        // is harmless.
        undo.push(Undo::Table);
        let (vouch, read_back) = step("ruleset", || {
            write_table(kernel, store, change, snapshot, generation)
        })?;
        // The guards' counters of the table as written (0 where a rule is new): a
        // counter lower than the one read before is folded into the running totals.
        if let ReadBack::Whole(c) = read_back {
            crate::audit::totals::fold_counters(store, &c);
        }
        // The vouch names the plan written, rules and all (see `Vouch::plan`).
        vouch.map(|v| v.for_plan(change.want.as_deref()))
    };

    // 4. Open last: only now that the guards are in place and read back.
    step("sysctl-raise", || {
        write_sysctls(kernel, &change.raise, undo)
    })?;

    // 5. Cut flows the new rules no longer allow, and any that reached 127.0.0.0/8
    //    while the guard was gone.
    let cut = step("conntrack", || cut_flows(kernel, change))?;

    // 6. Commit.
    step("commit", || {
        store.save(&State {
            version: STATE_VERSION,
            grants: change.grants.clone(),
            originals: change.originals.clone(),
            pending: None,
            vouch,
            writers: change.old.writers_with_me(),
            specs: change.specs.clone(),
            guards: change.guards.clone(),
            guarded: change.guarded.clone(),
            admitted: change.admitted.clone(),
        })
    })?;
    if let (Some(ruleset), Some(want)) = (&change.ruleset, &change.want) {
        let from = (
            change.grants.clone(),
            change.guarded.clone(),
            change.admitted.clone(),
        );
        store.remember_plan(from, ruleset.clone(), want.clone());
    }
    Ok(Outcome {
        connections_cut: cut,
        warnings,
    })
}

/// The counters a read back after a batch found: of every rule (a whole rewrite), or
/// none to fold (in place: what the batch reset was folded as it committed).
enum ReadBack {
    Whole(Vec<nft::RuleCounter>),
    InPlace,
}

/// Writes the planned table and reads it back: in place from `change.base` when the
/// kernel held exactly that plan (only what differs, bound to the generation the table
/// was read at), read back as far as the batch wrote; else, or when the in-place batch
/// is refused, rewritten whole and read back whole. Counters a write starts again are
/// folded into the totals first when `snapshot` did not read them.
fn write_table<K: Kernel>(
    kernel: &K,
    store: &Store,
    change: &Change,
    snapshot: &K::Snapshot,
    generation: u32,
) -> Result<(Option<nft::Vouch>, ReadBack)> {
    let digest = change.want.as_ref().and_then(|w| w.elements.digest());
    if let (Some(from), Some(to), Some(digest)) = (&change.base, &change.ruleset, digest) {
        let touched = nft::touched(from, to);
        // What the counting chains the batch flushes or deletes have counted: once it
        // commits, they start again while the other chains of the same series (an
        // interface's drops span its guard chain and its targets' chains) go on, so
        // this part is moved into the totals (`Totals::fold_reset`).
        let reset = crate::plan::counting_chains(from, Some(&touched.reset));
        let reset_counts: Vec<nft::RuleCounter> = match (reset.is_empty(), snapshot.counted()) {
            (true, _) => Vec::new(),
            (false, true) => {
                let reset: std::collections::HashSet<&str> =
                    reset.iter().map(String::as_str).collect();
                snapshot
                    .counters()
                    .into_iter()
                    .filter(|c| reset.contains(c.chain.as_str()))
                    .collect()
            }
            (false, false) => kernel
                .read_chains(&reset)
                .map(|r| r.counters)
                .unwrap_or_default(),
        };
        if let Ok(vouch) = kernel.change_table(from, generation, to, digest) {
            crate::audit::totals::fold_reset(store, &reset_counts);
            verify_in_place(kernel, change, &vouch, &touched.written)?;
            return Ok((Some(vouch), ReadBack::InPlace));
        }
        // Refused, or its reply lost: rewritten whole below, to the same plan.
    }
    if !snapshot.counted() {
        // Every rule starts again: what the table taken as committed counted is read
        // now, from the chains of the plan it holds that count (the batch above, when
        // its reply was lost, changed none of those it did not flush).
        match &change.base {
            Some(from) => keep_counts(kernel, store, &crate::plan::counting_chains(from, None)),
            None => {
                if let Ok(whole) = kernel.read_table(None) {
                    crate::audit::totals::fold_counters(store, &whole.counters());
                }
            }
        }
    }
    let vouch = kernel.apply_table(change.ruleset.as_deref())?;
    let counters = verify_table(kernel, change, vouch.as_ref())?;
    Ok((vouch, ReadBack::Whole(counters)))
}

/// Folds what the chains `names` counted into the totals before a rewrite starts them
/// again; `names` holds every chain of each series in them (all the counting chains of
/// the plan). A failed read loses those counts, not the change (see
/// [`crate::audit::totals`]).
fn keep_counts<K: Kernel>(kernel: &K, store: &Store, names: &[String]) {
    if names.is_empty() {
        return;
    }
    if let Ok(read) = kernel.read_chains(names) {
        crate::audit::totals::fold_counters_seen(store, &read.counters);
    }
}

/// Reads back what an in-place batch wrote (the chains `written`, their rules and the
/// table object) and insists it is as planned; the rest of the table is vouched for
/// by the generation the batch created (`vouch`): nothing else has committed since, so
/// it is what the kernel held when the batch was bound to it. When something did
/// commit since, the table is read back whole.
fn verify_in_place<K: Kernel>(
    kernel: &K,
    change: &Change,
    vouch: &nft::Vouch,
    written: &[String],
) -> Result<()> {
    let want = change
        .want
        .as_ref()
        .context("an in-place change without a planned table")?;
    let read = kernel.read_chains(written)?;
    if read.generation != vouch.generation {
        return verify_table(kernel, change, Some(vouch)).map(|_| ());
    }
    let (chains, rules) = nft::expected_chains(want, written);
    if read.table.as_deref() != Some(want.table.as_str())
        || read.chains != chains
        || read.rules != rules
    {
        anyhow::bail!(
            "table ip {} does not read back as planned right after it was written",
            crate::ruleset::TABLE
        );
    }
    Ok(())
}

/// Reads the table back after a batch and insists that it is the planned one: an ACK
/// says the batch committed, not that nothing changed it since. Elements are vouched for
/// by the generation when nothing else committed in between (cheap), read otherwise.
/// Returns the rules' counters as read back.
pub(super) fn verify_table<K: Kernel>(
    kernel: &K,
    change: &Change,
    vouch: Option<&nft::Vouch>,
) -> Result<Vec<nft::RuleCounter>> {
    let trust = vouch.zip(change.want.as_deref());
    let snapshot = kernel.read_table(trust)?;
    let have = snapshot.image();
    if have.as_ref() != change.want.as_deref() {
        anyhow::bail!(
            "table ip {} does not read back as planned right after it was written",
            crate::ruleset::TABLE
        );
    }
    Ok(snapshot.counters())
}

pub(super) fn roll_back<K: Kernel>(
    kernel: &K,
    store: &Store,
    undo: Vec<Undo>,
    snapshot: &K::Snapshot,
    change: &Change,
) -> Result<()> {
    let mut errors = Vec::new();
    // Reopening an interface is only safe behind a guard known to be good: the table
    // as it was, unless that table was itself the broken one.
    let mut guard_good = !change.guard_lost;
    // A device this change opened that could not be closed again: the previous table
    // does not guard it, so the new one, which does, stays.
    let mut stuck_open: Vec<String> = Vec::new();
    for u in undo.into_iter().rev() {
        let result = match &u {
            Undo::Sysctl {
                iface,
                ifindex,
                value,
            } => {
                if sysctl::is_open(*value) && !guard_good {
                    continue;
                }
                let r = kernel.write_route_localnet(iface, *ifindex, *value);
                if r.is_err() && !sysctl::is_open(*value) {
                    stuck_open.push(iface.clone());
                }
                r
            }
            Undo::Table if !stuck_open.is_empty() => {
                // Nothing may be reopened behind a table that was not put back.
                guard_good = false;
                errors.push(format!(
                    "kept the new table: {} could not be closed, and the previous table does not guard it",
                    stuck_open.join(", ")
                ));
                continue;
            }
            Undo::Table => {
                let r = kernel.restore(snapshot);
                guard_good = r.is_ok() && !change.guard_lost;
                r.context("restoring the previous table")
            }
            Undo::StateFile(bytes) => store.write_raw(bytes.as_deref()),
        };
        if let Err(e) = result {
            errors.push(format!("{e:#}"));
        }
    }
    if !guard_good {
        // Fail closed: no device loopgate touched or manages stays open without a
        // guard known to be good. One failure does not stop the others.
        let names = change.devices.values().map(|d| d.name.clone()).collect();
        let now = kernel
            .devices(&names, &change.devices.keys().copied().collect())
            .ok();
        for dev in change.devices.values() {
            // Gone: nothing to close. Unreadable: write 0 anyway (the write itself
            // checks that the name still denotes the device).
            let open = match &now {
                Some(now) => now
                    .get(&dev.ifindex)
                    .is_some_and(|d| sysctl::is_open(d.route_localnet)),
                None => true,
            };
            if open {
                if let Err(e) = kernel.write_route_localnet(&dev.name, dev.ifindex, 0) {
                    errors.push(format!("{e:#}"));
                }
            }
        }
        if !change.guard_lost && stuck_open.is_empty() {
            errors.push("the guard could not be restored, so route_localnet was turned off on every interface loopgate manages".into());
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(errors.join("; "))
    }
}
