//! What loopgate remembers per network namespace: its grants, the route_localnet value
//! each interface had before loopgate first touched it, an in-flight transaction, and
//! whether a `watch` runs there (its presence file). The base directory also keeps the
//! kernel features probed on this boot ([`known_features`]).
//!
//! The kernel alone cannot tell loopgate what to restore on revoke (Docker or Podman may
//! have set route_localnet=1 themselves), so this survives the process. It lives under
//! `/run/loopgate/netns-<cookie>/` (`LOOPGATE_STATE_DIR` overrides the base), is
//! replaced atomically (write, fsync, rename), and an exclusive `flock` serialises
//! concurrent loopgate runs on one namespace.
//!
//! This file holds the state, its store and its directory; `disk` is the state file's
//! form since version 3, which keeps long allow lists in files of their own (`lists`);
//! `sweep` removes the directories of namespaces that are gone ([`sweep_stale`]).

mod disk;
mod lists;
mod sweep;

pub use lists::FILE_MIN as LIST_FILE_MIN;

pub use sweep::{sweep_stale, SWEEP_MAX};

use crate::grant::Grant;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::PathBuf;

/// Version of the state file. 3: allow lists of at least [`LIST_FILE_MIN`] networks
/// are kept in files of their own beside it (`allow-<sha256>.json`, each written once)
/// and referred to by their SHA-256 (`"allow": "sha256:<hex>"`). 2: originals are
/// recorded per device instance (ifindex). Files of versions 2 and 1 (originals by
/// interface name) are still read, see [`Store::load`].
pub const STATE_VERSION: u32 = 3;

/// route_localnet of one device instance before loopgate first changed it.
///
/// Tied to the ifindex it was read from: a runtime that deletes and re-creates a bridge
/// under the same name gives the new copy a new ifindex, and the original of the old copy
/// then means nothing (restoring it could open the new copy without a guard, or close a
/// runtime's own 1). A renamed device keeps its ifindex, so its original follows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Original {
    /// The interface's name when the value was read (for people; matching is by ifindex).
    pub iface: String,
    /// The kernel's ifindex of the device instance, in this network namespace.
    pub ifindex: u32,
    /// route_localnet as read from that device: the kernel's signed `int`.
    pub value: i32,
}

/// The state file of one network namespace (`state.json`, JSON): what loopgate has
/// committed there and what it must restore. Read and written only through [`Store`],
/// under its lock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The file format, [`STATE_VERSION`] when written.
    pub version: u32,
    /// The committed grants.
    pub grants: Vec<Grant>,
    /// route_localnet before loopgate changed it, one record per device instance it
    /// manages or managed in an unfinished transaction, sorted by ifindex.
    pub originals: Vec<Original>,
    /// Grants of a transaction that started and never finished (a crash); the next
    /// command converges the host to `grants` again or to its own target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Vec<Grant>>,
    /// What vouches for the committed table without reading every element back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vouch: Option<crate::kernel::nft::Vouch>,
    /// Process ids of the last loopgate runs that wrote the table here (newest last,
    /// at most [`WRITERS_KEPT`]), recorded in the journal before their batch: `watch`
    /// tells loopgate's own commits from other processes' by the pid the kernel
    /// reports for each batch, which, unlike a process name, another process cannot
    /// choose.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writers: Vec<u32>,
    /// What was asked for (command line and policy), interfaces as names or patterns:
    /// the desired state that `grants` resolves from whenever interfaces change. A spec
    /// that serves no interface now is pending, not gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub specs: Vec<crate::spec::Spec>,
    /// Interfaces (names or patterns) to guard without publishing anything
    /// (`loopgate guard`): another tool opened them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guards: Vec<crate::spec::GuardSpec>,
    /// The interfaces those resolve to, as committed with the table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guarded: Vec<String>,
    /// Interfaces with grants that were open before loopgate managed them (their
    /// original route_localnet, or conf.all, was non-zero when the table was planned):
    /// their guard lets another table's forward to 127/8 through, as it worked there
    /// before loopgate (see `plan::guards`). As committed with the table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admitted: Vec<String>,
}

