//! What loopgate remembers per network namespace: its grants, the route_localnet value
//! each interface had before loopgate first touched it, and an in-flight transaction.
//!
//! The kernel alone cannot tell loopgate what to restore on revoke (Docker or Podman may
//! have set route_localnet=1 themselves), so this survives the process. It lives under
//! `/run/loopgate/netns-<cookie>/` (`LOOPGATE_STATE_DIR` overrides the base), is
//! replaced atomically (write, fsync, rename), and an exclusive `flock` serialises
//! concurrent loopgate runs on one namespace.

use crate::grant::Grant;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

/// Version of the state file. 2: originals are recorded per device instance (ifindex);
/// a version-1 file (originals by interface name) is still read, see [`Store::load`].
pub const STATE_VERSION: u32 = 2;

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
        }
    }
}

/// Kernel features loopgate has already seen the kernel accept on this boot, so the
/// feature probe (a validate-only batch that also makes the next real batch wait for an
/// RCU grace period) runs once per boot and feature, not on every command. Features are
/// the kernel's, not a namespace's, so the record sits in the base directory.
pub struct KnownFeatures;

impl KnownFeatures {
    fn path() -> PathBuf {
        base_dir().join("kernel-features")
    }

    fn boot_id() -> Option<String> {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// True when every one of `needs` was probed successfully since this boot.
    pub fn cover(needs: &std::collections::BTreeSet<String>) -> bool {
        let (Some(boot), Ok(text)) = (Self::boot_id(), fs::read_to_string(Self::path())) else {
            return false;
        };
        let mut lines = text.lines();
        lines.next() == Some(boot.as_str()) && {
            let known: std::collections::BTreeSet<&str> = lines.collect();
            needs.iter().all(|n| known.contains(n.as_str()))
        }
    }

    /// Records `needs` as probed; best effort (a failure only means probing again).
    pub fn remember(needs: &std::collections::BTreeSet<String>) {
        let Some(boot) = Self::boot_id() else { return };
        let mut all: std::collections::BTreeSet<String> = match fs::read_to_string(Self::path()) {
            Ok(text) if text.lines().next() == Some(boot.as_str()) => {
                text.lines().skip(1).map(str::to_string).collect()
            }
            _ => Default::default(),
        };
        all.extend(needs.iter().cloned());
        let body: String = std::iter::once(boot).chain(all).map(|l| l + "\n").collect();
        let tmp = Self::path().with_extension(format!("tmp{}", std::process::id()));
        if fs::create_dir_all(base_dir()).is_ok() && fs::write(&tmp, body).is_ok() {
            let _ = fs::rename(&tmp, Self::path());
        }
        let _ = fs::remove_file(&tmp);
    }
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
    dir: PathBuf,
    _lock: File,
}

/// The state directory of the current network namespace (`<base>/netns-<cookie>`),
/// where the state file, its lock and a running watch's socket live.
///
/// Errors: the namespace cookie cannot be read (Linux older than 5.14).
pub fn namespace_dir() -> Result<PathBuf> {
    let cookie = crate::kernel::netns::cookie()?;
    Ok(base_dir().join(format!("netns-{cookie}")))
}

fn base_dir() -> PathBuf {
    std::env::var_os("LOOPGATE_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/loopgate"))
}

impl Store {
    /// Opens the state of the current namespace and locks it: exclusively for commands
    /// that change the host, shared for read-only ones.
    pub fn open(exclusive: bool) -> Result<Store> {
        Self::open_with(if exclusive {
            Lock::Exclusive
        } else {
            Lock::Shared
        })
        .map(|s| s.expect("a blocking lock is always taken"))
    }

    /// Takes the exclusive lock only if no other loopgate holds the namespace's state
    /// now; `None` when one does (a transaction is running).
    pub fn try_open_exclusive() -> Result<Option<Store>> {
        Self::open_with(Lock::TryExclusive)
    }

