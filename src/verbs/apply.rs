//! `loopgate apply` and `loopgate plan`: the declarative form. The policy (a file or a
//! directory of files) is the whole truth for the grants it manages: what it no longer
//! lists is revoked. Grants made with `expose` (without `--persist`) are not the
//! policy's and stay until revoked. A grant whose interface is missing is pending, never
//! revoked for that: it is served when the interface appears, and the other grants are
//! applied all the same. While `loopgate watch --policy DIR` runs, `apply` of anything
//! but DIR is refused: the watch would undo it.

use super::{open_store, Mode};
use crate::cli::{ApplyArgs, PlanArgs};
use crate::kernel::host::HostInterfaces;
use crate::policy;
use crate::spec::{self, Source};
use anyhow::Result;
use std::path::Path;

/// The specs a policy at `file` asks for, together with the command-line specs of
/// `old`, and what they resolve to now.
pub fn desired(
    file: &Path,
    old: &crate::state::State,
    host: &HostInterfaces,
) -> Result<(Vec<spec::Spec>, spec::Resolved, Vec<spec::GuardSpec>)> {
    let sources = policy::load_all(file)?;
    desired_of(&sources, old, host)
}

/// What an empty policy would take away: the policy's grants (specs) and guards now
/// recorded in `old`; `None` when `sources` hold a grant or a guard, or nothing of a
/// policy is in force. A policy that empties itself by accident (a truncated file, a
/// pipe that was drained before loopgate read it) must not revoke every grant.
pub fn emptied(sources: &[(String, policy::Policy)], old: &crate::state::State) -> Option<String> {
    let empty = sources
        .iter()
        .all(|(_, p)| p.grants.is_empty() && p.guard.is_empty());
    let grants = old
        .specs
        .iter()
        .filter(|s| s.source == Source::Policy)
        .count();
    let guards = old
        .guards
        .iter()
        .filter(|g| g.source == Source::Policy)
        .count();
    (empty && grants + guards > 0)
        .then(|| format!("{grants} grant(s) and {guards} guard(s) from a policy are in force"))
}

fn desired_of(
    sources: &[(String, policy::Policy)],
    old: &crate::state::State,
    host: &HostInterfaces,
) -> Result<(Vec<spec::Spec>, spec::Resolved, Vec<spec::GuardSpec>)> {
    let mut guards: Vec<spec::GuardSpec> = old
        .guards
        .iter()
        .filter(|g| g.source == Source::Cli)
        .cloned()
        .collect();
    guards.extend(policy::guards_of(sources)?);
    guards.sort();
    guards.dedup();
    let mut specs: Vec<spec::Spec> = old
        .specs
        .iter()
        .filter(|s| s.source == Source::Cli)
        .cloned()
        .collect();
    spec::merge(&mut specs, policy::specs_of(sources)?);
    let resolved = spec::resolve_keeping(&specs, host, &old.grants);
    if let Some(p) = resolved
        .pending
        .iter()
        .find(|p| p.kind == spec::PendingKind::Conflict)
    {
        crate::bad_input!("{}: {}", p.spec, p.reason);
    }
    crate::input::check_conflicts(&resolved.grants)?;
    Ok((specs, resolved, guards))
}

fn run_file(file: &Path, mode: Mode, allow_empty: bool) -> Result<()> {
    let exclusive = mode == Mode::Apply;
    let (store, old) = open_store(exclusive)?;
    let host = HostInterfaces::read()?;
    let sources = policy::load_all(file)?;
    // While a watch follows a policy, it is the one owner of the policy in force:
    // applying anything else would be undone at its next pass.
    if let Some((pid, followed)) = super::owner::followed() {
        if !super::owner::is_followed(file, &followed) {
            match mode {
                Mode::Apply => crate::bad_input!(
                    "loopgate watch (pid {pid}) follows {} and would undo applying {}; change the files there (watch applies them at once), or stop the watch first",
                    followed.display(),
                    file.display()
                ),
                // A plan shows the change all the same, and says that `apply` of it
                // would be refused now.
                _ => crate::outln!(
                    "# note: `apply {}` would be refused while loopgate watch (pid {pid}) follows {}; change the files there",
                    file.display(),
                    followed.display()
                ),
            }
        }
    }
    if let Some(what) = emptied(&sources, &old) {
        let why = format!(
            "policy {} has no grants and no guards, but {what}: applying it would revoke them all",
            file.display()
        );
        match (mode, allow_empty) {
            (_, true) => {}
            (Mode::Plan, false) => {
                crate::outln!("# apply refuses this without --allow-empty: {why}")
            }
            (_, false) => crate::bad_input!(
                "{why}; nothing was changed (to revoke them, run again with --allow-empty)"
            ),
        }
    }
    let (specs, resolved, guards) = desired_of(&sources, &old, &host)?;
    let closest = super::audit::closest_networks(&resolved.pending, &specs);
    for p in &resolved.pending {
        let exist = match closest.get(&p.spec) {
            Some(names) if !names.is_empty() => {
                format!(" (those that exist, closest first: {})", names.join(", "))
            }
            _ => String::new(),
        };
        match mode {
            Mode::Plan => crate::outln!("# pending: {}: {}{exist}", p.subject(), p.reason),
            _ => crate::errln!(
                "loopgate: warning: {}{exist}; it is served as soon as that changes",
                p.what()
            ),
        }
    }
    super::converge_guarding(store, old, resolved.grants, specs, guards, mode)
}

/// Runs `apply` (or its dry run).
pub fn run_apply(args: &ApplyArgs) -> Result<()> {
    let mode = if args.dry_run {
        Mode::DryRun
    } else {
        Mode::Apply
    };
    run_file(&args.file, mode, args.allow_empty)
}

/// Runs `plan`.
pub fn run_plan(args: &PlanArgs) -> Result<()> {
    run_file(&args.file, Mode::Plan, false)
}
