//! `--persist`: recording a change in the persistent policy (`loopgate.yaml` in the
//! policy directory), in two halves around the change itself.
//!
//! [`Target::prepare`] runs before the host is touched. It takes an exclusive lock on
//! the directory, checks that the directory exists or can be created and is writable,
//! that every other policy file in it parses and validates, and that the directory as
//! it will be after the write still applies cleanly at boot; it renders the new file
//! there and then. A target that fails any of that is bad input: exit 2, nothing
//! changed. [`Target::commit`] runs after the change and only writes what was rendered:
//! a unique temporary file in the same directory, fsync, rename over `loopgate.yaml`,
//! fsync of the directory. The lock is held from the first read to the rename, so
//! concurrent `--persist` runs never interleave. A failure there (a full disk) is the
//! only one left after the change, and is reported as [`NotPersisted`] (exit 4) with the
//! words that the change is in force.

use crate::error::{plain_io, BadInput, NotPersisted};
use crate::grant::Grant;
use crate::input;
use crate::policy::{self, Policy, PERSIST_FILE};
use crate::spec;
use anyhow::{Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The lock file in the policy directory; `apply` reads `*.yaml` only, so it is inert.
pub const LOCK_FILE: &str = ".loopgate.lock";
/// How long `--persist` waits for another process's lock on the policy directory.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Temporary files are `.loopgate.yaml.<pid>.<nanos>.tmp`; never `*.yaml`, so a
/// boot-time `apply` of the directory cannot read a half-written one.
const TMP_PREFIX: &str = ".loopgate.yaml.";
const TMP_SUFFIX: &str = ".tmp";

/// A checked, locked persistence target holding the rendered file, ready to be written.
pub struct Target {
    dir: PathBuf,
    /// Created in [`Target::prepare`], which proves the directory takes new files
    /// before anything changes; removed on drop unless it was renamed into place.
    tmp: Option<tempfile::NamedTempFile>,
    text: String,
    warnings: Vec<String>,
    /// Released when the target is dropped, after the rename.
    _lock: File,
}

fn refuse(what: String) -> anyhow::Error {
    anyhow::Error::new(BadInput(format!("--persist: {what}")))
}

impl Target {
    /// Checks and locks `dir` and renders the policy file for `grants`, the namespace's
    /// grants after the change. The other policy files of `dir` are read as `apply`
    /// reads them ([`policy::specs_of`], resolved against `host` now). Every error is
    /// [`BadInput`]: nothing has changed yet.
    pub fn prepare(dir: &Path, grants: &[Grant], host: &dyn spec::Host) -> Result<Target> {
        let shown = dir.display().to_string();
        // 0755 whatever the umask (root writes, everyone may read what is published),
        // and refused if someone else could write it: `apply` would refuse it at boot.
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .and_then(|_| fs::set_permissions(dir, fs::Permissions::from_mode(0o755)))
                .map_err(|e| {
                    refuse(format!(
                        "cannot create policy directory {shown:?}: {}",
                        plain_io(&e)
                    ))
                })?;
        }
        policy::check_trusted_dir(dir).map_err(|e| refuse(format!("{e:#}")))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(|e| {
                refuse(format!(
                    "cannot write in policy directory {shown:?}: {}",
                    plain_io(&e)
                ))
            })?;
        // flock(2) through std; closing the file with the Target releases it. Bounded:
        // the caller holds the namespace's state lock meanwhile, which `watch` needs.
        let start = std::time::Instant::now();
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(refuse(format!(
                        "{:?} is locked by another process for over {} s; nothing was changed",
                        lock_path.display().to_string(),
                        LOCK_WAIT.as_secs()
                    )))
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(refuse(format!(
                        "cannot lock {:?}: {}",
                        lock_path.display().to_string(),
                        plain_io(&e)
                    )))
                }
            }
        }
        // Only a lock holder creates temporary files, so any found now belong to a run
        // that died before its rename: remove them.
        for stale in temp_files(dir) {
            let _ = fs::remove_file(stale);
        }

        let own = dir.join(PERSIST_FILE);
        let others = other_policies(dir, &own)?;
        // File by file, so every error names its file; what the host does not have
        // now is pending and grants nothing, as at boot.
        let mut defined_elsewhere = Vec::new();
        for source in &others {
            let grants =
                grants_of_file(source, host).map_err(|e| refuse(format!("{}: {e:#}", source.0)))?;
            defined_elsewhere.extend(grants);
        }
        let mine: Vec<Grant> = grants
            .iter()
            .filter(|g| !defined_elsewhere.contains(g))
            .cloned()
            .collect();
        // The boot unit applies the whole directory: refuse a file that would make it
        // fail there (the same address, protocol and port to two targets).
        let merged: Vec<Grant> = defined_elsewhere.iter().chain(&mine).cloned().collect();
        input::check_conflicts(&merged).map_err(|e| {
            refuse(format!(
                "policy directory {shown:?} would no longer apply at boot (a conflict with another file there): {e:#}"
            ))
        })?;
        let warnings = defined_elsewhere
            .iter()
            .filter(|g| !grants.contains(g))
            .map(|g| {
                format!(
                    "grant {} is still defined in another file of {shown}; it returns at the next boot",
                    g.name
                )
            })
            .collect();
        let text = policy::render(&mine)?;

        let tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .suffix(TMP_SUFFIX)
            .permissions(
                <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644),
            )
            .tempfile_in(dir)
            .map_err(|e| {
                refuse(format!(
                    "cannot write in policy directory {shown:?}: {}",
                    plain_io(&e)
                ))
            })?;
        Ok(Target {
            dir: dir.to_path_buf(),
            tmp: Some(tmp),
            text,
            warnings,
            _lock: lock,
        })
    }

    /// The file this target replaces.
    pub fn file(&self) -> PathBuf {
        self.dir.join(PERSIST_FILE)
    }

    /// Writes the rendered policy atomically and durably; returns the warnings about
    /// revoked grants that other files keep alive. Runs after the change: any error is
    /// [`NotPersisted`], saying the change is in force.
    pub fn commit(mut self) -> Result<Vec<String>> {
        let file = self.file();
        match self.write() {
            Ok(()) => Ok(std::mem::take(&mut self.warnings)),
            Err(e) => Err(anyhow::Error::new(NotPersisted(format!(
                "the change is in force but was not recorded in {}: {e:#}",
                file.display()
            )))),
        }
    }

    fn write(&mut self) -> Result<()> {
        let own = self.file();
        let mut tmp = self.tmp.take().context("temporary file already used")?;
        tmp.write_all(self.text.as_bytes())
            .and_then(|_| tmp.as_file().sync_all())
            .with_context(|| format!("writing {}", tmp.path().display()))?;
        crate::failpoint::check("persist-rename")?;
        tmp.persist(&own)
            .map_err(|e| e.error)
            .with_context(|| format!("replacing {}", own.display()))?;
        // The rename is durable only once the directory entry is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", self.dir.display()))?;
        Ok(())
    }
}

