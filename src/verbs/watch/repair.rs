//! One pass of watch: the fast close when another process changed the table, the
//! convergence to what is asked for through the one engine (or, without the state
//! lock, a judgement that can only close), the [`Stamp`] that makes an idle pass
//! free, the lines it logs, and the back-off of a repair that keeps failing.

use super::runtimes::CachedRuntimes;
use super::{PolicyFollower, SweepClock, LOCK_WAIT};
use crate::kernel::host::HostInterfaces;
use crate::kernel::monitor::Batch;
use crate::kernel::seam::Kernel;
use crate::kernel::sysctl;
use crate::spec::{self, Source, Spec};
use crate::state::{State, Store};
use crate::txn;
use crate::verbs::remember_intact;
use anyhow::Result;
use std::time::{Duration, Instant};

/// The first wait after a failed repair; it doubles with each failure that follows.
pub(super) const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// The longest wait between two attempts at a repair that keeps failing: what a
/// persistent failure costs (a pass is a few milliseconds of CPU) against how late a
/// repair comes once its cause is gone.
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A repair that keeps failing: its error as last logged, how often it repeated since,
/// and when the next attempt is due. A failed repair leaves the managed interfaces
/// closed (the transaction fails closed), so waiting longer costs only the grant.
pub(super) struct Failing {
    pub(super) error: String,
    pub(super) repeats: u32,
    pub(super) delay: Duration,
    pub(super) next: Instant,
}

impl Failing {
    /// The state after one pass that ended with `result` and logged `lines`, given the
    /// state before it. Logs one line per change of error (with how often the last
    /// one repeated) and one when a repair succeeds again; the lines of a pass that
    /// failed as the one before are not logged again.
    pub(super) fn after(
        before: Option<Failing>,
        result: Result<()>,
        lines: Vec<String>,
    ) -> Option<Failing> {
        let error = match result {
            Ok(()) => {
                for line in lines {
                    eprintln!("loopgate watch: {line}");
                }
                if let Some(f) = before {
                    eprintln!(
                        "loopgate watch: repaired after {} failed attempt(s) ({})",
                        f.repeats + 1,
                        f.error
                    );
                }
                return None;
            }
            Err(e) => crate::error::one_line(&e),
        };
        match before {
            Some(mut f) if f.error == error => {
                f.repeats += 1;
                f.delay = (f.delay * 2).min(BACKOFF_MAX);
                f.next = Instant::now() + f.delay;
                Some(f)
            }
            before => {
                if let Some(f) = before.filter(|f| f.repeats > 0) {
                    eprintln!(
                        "loopgate watch: the previous error repeated {} more time(s)",
                        f.repeats
                    );
                }
                for line in lines {
                    eprintln!("loopgate watch: {line}");
                }
                eprintln!(
                    "loopgate watch: repair failed: {error} (retrying with back-off up to {} s; logged again when the error changes)",
                    BACKOFF_MAX.as_secs()
                );
                Some(Failing {
                    error,
                    repeats: 0,
                    delay: BACKOFF_FIRST,
                    next: Instant::now() + BACKOFF_FIRST,
                })
            }
        }
    }
}

/// True when one of `batches` was not loopgate's: its generation is not one watch's own
/// commits created (`own`, [`Kernel::committed_here`]), and its pid is
/// neither this process's nor one of a loopgate run recorded in `state`'s writers. A
/// batch the kernel did not describe is foreign.
///
/// In a PID namespace the kernel's pid is one of the initial namespace and matches
/// nothing here: watch's own commits are still known by their generation, while
/// another loopgate run's commit counts as foreign (watch closes, then repairs: the
/// safe way to be wrong).
pub fn foreign(batches: &[Batch], state: Option<&State>, own: impl Fn(u32) -> bool) -> bool {
    let me = std::process::id();
    !batches.iter().all(|b| {
        b.generation.is_some_and(&own)
            || b.pid
                .is_some_and(|p| p == me || state.is_some_and(|s| s.writers.contains(&p)))
    })
}

