//! `loopgate audit`: observe, assess, render (see [`crate::audit`]); the exit code says
//! whether anything needs attention.

use super::open_store;
use super::system;
use crate::audit::{self, Severity};
use crate::cli::{AuditArgs, AuditFormat};
use crate::error::{EXIT_FINDINGS, EXIT_OK};
use crate::kernel::nft;
use anyhow::Result;

/// Runs `audit`; returns 1 when there is a warning or critical finding, else 0.
pub fn run(args: &AuditArgs) -> Result<i32> {
    let (store, state) = open_store(false)?;
    let expected =
        crate::plan::ruleset_with(&state.grants, &state.guarded).map(|r| nft::planned_image(&r));
    let host = crate::kernel::host::HostInterfaces::read()?;
    // A table the running watch holds is loopgate's own, not a tampered one.
    let port = crate::state::running_watch().map_or(0, |(_, port)| port);
    let kernel = system().sanctioning(port);
    let observed = audit::observe(&kernel, &host, &state, expected.as_ref(), args.deep)?;
    // Released before printing: `audit | less` must not hold up watch's repairs.
    drop(store);
    let report = audit::assess(&observed, &state, expected.as_ref());
    let format = if args.json {
        AuditFormat::Json
    } else {
        args.format
    };
    audit::render::print(&report, format)?;
    Ok(match report.worst() {
        Some(Severity::Warning | Severity::Critical) => EXIT_FINDINGS,
        _ => EXIT_OK,
    })
}
