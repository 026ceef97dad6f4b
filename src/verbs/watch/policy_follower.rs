//! A policy file or directory followed by watch: reloaded when its files change, the
//! last good specs and guards kept when a change does not load.

use crate::kernel::host::HostInterfaces;
use crate::spec::{self, Spec};

/// Follows a policy file or directory: reloads it when its files change (names, sizes,
/// modification times), keeps the last good specs when a change does not parse.
pub struct PolicyFollower {
    pub(super) path: std::path::PathBuf,
    /// The files as last read (name, size, mtime).
    pub seen: Option<Vec<(String, u64, std::time::SystemTime)>>,
    /// Shared with each pass: at 100,000 allowed networks a copy per wake-up (four a
    /// second) was most of what an idle watch cost.
    pub(super) specs: Option<std::rc::Rc<Vec<Spec>>>,
    /// The policy's `guard:` entries, as last loaded.
    pub(super) guards: Option<Vec<spec::GuardSpec>>,
    /// The interfaces when the last load failed, if it did.
    pub(super) failed_on: Option<HostInterfaces>,
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
    pub(super) fn fingerprint(&self) -> Vec<(String, u64, std::time::SystemTime)> {
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
    pub fn specs(&mut self, host: &HostInterfaces) -> Option<std::rc::Rc<Vec<Spec>>> {
        let now = self.fingerprint();
        // After a load that failed, the host changing is reason enough to try again.
        let retry = self.failed_on.as_ref().is_some_and(|h| h != host);
        if self.seen.as_ref() != Some(&now) || retry {
            self.seen = Some(now);
            self.failed_on = None;
            match crate::policy::load_all(&self.path).and_then(|sources| {
                Ok((
                    crate::policy::specs_of(&sources)?,
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
                    self.specs = Some(std::rc::Rc::new(specs));
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