/// The fast path for the worst case: another process just changed loopgate's table
/// (flushed, deleted, switched it dormant or edited it) while interfaces are open.
/// Every millisecond of that may be a hole, and the full repair plans and reads back
/// first (the kernel can take 10 ms to answer a read right after a large commit); this
/// closes every open managed device with a few sysctl writes and leaves the rest to the
/// repair that follows, which puts the table back, reads it back and reopens.
///
/// Without the state lock: closing is always safe, and no reader stuck behind a full
/// pipe (`audit | less`) may delay it. The state is read as it stands (`peeked`: a
/// rename replaces it whole), or the last one watch read (`known`, which `peeked`
/// replaces). Closing needs no journal: each device closed here has its original
/// recorded, from which the repair reopens it once the guard is back. Returns the log
/// lines.
pub fn close_if_foreign<K: Kernel>(
    kernel: &K,
    batches: &[Batch],
    peeked: Option<State>,
    known: &mut Option<State>,
) -> Result<Vec<String>> {
    if let Some(now) = peeked {
        *known = Some(now);
    }
    if !foreign(batches, known.as_ref(), |g| kernel.committed_here(g)) {
        return Ok(vec![]);
    }
    let Some(state) = known.as_ref() else {
        return Ok(vec![]);
    };
    Ok(close_managed(kernel, state)?
        .into_iter()
        .map(|line| format!("another process changed table ip loopgate; {line}"))
        .collect())
}

/// Closes every open device of `state`'s grants and records; returns the log lines.
/// One failed write does not stop the others; their errors are returned after.
pub fn close_managed<K: Kernel>(kernel: &K, state: &State) -> Result<Vec<String>> {
    if state.grants.is_empty() && state.originals.is_empty() {
        return Ok(vec![]);
    }
    let devices = txn::observe_devices(kernel, state, &state.grants)?;
    let mut closed = Vec::new();
    let mut errors = Vec::new();
    for dev in devices.values() {
        if sysctl::is_open(dev.route_localnet) {
            match kernel.write_route_localnet(&dev.name, dev.ifindex, 0) {
                Ok(()) => closed.push(dev.name.as_str()),
                Err(e) => errors.push(crate::error::one_line(&e)),
            }
        }
    }
    if !errors.is_empty() {
        anyhow::bail!(
            "closed [{}] but not the rest: {}",
            closed.join(", "),
            errors.join("; ")
        );
    }
    Ok(match closed.is_empty() {
        true => vec![],
        false => vec![format!(
            "closed route_localnet on [{}] first",
            closed.join(", ")
        )],
    })
}

/// What watch keeps from one pass to the next beside the state: when it last swept
/// stale namespace directories, and when it first saw each interface.
#[derive(Debug, Default)]
pub struct Clocks {
    /// See [`SweepClock`].
    pub sweeps: SweepClock,
    /// See [`super::Newcomers`].
    pub newcomers: super::Newcomers,
    /// See [`super::PendingLog`].
    pub pending: super::PendingLog,
    /// What the last pass's store kept for the next (see [`crate::state::Memo`]).
    pub memo: crate::state::Memo,
}

