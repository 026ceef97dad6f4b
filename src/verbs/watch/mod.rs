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
//!
//! This file is the run loop and the one-watch-per-namespace lock; the parts:
//! `lend` (the table held with the owner flag and lent to commands over [`SOCKET`]),
//! `repair` (one pass: the fast close, the convergence, its report and back-off),
//! `sweep_clock`, `newcomers` (pattern-matched veths that just appeared, opened once
//! their owner set them up), `runtimes` (the runtimes' networks as last heard),
//! `pending_log` (pending grants logged once, and warned of once after the grace) and
//! `policy_follower` (a policy file reloaded when it changes).

mod lend;
mod newcomers;
mod pending_log;
mod policy_follower;
mod repair;
mod runtimes;
mod sweep_clock;

pub use lend::SOCKET;
pub use newcomers::Newcomers;
pub use pending_log::PendingLog;
pub use policy_follower::PolicyFollower;
pub use repair::{
    close_if_foreign, close_managed, desired, foreign, judge_unlocked, repair, repair_with, Clocks,
    Stamp,
};
pub use sweep_clock::SweepClock;

use lend::{hold_table, lend};
use repair::Failing;

use super::system;
use crate::kernel::monitor::Monitor;
use crate::kernel::seam::{HostFacts, Kernel};
use crate::kernel::sysctl;
use crate::state::{State, Store};
use anyhow::Result;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Sysctl changes raise no netlink event; this bounds how long one goes unnoticed.
const TICK: Duration = Duration::from_millis(250);

/// How long a repair waits for the state lock before it judges the table without it.
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// `watch --once`: one pass of the loop below, without holding the table, binding the
/// socket or announcing a running watch (it is gone a moment later), printing what it
/// changed as watch logs it. An error is the pass's error. (Under the instance lock,
/// so never beside a running watch, which repairs by itself.)
fn repair_once(args: &crate::cli::WatchArgs) -> Result<()> {
    let kernel = system();
    let runtimes = crate::runtime::RuntimeCache::start()?;
    let mut policy = args.policy.clone().map(PolicyFollower::new);
    let mut lines = Vec::new();
    let result = repair(
        &kernel,
        &mut None,
        policy.as_mut(),
        &mut None,
        &runtimes,
        &mut lines,
        &mut Clocks::default(),
    );
    for line in &lines {
        eprintln!("loopgate watch: {line}");
    }
    if result.is_ok() && lines.is_empty() {
        eprintln!("loopgate watch: nothing to repair");
    }
    result
}