/// How many writer pids [`State::writers`] keeps.
pub const WRITERS_KEPT: usize = 8;

impl State {
    /// A state written before specs existed: each committed grant stands for itself,
    /// pinned to its interface and listen address.
    fn derive_specs(&mut self) {
        if self.specs.is_empty() {
            self.specs = self
                .grants
                .iter()
                .map(|g| crate::spec::Spec::of_grant(g, crate::spec::Source::Cli))
                .collect();
        }
    }

    /// `writers` with this process added (newest last, oldest dropped).
    pub fn writers_with_me(&self) -> Vec<u32> {
        let me = std::process::id();
        let mut w: Vec<u32> = self.writers.iter().copied().filter(|p| *p != me).collect();
        w.push(me);
        let excess = w.len().saturating_sub(WRITERS_KEPT);
        w.drain(..excess);
        w
    }

    /// The record of device `ifindex`, if loopgate holds one.
    pub fn original(&self, ifindex: u32) -> Option<&Original> {
        self.originals.iter().find(|o| o.ifindex == ifindex)
    }
}

/// Version 1 of the state file: originals by interface name, values as bytes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateV1 {
    #[allow(dead_code)]
    version: u32,
    grants: Vec<Grant>,
    originals: BTreeMap<String, u8>,
    #[serde(default)]
    pending: Option<Vec<Grant>>,
    #[serde(default)]
    vouch: Option<crate::kernel::nft::Vouch>,
}

impl StateV1 {
    /// Ties each original to the device now carrying its name: the best a version-1
    /// file allows (it was written by a loopgate that did not tell copies apart). An
    /// interface that is gone has nothing left to restore.
    ///
    /// A version-1 record may have been read on an earlier copy of the device, so a
    /// non-zero original is not trusted: it becomes 0, and revoke closes the interface
    /// instead of leaving it open without a guard. A runtime that wants its own 1 back
    /// sets it again (Docker does on restart); a warning says so.
    fn upgrade(self, ifindex_of: impl Fn(&str) -> Option<u32>) -> State {
        let mut originals: Vec<Original> = self
            .originals
            .into_iter()
            .filter_map(|(iface, value)| {
                if value != 0 {
                    crate::errln!(
                        "loopgate: warning: state file version 1 recorded route_localnet={value} for {iface} without telling device copies apart; it is treated as 0, so revoking {iface} closes it"
                    );
                }
                ifindex_of(&iface).map(|ifindex| Original {
                    iface,
                    ifindex,
                    value: 0,
                })
            })
            .collect();
        originals.sort_by_key(|o| o.ifindex);
        originals.dedup_by_key(|o| o.ifindex);
        State {
            version: STATE_VERSION,
            grants: self.grants,
            originals,
            pending: self.pending,
            vouch: self.vouch,
            writers: Vec::new(),
            specs: Vec::new(),
            guards: Vec::new(),
            guarded: Vec::new(),
            admitted: Vec::new(),
        }
    }
}

/// Where the kernel features probed on this boot are recorded: the base directory
/// (features are the kernel's, not a namespace's). See [`crate::kernel::features`].
pub fn known_features() -> crate::kernel::features::KnownFeatures {
    crate::kernel::features::KnownFeatures::in_dir(base_dir())
}

/// The file of the namespace directory that tells other loopgate commands that a
/// `watch` runs there: `pid owner-port`.
const WATCH_PRESENCE: &str = "watch.owner";