/// Brings the host back to the committed grants, if it drifted, through the one engine.
/// When another process holds the state lock for longer than `LOCK_WAIT` (1 s; a reader
/// stopped mid-output, a stopped loopgate), the table is judged against the last known
/// state without the lock, and the managed interfaces are closed if it is not intact.
/// What the pass did is appended to `log`, one line each, for the caller to print.
pub fn repair<K: Kernel>(
    kernel: &K,
    known: &mut Option<State>,
    policy: Option<&mut PolicyFollower>,
    quiet: &mut Option<Stamp>,
    runtimes: &crate::runtime::RuntimeCache,
    log: &mut Vec<String>,
    clocks: &mut Clocks,
) -> Result<()> {
    let host = HostInterfaces::read()?;
    let mut policy = policy;
    let (policy_specs, policy_guards, policy_seen) = match policy.as_deref_mut() {
        Some(p) => (p.specs(&host), p.guards.clone(), p.seen.clone()),
        None => (None, None, None),
    };
    // Nothing moved since a pass that found nothing to do: nothing to do again. This
    // is what an idle host costs: one generation request, a stat, the interface list
    // and the managed devices' sysctls.
    let stamp = match known.as_ref() {
        Some(state) => Stamp::now(kernel, state, &host, policy_seen).ok(),
        None => None,
    };
    // The grace of a pending grant runs out on a quiet host too.
    clocks.pending.tick(Instant::now(), log);
    if stamp.is_some() && stamp == *quiet {
        return Ok(());
    }
    // Something moved: the runtimes are asked again in the background, and this pass
    // goes on with their last answers (a changed answer wakes the next one).
    runtimes.refresh();
    // Veths a pattern matches that just appeared are guarded but not opened yet, so
    // that the original recorded is their owner's (see `newcomers`).
    let specs: Vec<&Spec> = policy_specs
        .iter()
        .flat_map(|p| p.iter())
        .chain(known.iter().flat_map(|s| s.specs.iter()))
        .collect();
    let settling = clocks.newcomers.settling(
        host.names(),
        &specs,
        crate::kernel::sysctl::ifindex_of,
        Instant::now(),
    );
    let host_now = CachedRuntimes {
        host: &host,
        runtimes,
        unsettled: std::cell::RefCell::new(settling.clone()),
    };
    let store = Store::open_exclusive_within(LOCK_WAIT)?;
    if let Some(store) = &store {
        store.adopt(std::mem::take(&mut clocks.memo));
    }
    let _ = clocks.sweeps.sweep(); // housekeeping: never fails a pass (see state::sweep_stale)
    let Some(store) = store else {
        let Some(state) = known.as_ref() else {
            return Ok(());
        };
        for line in judge_unlocked(kernel, state)? {
            eprintln!("loopgate watch: {line}");
        }
        return Ok(());
    };
    // Read again under the lock: `--persist` writes the policy files before it gives
    // the lock back, and the state it left must meet the files it wrote (else this
    // pass would put back what was just revoked).
    let (policy_specs, policy_guards) = match policy {
        Some(p) => (p.specs(&host), p.guards.clone()),
        None => (policy_specs, policy_guards),
    };
    *known = Some(store.load()?);
    let (lines, result, resolved) = repair_resolved(
        kernel,
        &store,
        &host_now,
        policy_specs.as_ref().map(|p| p.as_slice()),
        policy_guards.as_deref(),
    );
    if let Some((specs, pending)) = resolved {
        clocks.pending.note(&specs, &pending, Instant::now(), log);
    }
    // Quiet from here on only if this pass changed nothing (a pass that changed
    // something moved the generation; the next one checks it).
    // Nor while a veth settles: the pass that opens it is due when it has settled.
    *quiet = match (&result, lines.is_empty()) {
        (Ok(()), true) if settling.is_empty() => stamp,
        _ => None,
    };
    log.extend(lines);
    clocks.pending.tick(Instant::now(), log);
    if let Ok(state) = store.load() {
        *known = Some(state);
    }
    clocks.memo = store.take_memo();
    result
}

/// The pass of a repair that could not take the state lock within `LOCK_WAIT` (1 s): the
/// table is judged against `state` (the last one watch read) without the lock, and the
/// managed interfaces are closed if its guard is lost. Nothing else changes: the
/// lock's holder may be in the middle of a transaction. Returns the log lines.
pub fn judge_unlocked<K: Kernel>(kernel: &K, state: &State) -> Result<Vec<String>> {
    let target = txn::Target::recorded(state);
    let (change, _) = txn::observe_and_compute(kernel, state.clone(), target)?;
    if !change.guard_lost {
        return Ok(vec![]);
    }
    Ok(close_managed(kernel, state)?
        .into_iter()
        .map(|line| format!(
            "the state lock has been held by another process for over {} ms and table ip loopgate is not as loopgate left it; {line}",
            LOCK_WAIT.as_millis()
        ))
        .collect())
}

/// What one wake-up sees of everything a pass depends on, cheaply. Two equal stamps
/// mean nothing that could change the outcome of a pass moved in between: no commit
/// to any nftables table, no save of the state, no interface or address change, no
/// route_localnet change on a device loopgate manages, no change to the policy files.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamp {
    pub(super) generation: u32,
    pub(super) state: Option<(u64, u64, std::time::SystemTime)>,
    pub(super) host: HostInterfaces,
    pub(super) devices: std::collections::BTreeMap<u32, crate::kernel::sysctl::Device>,
    pub(super) policy: Option<Vec<(String, u64, std::time::SystemTime)>>,
}

