//! `loopgate apply` and `loopgate plan`: the declarative form. The file is the whole
//! truth for this namespace; grants missing from it are revoked.

use super::{converge, open_store, Mode};
use crate::cli::{ApplyArgs, PlanArgs};
use crate::kernel::host::HostInterfaces;
use crate::policy;
use anyhow::Result;
use std::path::Path;

fn run_file(file: &Path, skip_missing: bool, mode: Mode) -> Result<()> {
    let sources = policy::load_all(file)?;
    let exclusive = mode == Mode::Apply;
    let (store, old) = open_store(exclusive)?;
    let (grants, warnings) = policy::grants_of(&sources, &HostInterfaces::read()?, skip_missing)?;
    for w in warnings {
        eprintln!("loopgate: warning: {w}");
    }
    converge(store, old, grants, mode)
}

/// Runs `apply`: validates the policy file or directory against the host's interfaces
/// and converges to exactly its grants (or, with `--dry-run`, prints what that would
/// do).
///
/// Errors: an unreadable or invalid policy, an interface that does not exist (without
/// `--skip-missing`), conflicting grants (all exit 2, nothing changed); a kernel
/// failure, after rolling back (exit 3).
pub fn run_apply(args: &ApplyArgs) -> Result<()> {
    let mode = if args.dry_run {
        Mode::DryRun
    } else {
        Mode::Apply
    };
    run_file(&args.file, args.skip_missing, mode)
}

/// Runs `plan`: as `apply --dry-run`, but prints only the changes, not the table.
/// Takes the state lock shared, so it waits for a running `apply` instead of showing a
/// half-made change. Errors: as for [`run_apply`], short of changing anything.
pub fn run_plan(args: &PlanArgs) -> Result<()> {
    run_file(&args.file, args.skip_missing, Mode::Plan)
}