/// Records that this process is the namespace's `watch`, holding loopgate's table
/// through the netlink port `held` (0 when it does not hold it), and following the
/// policy at `policy` if it does: `pid owner-port`, then the policy's path on a line
/// of its own.
///
/// Errors: the state directory cannot be reached or the file written.
pub fn write_watch_presence(held: Option<u32>, policy: Option<&std::path::Path>) -> Result<()> {
    let mut text = format!("{} {}\n", std::process::id(), held.unwrap_or(0));
    if let Some(p) = policy {
        text.push_str(&format!("{}\n", p.display()));
    }
    // Relative to the checked state directory, replaced whole, never through a link.
    private_namespace_dir()?.replace(WATCH_PRESENCE, text.as_bytes(), 0o644)?;
    Ok(())
}

/// Removes the presence file from `dir`, the namespace directory (watch stops).
pub fn remove_watch_presence(dir: &std::path::Path) {
    let _ = fs::remove_file(dir.join(WATCH_PRESENCE));
}

/// The running watch of the current namespace, if one runs: (pid, owner port id, 0
/// when it does not hold the table). Used by `audit` to name the protection in force.
pub fn running_watch() -> Option<(u32, u32)> {
    let text = fs::read_to_string(namespace_dir().ok()?.join(WATCH_PRESENCE)).ok()?;
    let mut words = text.split_whitespace();
    let pid: u32 = words.next()?.parse().ok()?;
    let port: u32 = words.next()?.parse().ok()?;
    // Alive? (signal 0 checks existence and permission only.)
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).ok()?;
    Some((pid, port))
}

/// The policy the running watch of the current namespace follows (`watch --policy`),
/// as the real path it named when it started: (pid, path). `None` when no watch runs
/// or it follows none.
pub fn watched_policy() -> Option<(u32, PathBuf)> {
    let (pid, _) = running_watch()?;
    let text = fs::read_to_string(namespace_dir().ok()?.join(WATCH_PRESENCE)).ok()?;
    let path = text.lines().nth(1).filter(|l| !l.is_empty())?;
    Some((pid, PathBuf::from(path)))
}

/// How [`Store`] takes the namespace's lock.
enum Lock {
    Exclusive,
    Shared,
    /// Exclusive, or not at all when another process holds it.
    TryExclusive,
}

/// The locked state directory of the current network namespace.
pub struct Store {
    dir: crate::files::PrivateDir,
    _lock: File,
    /// See [`Memo`]; empty for a store just opened, unless handed one.
    memo: std::cell::RefCell<Memo>,
    /// The list files this store found or wrote while it holds the lock.
    lists: std::cell::RefCell<lists::Local>,
}

/// What a long-running process (watch) keeps from one store it opened to the next, so
/// that a pass does not redo what the last one did: the state file's bytes as last
/// read or written, with the state they parse to (compared byte for byte with the
/// file each time, so a change by anyone is still read), and the last committed plan
/// with its image. At 1,000 grants and 100,000 allowed networks re-parsing the state
/// and re-imaging the committed plan (every rule printed through libnftnl, every
/// element encoded) were each about a sixth of watch's reaction to a new interface.
/// One of each: at that size each holds megabytes.
#[derive(Debug, Default)]
pub struct Memo {
    parsed: Option<(Vec<u8>, State)>,
    planned: Option<(
        std::rc::Rc<crate::ruleset::Ruleset>,
        std::rc::Rc<crate::kernel::nft::TableImage>,
    )>,
    /// What the committed plan was planned from: its grants, guarded and admitted
    /// interfaces (see [`Store::plan_for`]).
    planned_from: Option<PlanInputs>,
    /// What the last planned image printed, chain by chain (see
    /// [`crate::kernel::nft::ImageCache`]).
    images: crate::kernel::nft::ImageCache,
    /// The allow lists the state last read or written refers to (see `lists`).
    lists: lists::Memo,
}

/// What a plan is made from: grants, guarded and admitted interfaces (the arguments of
/// [`crate::plan::ruleset_admitting`]).
pub type PlanInputs = (Vec<Grant>, Vec<String>, Vec<String>);

