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
use crate::kernel::host::Listener;
use crate::kernel::nft::{self, RuleCounter, TableImage};
use crate::kernel::seam::{Kernel, System, TableSnapshot};
use crate::kernel::sysctl::{self, Reading};
use crate::plan;
use crate::state::State;
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;

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

/// Everything audit reads from the kernel, gathered before any judgement.
#[derive(Debug, Default)]
pub struct Observed {
    /// route_localnet of every IPv4 conf directory, `all` and `default` included.
    pub sysctls: Vec<(String, Reading)>,
    /// The ifindex of each interface in `sysctls` (absent for `all`, `default`, or a
    /// device that vanished while being read).
    pub ifindexes: BTreeMap<String, u32>,
    /// The current name of each device loopgate holds an original for (`None`: gone).
    pub recorded_names: BTreeMap<u32, Option<String>>,
    /// loopgate's table as read, `None` when absent.
    pub table: Option<TableImage>,
    /// True when the table's elements were vouched for instead of read back.
    pub elements_vouched: bool,
    /// Sockets listening on 127.0.0.0/8.
    pub loopback_listeners: Vec<Listener>,
    pub counters: Vec<RuleCounter>,
}

/// Reads what [`assess`] judges, through `kernel`.
pub fn observe<K: Kernel>(
    kernel: &K,
    state: &State,
    expected: Option<&TableImage>,
    deep: bool,
) -> Result<Observed> {
    let sysctls = kernel.route_localnet_all()?;
    let ifindexes = sysctls
        .iter()
        .filter_map(|(n, _)| kernel.ifindex_of(n).map(|i| (n.clone(), i)))
        .collect();
    let recorded_names = state
        .originals
        .iter()
        .map(|o| (o.ifindex, kernel.name_of(o.ifindex)))
        .collect();
    let trust = match deep {
        true => None,
        false => state.vouch.as_ref().zip(expected),
    };
    let snapshot = kernel.read_table(trust)?;
    let loopback_listeners = kernel
        .listeners()?
        .into_iter()
        .filter(|l| loopback().contains(l.addr))
        .collect();
    Ok(Observed {
        sysctls,
        ifindexes,
        recorded_names,
        table: snapshot.image(),
        elements_vouched: snapshot.vouched(),
        loopback_listeners,
        counters: snapshot.counters(),
    })
}