impl Stamp {
    /// Reads the stamp now through `kernel`; `state` names the devices to read.
    pub fn now<K: Kernel>(
        kernel: &K,
        state: &State,
        host: &HostInterfaces,
        policy: Option<Vec<(String, u64, std::time::SystemTime)>>,
    ) -> Result<Stamp> {
        Ok(Stamp {
            generation: kernel.generation()?,
            state: Store::file_stamp(),
            host: host.clone(),
            devices: txn::observe_devices(kernel, state, &state.grants)?,
            policy,
        })
    }
}

/// What watch converges to: the command-line specs of `state` with the policy's specs
/// (`policy_specs` when watch follows a policy, else those recorded in `state`),
/// resolved against `host` now.
pub fn desired(
    state: &State,
    policy_specs: Option<&[Spec]>,
    host: &dyn spec::Host,
) -> (Vec<Spec>, spec::Resolved) {
    let specs: Vec<Spec> = match policy_specs {
        None => state.specs.clone(),
        Some(policy) => {
            let mut specs: Vec<Spec> = state
                .specs
                .iter()
                .filter(|s| s.source == Source::Cli)
                .cloned()
                .collect();
            spec::merge(&mut specs, policy.to_vec());
            specs
        }
    };
    let resolved = spec::resolve_keeping(&specs, host, &state.grants);
    (specs, resolved)
}

/// One convergence towards what is asked for (see [`desired`]); returns the log lines
/// and the outcome (an error after the transaction rolled back and failed closed).
pub fn repair_with<K: Kernel>(
    kernel: &K,
    store: &Store,
    host: &dyn spec::Host,
    policy_specs: Option<&[Spec]>,
    policy_guards: Option<&[spec::GuardSpec]>,
) -> (Vec<String>, Result<()>) {
    let (lines, result, _) = repair_resolved(kernel, store, host, policy_specs, policy_guards);
    (lines, result)
}

/// The specs asked for and those of them pending, as one pass resolved them.
type Seen = Option<(Vec<Spec>, Vec<spec::Pending>)>;

/// [`repair_with`], also returning what it resolved (for [`super::PendingLog`]).
fn repair_resolved<K: Kernel>(
    kernel: &K,
    store: &Store,
    host: &dyn spec::Host,
    policy_specs: Option<&[Spec]>,
    policy_guards: Option<&[spec::GuardSpec]>,
) -> (Vec<String>, Result<()>, Seen) {
    let started = Instant::now();
    let state = match store.load() {
        Ok(s) => s,
        Err(e) => return (vec![], Err(e), None),
    };
    let (specs, resolved) = desired(&state, policy_specs, host);
    let seen = Some((specs.clone(), resolved.pending.clone()));
    if state.grants.is_empty()
        && state.originals.is_empty()
        && state.pending.is_none()
        && resolved.grants.is_empty()
        && specs == state.specs
        && state.guards.is_empty()
        && state.guarded.is_empty()
        && policy_guards.is_none_or(|g| g.is_empty())
    {
        return (vec![], Ok(()), seen);
    }
    let guards: Vec<spec::GuardSpec> = match policy_guards {
        None => state.guards.clone(),
        Some(policy) => {
            let mut g: Vec<spec::GuardSpec> = state
                .guards
                .iter()
                .filter(|g| g.source == Source::Cli)
                .cloned()
                .chain(policy.iter().cloned())
                .collect();
            g.sort();
            g.dedup();
            g
        }
    };
    let target = txn::Target {
        grants: resolved.grants,
        guarded: spec::resolve_guards(&guards, host),
        specs,
        guards,
        held_back: host.unsettled(),
    };
    let (change, snapshot) = match txn::observe_and_compute_stored(kernel, store, state, target) {
        Ok(c) => c,
        Err(e) => {
            // The guard cannot be verified: watch never leaves an interface open on
            // trust. The next wake-up tries again and reopens once it reads back.
            let e = e.context("cannot read the host to verify the guard");
            let closed = store.load().and_then(|state| close_managed(kernel, &state));
            return match closed {
                Ok(lines) => (
                    lines
                        .into_iter()
                        .map(|l| format!("the guard cannot be verified; {l}"))
                        .collect(),
                    Err(e),
                    seen,
                ),
                Err(c) => (
                    vec![],
                    Err(e.context(format!("closing failed too: {c:#}"))),
                    seen,
                ),
            };
        }
    };
    if change.is_noop() {
        // Read back in full after a commit elsewhere: vouch for it from here on, or
        // every tick would read a large table back again.
        return (vec![], remember_intact(store, &change, &snapshot), seen);
    }
    let outcome = txn::execute(kernel, store, &change, &snapshot);
    let mut lines = match &outcome {
        Ok(_) => report(&change, started.elapsed().as_millis()),
        // What was planned did not happen: say only what holds (the error tells
        // whether it rolled back or failed closed).
        Err(_) => vec![format!(
            "could not converge ({}); see the error for what was rolled back or closed",
            change.describe().join("; ")
        )],
    };
    match outcome {
        Ok(o) => {
            lines.extend(o.warnings);
            if o.connections_cut > 0 {
                lines.push(format!(
                    "cut {} tracked connection(s) that reached 127.0.0.0/8 or a revoked grant",
                    o.connections_cut
                ));
            }
            (lines, Ok(()), seen)
        }
        Err(e) => (lines, Err(e), seen),
    }
}

