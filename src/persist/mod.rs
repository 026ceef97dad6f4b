//! `--persist`: recording a change in the persistent policy directory, in the file
//! that owns what changes, in two halves around the change itself.
//!
//! A policy file owns the specs it lists: a change to one of them goes to that file
//! (an admin's file is edited entry by entry, see [`edit`]), a new spec to loopgate's
//! own file, `loopgate.yaml`, rendered as it was asked for (a runtime network as
//! `docker_network:`, a listen address only when one was given).
//!
//! [`Target::prepare`] runs before the host is touched. It takes an exclusive lock on
//! the directory, checks that the directory exists or can be created and is writable,
//! that every policy file in it parses and validates, and that the directory as it will
//! be after the write still reads without a conflict; it renders the new files there
//! and then. A target that fails any of that is bad input: exit 2, nothing changed.
//! [`Target::commit`] runs after the change and only writes what was rendered: a
//! unique temporary file in the same directory, fsync, rename over the file, fsync of
//! the directory. The lock is held from the first read to the rename, so concurrent
//! `--persist` runs never interleave. A failure there (a full disk) is the only one
//! left after the change, and is reported as [`NotPersisted`] (exit 4) with the words
//! that the change is in force.

pub mod edit;

use crate::error::{plain_io, BadInput, NotPersisted};
use crate::policy::{self, Policy, PERSIST_FILE};
use crate::spec::{self, Spec};
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

/// What a command changes in the persistent policy.
#[derive(Debug, Clone, Default)]
pub struct Edit {
    /// Specs of a policy to take out of the file that owns them (matched by key).
    pub remove: Vec<Spec>,
    /// Specs to record: each replaces the spec with its key in the file that owns it,
    /// or is added to `loopgate.yaml`.
    pub put: Vec<Spec>,
}

/// One file to replace, rendered.
struct Write1 {
    file: PathBuf,
    text: String,
    /// Created in [`Target::prepare`], which proves the directory takes new files
    /// before anything changes; removed on drop unless it was renamed into place.
    tmp: Option<tempfile::NamedTempFile>,
}

/// A checked, locked persistence target holding the rendered files, ready to be written.
pub struct Target {
    dir: PathBuf,
    writes: Vec<Write1>,
    /// The specs of the whole directory once written, as `apply` will read them.
    specs: Vec<Spec>,
    /// Released when the target is dropped, after the renames.
    _lock: File,
}

fn refuse(what: String) -> anyhow::Error {
    anyhow::Error::new(BadInput(format!("--persist: {what}")))
}

