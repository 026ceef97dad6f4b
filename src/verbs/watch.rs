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

use super::remember_intact;
use super::system;
use crate::kernel::host::HostInterfaces;
use crate::kernel::monitor::{Batch, Monitor};
use crate::kernel::seam::Kernel;
use crate::kernel::sysctl;
use crate::spec::{self, Source, Spec};
use crate::state::{State, Store};
use crate::txn;
use anyhow::Result;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Sysctl changes raise no netlink event; this bounds how long one goes unnoticed.
const TICK: Duration = Duration::from_millis(250);

/// How long a repair waits for the state lock before it judges the table without it.
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// Runs until SIGTERM or SIGINT. Errors: the netlink subscriptions cannot be made.
pub fn run(args: &crate::cli::WatchArgs) -> Result<()> {
    // Before anything else: a second watch must not adopt, bind or repair at all.
    let _instance = lock_instance()?;
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
    let dir = crate::state::namespace_dir()?;
    let server = crate::rpc::Server::bind(&dir.join(SOCKET))?;
    let runtimes = crate::runtime::RuntimeCache::start()?;
    crate::state::write_watch_presence(held)?;
    // The last state read: what the fast path closes when the state cannot be read.
    let mut known: Option<State> = None;
    let mut policy = args.policy.clone().map(PolicyFollower::new);
    let mut all_open = false;
    let mut quiet: Option<Stamp> = None;
    let mut first = true;
    let mut failing: Option<Failing> = None;
    let mut sweeps = SweepClock::default();
    while !crate::kernel::os::stop_requested() {
        // conf.all ORs into every interface: no guard of loopgate's can narrow it.
        match kernel.route_localnet("all") {
            Ok(v) if sysctl::is_open(v) && !all_open => {
                all_open = true;
                eprintln!("loopgate watch: net.ipv4.conf.all.route_localnet is now {v}: every interface routes 127.0.0.0/8, whatever loopgate guards; `loopgate audit` reports it (all-open)");
            }
            Ok(v) if !sysctl::is_open(v) => all_open = false,
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
                    crate::state::write_watch_presence(held)?;
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
                &mut sweeps,
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
            let peeked = Store::peek().ok().flatten();
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

/// The socket, in the namespace's state directory, over which a running watch lends
/// its table to a command that changes it (see [`crate::rpc`]).
pub const SOCKET: &str = "watch.sock";
/// Serves one command waiting to borrow the table, if any: lends the owning socket
/// (or says the table is not held) and waits until the command is done with it, at
/// most [`crate::rpc::LEASE_LIMIT`]. The commits made meanwhile are recorded as
/// watch's own: no other socket can change a held table, so none of them is foreign.
fn lend(kernel: &crate::kernel::seam::System, server: &crate::rpc::Server) {
    let borrower = match server.accept() {
        Ok(Some(b)) => b,
        Ok(None) => return,
        Err(e) => {
            eprintln!("loopgate watch: {}", crate::error::one_line(&e));
            return;
        }
    };
    let (pid, command) = (
        borrower.peer.pid,
        borrower.command.escape_debug().to_string(),
    );
    let before = kernel.generation().ok();
    let lent = kernel.with_held(|owner| match owner {
        None => borrower.not_held().map(|()| None),
        Some(o) => borrower
            .lend(o.lendable(), o.portid(), crate::rpc::LEASE_LIMIT)
            .map(Some),
    });
    if let Err(e) = kernel.with_held(|o| o.map_or(Ok(()), |o| o.settle())) {
        eprintln!(
            "loopgate watch: clearing the table's socket after a lease: {}",
            crate::error::one_line(&e)
        );
    }
    if let (Some(before), Ok(after)) = (before, kernel.generation()) {
        kernel.record_lent_commits(before, after);
    }
    match lent {
        Ok(None) => {}
        Ok(Some(crate::rpc::LeaseEnd::Returned(took))) => eprintln!(
            "loopgate watch: lent table ip loopgate to pid {pid} (`{command}`) for {} ms",
            took.as_millis()
        ),
        Ok(Some(crate::rpc::LeaseEnd::Expired)) => eprintln!(
            "loopgate watch: pid {pid} (`{command}`) kept table ip loopgate past {} s; watch took it back",
            crate::rpc::LEASE_LIMIT.as_secs()
        ),
        Err(e) => eprintln!(
            "loopgate watch: lending table ip loopgate to pid {pid}: {}",
            crate::error::one_line(&e)
        ),
    }
}

/// Adopts loopgate's table with the owner flag where the kernel has it (Linux 6.9+):
/// while watch runs, `nft flush ruleset` skips the table and every other process gets
/// EPERM changing it. Returns the owner's port id; `None` on older kernels (the table
/// is then protected by repair only: watch closes the interfaces the moment another
/// process changes it, restores it and reopens them). `quiet`: a retry, which says only
/// that it succeeded. From then on `kernel` changes the table through the owner.
fn hold_table(kernel: &mut crate::kernel::seam::System, quiet: bool) -> Option<u32> {
    match crate::kernel::nft::probe_owner_support() {
        Ok(true) => match crate::kernel::nft::Owner::adopt() {
            Ok(owner) => {
                let port = owner.portid();
                kernel.hold(owner);
                eprintln!("loopgate watch: holds table ip loopgate (owner flag): no other process can flush, switch off or edit it while watch runs");
                Some(port)
            }
            Err(_) if quiet => None,
            Err(e) => {
                eprintln!(
                    "loopgate watch: cannot hold table ip loopgate ({}); protecting it by repair only",
                    crate::error::one_line(&e)
                );
                None
            }
        },
        Ok(false) if quiet => None,
        Ok(false) => {
            eprintln!("loopgate watch: this kernel cannot hold a table (NFT_TABLE_F_OWNER with PERSIST needs Linux 6.9); protecting it by repair only");
            None
        }
        Err(_) if quiet => None,
        Err(e) => {
            eprintln!(
                "loopgate watch: cannot tell whether the kernel can hold a table ({}); protecting it by repair only",
                crate::error::one_line(&e)
            );
            None
        }
    }
}

/// The first wait after a failed repair; it doubles with each failure that follows.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// The longest wait between two attempts at a repair that keeps failing: what a
/// persistent failure costs (a pass is a few milliseconds of CPU) against how late a
/// repair comes once its cause is gone.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A repair that keeps failing: its error as last logged, how often it repeated since,
/// and when the next attempt is due. A failed repair leaves the managed interfaces
/// closed (the transaction fails closed), so waiting longer costs only the grant.
struct Failing {
    error: String,
    repeats: u32,
    delay: Duration,
    next: Instant,
}

impl Failing {
    /// The state after one pass that ended with `result` and logged `lines`, given the
    /// state before it. Logs one line per change of error (with how often the last
    /// one repeated) and one when a repair succeeds again; the lines of a pass that
    /// failed as the one before are not logged again.
    fn after(before: Option<Failing>, result: Result<()>, lines: Vec<String>) -> Option<Failing> {
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
    sweeps: &mut SweepClock,
) -> Result<()> {
    let host = HostInterfaces::read()?;
    let (policy_specs, policy_guards, policy_seen) = match policy {
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
    if stamp.is_some() && stamp == *quiet {
        return Ok(());
    }
    // Something moved: the runtimes are asked again in the background, and this pass
    // goes on with their last answers (a changed answer wakes the next one).
    runtimes.refresh();
    let host_now = CachedRuntimes {
        host: &host,
        runtimes,
        unsettled: Default::default(),
    };
    let store = Store::open_exclusive_within(LOCK_WAIT)?;
    let _ = sweeps.sweep(); // housekeeping: never fails a pass (see state::sweep_stale)
    let Some(store) = store else {
        let Some(state) = known.as_ref() else {
            return Ok(());
        };
        for line in judge_unlocked(kernel, state)? {
            eprintln!("loopgate watch: {line}");
        }
        return Ok(());
    };
    *known = Some(store.load()?);
    let (lines, result) = repair_with(
        kernel,
        &store,
        &host_now,
        policy_specs.as_deref(),
        policy_guards.as_deref(),
    );
    // Quiet from here on only if this pass changed nothing (a pass that changed
    // something moved the generation; the next one checks it).
    *quiet = match (&result, lines.is_empty()) {
        (Ok(()), true) => stamp,
        _ => None,
    };
    log.extend(lines);
    if let Ok(state) = store.load() {
        *known = Some(state);
    }
    result
}

/// How long watch waits between two sweeps of stale namespace directories (it opens
/// its store on every pass that is not quiet).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// When watch last swept: [`SweepClock::sweep`] runs
/// [`sweep_stale`](crate::state::sweep_stale) at most once every 60 s. A value watch
/// keeps, not process-wide state.
#[derive(Debug, Default)]
pub struct SweepClock {
    last: Option<Instant>,
}

impl SweepClock {
    /// Sweeps unless it did less than 60 s ago (then 0 removed).
    pub fn sweep(&mut self) -> Result<usize> {
        let now = Instant::now();
        if !self.due(now) {
            return Ok(0);
        }
        self.last = Some(now);
        crate::state::sweep_stale()
    }

    /// Whether a sweep at `now` is due.
    fn due(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY)
    }
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

/// The host as a pass of watch sees it: the interfaces read for the pass, and the
/// runtimes' networks as the [`RuntimeCache`](crate::runtime::RuntimeCache)
/// last heard of them, so that no runtime call runs on the loop that guards.
struct CachedRuntimes<'a> {
    host: &'a HostInterfaces,
    runtimes: &'a crate::runtime::RuntimeCache,
    /// Bridges re-created since their runtime last described them (see
    /// [`spec::Host::unsettled`]).
    unsettled: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

impl crate::input::Interfaces for CachedRuntimes<'_> {
    fn ipv4_addresses(&self, name: &str) -> Option<Vec<std::net::Ipv4Addr>> {
        self.host.ipv4_addresses(name)
    }

    fn owns(&self, addr: std::net::Ipv4Addr) -> bool {
        self.host.owns(addr)
    }

    fn host_gateway(&self) -> Option<std::net::Ipv4Addr> {
        self.host.host_gateway()
    }
}

impl spec::Host for CachedRuntimes<'_> {
    fn interface_names(&self) -> Vec<String> {
        self.host.interface_names()
    }

    fn runtime_network(
        &self,
        runtime: crate::kernel::runtime::Runtime,
        name: &str,
    ) -> std::result::Result<Option<crate::kernel::runtime::RuntimeNet>, String> {
        let (answer, heard_at) = self.runtimes.lookup(runtime, name);
        if let Ok(Some(net)) = &answer {
            let now = crate::kernel::sysctl::ifindex_of(&net.bridge);
            if now.is_some() && now != heard_at {
                self.unsettled.borrow_mut().insert(net.bridge.clone());
            }
        }
        answer
    }

    fn unsettled(&self) -> std::collections::BTreeSet<String> {
        self.unsettled.borrow().clone()
    }
}

/// What one wake-up sees of everything a pass depends on, cheaply. Two equal stamps
/// mean nothing that could change the outcome of a pass moved in between: no commit
/// to any nftables table, no save of the state, no interface or address change, no
/// route_localnet change on a device loopgate manages, no change to the policy files.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamp {
    generation: u32,
    state: Option<(u64, u64, std::time::SystemTime)>,
    host: HostInterfaces,
    devices: std::collections::BTreeMap<u32, crate::kernel::sysctl::Device>,
    policy: Option<Vec<(String, u64, std::time::SystemTime)>>,
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
    let started = Instant::now();
    let state = match store.load() {
        Ok(s) => s,
        Err(e) => return (vec![], Err(e)),
    };
    let (specs, resolved) = desired(&state, policy_specs, host);
    if state.grants.is_empty()
        && state.originals.is_empty()
        && state.pending.is_none()
        && resolved.grants.is_empty()
        && specs == state.specs
        && state.guards.is_empty()
        && state.guarded.is_empty()
        && policy_guards.is_none_or(|g| g.is_empty())
    {
        return (vec![], Ok(()));
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
    let (change, snapshot) = match txn::observe_and_compute(kernel, state, target) {
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
                ),
                Err(c) => (vec![], Err(e.context(format!("closing failed too: {c:#}")))),
            };
        }
    };
    if change.is_noop() {
        // Read back in full after a commit elsewhere: vouch for it from here on, or
        // every tick would read a large table back again.
        return (vec![], remember_intact(store, &change, &snapshot));
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
            (lines, Ok(()))
        }
        Err(e) => (lines, Err(e)),
    }
}