/// The grants one policy file asks for on `host` now, validated and resolved as
/// `apply` does (the production path: [`policy::specs_of`], [`spec::resolve`]); what
/// is pending (a missing interface, a runtime network not there) grants nothing.
///
/// Errors (bad input): an invalid entry, or grants that conflict with each other.
fn grants_of_file(source: &(String, Policy), host: &dyn spec::Host) -> Result<Vec<Grant>> {
    let specs = policy::specs_of(std::slice::from_ref(source), host, true)?;
    let resolved = spec::resolve(&specs, host);
    if let Some(p) = resolved
        .pending
        .iter()
        .find(|p| p.kind == spec::PendingKind::Conflict)
    {
        crate::bad_input!("{}: {}", p.spec, p.reason);
    }
    input::check_conflicts(&resolved.grants)?;
    Ok(resolved.grants)
}

/// The temporary files of `--persist` in `dir`.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(TMP_PREFIX) && name.ends_with(TMP_SUFFIX)
        })
        .map(|e| e.path())
        .collect()
}

/// Every policy file of `dir` but loopgate's own (`*.yaml`/`*.yml`, as `apply` reads
/// them), parsed. None at all is fine here: the directory may be new.
fn other_policies(dir: &Path, own: &Path) -> Result<Vec<(String, Policy)>> {
    let entries = fs::read_dir(dir).map_err(|e| {
        refuse(format!(
            "cannot read policy directory {:?}: {}",
            dir.display().to_string(),
            plain_io(&e)
        ))
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .filter(|p| p != own)
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            policy::load(f)
                .map(|p| (f.display().to_string(), p))
                .map_err(|e| refuse(format!("{e:#}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    struct Host;
    impl input::Interfaces for Host {
        fn ipv4_addresses(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
            (name == "br0").then(|| vec![Ipv4Addr::new(192, 0, 2, 1)])
        }
    }
    impl spec::Host for Host {
        fn interface_names(&self) -> Vec<String> {
            vec!["br0".into()]
        }
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "loopgate-persist-unit-{tag}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn grant(port: u16) -> Grant {
        let text =
            format!("grants:\n  - interface: br0\n    allow: 192.0.2.0/25\n    port: {port}\n");
        let policy = ("t".to_string(), policy::parse(&text, "t").unwrap());
        grants_of_file(&policy, &Host).unwrap().remove(0)
    }

    fn bad(r: Result<Target>) -> String {
        let e = r.err().expect("refused");
        assert!(e.is::<BadInput>(), "{e:#}");
        format!("{e:#}")
    }

    #[test]
    fn a_missing_or_empty_directory_is_a_fine_target() {
        let dir = scratch("new").join("sub");
        let t = Target::prepare(&dir, &[grant(80)], &Host).unwrap();
        t.commit().unwrap();
        let text = fs::read_to_string(dir.join(PERSIST_FILE)).unwrap();
        assert!(text.contains("port: 80"), "{text}");
        assert!(temp_files(&dir).is_empty());
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_broken_or_conflicting_admin_file_is_refused_before_anything() {
        let dir = scratch("broken");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("admin.yaml"), "grants: [").unwrap();
        let msg = bad(Target::prepare(&dir, &[grant(80)], &Host));
        assert!(
            msg.contains("admin.yaml") && msg.starts_with("--persist"),
            "{msg}"
        );
        assert!(
            temp_files(&dir).is_empty(),
            "a refused target leaves nothing"
        );
        // Same address and port, another target: boot would refuse the directory.
        fs::write(
            dir.join("admin.yaml"),
            "grants:\n  - interface: br0\n    allow: 192.0.2.0/25\n    port: 80\n    to: 127.0.0.2\n",
        )
        .unwrap();
        let msg = bad(Target::prepare(&dir, &[grant(80)], &Host));
        assert!(msg.contains("conflict"), "{msg}");
        // A grant the host cannot have (listen address not on br0): the file is named.
        fs::write(
            dir.join("admin.yaml"),
            "grants:\n  - interface: br0\n    allow: 192.0.2.0/25\n    port: 81\n    listen: 198.51.100.1\n",
        )
        .unwrap();
        let msg = bad(Target::prepare(&dir, &[grant(80)], &Host));
        assert!(
            msg.contains("admin.yaml") && msg.contains("198.51.100.1"),
            "{msg}"
        );
        assert!(!dir.join(PERSIST_FILE).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Other files are read as `apply` reads them: a pattern there defines the grants
    /// it resolves to now, and a missing interface defines nothing (pending).
    #[test]
    fn other_files_are_read_as_apply_reads_them() {
        let dir = scratch("production");
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("admin.yaml"),
            "grants:\n  - interface: 'br*'\n    allow: 192.0.2.0/25\n    port: 80\n  - interface: br9\n    allow: 192.0.2.0/25\n    port: 81\n",
        )
        .unwrap();
        let t = Target::prepare(&dir, &[grant(80), grant(82)], &Host).unwrap();
        assert!(
            !t.text.contains("port: 80") && t.text.contains("port: 82"),
            "{}",
            t.text
        );
        drop(t);
        let t = Target::prepare(&dir, &[], &Host).unwrap();
        assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
        assert!(
            t.warnings[0].contains("grant br0-tcp-80 "),
            "{:?}",
            t.warnings
        );
        drop(t);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_temporary_files_are_cleared_and_a_dropped_target_leaves_none() {
        let dir = scratch("stale");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(".loopgate.yaml.1.2.tmp"), "half").unwrap();
        let t = Target::prepare(&dir, &[grant(80)], &Host).unwrap();
        assert_eq!(
            temp_files(&dir),
            vec![t.tmp.as_ref().unwrap().path().to_path_buf()]
        );
        drop(t);
        assert!(temp_files(&dir).is_empty());
        assert!(!dir.join(PERSIST_FILE).exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
