//! `loopgate audit`: what is open on this host, and is it guarded?
//!
//! Audit trusts the kernel over loopgate's own records: it reads route_localnet of every
//! interface, compares loopgate's table with what the recorded grants should generate,
//! and lists the loopback sockets an open interface exposes. Whoever opened an
//! interface, an open one without loopgate's guard is critical.

use super::open_store;
use crate::cli::AuditArgs;
use crate::cli::AuditFormat;
use crate::error::{EXIT_FINDINGS, EXIT_OK};
use crate::grant::Grant;
use crate::input::loopback;
use crate::kernel::host::{self, Listener};
use crate::kernel::nft::{self, RuleCounter};
use crate::kernel::sysctl;
use crate::plan;
use anyhow::Result;
use serde::Serialize;

/// Version of the JSON document; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

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
    pub route_localnet: u8,
    /// `all` OR the interface's own value: what the kernel actually applies.
    pub effective: u8,
    pub managed: bool,
    pub set_by_loopgate: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original: Option<u8>,
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
    pub all_route_localnet: u8,
    pub default_route_localnet: u8,
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

pub fn run(args: &AuditArgs) -> Result<i32> {
    let (_store, state) = open_store(false)?;
    let sysctls = sysctl::read_all()?;
    let value_of = |name: &str| sysctls.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    let all = value_of("all").unwrap_or(0);
    let default = value_of("default").unwrap_or(0);
    let expected = plan::ruleset(&state.grants);
    let expected_image = expected.as_ref().map(nft::planned_image);
    let trust = match args.deep {
        true => None,
        false => state.vouch.as_ref().zip(expected_image.as_ref()),
    };
    let snapshot = nft::snapshot(trust)?;
    let listeners = host::listeners()?;
    let loopback: Vec<Listener> = listeners
        .into_iter()
        .filter(|l| loopback().contains(l.addr))
        .collect();

    let mut findings = Vec::new();
    let differences = match (snapshot.image(), &expected_image) {
        (Some(have), Some(want)) => have.differences(want, 20),
        (None, Some(_)) => vec!["table ip loopgate is missing".to_string()],
        (Some(_), None) => {
            vec!["table ip loopgate exists but loopgate has no grants here".to_string()]
        }
        (None, None) => vec![],
    };
    let table_ok = differences.is_empty();
    if !table_ok {
        let (severity, code) = if expected.is_some() {
            (Severity::Critical, "table-tampered")
        } else {
            (Severity::Warning, "table-unexpected")
        };
        findings.push(Finding {
            severity,
            code,
            interface: None,
            message: format!(
                "loopgate's table differs from what its grants require (deleted, flushed or edited): {}",
                differences.join("; ")
            ),
        });
    }
    if state.pending.is_some() {
        findings.push(Finding {
            severity: Severity::Warning,
            code: "interrupted",
            interface: None,
            message: "a loopgate transaction was interrupted; the next expose, revoke or apply repairs it".into(),
        });
    }
    if all == 1 {
        findings.push(Finding {
            severity: Severity::Critical,
            code: "all-open",
            interface: None,
            message: "net.ipv4.conf.all.route_localnet=1: every interface routes 127.0.0.0/8, and no per-interface setting can narrow it".into(),
        });
    }
    if default == 1 {
        findings.push(Finding {
            severity: Severity::Warning,
            code: "default-open",
            interface: None,
            message: "net.ipv4.conf.default.route_localnet=1: new interfaces start with loopback routing enabled".into(),
        });
    }

    let mut interfaces = Vec::new();
    for (name, value) in sysctls
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "all" | "default" | "lo"))
    {
        let grants: Vec<Grant> = state
            .grants
            .iter()
            .filter(|g| &g.iface == name)
            .cloned()
            .collect();
        let managed = !grants.is_empty();
        let original = state.originals.get(name).copied();
        let effective = all | value;
        let guarded = managed && table_ok;
        let exposed: Vec<Listener> = if effective == 0 {
            vec![]
        } else if guarded {
            loopback
                .iter()
                .filter(|l| {
                    grants.iter().any(|g| {
                        g.proto == l.proto && g.to.port() == l.port && (*g.to.ip() == l.addr)
                    })
                })
                .cloned()
                .collect()
        } else {
            loopback.clone()
        };
        if effective == 1 && !guarded {
            findings.push(Finding {
                severity: Severity::Critical,
                code: "unguarded",
                interface: Some(name.clone()),
                message: format!(
                    "route_localnet is effectively 1 on {name} without loopgate's guard: any neighbour on that link can reach every loopback service ({} socket(s) listening on 127.0.0.0/8)",
                    exposed.len()
                ),
            });
        } else if managed && effective == 0 {
            findings.push(Finding {
                severity: Severity::Warning,
                code: "grant-inactive",
                interface: Some(name.clone()),
                message: format!("{name} has grants but route_localnet is 0 (interface re-created?); run `loopgate apply` or repeat the expose"),
            });
        } else if guarded {
            findings.push(Finding {
                severity: Severity::Info,
                code: "guarded",
                interface: Some(name.clone()),
                message: format!(
                    "{name} is open to loopback only through {} published port(s)",
                    grants.len()
                ),
            });
        }
        interfaces.push(InterfaceReport {
            name: name.clone(),
            route_localnet: *value,
            effective,
            managed,
            set_by_loopgate: managed && original == Some(0),
            original,
            guarded,
            grants,
            exposed_sockets: exposed,
        });
    }
    for iface in crate::plan::interfaces(&state.grants) {
        if !interfaces.iter().any(|i| i.name == iface) {
            findings.push(Finding {
                severity: Severity::Warning,
                code: "interface-missing",
                interface: Some(iface.clone()),
                message: format!("{iface} has grants but does not exist now; they apply again when it returns and loopgate re-applies"),
            });
        }
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));

    let report = Report {
        schema_version: SCHEMA_VERSION,
        all_route_localnet: all,
        default_route_localnet: default,
        interfaces,
        table: TableReport {
            present: snapshot.present(),
            expected: expected.is_some(),
            matches_expected: table_ok,
            differences,
            elements_read_back: !snapshot.vouched(),
        },
        interrupted_transaction: state.pending.is_some(),
        findings,
        counters: snapshot.counters(),
    };
    let format = if args.json {
        AuditFormat::Json
    } else {
        args.format
    };
    match format {
        AuditFormat::Json => crate::outln!("{}", serde_json::to_string_pretty(&report)?),
        AuditFormat::Prometheus => crate::out!("{}", prometheus(&report)),
        AuditFormat::Text => print_text(&report),
    }
    Ok(match report.worst() {
        Some(Severity::Warning | Severity::Critical) => EXIT_FINDINGS,
        _ => EXIT_OK,
    })
}