/// Follows a policy file or directory: reloads it when its files change (names, sizes,
/// modification times), keeps the last good specs when a change does not parse.
pub struct PolicyFollower {
    path: std::path::PathBuf,
    /// The files as last read (name, size, mtime).
    pub seen: Option<Vec<(String, u64, std::time::SystemTime)>>,
    specs: Option<Vec<Spec>>,
    /// The policy's `guard:` entries, as last loaded.
    guards: Option<Vec<spec::GuardSpec>>,
    /// The interfaces when the last load failed, if it did.
    failed_on: Option<HostInterfaces>,
}

impl PolicyFollower {
    /// Follows `path` (read at the first call to [`PolicyFollower::specs`]).
    pub fn new(path: std::path::PathBuf) -> PolicyFollower {
        PolicyFollower {
            path,
            seen: None,
            specs: None,
            guards: None,
            failed_on: None,
        }
    }

    /// What the files look like now: one (name, size, mtime) per policy file.
    fn fingerprint(&self) -> Vec<(String, u64, std::time::SystemTime)> {
        let meta = |p: &std::path::Path| {
            std::fs::metadata(p).ok().map(|m| {
                (
                    p.display().to_string(),
                    m.len(),
                    m.modified().unwrap_or(std::time::UNIX_EPOCH),
                )
            })
        };
        match std::fs::read_dir(&self.path) {
            Ok(dir) => {
                let mut v: Vec<_> = dir
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                    .filter_map(|p| meta(&p))
                    .collect();
                v.sort();
                v
            }
            Err(_) => meta(&self.path).into_iter().collect(),
        }
    }

