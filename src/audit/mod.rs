//! `audit`'s judgement, apart from the verb: what is open on this host, and is it
//! guarded?
//!
//! Audit trusts the kernel over loopgate's own records. [`observe`] reads through the
//! kernel seam (route_localnet of every interface, loopgate's table, loopback
//! listeners); [`assess`] is a pure function from that observation and the recorded
//! state to a [`Report`] with findings; [`render`] writes the report as text, JSON or
//! Prometheus. Whoever opened an interface, an open one without loopgate's guard is
//! critical.

mod assess;
mod observe;
pub mod render;

pub use assess::assess;
pub use observe::{observe, Observed};

use crate::grant::Grant;
use crate::kernel::host::Listener;
use crate::kernel::nft::RuleCounter;
use serde::Serialize;

/// Version of the JSON document; bumped on incompatible changes.
/// 2: route_localnet values are the kernel's signed integers, `null` when unreadable.
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

#[derive(Debug, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct InterfaceReport {
    pub name: String,
    /// The interface's own route_localnet as the kernel stores it (a signed `int`);
    /// `null` when it could not be read (see `error`).
    pub route_localnet: Option<i32>,
    /// 1 when the kernel routes 127.0.0.0/8 from this interface (`all` or the
    /// interface's own value non-zero), else 0. An unreadable value counts as open.
    pub effective: u8,
    /// Why route_localnet could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub managed: bool,
    pub set_by_loopgate: bool,
    /// route_localnet of this device before loopgate changed it, when recorded for this
    /// very device instance (ifindex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original: Option<i32>,
    pub guarded: bool,
    pub grants: Vec<Grant>,
    pub exposed_sockets: Vec<Listener>,
}

#[derive(Debug, Serialize)]
pub struct TableReport {
    pub present: bool,
    pub expected: bool,
    pub matches_expected: bool,
    pub differences: Vec<String>,
    /// False when the set elements were not read back because the nftables generation
    /// has not moved since loopgate wrote them (`--deep` reads them anyway).
    pub elements_read_back: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema_version: u32,
    /// `conf.all.route_localnet`; `null` when unreadable.
    pub all_route_localnet: Option<i32>,
    /// `conf.default.route_localnet`; `null` when unreadable.
    pub default_route_localnet: Option<i32>,
    pub interfaces: Vec<InterfaceReport>,
    pub table: TableReport,
    pub interrupted_transaction: bool,
    pub findings: Vec<Finding>,
    /// Packets and bytes each rule of loopgate's table has matched.
    pub counters: Vec<RuleCounter>,
}

impl Report {
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }
}
