//! `loopgate audit`: observe, assess, render (see [`crate::audit`]); the exit code says
//! whether anything needs attention, except for the Prometheus textfile, whose exit
//! code says whether the document was written (its metrics carry the findings).

use super::open_store;
use super::system;
use crate::audit::{self, Report, Severity};
use crate::cli::{AuditArgs, AuditFormat};
use crate::error::{EXIT_FINDINGS, EXIT_OK};
use crate::kernel::nft;
use anyhow::Result;

/// Runs `audit`; returns 1 when there is a warning or critical finding, else 0. With
/// `--format prometheus`, 0 whenever the document was written: node_exporter's textfile
/// pattern (`loopgate audit --format prometheus > f.tmp && mv f.tmp f.prom`) must keep
/// updating exactly when something is wrong. An audit that fails then writes a document
/// that says so (`loopgate_audit_success 0`) and its error on stderr.
pub fn run(args: &AuditArgs) -> Result<i32> {
    let format = if args.json {
        AuditFormat::Json
    } else {
        args.format
    };
    if format == AuditFormat::Prometheus {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        match report(args) {
            Ok(report) => crate::out!("{}", audit::render::prometheus(&report, now)),
            Err(err) => {
                crate::errln!("loopgate: error: {}", crate::error::one_line(&err));
                crate::out!("{}", audit::render::prometheus_failed(now));
            }
        }
        return Ok(EXIT_OK);
    }
    let report = report(args)?;
    audit::render::print(&report, format)?;
    Ok(match report.worst() {
        Some(Severity::Warning | Severity::Critical) => EXIT_FINDINGS,
        _ => EXIT_OK,
    })
}

/// For each pending spec whose runtime network does not exist, the networks that do,
/// closest first (a policy's typo gets the help the command line gives).
pub(crate) fn closest_networks(
    pending: &[crate::spec::Pending],
    specs: &[crate::spec::Spec],
) -> std::collections::BTreeMap<String, Vec<String>> {
    pending
        .iter()
        .filter(|p| p.kind == crate::spec::PendingKind::NoNetwork)
        .filter_map(|p| {
            let n = specs
                .iter()
                .find(|s| s.label() == p.spec)?
                .network
                .as_ref()?;
            let names = crate::runtime::closest_existing(n.runtime, &n.name, 3);
            Some((p.spec.clone(), names))
        })
        .collect()
}

/// Observes and assesses, and folds the guards' counters into their running totals.
fn report(args: &AuditArgs) -> Result<Report> {
    let (store, state) = open_store(false)?;
    let expected = crate::plan::ruleset_admitting(&state.grants, &state.guarded, &state.admitted)
        .map(|r| nft::planned_image(&r));
    let host = crate::kernel::host::HostInterfaces::read()?;
    // A table the running watch holds is loopgate's own, not a tampered one.
    let port = crate::state::running_watch().map_or(0, |(_, port)| port);
    let kernel = system().sanctioning(port);
    let mut observed = audit::observe(&kernel, &host, &state, expected.as_ref(), args.deep)?;
    let expected = audit::rightful_table(expected, observed.table.as_ref(), &state);
    // Since when each spec is pending: a typo must not stay green for ever.
    observed.pending_grace = audit::pending_since::grace()?;
    let mut record = audit::pending_since::Record::load(&store);
    let labels: Vec<String> = state.specs.iter().map(|s| s.label()).collect();
    let pending: Vec<String> = observed.pending.iter().map(|p| p.spec.clone()).collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (observed.pending_for, observed.served_before) = record.note(&pending, &labels, now);
    observed.closest_networks = closest_networks(&observed.pending, &state.specs);
    if let Err(e) = record.save(&store) {
        crate::errln!(
            "loopgate: warning: since when grants are pending cannot be kept: {}",
            crate::error::one_line(&e)
        );
    }
    let mut report = audit::assess(&observed, &state, expected.as_ref());
    let mut totals = audit::totals::Totals::load(&store);
    let guarded = |iface: &str| {
        state.guarded.iter().any(|g| g == iface) || state.grants.iter().any(|g| g.iface == iface)
    };
    totals.fold(&report.blocked, &guarded);
    if let Err(e) = totals.save(&store) {
        crate::errln!(
            "loopgate: warning: the running totals of blocked packets cannot be kept: {}",
            crate::error::one_line(&e)
        );
    }
    report.blocked_total = totals.totals(&report.blocked);
    // Released before printing: `audit | less` must not hold up watch's repairs.
    drop(store);
    Ok(report)
}