    /// The policy's specs, reloaded when the files changed; `None` until it first
    /// loads (the state's recorded policy specs stand in meanwhile).
    pub fn specs(&mut self, host: &HostInterfaces) -> Option<Vec<Spec>> {
        let now = self.fingerprint();
        // After a load that failed, the host changing is reason enough to try again.
        let retry = self.failed_on.as_ref().is_some_and(|h| h != host);
        if self.seen.as_ref() != Some(&now) || retry {
            self.seen = Some(now);
            self.failed_on = None;
            match crate::policy::load_all(&self.path).and_then(|sources| {
                Ok((
                    crate::policy::specs_of(&sources, host, false)?,
                    crate::policy::guards_of(&sources)?,
                ))
            }) {
                Ok((specs, guards)) => {
                    self.guards = Some(guards);
                    if self.specs.is_some() {
                        eprintln!(
                            "loopgate watch: {} changed; applying it",
                            self.path.display()
                        );
                    }
                    self.specs = Some(specs);
                }
                Err(e) => {
                    self.failed_on = Some(host.clone());
                    eprintln!(
                        "loopgate watch: {} does not load, keeping what it said before: {}",
                        self.path.display(),
                        crate::error::one_line(&e)
                    )
                }
            }
        }
        self.specs.clone()
    }
}