impl Target {
    /// Checks and locks `dir`, and renders the files `edit` changes. The policy files of
    /// `dir` are read as `apply` reads them ([`policy::specs_of`]). Every error is
    /// [`BadInput`]: nothing has changed yet.
    pub fn prepare(dir: &Path, edit: &Edit) -> Result<Target> {
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
        let lock = lock_dir(dir)?;
        // Only a lock holder creates temporary files, so any found now belong to a run
        // that died before its rename: remove them.
        for stale in temp_files(dir) {
            let _ = fs::remove_file(stale);
        }

        let own_path = dir.join(PERSIST_FILE);
        let own_origin = match own_path.is_file() {
            true => policy::origin_of(&own_path),
            false => fs::canonicalize(dir)
                .unwrap_or_else(|_| dir.to_path_buf())
                .join(PERSIST_FILE)
                .display()
                .to_string(),
        };
        let mut files = read_files(dir)?;
        if !files.iter().any(|f| f.origin == own_origin) {
            files.push(FileNow {
                path: own_path.clone(),
                origin: own_origin.clone(),
                text: None,
                policy: Policy {
                    grants: vec![],
                    guard: vec![],
                },
            });
            // In name order, as `apply` reads the directory.
            files.sort_by(|a, b| a.path.cmp(&b.path));
        }
        // Every spec to change must be owned by a file of this directory.
        let owner_of = |s: &Spec| -> Option<usize> {
            files
                .iter()
                .position(|f| s.origin.as_deref() == Some(f.origin.as_str()))
        };
        for s in &edit.remove {
            if s.source == spec::Source::Policy && owner_of(s).is_none() {
                return Err(refuse(format!(
                    "grant {} is kept by {}, which is not in the policy directory {shown}; change it there",
                    s.shown_name(),
                    s.origin.as_deref().unwrap_or("a policy applied before loopgate recorded its file")
                )));
            }
        }
        // Publishing what a file publishes to another target is a conflict there, as
        // `expose` refuses it for what is in force: revoke it first.
        for p in &edit.put {
            for f in &files {
                let theirs = policy::specs_of(&[(f.origin.clone(), f.policy_copy())])
                    .map_err(|e| refuse(format!("{e:#}")))?;
                if let Some(t) = theirs.iter().find(|t| t.key() == p.key() && t.to != p.to) {
                    return Err(refuse(format!(
                        "{} is published to {} by {} (a conflict); revoke it before publishing it to {}",
                        t.label(),
                        t.to,
                        f.origin,
                        p.to
                    )));
                }
            }
        }
        let mut specs_after: Vec<(String, Policy)> = Vec::new();
        let mut writes = Vec::new();
        for f in &files {
            let fate = |s: &Spec| -> edit::Fate {
                if edit.remove.iter().any(|r| r.key() == s.key()) {
                    return edit::Fate::Drop;
                }
                match edit.put.iter().find(|p| p.key() == s.key()) {
                    // A command without --name asks for no name: the entry keeps its own.
                    Some(p) => edit::Fate::Replace(Spec {
                        name: p.name.clone().or_else(|| s.name.clone()),
                        ..p.clone()
                    }),
                    None => edit::Fate::Keep,
                }
            };
            let new_text = if f.origin == own_origin {
                let mine: Vec<Spec> = policy::specs_of(&[(f.origin.clone(), f.policy_copy())])
                    .map_err(|e| refuse(format!("{e:#}")))?;
                let mut out: Vec<Spec> = Vec::new();
                for s in &mine {
                    match fate(s) {
                        edit::Fate::Keep => out.push(s.clone()),
                        edit::Fate::Drop => {}
                        edit::Fate::Replace(p) => out.push(p),
                    }
                }
                // What no file owns yet is added here.
                for p in &edit.put {
                    let owned = files.iter().any(|o| {
                        policy::specs_of(&[(o.origin.clone(), o.policy_copy())])
                            .is_ok_and(|v| v.iter().any(|s| s.key() == p.key()))
                    });
                    if !owned && !out.iter().any(|s| s.key() == p.key()) {
                        out.push(p.clone());
                    }
                }
                let text = edit::render_own(&out)?;
                edit::check_round_trip(&out, &text, &f.origin)?;
                // Written only when what it asks for changes (or it is new and asks for
                // something): an edit of another file leaves it, and its text, alone.
                let changed = match &f.text {
                    Some(_) => strip_origins(&out) != strip_origins(&mine),
                    None => !out.is_empty(),
                };
                changed.then_some(text)
            } else {
                match &f.text {
                    Some(t) => edit::edit_text(t, &f.policy, &f.origin, &fate)?,
                    None => None,
                }
            };
            let policy = match &new_text {
                Some(t) => policy::parse(t, &f.origin)?,
                None => f.policy_copy(),
            };
            let keep_empty_own = f.origin == own_origin && f.text.is_none() && new_text.is_none();
            if !keep_empty_own {
                specs_after.push((f.origin.clone(), policy));
            }
            if let Some(text) = new_text {
                let tmp = tempfile::Builder::new()
                    .prefix(TMP_PREFIX)
                    .suffix(TMP_SUFFIX)
                    .permissions(fs::Permissions::from_mode(0o644))
                    .tempfile_in(dir)
                    .map_err(|e| {
                        refuse(format!(
                            "cannot write in policy directory {shown:?}: {}",
                            plain_io(&e)
                        ))
                    })?;
                writes.push(Write1 {
                    file: f.path.clone(),
                    text,
                    tmp: Some(tmp),
                });
            }
        }
        // The boot unit applies the whole directory: refuse what would conflict there.
        let specs = policy::specs_of(&specs_after).map_err(|e| {
            refuse(format!(
                "policy directory {shown:?} would no longer apply at boot: {e:#}"
            ))
        })?;
        Ok(Target {
            dir: dir.to_path_buf(),
            writes,
            specs,
            _lock: lock,
        })
    }

    /// The files this target replaces; none when the directory already says what was
    /// asked for.
    pub fn files(&self) -> Vec<PathBuf> {
        self.writes.iter().map(|w| w.file.clone()).collect()
    }

