//! `loopgate watch`: keep the recorded grants in force while the host runs.
//!
//! Watch decides only *when* to converge and *towards what* (the committed grants); the
//! converging itself is the same transaction `expose`, `revoke` and `apply` run
//! ([`crate::txn`]), with the same ordering and journal: a table that was deleted,
//! flushed, switched dormant or edited makes it close every open managed interface
//! first, put the table back and read it back, cut flows that reached 127.0.0.0/8
//! meanwhile, and only then reopen; a transaction that was interrupted (crash between
//! its steps) is rolled back to the committed grants; a device that was re-created or
//! renamed is judged by its ifindex. Wake-ups: a link or ruleset event, or a 250 ms tick
//! for sysctl changes, which raise no event. Each repair is logged on stderr.

use super::{observe_and_compute, open_store, remember_intact};
use crate::kernel::monitor::Monitor;
use crate::txn;
use anyhow::Result;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Sysctl changes raise no netlink event; this bounds how long one goes unnoticed.
const TICK: Duration = Duration::from_millis(250);

pub fn run() -> Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let mut monitor = Monitor::new()?;
    let mut first = true;
    while !STOP.load(Ordering::SeqCst) {
        if let Err(e) = repair() {
            eprintln!(
                "loopgate watch: repair failed: {}",
                crate::error::one_line(&e)
            );
        }
        if std::mem::take(&mut first) {
            // After the first pass, so "started" means "subscribed and converged once".
            eprintln!("loopgate watch: started");
        }
        let wake = monitor.wait(TICK);
        if wake.foreign_touch {
            if let Err(e) = close_now() {
                eprintln!(
                    "loopgate watch: closing interfaces failed: {}",
                    crate::error::one_line(&e)
                );
            }
        }
    }
    eprintln!("loopgate watch: stopped; the policy stays in place");
    Ok(())
}

/// The fast path for the worst case: another process just changed loopgate's table
/// (flushed, deleted, switched it dormant or edited it) while interfaces are open.
/// Every millisecond of that may be a hole, and the full repair plans and reads back
/// first (the kernel can take 10 ms to answer a read right after a large commit); this
/// closes every open managed device with a few sysctl writes and leaves the rest to the
/// repair that follows, which puts the table back, reads it back and reopens.
///
/// Only when no transaction is running (the state lock is free): an `expose` or
/// `revoke` in flight owns the host until it commits, and the repair comes after it.
/// Closing needs no journal: each device closed here has its original in the committed
/// state, from which the repair reopens it once the guard is back.
fn close_now() -> Result<()> {
    let Some(store) = crate::state::Store::try_open_exclusive()? else {
        return Ok(());
    };
    let state = store.load()?;
    if state.grants.is_empty() {
        return Ok(());
    }
    let devices = txn::observe_devices(&state, &state.grants)?;
    let mut closed = Vec::new();
    let mut errors = Vec::new();
    for dev in devices.values() {
        if crate::kernel::sysctl::is_open(dev.route_localnet) {
            match crate::kernel::sysctl::write_device(&dev.name, dev.ifindex, 0) {
                Ok(()) => closed.push(dev.name.as_str()),
                Err(e) => errors.push(crate::error::one_line(&e)),
            }
        }
    }
    if !closed.is_empty() {
        eprintln!(
            "loopgate watch: another process changed table ip loopgate; closed route_localnet on [{}] first",
            closed.join(", ")
        );
    }
    if !errors.is_empty() {
        anyhow::bail!(errors.join("; "));
    }
    Ok(())
}

/// Brings the host back to the committed grants, if it drifted, through the one engine.
pub fn repair() -> Result<()> {
    let started = Instant::now();
    let (store, state) = open_store(true)?;
    if state.grants.is_empty() && state.originals.is_empty() && state.pending.is_none() {
        return Ok(());
    }
    let target = state.grants.clone();
    let (change, snapshot) = observe_and_compute(state, target)?;
    if change.is_noop() {
        // Read back in full after a commit elsewhere: vouch for it from here on, or
        // every tick would read a large table back again.
        return remember_intact(&store, &change, &snapshot);
    }
    let outcome = txn::execute(&store, &change, &snapshot);
    let took = started.elapsed().as_millis();
    for line in report(&change, took) {
        eprintln!("loopgate watch: {line}");
    }
    let outcome = outcome?;
    if outcome.connections_cut > 0 {
        eprintln!(
            "loopgate watch: cut {} tracked connection(s) that reached 127.0.0.0/8 or a revoked grant",
            outcome.connections_cut
        );
    }
    Ok(())
}

/// What a repair did, one line each, as the operator reads it in the journal.
fn report(change: &txn::Change, took_ms: u128) -> Vec<String> {
    let mut out = Vec::new();
    for r in &change.renamed {
        out.push(format!(
            "{} (ifindex {}) was renamed to {}; loopgate's guard matches the old name, so {} goes back to its route_localnet from before loopgate",
            r.was, r.ifindex, r.now, r.now
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
    if !change.table_matches {
        out.push(format!(
            "table ip loopgate was missing or altered; restored in {took_ms} ms (read back as planned)"
        ));
    }
    for s in &change.raise {
        if change.guard_lost {
            out.push(format!(
                "route_localnet on {} reopened ({}) after verifying its guard",
                s.iface, s.to
            ));
        } else if !crate::kernel::sysctl::is_open(s.from) {
            out.push(format!(
                "route_localnet on {} was {} (re-created or changed by hand); set to {} after verifying its guard",
                s.iface, s.from, s.to
            ));
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