/// Runs until SIGTERM or SIGINT (with `--once`, one pass). Errors: the netlink
/// subscriptions cannot be made.
pub fn run(args: &crate::cli::WatchArgs) -> Result<()> {
    // Before anything else: a second watch must not adopt, bind or repair at all.
    let _instance = lock_instance()?;
    if args.once {
        return repair_once(args);
    }
    crate::kernel::os::stop_on_term_and_int();
    let mut monitor = Monitor::new()?;
    // The kernel watch works through, holding the table when it can: every repair's
    // change goes through the owning socket, and the commits it made are known here.
    let mut kernel = system();
    let mut held = match args.no_hold {
        true => {
            eprintln!("loopgate watch: not holding table ip loopgate (--no-hold); protecting it by repair only");
            None
        }
        false => hold_table(&mut kernel, false),
    };
    // Named by its real path, so commands can tell whether they touch what it follows.
    let followed = args
        .policy
        .as_ref()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()));
    let dir = crate::state::namespace_dir()?;
    let server = crate::rpc::Server::bind(&dir.join(SOCKET))?;
    let runtimes = crate::runtime::RuntimeCache::start()?;
    crate::state::write_watch_presence(held, followed.as_deref())?;
    // The last state read: what the fast path closes when the state cannot be read.
    let mut known: Option<State> = None;
    let mut policy = args.policy.clone().map(PolicyFollower::new);
    let mut all_open = false;
    let mut quiet: Option<Stamp> = None;
    let mut first = true;
    let mut failing: Option<Failing> = None;
    let mut clocks = Clocks {
        pending: PendingLog::new(Duration::from_secs(crate::audit::pending_since::grace()?)),
        ..Clocks::default()
    };
    while !crate::kernel::os::stop_requested() {
        // conf.all ORs into every interface: no guard of loopgate's can narrow it.
        match kernel.route_localnet("all") {
            Ok(v) if sysctl::is_open(v) && !all_open => {
                all_open = true;
                // Which guards admit other tables' forwards to 127/8 depends on it.
                quiet = None;
                eprintln!("loopgate watch: net.ipv4.conf.all.route_localnet is now {v}: every interface routes 127.0.0.0/8, whatever loopgate guards; `loopgate audit` reports it (all-open)");
            }
            Ok(v) if !sysctl::is_open(v) && all_open => {
                all_open = false;
                quiet = None;
            }
            _ => {}
        }
        if failing.as_ref().is_none_or(|f| Instant::now() >= f.next) {
            if !args.no_hold && held.is_none() && failing.is_some() {
                // Not held, and repairs fail: another process may hold the table (an
                // orphan by now?). Only then, and at the back-off's pace: the probe
                // costs the next batch an RCU grace period. Quiet: why it is not held
                // was said at start.
                held = hold_table(&mut kernel, true);
                if held.is_some() {
                    crate::state::write_watch_presence(held, followed.as_deref())?;
                }
            }
            let mut lines = Vec::new();
            let result = repair(
                &kernel,
                &mut known,
                policy.as_mut(),
                &mut quiet,
                &runtimes,
                &mut lines,
                &mut clocks,
            );
            failing = Failing::after(failing.take(), result, lines);
        }
        if std::mem::take(&mut first) {
            // After the first pass, so "started" means "subscribed and converged once".
            eprintln!("loopgate watch: started");
        }
        let wake = monitor.wait_with(TICK, &[server.as_raw_fd(), runtimes.wake_fd()]);
        if wake.extra.get(1).copied().unwrap_or(false) && runtimes.woken() {
            // A runtime's network moved (compose down/up): resolve it again now.
            quiet = None;
        }
        if wake.extra.first().copied().unwrap_or(false) {
            lend(&kernel, &server);
            // The borrower's transaction may have changed what is asked for.
            quiet = None;
        }
        if !wake.table_batches.is_empty() {
            // Watch's own batches need no state to be told apart: the file (megabytes
            // at 100,000 allowed networks) is parsed only when a batch may be foreign.
            let own_only =
                !repair::foreign(&wake.table_batches, None, |g| kernel.committed_here(g));
            let peeked = match own_only {
                true => None,
                false => Store::peek().ok().flatten(),
            };
            match close_if_foreign(&kernel, &wake.table_batches, peeked, &mut known) {
                Ok(lines) => {
                    for line in lines {
                        eprintln!("loopgate watch: {line}");
                    }
                }
                Err(e) => eprintln!(
                    "loopgate watch: closing interfaces failed: {}",
                    crate::error::one_line(&e)
                ),
            }
        }
    }
    if let Some(mut owner) = kernel.release() {
        // Leave no table without grants or guards: an empty orphan guards nothing.
        match owner.delete_if_empty() {
            Ok(true) => eprintln!(
                "loopgate watch: table ip loopgate held nothing; deleted it as watch stops"
            ),
            Ok(false) => {}
            Err(e) => eprintln!(
                "loopgate watch: could not delete the empty table ip loopgate: {}",
                crate::error::one_line(&e)
            ),
        }
    }
    crate::state::remove_watch_presence(&dir);
    eprintln!("loopgate watch: stopped; the policy stays in place");
    Ok(())
}

/// The file whose lock makes a watch the only one of its network namespace; it holds
/// the pid of the watch that has it.
const LOCK: &str = "watch.lock";

/// Locks this namespace's [`LOCK`] file for as long as the returned file lives (the
/// process's life: the kernel drops an flock when its holder exits, however it exits)
/// and writes this process's pid into it.
///
/// Errors: another watch holds it (a [`BadInput`](crate::error::BadInput), exit 2,
/// naming that watch's pid); the state directory or the file cannot be made.
fn lock_instance() -> Result<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    use std::io::{Read, Seek, Write};
    let dir = crate::state::private_namespace_dir()?;
    let path = dir.path().join(LOCK);
    // Relative to the checked state directory, never through a link.
    let file = dir
        .open(LOCK, libc::O_RDWR | libc::O_CREAT, 0o600)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {}", path.display(), e))?;
    let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((_, errno)) if errno != nix::errno::Errno::EWOULDBLOCK => {
            let err = std::io::Error::from(errno);
            return Err(anyhow::anyhow!("cannot lock {}: {}", path.display(), err));
        }
        Err((mut file, _)) => {
            // The holder writes its pid right after locking: give it a moment (bounded).
            let mut pid = String::new();
            for _ in 0..20 {
                pid.clear();
                file.seek(std::io::SeekFrom::Start(0))?;
                file.read_to_string(&mut pid)?;
                if !pid.trim().is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let pid = match pid.trim() {
                "" => "pid not written yet".to_string(),
                p => format!("pid {p}"),
            };
            return Err(anyhow::Error::new(crate::error::BadInput(format!(
            "another loopgate watch runs in this network namespace ({pid}); one watch per namespace"
        ))));
        }
    };
    file.set_len(0)?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
    Ok(file)
}

#[cfg(test)]
mod tests;