pub fn run(args: &AuditArgs) -> Result<i32> {
    let (_store, state) = open_store(false)?;
    let expected = plan::ruleset(&state.grants).map(|r| nft::planned_image(&r));
    let observed = observe(&System, &state, expected.as_ref(), args.deep)?;
    let report = assess(&observed, &state, expected.as_ref());
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

/// The judgement: what is open, whether loopgate's guard covers it, and the findings.
/// Pure: `observed` is what the kernel said, `state` what loopgate recorded, `expected`
/// the image of the table the recorded grants require.
pub fn assess(observed: &Observed, state: &State, expected: Option<&TableImage>) -> Report {
    let reading = |name: &str| {
        observed
            .sysctls
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r)
    };
    let mut findings = Vec::new();
    let differences = match (&observed.table, expected) {
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
                "loopgate's table differs from what its grants require (deleted, flushed, dormant or edited): {}",
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
    let unreadable = |name: &str, why: &str, severity: Severity, findings: &mut Vec<Finding>| {
        findings.push(Finding {
            severity,
            code: "sysctl-unreadable",
            interface: Some(name.to_string()),
            message: format!(
                "net.ipv4.conf.{name}.route_localnet cannot be read ({why}): whether it is open cannot be told, so it is counted as open"
            ),
        });
    };
    // `all` ORs into every interface: unreadable counts as open.
    let all = reading("all");
    let all_open = match all {
        Some(Ok(v)) => sysctl::is_open(*v),
        Some(Err(why)) => {
            unreadable("all", why, Severity::Critical, &mut findings);
            true
        }
        None => {
            unreadable("all", "missing", Severity::Critical, &mut findings);
            true
        }
    };
    if let Some(Ok(v)) = all {
        if sysctl::is_open(*v) {
            findings.push(Finding {
                severity: Severity::Critical,
                code: "all-open",
                interface: None,
                message: format!("net.ipv4.conf.all.route_localnet={v}: every interface routes 127.0.0.0/8, and no per-interface setting can narrow it"),
            });
        }
    }
    let default = reading("default");
    match default {
        Some(Ok(v)) if sysctl::is_open(*v) => findings.push(Finding {
            severity: Severity::Warning,
            code: "default-open",
            interface: None,
            message: format!("net.ipv4.conf.default.route_localnet={v}: new interfaces start with loopback routing enabled"),
        }),
        Some(Err(why)) => unreadable("default", why, Severity::Warning, &mut findings),
        _ => {}
    }

    let loopback = &observed.loopback_listeners;
    let mut interfaces = Vec::new();
    for (name, value) in observed
        .sysctls
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
        let original = observed
            .ifindexes
            .get(name)
            .and_then(|i| state.original(*i))
            .map(|o| o.value);
        let open = match value {
            Ok(v) => all_open || sysctl::is_open(*v),
            Err(why) => {
                unreadable(name, why, Severity::Critical, &mut findings);
                true
            }
        };
        let guarded = managed && table_ok;
        let exposed: Vec<Listener> = if !open {
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
        if open && !guarded {
            findings.push(Finding {
                severity: Severity::Critical,
                code: "unguarded",
                interface: Some(name.clone()),
                message: format!(
                    "route_localnet is effectively on for {name} ({}) without loopgate's guard: any neighbour on that link can reach every loopback service ({} socket(s) listening on 127.0.0.0/8)",
                    describe_value(value, all),
                    exposed.len()
                ),
            });
        } else if managed && !open {
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
            route_localnet: value.as_ref().ok().copied(),
            effective: u8::from(open),
            error: value.as_ref().err().cloned(),
            managed,
            set_by_loopgate: managed && original == Some(0),
            original,
            guarded,
            grants,
            exposed_sockets: exposed,
        });
    }
    for rec in &state.originals {
        let Some(Some(now)) = observed.recorded_names.get(&rec.ifindex) else {
            continue;
        };
        if *now == rec.iface {
            continue;
        }
        let open = interfaces
            .iter()
            .find(|i| &i.name == now)
            .is_some_and(|i| i.effective != 0);
        let guarded_now = interfaces.iter().any(|i| &i.name == now && i.guarded);
        findings.push(Finding {
            severity: if open && !guarded_now {
                Severity::Critical
            } else {
                Severity::Warning
            },
            code: "interface-renamed",
            interface: Some(now.clone()),
            message: format!(
                "{} (ifindex {}), whose route_localnet loopgate manages (it was {} before loopgate), is now called {now}{}; loopgate's guard matches the name {}: run `loopgate watch` or `loopgate apply` to put its route_localnet back",
                rec.iface,
                rec.ifindex,
                rec.value,
                if open { " and is open" } else { "" },
                rec.iface
            ),
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

    Report {
        schema_version: SCHEMA_VERSION,
        all_route_localnet: all.and_then(|r| r.as_ref().ok().copied()),
        default_route_localnet: default.and_then(|r| r.as_ref().ok().copied()),
        interfaces,
        table: TableReport {
            present: observed.table.is_some(),
            expected: expected.is_some(),
            matches_expected: table_ok,
            differences,
            elements_read_back: !observed.elements_vouched,
        },
        interrupted_transaction: state.pending.is_some(),
        findings,
        counters: observed.counters.clone(),
    }
}

/// "route_localnet=2", or "conf.all.route_localnet=1", for a finding's message.
fn describe_value(value: &Reading, all: Option<&Reading>) -> String {
    match (value, all) {
        (Ok(v), _) if sysctl::is_open(*v) => format!("route_localnet={v}"),
        (Err(why), _) => format!("route_localnet unreadable: {why}"),
        (_, Some(Ok(a))) => format!("conf.all.route_localnet={a}"),
        _ => "conf.all.route_localnet unreadable".to_string(),
    }
}

/// A route_localnet value for the text report: the number, or `unreadable`.
fn shown(v: Option<i32>) -> String {
    v.map_or_else(|| "unreadable".to_string(), |v| v.to_string())
}

fn print_text(r: &Report) {
    crate::outln!(
        "route_localnet: all={} default={}",
        shown(r.all_route_localnet),
        shown(r.default_route_localnet)
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
            (_, _) if i.error.is_some() => "UNREADABLE, counted as OPEN",
            (0, _) => "closed",
            (_, true) => "open, guarded",
            _ => "OPEN, UNGUARDED",
        };
        crate::outln!(
            "{}: route_localnet={} effective={} {}{}",
            i.name,
            shown(i.route_localnet),
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
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP loopgate_{name} {help}");
        let _ = writeln!(out, "# TYPE loopgate_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "loopgate_{name}{labels} {value}");
        }
    };
    // An unreadable value is exported as NaN: a gap an alert can catch, never a 0.
    let value = |v: Option<i32>| v.map_or_else(|| "NaN".to_string(), |v| v.to_string());
    let per_iface = |f: &dyn Fn(&InterfaceReport) -> String| -> Vec<(String, String)> {
        r.interfaces
            .iter()
            .map(|i| (format!("{{interface=\"{}\"}}", label(&i.name)), f(i)))
            .collect()
    };
    family(
        "route_localnet",
        "gauge",
        "net.ipv4.conf.<interface>.route_localnet as set on the interface.",
        per_iface(&|i| value(i.route_localnet)),
    );
    family(
        "route_localnet_effective",
        "gauge",
        "route_localnet in effect (all OR interface).",
        per_iface(&|i| i.effective.to_string()),
    );
    family(
        "guarded",
        "gauge",
        "1 when loopgate's guard rules for the interface are in place as generated.",
        per_iface(&|i| u8::from(i.guarded).to_string()),
    );
    family(
        "grants",
        "gauge",
        "Published ports (grants) on the interface.",
        per_iface(&|i| i.grants.len().to_string()),
    );
    family(
        "route_localnet_all",
        "gauge",
        "net.ipv4.conf.all.route_localnet.",
        vec![(String::new(), value(r.all_route_localnet))],
    );
    family(
        "table_matches",
        "gauge",
        "1 when loopgate's nftables table is exactly as its grants require.",
        vec![(
            String::new(),
            u8::from(r.table.matches_expected).to_string(),
        )],
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
                r.findings
                    .iter()
                    .filter(|f| f.severity == *s)
                    .count()
                    .to_string(),
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
    let series = |pick: fn(&(u64, u64)) -> u64| -> Vec<(String, String)> {
        sums.iter()
            .map(|((chain, rule), v)| {
                (
                    format!("{{chain=\"{}\",rule=\"{}\"}}", label(chain), label(rule)),
                    pick(v).to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Original, STATE_VERSION};

    fn observed(sysctls: &[(&str, Reading)]) -> Observed {
        Observed {
            sysctls: sysctls
                .iter()
                .map(|(n, r)| (n.to_string(), r.clone()))
                .collect(),
            ifindexes: sysctls
                .iter()
                .enumerate()
                .map(|(i, (n, _))| (n.to_string(), i as u32 + 1))
                .collect(),
            ..Default::default()
        }
    }

    fn codes(r: &Report) -> Vec<(&'static str, Severity, Option<String>)> {
        r.findings
            .iter()
            .map(|f| (f.code, f.severity, f.interface.clone()))
            .collect()
    }

    fn empty() -> State {
        State {
            version: STATE_VERSION,
            ..Default::default()
        }
    }

    #[test]
    fn every_non_zero_or_unreadable_value_is_an_open_interface() {
        for (value, finding) in [
            (Ok(1), "unguarded"),
            (Ok(2), "unguarded"),
            (Ok(-1), "unguarded"),
            (Ok(256), "unguarded"),
            (Ok(i32::MIN), "unguarded"),
            (Err("reads \"x\"".to_string()), "sysctl-unreadable"),
        ] {
            let o = observed(&[("all", Ok(0)), ("default", Ok(0)), ("br1", value.clone())]);
            let r = assess(&o, &empty(), None);
            assert_eq!(r.worst(), Some(Severity::Critical), "{value:?}");
            assert!(
                codes(&r).contains(&(finding, Severity::Critical, Some("br1".into()))),
                "{value:?}: {:?}",
                codes(&r)
            );
            assert_eq!(r.interfaces[0].effective, 1, "{value:?}");
        }
        let o = observed(&[("all", Ok(0)), ("default", Ok(0)), ("br1", Ok(0))]);
        assert_eq!(assess(&o, &empty(), None).worst(), None);
    }

    #[test]
    fn any_non_zero_all_opens_every_interface_and_default_warns() {
        for all in [1, 5, -1] {
            let o = observed(&[("all", Ok(all)), ("default", Ok(7)), ("br1", Ok(0))]);
            let r = assess(&o, &empty(), None);
            let c = codes(&r);
            assert!(c.contains(&("all-open", Severity::Critical, None)), "{c:?}");
            assert!(
                c.contains(&("default-open", Severity::Warning, None)),
                "{c:?}"
            );
            assert!(
                c.contains(&("unguarded", Severity::Critical, Some("br1".into()))),
                "{c:?}"
            );
        }
        // An unreadable `all` cannot prove anything closed.
        let o = observed(&[
            ("all", Err("gone".into())),
            ("default", Ok(0)),
            ("br1", Ok(0)),
        ]);
        let c = codes(&assess(&o, &empty(), None));
        assert!(c.contains(&("sysctl-unreadable", Severity::Critical, Some("all".into()))));
        assert!(c.contains(&("unguarded", Severity::Critical, Some("br1".into()))));
    }

    #[test]
    fn a_renamed_managed_device_is_named_and_critical_while_open() {
        let mut state = empty();
        state.originals = vec![Original {
            iface: "br0".into(),
            ifindex: 42,
            value: 0,
        }];
        let mut o = observed(&[("all", Ok(0)), ("default", Ok(0)), ("br9", Ok(1))]);
        o.recorded_names.insert(42, Some("br9".into()));
        let r = assess(&o, &state, None);
        let f = r
            .findings
            .iter()
            .find(|f| f.code == "interface-renamed")
            .expect("renamed finding");
        assert_eq!(f.severity, Severity::Critical);
        assert!(
            f.message.contains("br0 (ifindex 42)") && f.message.contains("br9"),
            "{}",
            f.message
        );
    }
}

/// Audit over the fake kernel: observation and judgement together, without root.
#[cfg(test)]
mod over_the_fake {
    use super::*;
    use crate::kernel::fake::Fake;
    use crate::state::STATE_VERSION;

    #[test]
    fn audit_reads_values_tables_and_listeners_through_the_seam() {
        let kernel = Fake::with_devices(&[(5, "br0", 0), (6, "br1", 2), (1, "lo", 0)]);
        kernel.state.borrow_mut().listeners = vec![Listener {
            proto: crate::grant::Proto::Tcp,
            addr: std::net::Ipv4Addr::LOCALHOST,
            port: 6379,
        }];
        let state = State {
            version: STATE_VERSION,
            ..Default::default()
        };
        let observed = observe(&kernel, &state, None, false).unwrap();
        let report = assess(&observed, &state, None);
        let br1 = report.interfaces.iter().find(|i| i.name == "br1").unwrap();
        assert_eq!(
            (br1.route_localnet, br1.effective, br1.guarded),
            (Some(2), 1, false)
        );
        assert_eq!(br1.exposed_sockets.len(), 1);
        assert_eq!(report.worst(), Some(Severity::Critical));
        // A table loopgate did not make is reported too.
        kernel
            .state
            .borrow_mut()
            .devices
            .get_mut(&6)
            .unwrap()
            .route_localnet = 0;
        let g = crate::grant::Grant {
            name: "x".into(),
            iface: "br0".into(),
            proto: crate::grant::Proto::Tcp,
            listen: "192.0.2.1".parse().unwrap(),
            port: 1,
            to: "127.0.0.1:1".parse().unwrap(),
            allow: vec!["192.0.2.0/25".parse().unwrap()],
        };
        kernel.state.borrow_mut().table = Some(crate::kernel::fake::FakeTable::of(
            &crate::plan::ruleset(&[g]).unwrap(),
        ));
        let report = assess(
            &observe(&kernel, &state, None, false).unwrap(),
            &state,
            None,
        );
        assert!(report.findings.iter().any(|f| f.code == "table-unexpected"));
        assert_eq!(report.worst(), Some(Severity::Warning));
    }
}
