//! One owner per grant: a grant a policy file asks for belongs to that file. A command
//! that would change or remove it without `--persist` is refused (exit 2, naming the
//! file and the grant) instead of reporting a success that `watch`, the next `apply`
//! or the next boot undoes; with `--persist` the change is made in the file. And while
//! a watch follows a policy, it is the one owner of the policy in force: `apply` of
//! anything else is refused, as is `--persist` into a directory it does not follow.

use crate::bad_input;
use crate::spec::{Source, Spec};
use anyhow::Result;
use std::path::{Path, PathBuf};

/// The file that owns `spec` (a policy's), as people should look for it.
pub fn owner_of(spec: &Spec) -> String {
    match &spec.origin {
        Some(o) => o.clone(),
        None => match crate::state::watched_policy() {
            Some((_, p)) => p.display().to_string(),
            None => "the policy last applied".to_string(),
        },
    }
}

/// Refuses when one of `touched` (specs a command without `--persist` would change or
/// remove) belongs to a policy file; `verb` says what the user would do there
/// (`remove`, `change`).
///
/// Errors (bad input): `grant NAME on ON is kept by FILE; VERB it there or use
/// --persist`.
pub fn refuse_owned<'a>(touched: impl IntoIterator<Item = &'a Spec>, verb: &str) -> Result<()> {
    if let Some(s) = touched.into_iter().find(|s| s.source == Source::Policy) {
        bad_input!(
            "grant {} on {} is kept by {}; {verb} it there or use --persist",
            s.shown_name(),
            s.on(),
            owner_of(s)
        );
    }
    Ok(())
}

/// The policy a running watch follows: (pid, real path).
pub fn followed() -> Option<(u32, PathBuf)> {
    crate::state::watched_policy()
}

/// True when `path` names what the watch follows (the same real path).
pub fn is_followed(path: &Path, followed: &Path) -> bool {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    real == followed
}

/// Refuses `--persist` into `dir` while a watch follows another policy: the watch would
/// take the recorded grant away again at once.
///
/// Errors (bad input): names the watch, what it follows and `dir`.
pub fn check_persist_dir(dir: &Path) -> Result<()> {
    if let Some((pid, path)) = followed() {
        if !is_followed(dir, &path) {
            bad_input!(
                "--persist writes to {}, but loopgate watch (pid {pid}) follows {} and would take the grant away again; write it into {} instead",
                dir.display(),
                path.display(),
                path.display()
            );
        }
    }
    Ok(())
}

/// The specs to record once `target` is written: those of `specs` that are not its
/// directory's (the command line's, another policy's), with the directory's as
/// `apply` will read them merged in, in the order `plan` of the directory computes
/// them, so that it finds nothing to do.
pub fn with_policy(specs: &[Spec], target: &crate::persist::Target) -> Vec<Spec> {
    let mut out: Vec<Spec> = specs
        .iter()
        .filter(|s| s.source == Source::Cli || (s.origin.is_some() && !target.holds(s)))
        .cloned()
        .collect();
    crate::spec::merge(&mut out, target.specs().to_vec());
    out
}
