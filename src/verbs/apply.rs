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

pub fn run_apply(args: &ApplyArgs) -> Result<()> {
    let mode = if args.dry_run {
        Mode::DryRun
    } else {
        Mode::Apply
    };
    run_file(&args.file, args.skip_missing, mode)
}

pub fn run_plan(args: &PlanArgs) -> Result<()> {
    run_file(&args.file, args.skip_missing, Mode::Plan)
}