/// The state directory of the current network namespace (`<base>/netns-<cookie>`),
/// where the state file, its lock and a running watch's socket live.
///
/// The directory exists when this returns: it and the base directory are created
/// 0700 whatever the umask, and both are checked to be directories (not links) that
/// only root can write, as are the directories above the base (see [`crate::files`]).
///
/// Errors: the namespace cookie cannot be read (Linux older than 5.14); a directory
/// cannot be created, or another user could change it (one line naming it).
pub fn namespace_dir() -> Result<PathBuf> {
    Ok(private_namespace_dir()?.path().to_path_buf())
}

/// As [`namespace_dir`], holding the checked directory open: for files written in
/// it relative to that handle, never through a link.
pub fn private_namespace_dir() -> Result<crate::files::PrivateDir> {
    let cookie = crate::kernel::netns::cookie()?;
    let base = base_dir();
    crate::files::PrivateDir::ensure(&base, true)?;
    crate::files::PrivateDir::ensure(&base.join(format!("netns-{cookie}")), false)
}

fn base_dir() -> PathBuf {
    std::env::var_os("LOOPGATE_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/loopgate"))
}

impl Store {
    /// Opens the state of the current namespace and locks it: exclusively for commands
    /// that change the host, shared for read-only ones. Sweeps stale namespace
    /// directories on the way (see [`sweep_stale`]).
    pub fn open(exclusive: bool) -> Result<Store> {
        let store = Self::open_with(if exclusive {
            Lock::Exclusive
        } else {
            Lock::Shared
        })
        .map(|s| s.expect("a blocking lock is always taken"));
        let _ = sweep_stale(); // housekeeping: never fails a command (see sweep_stale)
        store
    }

    /// Takes the exclusive lock only if no other loopgate holds the namespace's state
    /// now; `None` when one does (a transaction is running).
    pub fn try_open_exclusive() -> Result<Option<Store>> {
        Self::open_with(Lock::TryExclusive)
    }