/// What a repair did, one line each, as the operator reads it in the journal.
fn report(change: &txn::Change, took_ms: u128) -> Vec<String> {
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

/// Watch's decisions over the fake kernel: what it does, in which order.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::{Grant, Proto};
    use crate::kernel::fake::{Fake, FakeTable, TempStore};
    use crate::kernel::nft;
    use crate::state::{Original, State, STATE_VERSION};
    use std::net::{Ipv4Addr, SocketAddrV4};

    #[test]
    fn a_batch_is_loopgates_by_its_generation_or_its_pid_and_unknown_ones_are_foreign() {
        let me = std::process::id();
        let state = State {
            writers: vec![4242],
            ..State::default()
        };
        let own = |g: u32| g == 7;
        let b = |pid: Option<u32>, generation: Option<u32>| Batch { pid, generation };
        let foreign = |batches: &[Batch]| super::foreign(batches, Some(&state), own);
        // Inside a PID namespace the kernel's pid is meaningless; the generation decides.
        assert!(!foreign(&[b(Some(900_001), Some(7))]));
        assert!(foreign(&[b(Some(900_001), Some(8))]));
        assert!(!foreign(&[b(Some(me), Some(8)), b(Some(4242), None)]));
        assert!(foreign(&[b(Some(me), Some(7)), b(None, None)]));
        assert!(!super::foreign(&[], None, own));
    }

    fn grant(iface: &str, port: u16) -> Grant {
        Grant {
            name: format!("{iface}-{port}"),
            iface: iface.into(),
            proto: Proto::Tcp,
            listen: Ipv4Addr::new(192, 0, 2, 1),
            port,
            to: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            allow: vec!["192.0.2.0/25".parse().unwrap()],
        }
    }

    /// A host converged to `grants` on the fake, history cleared.
    fn converged(devices: &[(u32, &str, i32)], grants: Vec<Grant>) -> (Fake, TempStore) {
        let kernel = Fake::with_devices(devices);
        let store = TempStore::new();
        let old = store.store.load().unwrap();
        let target = txn::Target {
            grants,
            ..txn::Target::recorded(&old)
        };
        let (change, snap) = txn::observe_and_compute(&kernel, old, target).unwrap();
        txn::execute(&kernel, &store.store, &change, &snap).unwrap();
        kernel.state.borrow_mut().history.clear();
        (kernel, store)
    }

    fn steps(kernel: &Fake) -> Vec<String> {
        kernel.history().into_iter().map(|m| m.what).collect()
    }

    #[test]
    fn a_dormant_or_flushed_table_is_closed_first_then_restored_then_reopened() {
        let g = vec![grant("br0", 3306)];
        for broken in [
            None,
            Some(FakeTable::broken(nft::planned_image(
                &crate::plan::ruleset(&[grant("br0", 9999)]).unwrap(),
            ))),
        ] {
            let (kernel, store) = converged(&[(5, "br0", 0)], g.clone());
            kernel.state.borrow_mut().table = broken.clone();
            let (lines, result) = repair_with(&kernel, &store.store, &kernel, None, None);
            result.unwrap();
            assert_eq!(
                steps(&kernel),
                ["write br0=0", "apply", "write br0=1"],
                "{lines:?}"
            );
            assert!(lines
                .iter()
                .any(|l| l.contains("closed route_localnet on [br0] first")));
            // Converged: the next pass does nothing.
            kernel.state.borrow_mut().history.clear();
            let (lines, result) = repair_with(&kernel, &store.store, &kernel, None, None);
            result.unwrap();
            assert!(lines.is_empty() && steps(&kernel).is_empty(), "{lines:?}");
        }
    }

    #[test]
    fn an_interrupted_expose_is_rolled_back_with_its_interface_closed_before_the_table() {
        let committed = vec![grant("br0", 3306)];
        let pending = vec![grant("br0", 3306), grant("br1", 3307)];
        let (kernel, store) = converged(&[(5, "br0", 0), (6, "br1", 0)], pending.clone());
        // As if `expose br1` had died after raising br1, before committing.
        let state = State {
            version: STATE_VERSION,
            grants: committed,
            originals: vec![
                Original {
                    iface: "br0".into(),
                    ifindex: 5,
                    value: 0,
                },
                Original {
                    iface: "br1".into(),
                    ifindex: 6,
                    value: 0,
                },
            ],
            pending: Some(pending),
            vouch: None,
            writers: vec![],
            specs: vec![],
            guards: vec![],
            guarded: vec![],
        };
        store.store.save(&state).unwrap();
        let (lines, result) = repair_with(&kernel, &store.store, &kernel, None, None);
        result.unwrap();
        assert_eq!(steps(&kernel), ["write br1=0", "apply"], "{lines:?}");
        assert!(lines
            .iter()
            .any(|l| l.contains("interrupted transaction was rolled back")));
        assert_eq!(kernel.value("br0"), Some(1));
        assert!(store.store.load().unwrap().pending.is_none());
    }

    #[test]
    fn a_renamed_interface_goes_back_to_its_original_and_the_new_copy_is_opened() {
        let g = vec![grant("br0", 3306)];
        let (kernel, store) = converged(&[(5, "br0", 0)], g);
        // br0 renamed to br9 (same ifindex), and a runtime created a new br0 at 0.
        {
            let mut s = kernel.state.borrow_mut();
            s.devices.get_mut(&5).unwrap().name = "br9".into();
            s.devices.insert(
                8,
                crate::kernel::sysctl::Device {
                    ifindex: 8,
                    name: "br0".into(),
                    route_localnet: 0,
                    ready: true,
                },
            );
        }
        let (lines, result) = repair_with(&kernel, &store.store, &kernel, None, None);
        result.unwrap();
        assert_eq!(steps(&kernel), ["write br9=0", "write br0=1"], "{lines:?}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("br0 (ifindex 5) is now called br9")
                    && l.contains("br9 is closed")),
            "{lines:?}"
        );
        let originals = store.store.load().unwrap().originals;
        assert_eq!(
            originals,
            vec![Original {
                iface: "br0".into(),
                ifindex: 8,
                value: 0
            }]
        );
    }

    #[test]
    fn a_guard_that_cannot_be_read_is_not_trusted() {
        let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
        kernel.fail("read");
        let (lines, result) = repair_with(&kernel, &store.store, &kernel, None, None);
        assert!(result.is_err());
        assert_eq!(steps(&kernel), ["write br0=0"], "{lines:?}");
    }

    #[test]
    fn the_fast_path_closes_every_open_managed_interface_and_keeps_going_past_a_failure() {
        let g = vec![grant("br0", 3306), grant("br1", 3307), grant("br2", 3308)];
        let (kernel, store) = converged(&[(5, "br0", 0), (6, "br1", 0), (7, "br2", 0)], g);
        kernel.fail("write:br1:0");
        let err = close_managed(&kernel, &store.store.load().unwrap()).unwrap_err();
        assert!(format!("{err:#}").contains("closed [br0, br2]"), "{err:#}");
        assert_eq!(steps(&kernel), ["write br0=0", "write br2=0"]);
    }

    #[test]
    fn a_sweep_clock_is_due_at_first_then_once_a_minute_and_two_clocks_are_apart() {
        let now = Instant::now();
        let mut clock = SweepClock::default();
        assert!(clock.due(now));
        clock.last = Some(now);
        assert!(!clock.due(now));
        assert!(!clock.due(now + SWEEP_EVERY - Duration::from_millis(1)));
        assert!(clock.due(now + SWEEP_EVERY));
        // A value: another clock has not swept.
        assert!(SweepClock::default().due(now));
    }

    /// A batch as the monitor reports it, by no pid this process knows.
    fn batch(generation: u32) -> Batch {
        Batch {
            pid: Some(900_001),
            generation: Some(generation),
        }
    }

    #[test]
    fn watchs_own_commit_closes_nothing() {
        let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
        let own = kernel.state.borrow().generation;
        let mut known = None;
        let state = store.store.load().unwrap();
        let lines = close_if_foreign(&kernel, &[batch(own)], Some(state), &mut known).unwrap();
        assert!(lines.is_empty() && steps(&kernel).is_empty(), "{lines:?}");
        assert!(known.is_some(), "the peeked state is kept");
    }

    #[test]
    fn a_foreign_commit_closes_every_open_managed_interface_at_once() {
        let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
        kernel.tamper(None);
        let foreign = kernel.state.borrow().generation;
        let mut known = Some(store.store.load().unwrap());
        let lines = close_if_foreign(&kernel, &[batch(foreign)], None, &mut known).unwrap();
        assert_eq!(steps(&kernel), ["write br0=0"]);
        assert_eq!(
            lines,
            ["another process changed table ip loopgate; closed route_localnet on [br0] first"]
        );
    }

    #[test]
    fn a_foreign_commit_with_no_state_known_closes_nothing() {
        let (kernel, _store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
        kernel.tamper(None);
        let foreign = kernel.state.borrow().generation;
        let lines = close_if_foreign(&kernel, &[batch(foreign)], None, &mut None).unwrap();
        assert!(lines.is_empty() && steps(&kernel).is_empty());
    }

    #[test]
    fn a_commit_by_a_recorded_writer_is_not_foreign() {
        let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
        kernel.tamper(None);
        let state = State {
            writers: vec![900_001],
            ..store.store.load().unwrap()
        };
        let g = kernel.state.borrow().generation;
        let lines = close_if_foreign(&kernel, &[batch(g)], Some(state), &mut None).unwrap();
        assert!(lines.is_empty() && steps(&kernel).is_empty());
    }

    #[test]
    fn the_fast_close_reports_a_write_that_fails() {
        let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
        kernel.tamper(None);
        kernel.fail("write:br0:0");
        let g = kernel.state.borrow().generation;
        let state = store.store.load().unwrap();
        assert!(close_if_foreign(&kernel, &[batch(g)], Some(state), &mut None).is_err());
        assert_eq!(kernel.fired(), ["write:br0:0"]);
    }

    #[test]
    fn without_the_lock_an_intact_table_is_left_alone() {
        let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
        let lines = judge_unlocked(&kernel, &store.store.load().unwrap()).unwrap();
        assert!(lines.is_empty() && steps(&kernel).is_empty(), "{lines:?}");
    }

    #[test]
    fn without_the_lock_a_lost_guard_closes_but_nothing_is_restored() {
        let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
        kernel.tamper(None);
        let lines = judge_unlocked(&kernel, &store.store.load().unwrap()).unwrap();
        assert_eq!(
            steps(&kernel),
            ["write br0=0"],
            "no apply: the lock holder may be mid-way"
        );
        assert!(lines[0]
            .starts_with("the state lock has been held by another process for over 1000 ms"));
        assert!(kernel.state.borrow().table.is_none());
    }

    #[test]
    fn without_the_lock_a_table_that_cannot_be_read_is_an_error_and_changes_nothing() {
        let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
        kernel.fail("read");
        assert!(judge_unlocked(&kernel, &store.store.load().unwrap()).is_err());
        assert!(steps(&kernel).is_empty());
    }

    #[test]
    fn the_stamp_moves_with_a_commit_or_a_managed_device_and_not_otherwise() {
        let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
        let state = store.store.load().unwrap();
        let host = HostInterfaces::default();
        let stamp = || Stamp::now(&kernel, &state, &host, None).unwrap();
        let first = stamp();
        assert_eq!(first, stamp(), "nothing moved");
        let table = kernel.state.borrow().table.clone();
        kernel.tamper(table);
        let after_commit = stamp();
        assert_ne!(first, after_commit);
        kernel
            .state
            .borrow_mut()
            .devices
            .get_mut(&5)
            .unwrap()
            .route_localnet = 0;
        assert_ne!(after_commit, stamp());
        kernel.fail("generation");
        assert!(Stamp::now(&kernel, &state, &host, None).is_err());
    }

    #[test]
    fn a_converged_host_is_a_no_op_that_reads_nothing_back_in_full() {
        let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
        kernel.state.borrow_mut().reads.clear();
        let (lines, result) = repair_with(&kernel, &store.store, &kernel, None, None);
        result.unwrap();
        assert!(lines.is_empty() && steps(&kernel).is_empty(), "{lines:?}");
        assert_eq!(kernel.state.borrow().reads, [true], "vouched, not dumped");
    }

    #[test]
    fn an_intact_table_after_a_foreign_commit_is_vouched_for_again() {
        let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
        let before = store.store.load().unwrap().vouch.unwrap();
        let table = kernel.state.borrow().table.clone();
        kernel.tamper(table);
        let (lines, result) = repair_with(&kernel, &store.store, &kernel, None, None);
        result.unwrap();
        assert!(lines.is_empty() && steps(&kernel).is_empty(), "{lines:?}");
        let after = store.store.load().unwrap().vouch.unwrap();
        assert_eq!(after.generation, kernel.state.borrow().generation);
        assert_ne!(after.generation, before.generation);
    }

    #[test]
    fn nothing_recorded_and_nothing_asked_reads_nothing() {
        let kernel = Fake::with_devices(&[(5, "br0", 0)]);
        let store = TempStore::new();
        let (lines, result) = repair_with(&kernel, &store.store, &kernel, None, None);
        result.unwrap();
        assert!(lines.is_empty());
        assert!(kernel.state.borrow().reads.is_empty());
    }

    #[test]
    fn a_repair_whose_batch_fails_says_so_and_leaves_the_interface_closed() {
        let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
        kernel.tamper(None);
        kernel.fail("apply");
        let (lines, result) = repair_with(&kernel, &store.store, &kernel, None, None);
        assert!(result.is_err());
        assert!(
            lines.iter().any(|l| l.starts_with("could not converge")),
            "{lines:?}"
        );
        assert_eq!(kernel.value("br0"), Some(0));
        assert_eq!(kernel.fired(), ["apply"]);
    }
}