    /// The policy directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The specs of every policy file of the directory once written, in the order
    /// `apply` reads them.
    pub fn specs(&self) -> &[Spec] {
        &self.specs
    }

    /// True when `s` is a spec of a policy file of this directory (by its origin).
    pub fn holds(&self, s: &Spec) -> bool {
        let dir = std::fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
        s.origin
            .as_deref()
            .is_some_and(|o| Path::new(o).parent() == Some(dir.as_path()))
    }

    /// Writes the rendered files atomically and durably. Runs after the change: any
    /// error is [`NotPersisted`], saying the change is in force.
    pub fn commit(mut self) -> Result<()> {
        for i in 0..self.writes.len() {
            let file = self.writes[i].file.clone();
            if let Err(e) = self.write(i) {
                return Err(anyhow::Error::new(NotPersisted(format!(
                    "the change is in force but was not recorded in {}: {e:#}",
                    file.display()
                ))));
            }
        }
        Ok(())
    }

    fn write(&mut self, i: usize) -> Result<()> {
        let w = &mut self.writes[i];
        let mut tmp = w.tmp.take().context("temporary file already used")?;
        tmp.write_all(w.text.as_bytes())
            .and_then(|_| tmp.as_file().sync_all())
            .with_context(|| format!("writing {}", tmp.path().display()))?;
        crate::failpoint::check("persist-rename")?;
        tmp.persist(&w.file)
            .map_err(|e| e.error)
            .with_context(|| format!("replacing {}", w.file.display()))?;
        // The rename is durable only once the directory entry is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", self.dir.display()))?;
        Ok(())
    }
}

/// `specs` without their origins, to compare what two versions of a file ask for.
fn strip_origins(specs: &[Spec]) -> Vec<Spec> {
    specs
        .iter()
        .map(|s| Spec {
            origin: None,
            ..s.clone()
        })
        .collect()
}

/// Takes the directory's lock, waiting at most [`LOCK_WAIT`].
fn lock_dir(dir: &Path) -> Result<File> {
    let shown = dir.display().to_string();
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
    // flock(2) through std; closing the file releases it. Bounded: the caller holds
    // the namespace's state lock meanwhile, which `watch` needs.
    let start = std::time::Instant::now();
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(lock),
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
}

/// One policy file of the directory as it is now.
struct FileNow {
    path: PathBuf,
    /// As [`policy::origin_of`] names it.
    origin: String,
    /// `None`: the file does not exist (loopgate's own, not written yet).
    text: Option<String>,
    policy: Policy,
}

impl FileNow {
    fn policy_copy(&self) -> Policy {
        Policy {
            grants: self.policy.grants.clone(),
            guard: self.policy.guard.clone(),
        }
    }
}

