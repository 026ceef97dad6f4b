//! `loopgate apply` and `loopgate plan`: the declarative form. The file is the whole
//! truth for this namespace; grants missing from it are revoked.

use super::{converge, open_store, Mode};
use crate::cli::{ApplyArgs, PlanArgs};
use crate::kernel::host::HostInterfaces;
use crate::policy;
use anyhow::Result;
use std::path::Path;

fn run_file(file: &Path, mode: Mode) -> Result<()> {
    let parsed = policy::load(file)?;
    let exclusive = mode == Mode::Apply;
    let (store, old) = open_store(exclusive)?;
    let grants = policy::grants(&parsed, &HostInterfaces::read()?)?;
    converge(&store, old, grants, mode)
}

pub fn run_apply(args: &ApplyArgs) -> Result<()> {
    run_file(
        &args.file,
        if args.dry_run {
            Mode::DryRun
        } else {
            Mode::Apply
        },
    )
}

pub fn run_plan(args: &PlanArgs) -> Result<()> {
    run_file(&args.file, Mode::Plan)
}