fn print_text(r: &Report) {
    crate::outln!(
        "route_localnet: all={} default={}",
        r.all_route_localnet,
        r.default_route_localnet
    );
    crate::outln!(
        "table ip loopgate: {}",
        match (r.table.present, r.table.matches_expected) {
            (false, true) => "absent (no grants)",
            (true, true) if r.table.elements_read_back => "present, as loopgate generated it",
            (true, true) => {
                "present, as loopgate generated it (set elements vouched for by the unchanged nftables generation; --deep reads them back)"
            }
            (_, false) => "NOT as loopgate generated it",
        }
    );
    for i in &r.interfaces {
        let state = match (i.effective, i.guarded) {
            (0, _) => "closed",
            (_, true) => "open, guarded",
            _ => "OPEN, UNGUARDED",
        };
        crate::outln!(
            "{}: route_localnet={} effective={} {}{}",
            i.name,
            i.route_localnet,
            i.effective,
            state,
            if i.set_by_loopgate {
                " (set by loopgate)"
            } else {
                ""
            }
        );
        for g in &i.grants {
            crate::outln!("  grant {g}");
        }
        for s in &i.exposed_sockets {
            crate::outln!("  exposes {}:{}/{}", s.addr, s.port, s.proto);
        }
    }
    if r.findings.is_empty() {
        crate::outln!("findings: none");
    }
    for f in &r.findings {
        let sev = match f.severity {
            Severity::Info => "info",
            Severity::Warning => "WARNING",
            Severity::Critical => "CRITICAL",
        };
        crate::outln!("{sev} [{}] {}", f.code, f.message);
    }
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The report in the Prometheus text exposition format (node_exporter textfile
/// collector): one gauge family per fact, counters per rule.
pub fn prometheus(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP loopgate_{name} {help}");
        let _ = writeln!(out, "# TYPE loopgate_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "loopgate_{name}{labels} {value}");
        }
    };
    let per_iface = |f: &dyn Fn(&InterfaceReport) -> u64| -> Vec<(String, u64)> {
        r.interfaces
            .iter()
            .map(|i| (format!("{{interface=\"{}\"}}", label(&i.name)), f(i)))
            .collect()
    };
    family(
        "route_localnet",
        "gauge",
        "net.ipv4.conf.<interface>.route_localnet as set on the interface.",
        per_iface(&|i| u64::from(i.route_localnet)),
    );
    family(
        "route_localnet_effective",
        "gauge",
        "route_localnet in effect (all OR interface).",
        per_iface(&|i| u64::from(i.effective)),
    );
    family(
        "guarded",
        "gauge",
        "1 when loopgate's guard rules for the interface are in place as generated.",
        per_iface(&|i| u64::from(i.guarded)),
    );
    family(
        "grants",
        "gauge",
        "Published ports (grants) on the interface.",
        per_iface(&|i| i.grants.len() as u64),
    );
    family(
        "route_localnet_all",
        "gauge",
        "net.ipv4.conf.all.route_localnet.",
        vec![(String::new(), u64::from(r.all_route_localnet))],
    );
    family(
        "table_matches",
        "gauge",
        "1 when loopgate's nftables table is exactly as its grants require.",
        vec![(String::new(), u64::from(r.table.matches_expected))],
    );
    let findings = [Severity::Info, Severity::Warning, Severity::Critical]
        .iter()
        .map(|s| {
            let name = serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            (
                format!("{{severity=\"{name}\"}}"),
                r.findings.iter().filter(|f| f.severity == *s).count() as u64,
            )
        })
        .collect();
    family("findings", "gauge", "Audit findings by severity.", findings);
    // Rules sharing a chain and comment (tcp and udp of one grant) are summed: one series each.
    let mut sums: std::collections::BTreeMap<(String, String), (u64, u64)> =
        std::collections::BTreeMap::new();
    for c in &r.counters {
        let e = sums.entry((c.chain.clone(), c.rule.clone())).or_default();
        e.0 += c.packets;
        e.1 += c.bytes;
    }
    let series = |pick: fn(&(u64, u64)) -> u64| -> Vec<(String, u64)> {
        sums.iter()
            .map(|((chain, rule), v)| {
                (
                    format!("{{chain=\"{}\",rule=\"{}\"}}", label(chain), label(rule)),
                    pick(v),
                )
            })
            .collect()
    };
    family(
        "rule_packets_total",
        "counter",
        "Packets matched by each rule of table ip loopgate.",
        series(|v| v.0),
    );
    family(
        "rule_bytes_total",
        "counter",
        "Bytes matched by each rule of table ip loopgate.",
        series(|v| v.1),
    );
    out
}