/// Every policy file of `dir` (`*.yaml`/`*.yml`, as `apply` reads them), read and
/// parsed. None at all is fine here: the directory may be new.
fn read_files(dir: &Path) -> Result<Vec<FileNow>> {
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
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let (_, text) = policy::read_trusted(&f).map_err(|e| refuse(format!("{e:#}")))?;
            let origin = policy::origin_of(&f);
            let policy = policy::parse(&text, &origin).map_err(|e| refuse(format!("{e:#}")))?;
            Ok(FileNow {
                path: f,
                origin,
                text: Some(text),
                policy,
            })
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "loopgate-persist-unit-{tag}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn asked(text: &str) -> Vec<Spec> {
        let p = policy::parse(text, "t").unwrap();
        policy::specs_of(&[("t".into(), p)])
            .unwrap()
            .into_iter()
            .map(|s| Spec { origin: None, ..s })
            .collect()
    }

    fn put(port: u16) -> Edit {
        Edit {
            remove: vec![],
            put: asked(&format!(
                "grants:\n  - interface: br0\n    allow: 192.0.2.0/25\n    port: {port}\n"
            )),
        }
    }

    fn bad(r: Result<Target>) -> String {
        let e = r.err().expect("refused");
        assert!(e.is::<BadInput>(), "{e:#}");
        format!("{e:#}")
    }

    #[test]
    fn a_missing_or_empty_directory_is_a_fine_target() {
        let dir = scratch("new").join("sub");
        let t = Target::prepare(&dir, &put(80)).unwrap();
        assert_eq!(t.specs().len(), 1);
        t.commit().unwrap();
        let text = fs::read_to_string(dir.join(PERSIST_FILE)).unwrap();
        assert!(text.contains("port: 80"), "{text}");
        // Only what was asked: no listen address was given, none is pinned.
        assert!(!text.contains("listen"), "{text}");
        assert!(temp_files(&dir).is_empty());
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_broken_or_conflicting_admin_file_is_refused_before_anything() {
        let dir = scratch("broken");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("admin.yaml"), "grants: [").unwrap();
        let msg = bad(Target::prepare(&dir, &put(80)));
        assert!(
            msg.contains("admin.yaml") && msg.starts_with("--persist"),
            "{msg}"
        );
        assert!(
            temp_files(&dir).is_empty(),
            "a refused target leaves nothing"
        );
        // The same publication in two files: boot would refuse the directory.
        fs::write(
            dir.join("admin.yaml"),
            "grants:\n  - interface: br0\n    allow: 192.0.2.0/25\n    port: 81\n    to: 127.0.0.2\n",
        )
        .unwrap();
        fs::write(
            dir.join("other.yaml"),
            "grants:\n  - interface: br0\n    allow: 192.0.2.0/25\n    port: 81\n",
        )
        .unwrap();
        let msg = bad(Target::prepare(&dir, &put(80)));
        assert!(msg.contains("would no longer apply at boot"), "{msg}");
        assert!(!dir.join(PERSIST_FILE).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A spec another file owns is changed in that file, and only there; a new one
    /// goes to loopgate's own file.
    #[test]
    fn a_change_goes_to_the_file_that_owns_it() {
        let dir = scratch("owner");
        fs::create_dir_all(&dir).unwrap();
        let admin = "# mine\ngrants:\n  - name: db\n    interface: br0\n    allow: 192.0.2.0/25\n    port: 80\n";
        fs::write(dir.join("admin.yaml"), admin).unwrap();
        let mut edit = put(80);
        edit.put.extend(put(82).put);
        edit.put[0].allow = vec!["192.0.2.0/26".parse().unwrap()];
        let t = Target::prepare(&dir, &edit).unwrap();
        t.commit().unwrap();
        let text = fs::read_to_string(dir.join("admin.yaml")).unwrap();
        // Asked for without a name: the entry keeps its own.
        assert_eq!(text, admin.replace("192.0.2.0/25", "192.0.2.0/26"));
        let own = fs::read_to_string(dir.join(PERSIST_FILE)).unwrap();
        assert!(
            own.contains("port: 82") && !own.contains("port: 80"),
            "{own}"
        );
        // Revoked: taken out of the admin's file.
        let origin = policy::origin_of(&dir.join("admin.yaml"));
        let mut gone = edit.put[0].clone();
        gone.origin = Some(origin);
        gone.source = spec::Source::Policy;
        // loopgate.yaml as install.sh writes it, which does not hold the grant.
        fs::remove_file(dir.join(PERSIST_FILE)).unwrap();
        let installed =
            "# Grants applied at boot by loopgate.service; see `man loopgate`.\ngrants: []\n";
        fs::write(dir.join(PERSIST_FILE), installed).unwrap();
        let t = Target::prepare(
            &dir,
            &Edit {
                remove: vec![gone],
                put: vec![],
            },
        )
        .unwrap();
        assert_eq!(t.specs().len(), 0);
        assert_eq!(t.files(), vec![dir.join("admin.yaml")], "only the owner");
        t.commit().unwrap();
        let text = fs::read_to_string(dir.join("admin.yaml")).unwrap();
        assert!(
            text.contains("grants: []") && text.starts_with("# mine"),
            "{text}"
        );
        assert_eq!(
            fs::read_to_string(dir.join(PERSIST_FILE)).unwrap(),
            installed
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_temporary_files_are_cleared_and_a_dropped_target_leaves_none() {
        let dir = scratch("stale");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(".loopgate.yaml.1.2.tmp"), "half").unwrap();
        let t = Target::prepare(&dir, &put(80)).unwrap();
        assert_eq!(
            temp_files(&dir),
            vec![t.writes[0].tmp.as_ref().unwrap().path().to_path_buf()]
        );
        drop(t);
        assert!(temp_files(&dir).is_empty());
        assert!(!dir.join(PERSIST_FILE).exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