    /// Takes the exclusive lock, waiting at most `limit` (polling every 10 ms); `None`
    /// when another process still holds it then. For `watch`, which must never wait
    /// forever on a reader stuck behind a full pipe (and which sweeps on its own
    /// clock).
    pub fn open_exclusive_within(limit: std::time::Duration) -> Result<Option<Store>> {
        let start = std::time::Instant::now();
        loop {
            if let Some(store) = Self::try_open_exclusive()? {
                return Ok(Some(store));
            }
            if start.elapsed() >= limit {
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// The identity of the current namespace's state file as it stands (inode, size,
    /// modification time): it changes with every save, which replaces the file by a
    /// rename. `None` when there is none. `watch` compares it between wake-ups.
    pub fn file_stamp() -> Option<(u64, u64, std::time::SystemTime)> {
        use std::os::unix::fs::MetadataExt;
        let cookie = crate::kernel::netns::cookie().ok()?;
        let m = fs::symlink_metadata(
            base_dir()
                .join(format!("netns-{cookie}"))
                .join("state.json"),
        )
        .ok()?;
        Some((m.ino(), m.len(), m.modified().ok()?))
    }

    /// Reads the current namespace's state without taking the lock. The file is only
    /// ever replaced by a rename, so this sees one whole version, though possibly one
    /// a running transaction is about to replace. `None` when there is none.
    ///
    /// A list file the state refers to may be collected by a transaction that commits
    /// between the reads of the state file and of the list: the state file is then
    /// read again (a few times at most).
    pub fn peek() -> Result<Option<State>> {
        let dir = private_namespace_dir()?;
        let mut tries = 0;
        loop {
            let Some(bytes) = read_in(&dir, STATE_FILE)? else {
                return Ok(None);
            };
            match parse_in(&dir, &bytes, &mut lists::Memo::default()) {
                Ok(state) => return Ok(Some(state)),
                Err(lists::ReadError::Missing(_)) if tries < 3 => tries += 1,
                Err(e) => return Err(unreadable(&dir, e)),
            }
        }
    }

    fn open_with(op: Lock) -> Result<Option<Store>> {
        let store = Self::lock_dir(private_namespace_dir()?, op)?;
        if let Some(store) = &store {
            store.record_namespace();
        }
        Ok(store)
    }

    /// Writes [`NAMESPACE_FILE`] (the namespace's nsfs identity, as
    /// `/proc/thread-self/ns/net` reads) unless it is there already. Best effort: a
    /// directory without it is never swept, which is the safe side.
    fn record_namespace(&self) {
        if fs::symlink_metadata(self.dir.path().join(NAMESPACE_FILE)).is_ok() {
            return;
        }
        let Ok(link) = fs::read_link("/proc/thread-self/ns/net") else {
            return;
        };
        let mut body = format!("{}\n", link.to_string_lossy());
        if let Ok(m) = fs::metadata("/proc/thread-self/net/dev") {
            body.push_str(&format!(
                "procnet:{}\n",
                std::os::unix::fs::MetadataExt::ino(&m)
            ));
        }
        let _ = self.dir.replace(NAMESPACE_FILE, body.as_bytes(), 0o600);
    }

    /// Opens and exclusively locks a state directory at `dir` (created if missing):
    /// for unit tests of the engine, which keep their state in a temporary directory.
    pub fn open_at(dir: PathBuf) -> Result<Store> {
        let dir = crate::files::PrivateDir::ensure(&dir, true)?;
        Self::lock_dir(dir, Lock::Exclusive).map(|s| s.expect("a blocking lock is always taken"))
    }

    /// Takes the lock of a checked state directory. The lock file is opened in it by
    /// descriptor and never through a link: root must not create or write another
    /// file that someone aimed the name at.
    fn lock_dir(dir: crate::files::PrivateDir, op: Lock) -> Result<Option<Store>> {
        let lock_path = dir.path().join(LOCK_FILE);
        let lock = dir
            .open(LOCK_FILE, libc::O_WRONLY | libc::O_CREAT, 0o600)
            .map_err(|e| link_refused(&lock_path, e))?;
        // flock(2) through std: released when the file is closed with the Store.
        let locked = match op {
            Lock::Exclusive => lock.lock(),
            Lock::Shared => lock.lock_shared(),
            Lock::TryExclusive => match lock.try_lock() {
                Ok(()) => Ok(()),
                Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                Err(std::fs::TryLockError::Error(e)) => Err(e),
            },
        };
        locked.with_context(|| format!("locking {}", lock_path.display()))?;
        Ok(Some(Store {
            dir,
            _lock: lock,
            memo: Default::default(),
            lists: Default::default(),
        }))
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join(STATE_FILE)
    }

    /// The state file's bytes, `None` when there is none yet.
    ///
    /// Errors: the file cannot be read, or is a symbolic link (never followed).
    pub fn read_raw(&self) -> Result<Option<Vec<u8>>> {
        read_in(&self.dir, STATE_FILE)
    }

    /// Reads the state; an empty [`State`] when there is no file yet. A version-1 file
    /// is upgraded in memory (see `StateV1::upgrade`: originals are matched to
    /// today's ifindexes and taken as 0); a version-2 file reads as it is.
    ///
    /// Errors: the file or a list file it refers to cannot be read or is a link, is
    /// not valid JSON of a known version or a list does not match its name (the
    /// message says to inspect or remove it), a list file is missing, or the file has a
    /// version this build does not know.
    pub fn load(&self) -> Result<State> {
        match self.read_raw()? {
            None => Ok(State {
                version: STATE_VERSION,
                ..Default::default()
            }),
            Some(bytes) => {
                if let Some((seen, state)) = &self.memo.borrow().parsed {
                    if *seen == bytes {
                        return Ok(state.clone());
                    }
                }
                let mut memo = self.memo.borrow_mut();
                let state = parse_in(&self.dir, &bytes, &mut memo.lists)
                    .map_err(|e| unreadable(&self.dir, e))?;
                memo.parsed = Some((bytes, state.clone()));
                Ok(state)
            }
        }
    }

    /// Hands this store what an earlier one of this process kept (see [`Memo`]).
    pub fn adopt(&self, memo: Memo) {
        *self.memo.borrow_mut() = memo;
    }

    /// What this store keeps for the next one (see [`Memo`]).
    pub fn take_memo(&self) -> Memo {
        std::mem::take(&mut *self.memo.borrow_mut())
    }

    /// The image of `ruleset` when it is the plan this store last recorded as
    /// committed ([`Store::remember_plan`]), shared.
    pub fn planned_image(
        &self,
        ruleset: &std::rc::Rc<crate::ruleset::Ruleset>,
    ) -> Option<std::rc::Rc<crate::kernel::nft::TableImage>> {
        match &self.memo.borrow().planned {
            Some((r, image)) if std::rc::Rc::ptr_eq(r, ruleset) || r == ruleset => {
                Some(image.clone())
            }
            _ => None,
        }
    }

    /// The image of `ruleset`, printing only the chains and sets that differ from
    /// the last plan this store (or an earlier one it adopted the memo of) imaged.
    /// The committed plan's own image when `ruleset` is that plan (a pass that changes
    /// nothing images nothing).
    pub fn image_of(
        &self,
        ruleset: &std::rc::Rc<crate::ruleset::Ruleset>,
    ) -> std::rc::Rc<crate::kernel::nft::TableImage> {
        if let Some(image) = self.planned_image(ruleset) {
            return image;
        }
        std::rc::Rc::new(crate::kernel::nft::planned_image_cached(
            ruleset,
            &mut self.memo.borrow_mut().images,
        ))
    }

    /// Remembers the plan just committed, what it was planned from and its image, for
    /// the next change's comparison (see [`Memo`]).
    pub fn remember_plan(
        &self,
        from: PlanInputs,
        ruleset: std::rc::Rc<crate::ruleset::Ruleset>,
        image: std::rc::Rc<crate::kernel::nft::TableImage>,
    ) {
        let mut memo = self.memo.borrow_mut();
        memo.planned = Some((ruleset, image));
        memo.planned_from = Some(from);
    }

    /// [`crate::plan::ruleset_admitting`] of these grants, guarded and admitted
    /// interfaces: the committed plan when it was planned from exactly them
    /// ([`Store::remember_plan`]), without planning it again (100,000 allowed networks
    /// merged into sets).
    pub fn plan_of(
        &self,
        grants: &[Grant],
        guarded: &[String],
        admitted: &[String],
    ) -> Option<std::rc::Rc<crate::ruleset::Ruleset>> {
        let memo = self.memo.borrow();
        match (&memo.planned_from, &memo.planned) {
            (Some((g, gu, ad)), Some((ruleset, _)))
                if g == grants && gu == guarded && ad == admitted =>
            {
                Some(ruleset.clone())
            }
            _ => crate::plan::ruleset_admitting(grants, guarded, admitted).map(std::rc::Rc::new),
        }
    }

    /// A side file of this state directory (`name`, e.g. the audit's running totals),
    /// `None` when there is none. Errors: as [`Store::read_raw`].
    pub fn read_aside(&self, name: &str) -> Result<Option<Vec<u8>>> {
        read_in(&self.dir, name)
    }

    /// Atomically replaces the side file `name` of this state directory with `bytes`
    /// (0600). Errors: the directory cannot be written.
    pub fn write_aside(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.dir
            .replace(name, bytes, 0o600)
            .with_context(|| format!("writing {}", self.dir.path().join(name).display()))
    }

    /// Replaces the state file with `state`, atomically (see [`Store::write_raw`]), as
    /// version [`STATE_VERSION`]: the list files it refers to are written first (those
    /// not in place yet), then the state file.
    ///
    /// Errors: the directory cannot be written (full disk, read-only /run).
    pub fn save(&self, state: &State) -> Result<()> {
        let mut memo = self.memo.borrow_mut();
        let mut local = self.lists.borrow_mut();
        let mut writer = lists::Writer::new(&self.dir, &mut memo.lists, &mut local);
        let out = disk::StateOut::new(state, |list| writer.put(list))?;
        let bytes = serde_json::to_vec(&out).context("serialising state")?;
        drop(out);
        let refs = writer.finish()?;
        local.written = None;
        self.write_state(Some(&bytes))?;
        local.written = Some(refs);
        // What a load of these bytes gives (derived specs included).
        let mut saved = state.clone();
        saved.version = STATE_VERSION;
        saved.derive_specs();
        memo.parsed = Some((bytes, saved));
        Ok(())
    }

    /// Removes the list files the state file does not refer to (see `lists`): for the
    /// end of a transaction that committed, never during one (its rollback may put
    /// back a state file that refers to older lists). Returns how many it removed.
    ///
    /// Errors: the state file cannot be read or parsed, or the directory listed;
    /// nothing is removed then.
    pub fn collect_lists(&self) -> Result<usize> {
        let keep = match self.lists.borrow().written.clone() {
            Some(refs) => refs,
            None => match self.read_raw()? {
                None => Default::default(),
                Some(bytes) => refs_in(&bytes)
                    .with_context(|| format!("state file {} is corrupt", self.path().display()))?,
            },
        };
        lists::collect(&self.dir, &keep, &mut self.lists.borrow_mut())
    }

    /// Atomically replaces the state file with `bytes`, or removes it for `None`.
    /// The list files those bytes refer to must be there: they are when the bytes were
    /// read from the file earlier under the same lock (a transaction's rollback).
    pub fn write_raw(&self, bytes: Option<&[u8]>) -> Result<()> {
        self.lists.borrow_mut().written = None;
        self.write_state(bytes)
    }

    fn write_state(&self, bytes: Option<&[u8]>) -> Result<()> {
        let Some(bytes) = bytes else {
            return match self.dir.remove(STATE_FILE) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).context("removing the state file")
                }
                _ => Ok(()),
            };
        };
        // A new temporary file in the same directory (exclusive, no link followed,
        // removed if anything fails before the rename), written and synced, then
        // renamed over the state file; a link planted there is replaced, not followed.
        self.dir
            .replace(STATE_FILE, bytes, 0o600)
            .with_context(|| format!("replacing {}", self.path().display()))
    }
}