/// What a repair did, one line each, as the operator reads it in the journal.
pub(super) fn report(change: &txn::Change, took_ms: u128) -> Vec<String> {
    let mut out = Vec::new();
    for r in &change.renamed {
        let closed = change.lower.iter().any(|s| s.ifindex == r.ifindex);
        out.push(format!(
            "{} (ifindex {}) is now called {} (renamed, or another device with its index); loopgate's guard matches the old name, so {}",
            r.was,
            r.ifindex,
            r.now,
            if closed {
                format!("{} is closed (loopgate had opened it)", r.now)
            } else {
                "its record is dropped and nothing is written".to_string()
            }
        ));
    }
    if change.old.pending.is_some() {
        out.push("an interrupted transaction was rolled back to the committed grants".into());
    }
    if change.guard_lost {
        let closed: Vec<&str> = change.lower.iter().map(|s| s.iface.as_str()).collect();
        out.push(format!(
            "table ip loopgate was missing or altered; closed route_localnet on [{}] first",
            closed.join(", ")
        ));
    }
    if !change.table_matches && change.guard_lost {
        out.push(format!(
            "table ip loopgate was missing or altered; restored in {took_ms} ms (read back as planned)"
        ));
    } else if !change.table_matches {
        out.push(format!(
            "table ip loopgate now serves {} grant(s) (what is asked for, on the interfaces that exist); in place in {took_ms} ms, read back as planned",
            change.grants.len()
        ));
    }
    out.extend(change.grant_changes().iter().map(|c| c.to_string()));
    for s in &change.raise {
        if change.guard_lost {
            out.push(format!(
                "route_localnet on {} reopened ({}) after verifying its guard",
                s.iface, s.to
            ));
        } else if !crate::kernel::sysctl::is_open(s.from) {
            // Only a device loopgate had opened (this very instance) and finds closed
            // was changed by hand; one with a grant before under another ifindex was
            // re-created; one without a grant before is opened for a new grant.
            let had_grant = change.old.grants.iter().any(|g| g.iface == s.iface);
            let same_device = change.old.originals.iter().any(|o| o.ifindex == s.ifindex);
            out.push(match (had_grant, same_device) {
                (true, true) => format!(
                    "route_localnet on {} was {} (changed by hand); set to {} after verifying its guard",
                    s.iface, s.from, s.to
                ),
                (true, false) => format!(
                    "route_localnet on {} was {} (the device was re-created); set to {} after verifying its guard",
                    s.iface, s.from, s.to
                ),
                (false, _) => format!(
                    "opening {} for its new grant: route_localnet {} -> {} after verifying its guard",
                    s.iface, s.from, s.to
                ),
            });
        } else {
            out.push(format!("set {s}"));
        }
    }
    if !change.guard_lost {
        for s in &change.lower {
            out.push(format!("set {s}"));
        }
    }
    out
}