    /// Takes the exclusive lock, waiting at most `limit` (polling every 10 ms); `None`
    /// when another process still holds it then. For `watch`, which must never wait
    /// forever on a reader stuck behind a full pipe.
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
        let m = fs::metadata(
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
    pub fn peek() -> Result<Option<State>> {
        let cookie = crate::kernel::netns::cookie()?;
        let path = base_dir()
            .join(format!("netns-{cookie}"))
            .join("state.json");
        match fs::read(&path) {
            Ok(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                    format!("state file {} is corrupt", path.display())
                })?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn open_with(op: Lock) -> Result<Option<Store>> {
        let cookie = crate::kernel::netns::cookie()?;
        Self::open_dir(base_dir().join(format!("netns-{cookie}")), op)
    }

    /// Opens and exclusively locks a state directory at `dir` (created if missing):
    /// for unit tests of the engine, which keep their state in a temporary directory.
    pub fn open_at(dir: PathBuf) -> Result<Store> {
        Self::open_dir(dir, Lock::Exclusive).map(|s| s.expect("a blocking lock is always taken"))
    }

    fn open_dir(dir: PathBuf, op: Lock) -> Result<Option<Store>> {
        fs::create_dir_all(&dir)
            .with_context(|| format!("creating state directory {}", dir.display()))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
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
        Ok(Some(Store { dir, _lock: lock }))
    }

    fn path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The state file's bytes, `None` when there is none yet.
    pub fn read_raw(&self) -> Result<Option<Vec<u8>>> {
        match fs::read(self.path()) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path().display())),
        }
    }

    /// Reads the state; an empty [`State`] when there is no file yet. A version-1 file
    /// is upgraded in memory (see `StateV1::upgrade`: originals are matched to
    /// today's ifindexes and taken as 0).
    ///
    /// Errors: the file cannot be read, is not valid JSON of a known version (the
    /// message says to inspect or remove it), or has a version this build does not know.
    pub fn load(&self) -> Result<State> {
        match self.read_raw()? {
            None => Ok(State {
                version: STATE_VERSION,
                ..Default::default()
            }),
            Some(bytes) => {
                let corrupt = || {
                    format!(
                        "state file {} is corrupt; inspect or remove it",
                        self.path().display()
                    )
                };
                #[derive(Deserialize)]
                struct Version {
                    version: u32,
                }
                let Version { version } = serde_json::from_slice(&bytes).with_context(corrupt)?;
                match version {
                    STATE_VERSION => {
                        let mut state: State =
                            serde_json::from_slice(&bytes).with_context(corrupt)?;
                        state.derive_specs();
                        Ok(state)
                    }
                    1 => {
                        let v1: StateV1 = serde_json::from_slice(&bytes).with_context(corrupt)?;
                        let mut state = v1.upgrade(crate::kernel::sysctl::ifindex_of);
                        state.derive_specs();
                        Ok(state)
                    }
                    other => anyhow::bail!(
                        "state file {} has version {other}, expected {STATE_VERSION}",
                        self.path().display()
                    ),
                }
            }
        }
    }

    /// Replaces the state file with `state`, atomically (see [`Store::write_raw`]).
    ///
    /// Errors: the directory cannot be written (full disk, read-only /run).
    pub fn save(&self, state: &State) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(state).context("serialising state")?;
        self.write_raw(Some(&bytes))
    }

    /// Atomically replaces the state file with `bytes`, or removes it for `None`.
    pub fn write_raw(&self, bytes: Option<&[u8]>) -> Result<()> {
        let Some(bytes) = bytes else {
            return match fs::remove_file(self.path()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).context("removing the state file")
                }
                _ => Ok(()),
            };
        };
        // A unique temporary file in the same directory (removed if anything fails
        // before the rename), written and synced, then renamed over the state file.
        let mut tmp = tempfile::Builder::new()
            .prefix("state.json.")
            .suffix(".tmp")
            .tempfile_in(&self.dir)
            .with_context(|| format!("writing in {}", self.dir.display()))?;
        tmp.write_all(bytes)
            .and_then(|_| tmp.as_file().sync_all())
            .with_context(|| format!("writing {}", tmp.path().display()))?;
        tmp.persist(self.path())
            .map_err(|e| e.error)
            .with_context(|| format!("replacing {}", self.path().display()))?;
        Ok(())
    }
}

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
