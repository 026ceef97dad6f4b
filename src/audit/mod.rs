//! `audit`'s judgement, apart from the verb: what is open on this host, and is it
//! guarded?
//!
//! Audit trusts the kernel over loopgate's own records. [`observe`] reads through the
//! kernel seam (route_localnet of every interface, loopgate's table, loopback
//! listeners); [`assess`] is a pure function from that observation and the recorded
//! state to a [`Report`] with findings, calling on `reachability` (routes, replies and
//! counters: can a grant's flow work) and [`firewall`] (what other firewalls do with
//! it); [`render`] writes the report as text, JSON or Prometheus. Whoever opened an
//! interface, an open one without loopgate's guard is critical.

mod assess;
pub mod firewall;
mod forwards;
mod observe;
pub mod pending_since;
mod reachability;
pub mod render;
pub mod totals;

pub use assess::assess;
pub use observe::{observe, rightful_table, Observed};

use crate::grant::Grant;
use crate::kernel::host::Listener;
use crate::kernel::nft::RuleCounter;
use serde::Serialize;

/// Version of the JSON document; bumped on incompatible changes.
/// 2: route_localnet values are the kernel's signed integers, `null` when unreadable.
pub const SCHEMA_VERSION: u32 = 2;

/// How serious a [`Finding`] is; ordered `Info < Warning < Critical`, so the worst of a
/// report is its maximum. Serialized in lowercase (`"info"`, `"warning"`, `"critical"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Nothing to act on: a managed interface is guarded as planned (`guarded`).
    Info,
    /// Needs attention but opens nothing by itself (a dormant grant, an interrupted
    /// transaction, `default` open); makes `audit` exit 1.
    Warning,
    /// Loopback services may be reachable from a neighbour right now (an open interface
    /// without loopgate's guard, `all` open, a tampered table); makes `audit` exit 1.
    Critical,
}

/// Defines [`Code`] and [`Code::ALL`] from one list, so no code can exist without being
/// in `ALL`, and through `ALL` in the reference tables (`crate::reference`), the man page
/// and the docs that are tested against them.
macro_rules! finding_codes {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)+) => {
        /// The stable, machine-readable kind of a [`Finding`]: `code` in the JSON
        /// document, `[code]` in the text report. Each is documented, with its severity
        /// and remedy, in [`crate::reference::finding`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Code {
            $($(#[$doc])* $variant,)+
        }

        impl Code {
            /// Every code audit can emit, in the order the reference lists them.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)+];

            /// The code as shown to users and scripts, e.g. `unguarded`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $name,)+
                }
            }
        }
    };
}

