//! `loopgate guard` and `loopgate unguard`: guard interfaces that another tool opened.
//!
//! Docker with `--userland-proxy=false`, netavark (every bridge with a port mapping),
//! Calico, the CNI portmap plugin and kube-proxy (`conf.all`) set route_localnet=1 and
//! add no guard: a default-capability container then reaches every loopback service of
//! the host with one raw frame. `guard` installs loopgate's guard chains for those
//! interfaces (nothing published, their route_localnet untouched: it is the other
//! tool's, and its own forwarding, such as Docker's `127.0.0.1:PORT` hairpin, keeps
//! working through the guard's "replies of flows the host opened" rule). What is asked
//! for (names or patterns) is recorded; `loopgate watch` guards new matches as they
//! appear.

use super::{converge_guarding, open_store, Mode};
use crate::bad_input;
use crate::cli::GuardArgs;
use crate::spec::{self, GuardSpec, Source};
use anyhow::Result;

/// The interfaces `args` name: IFACE (a name or pattern), or every interface for
/// `--all-interfaces` (`*`; `lo` never matches).
fn asked(args: &GuardArgs) -> Result<String> {
    match (&args.iface, args.all_interfaces) {
        (Some(_), true) => bad_input!("give an interface or --all-interfaces, not both"),
        (None, false) => {
            bad_input!("give an interface (or a pattern such as 'br-*'), or --all-interfaces")
        }
        (None, true) => Ok("*".to_string()),
        (Some(i), false) => spec::parse_interface(i),
    }
}

/// Runs `guard`. Errors: bad input (exit 2) or a failed, rolled-back transaction
/// (exit 3).
pub fn run_guard(args: &GuardArgs) -> Result<()> {
    let interface = asked(args)?;
    let (store, old) = open_store(true)?;
    let mut guards = old.guards.clone();
    if !guards.iter().any(|g| g.interface == interface) {
        guards.push(GuardSpec {
            source: Source::Cli,
            interface,
        });
        guards.sort();
    }
    let mode = if args.dry_run {
        Mode::DryRun
    } else {
        Mode::Apply
    };
    let (grants, specs) = (old.grants.clone(), old.specs.clone());
    converge_guarding(store, old, grants, specs, guards, mode)
}

/// Runs `unguard`. Errors: bad input (exit 2), nothing matched (exit 1, nothing
/// changed) or a failed, rolled-back transaction (exit 3).
pub fn run_unguard(args: &GuardArgs) -> Result<()> {
    let interface = asked(args)?;
    let (store, old) = open_store(true)?;
    let guards: Vec<GuardSpec> = old
        .guards
        .iter()
        .filter(|g| g.interface != interface)
        .cloned()
        .collect();
    if guards.len() == old.guards.len() {
        let hint = match old.guards.iter().find(|g| {
            spec::is_pattern(&g.interface)
                && glob::Pattern::new(&g.interface).is_ok_and(|p| p.matches(&interface))
        }) {
            Some(p) => format!(
                " ({interface} is guarded through the pattern {:?}: unguard that)",
                p.interface
            ),
            None if old.guards.is_empty() => {
                " (nothing is guarded with `loopgate guard`)".to_string()
            }
            None => format!(
                " (guarded: {})",
                old.guards
                    .iter()
                    .map(|g| g.interface.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        return Err(anyhow::Error::new(crate::error::NothingMatched(format!(
            "nothing matched: {interface} is not guarded with `loopgate guard`; nothing was removed{hint}"
        ))));
    }
    let mode = if args.dry_run {
        Mode::DryRun
    } else {
        Mode::Apply
    };
    let (grants, specs) = (old.grants.clone(), old.specs.clone());
    converge_guarding(store, old, grants, specs, guards, mode)
}