/// The state file in each namespace's state directory.
const STATE_FILE: &str = "state.json";
/// The lock file beside it, `flock`ed by every command.
const LOCK_FILE: &str = "lock";

/// `file` of `dir`, `None` when it does not exist.
///
/// Errors: the file cannot be read, or is a symbolic link (one line naming it).
fn read_in(dir: &crate::files::PrivateDir, file: &str) -> Result<Option<Vec<u8>>> {
    let path = dir.path().join(file);
    match dir.open(file, libc::O_RDONLY, 0) {
        Ok(mut f) => {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut bytes)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(Some(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(link_refused(&path, e)),
    }
}

/// Parses a state file's `bytes` read from `dir`, the lists it refers to through `memo`
/// (see [`Store::load`]).
fn parse_in(
    dir: &crate::files::PrivateDir,
    bytes: &[u8],
    memo: &mut lists::Memo,
) -> std::result::Result<State, lists::ReadError> {
    let path = dir.path().join(STATE_FILE);
    let corrupt = |e: serde_json::Error| {
        lists::ReadError::Other(anyhow::Error::new(e).context(format!(
            "state file {} is corrupt; inspect or remove it",
            path.display()
        )))
    };
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let Version { version } = serde_json::from_slice(bytes).map_err(corrupt)?;
    let mut state = match version {
        2 | STATE_VERSION => {
            let on_disk: disk::StateIn = serde_json::from_slice(bytes).map_err(corrupt)?;
            let mut reader = lists::Reader::new(dir, memo);
            let state = on_disk.into_state(|id| reader.get(id))?;
            reader.finish();
            state
        }
        1 => {
            let v1: StateV1 = serde_json::from_slice(bytes).map_err(corrupt)?;
            v1.upgrade(crate::kernel::sysctl::ifindex_of)
        }
        other => {
            return Err(lists::ReadError::Other(anyhow::anyhow!(
                "state file {} has version {other}, expected {STATE_VERSION}",
                path.display()
            )))
        }
    };
    state.derive_specs();
    Ok(state)
}

/// The list files a state file's `bytes` refer to. Errors: not a state file of a
/// version this build knows (one of a newer build may refer to files this one
/// cannot tell).
fn refs_in(bytes: &[u8]) -> Result<std::collections::BTreeSet<lists::ListId>> {
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let Version { version } = serde_json::from_slice(bytes)?;
    Ok(match version {
        1 => Default::default(),
        2 | STATE_VERSION => serde_json::from_slice::<disk::StateIn>(bytes)?.refs(),
        other => anyhow::bail!("version {other}, expected {STATE_VERSION}"),
    })
}

/// The one-line error of a state that cannot be read (see [`parse_in`]).
fn unreadable(dir: &crate::files::PrivateDir, e: lists::ReadError) -> anyhow::Error {
    match e {
        lists::ReadError::Missing(list) => anyhow::anyhow!(
            "state file {} refers to allow list {list}, which is missing; inspect or remove the state file",
            dir.path().join(STATE_FILE).display()
        ),
        lists::ReadError::Other(e) => e,
    }
}

/// The error for opening `path` in a state directory, one line; a symbolic link
/// there is named as such (someone planted it: loopgate never makes one).
fn link_refused(path: &std::path::Path, e: std::io::Error) -> anyhow::Error {
    if crate::files::is_link_error(&e) {
        anyhow::anyhow!(
            "{:?} is a symbolic link; loopgate never follows a link in its state directory: remove it",
            path.display().to_string()
        )
    } else {
        anyhow::Error::new(e).context(format!("opening {}", path.display()))
    }
}

/// The file in each namespace's state directory that names the namespace the way
/// `/proc` can see it from outside, one identity a line: first as nsfs does
/// (`net:[4026532250]`, the text of `readlink /proc/PID/ns/net`), then as the inode of
/// its `/proc/PID/net/dev` (`procnet:4026533297`), which can be read of processes whose
/// `ns/net` a security module hides even from root.
///
/// The directory is named by the namespace's cookie, which is never reused but cannot
/// be read from outside the namespace; these inodes can be read from every process and
/// mount that keeps the namespace alive, which is what [`sweep_stale`] looks for. While
/// a namespace lives no other one has its inodes; once it is gone, they may be reused,
/// which can only make a gone namespace look alive (kept), never the reverse.
pub const NAMESPACE_FILE: &str = "netns";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_file_is_tied_to_the_devices_that_carry_its_names_now() {
        let v1: StateV1 = serde_json::from_str(
            r#"{"version":1,"grants":[],"originals":{"br0":1,"gone":0,"veth1":0}}"#,
        )
        .unwrap();
        let state = v1.upgrade(|name| match name {
            "br0" => Some(7),
            "veth1" => Some(3),
            _ => None,
        });
        assert_eq!(state.version, STATE_VERSION);
        assert_eq!(
            state.originals,
            vec![
                Original {
                    iface: "veth1".into(),
                    ifindex: 3,
                    value: 0
                },
                Original {
                    iface: "br0".into(),
                    ifindex: 7,
                    value: 0
                },
            ]
        );
    }
}