finding_codes! {
    /// route_localnet is effectively on without loopgate's guard.
    Unguarded => "unguarded",
    /// `conf.all.route_localnet` is non-zero.
    AllOpen => "all-open",
    /// `conf.default.route_localnet` is non-zero.
    DefaultOpen => "default-open",
    /// loopgate's table differs from what its grants require.
    TableTampered => "table-tampered",
    /// A table named `ip loopgate` exists without grants.
    TableUnexpected => "table-unexpected",
    /// An empty table `ip loopgate` nobody holds (left by a watch that was killed).
    TableEmpty => "table-empty",
    /// The nftables configuration file names `table ip loopgate`.
    NftablesConfNamesTable => "nftables-conf-names-table",
    /// A route_localnet value cannot be read.
    SysctlUnreadable => "sysctl-unreadable",
    /// A managed device carries another name now.
    InterfaceRenamed => "interface-renamed",
    /// An interface with grants has route_localnet 0.
    GrantInactive => "grant-inactive",
    /// A transaction was killed between its steps.
    Interrupted => "interrupted",
    /// Nothing listens on a grant's target.
    NotListening => "not-listening",
    /// The target socket is bound to another device.
    ListenerBoundToDevice => "listener-bound-to-device",
    /// Replies to an allowed network leave through another interface.
    ReplyRoute => "reply-route",
    /// An allowed network is routed through another interface.
    AllowRoute => "allow-route",
    /// No interface has the grant's listen address any more.
    ListenAddressGone => "listen-address-gone",
    /// Another table drops the grant's flow.
    FirewallDrops => "firewall-drops",
    /// Another table may drop the grant's flow.
    FirewallMayDrop => "firewall-may-drop",
    /// A `notrack` rule keeps loopgate's DNAT from happening.
    Notrack => "notrack",
    /// A `notrack` rule at output keeps the replies from being translated back.
    NotrackReplies => "notrack-replies",
    /// Another table DNATs to 127/8 on a guarded interface; the guard lets it through.
    ForeignForward => "foreign-forward",
    /// iptables-legacy tables are loaded.
    IptablesLegacy => "iptables-legacy",
    /// Asked for, but not served now.
    Pending => "pending",
    /// A runtime network's grant in force as last resolved; the runtime does not answer.
    RuntimeUnanswered => "runtime-unanswered",
    /// What the guards dropped.
    Blocked => "blocked",
    /// The interface is open only through loopgate's guard.
    Guarded => "guarded",
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Lets tests and callers compare with the documented spelling: `f.code == "blocked"`.
impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One thing audit concluded, as shown in the text report and in the JSON `findings` list.
#[derive(Debug, Serialize)]
pub struct Finding {
    /// How serious it is; decides `audit`'s exit code.
    pub severity: Severity,
    /// Stable machine-readable kind (see [`Code`]); serialized as its kebab-case name.
    pub code: Code,
    /// The interface it is about (its current name); `None` for host-wide findings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// One line for a person: what is wrong and what to do.
    pub message: String,
}

/// What audit saw on one interface (every IPv4 conf directory except `all`, `default`
/// and `lo`), managed by loopgate or not.
#[derive(Debug, Serialize)]
pub struct InterfaceReport {
    /// The interface name as the kernel lists it under /proc/sys/net/ipv4/conf.
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
    /// True when the recorded state holds at least one grant on this interface name.
    pub managed: bool,
    /// True when managed and the recorded original value is 0, i.e. route_localnet is on
    /// because loopgate turned it on.
    pub set_by_loopgate: bool,
    /// route_localnet of this device before loopgate changed it, when recorded for this
    /// very device instance (ifindex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original: Option<i32>,
    /// True when managed and loopgate's table matches what the recorded grants require.
    pub guarded: bool,
    /// The recorded grants on this interface (from the state file).
    pub grants: Vec<Grant>,
    /// Loopback listeners a neighbour on this interface can reach: none when closed, only
    /// the granted targets (and the targets of other tables' forwards to loopback, see
    /// `foreign-forward`) when guarded, every listener on 127.0.0.0/8 or 0.0.0.0 when
    /// open and unguarded.
    pub exposed_sockets: Vec<Listener>,
}

/// How loopgate's table (`table ip loopgate`) compares with what the recorded grants
/// require.
#[derive(Debug, Serialize)]
pub struct TableReport {
    /// True when the kernel has the table.
    pub present: bool,
    /// True when the table is present and holds nothing (no chain, set or rule).
    pub empty: bool,
    /// True when the recorded grants require a table (there is at least one grant).
    pub expected: bool,
    /// True when present and expected agree and the table read back equals the planned one
    /// (or both are absent).
    pub matches_expected: bool,
    /// What differs, one line each, at most 20 entries from the comparison; empty when it
    /// matches.
    pub differences: Vec<String>,
    /// False when the set elements were not read back because the nftables generation
    /// has not moved since loopgate wrote them (`--deep` reads them anyway).
    pub elements_read_back: bool,
    /// `owned by watch (pid N)` while a running `loopgate watch` holds the table with
    /// the kernel's owner flag (no other process can flush, switch off or edit it),
    /// else `not owned` (protected by watch's repair, if it runs, or not at all).
    pub protection: String,
}

/// The whole result of [`assess`]: what `audit` prints as text, JSON (`--format json`,
/// versioned by [`SCHEMA_VERSION`]) or Prometheus metrics.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `conf.all.route_localnet`; `null` when unreadable.
    pub all_route_localnet: Option<i32>,
    /// `conf.default.route_localnet`; `null` when unreadable.
    pub default_route_localnet: Option<i32>,
    /// Every interface with an IPv4 conf directory except `all`, `default` and `lo`,
    /// sorted by name.
    pub interfaces: Vec<InterfaceReport>,
    /// loopgate's table against the recorded grants.
    pub table: TableReport,
    /// True when the state file holds a pending (interrupted) transaction.
    pub interrupted_transaction: bool,
    /// Every finding, worst first.
    pub findings: Vec<Finding>,
    /// Packets and bytes each rule of loopgate's table has matched.
    pub counters: Vec<RuleCounter>,
    /// What the guard's drop rules have stopped, per interface and kind, since
    /// loopgate last wrote its table (from `counters`).
    pub blocked: Vec<Blocked>,
    /// As `blocked`, counted since loopgate first saw them in this namespace: running
    /// totals kept across table rewrites (see [`totals`]), which only go up. Empty when
    /// the report was not made by `loopgate audit` (the totals are its side effect).
    pub blocked_total: Vec<Blocked>,
    /// What is asked for but not served now (see [`crate::spec::resolve`]), as in the
    /// `pending` findings.
    pub pending: Vec<crate::spec::Pending>,
}

/// What one kind of guard drop rule of one interface has stopped since loopgate last
/// wrote its table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocked {
    /// The guarded interface.
    pub interface: String,
    /// `direct-to-loopback` (addressed to 127.0.0.0/8), `spoofed-loopback-source`
    /// (arriving from 127.0.0.0/8), `leaked-loopback-source` (leaving with a 127.0.0.0/8
    /// source) or `input-drop` (to loopback, not through a published port).
    pub kind: &'static str,
    /// Packets dropped.
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
}

impl Report {
    /// The most serious finding's severity; `None` when there are no findings.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Codes are what scripts and dashboards match on: each is unique, lower-case
    /// words joined by hyphens, and `Code::ALL` lists each variant once.
    #[test]
    fn finding_codes_are_unique_kebab_case_words() {
        let mut seen = std::collections::BTreeSet::new();
        for code in Code::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "{s} appears twice");
            assert!(
                !s.is_empty()
                    && !s.starts_with('-')
                    && !s.ends_with('-')
                    && s.chars().all(|c| c.is_ascii_lowercase() || c == '-'),
                "{s}"
            );
        }
        assert!(seen.contains("unguarded") && seen.contains("all-open"));
    }
}
