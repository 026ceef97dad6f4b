//! Writing a [`Report`] for people (text), programs (JSON) and monitoring
//! (Prometheus text exposition). Renderers only format; they judge nothing.

use super::{InterfaceReport, Report, Severity};

/// Writes `report` to stdout in `format`.
pub fn print(report: &Report, format: crate::cli::AuditFormat) -> anyhow::Result<()> {
    match format {
        crate::cli::AuditFormat::Json => {
            crate::outln!("{}", serde_json::to_string_pretty(report)?)
        }
        crate::cli::AuditFormat::Prometheus => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            crate::out!("{}", prometheus(report, now))
        }
        crate::cli::AuditFormat::Text => print_text(report),
    }
    Ok(())
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
            (true, _) if r.table.empty => "present, EMPTY (guards nothing)",
            (true, true) if r.table.elements_read_back => "present, as loopgate generated it",
            (true, true) => {
                "present, as loopgate generated it (set elements vouched for by the unchanged nftables generation; --deep reads them back)"
            }
            (_, false) => "NOT as loopgate generated it",
        }
    );
    if r.table.present {
        crate::outln!("table protection: {}", r.table.protection);
    }
    for i in &r.interfaces {
        let state = match (i.effective, i.guarded) {
            (_, _) if i.error.is_some() => "UNREADABLE, counted as OPEN",
            (0, _) => "closed",
            (_, true) if i.grants.is_empty() => "open, guarded (opened by another tool)",
            (_, true) => "open, guarded",
            _ => "OPEN, UNGUARDED",
        };
        // A runtime network's bridge is shown with the network, as its grants are.
        let mut networks: Vec<String> = i
            .grants
            .iter()
            .filter_map(|g| g.network.as_ref().map(|n| n.to_string()))
            .collect();
        networks.dedup();
        let name = match networks.is_empty() {
            true => i.name.clone(),
            false => format!("{} ({})", i.name, networks.join(", ")),
        };
        crate::outln!(
            "{}: route_localnet={} effective={} {}{}",
            name,
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

/// A severity as JSON and the metrics spell it: `info`, `warning`, `critical`.
fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The labels of an interface's series: `interface="br-5f2a1c3d9e7b"`, and
/// `network="myproj_default"` when its grants were asked for by a runtime network's
/// name, which (unlike the bridge) outlives `docker compose down/up`, so dashboards and
/// alerts can select on it.
fn iface_labels(r: &Report, iface: &str) -> String {
    let network = r
        .interfaces
        .iter()
        .filter(|i| i.name == iface)
        .flat_map(|i| &i.grants)
        .find_map(|g| g.network.as_ref());
    match network {
        Some(n) => format!(
            "interface=\"{}\",network=\"{}\"",
            label(iface),
            label(&n.name)
        ),
        None => format!("interface=\"{}\"", label(iface)),
    }
}

/// Writes one metric family: its HELP and TYPE lines and its samples (labels, value).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: Vec<(String, String)>) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP loopgate_{name} {help}");
    let _ = writeln!(out, "# TYPE loopgate_{name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "loopgate_{name}{labels} {value}");
    }
}

/// The families every document starts with: whether the audit ran, and when
/// (`now`, seconds since the epoch). A textfile whose timestamp stops moving is an
/// audit that stopped running.
fn run_families(out: &mut String, success: bool, now: f64) {
    family(
        out,
        "audit_success",
        "gauge",
        "1 when loopgate audit observed the host and wrote this document; 0 when it failed (the error is on its stderr).",
        vec![(String::new(), u8::from(success).to_string())],
    );
    family(
        out,
        "audit_timestamp_seconds",
        "gauge",
        "When this audit ran, in seconds since the epoch.",
        vec![(String::new(), format!("{now:.3}"))],
    );
}

/// The document of an audit that failed before it had a report: `loopgate_audit_success
/// 0` and the time, so that the textfile still updates and an alert can fire.
pub fn prometheus_failed(now: f64) -> String {
    let mut out = String::new();
    run_families(&mut out, false, now);
    out
}

/// The report in the Prometheus text exposition format (node_exporter textfile
/// collector), made at `now` (seconds since the epoch): one gauge family per fact,
/// counters per rule, running totals of what the guards dropped.
pub fn prometheus(r: &Report, now: f64) -> String {
    let mut out = String::new();
    run_families(&mut out, true, now);
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        family(&mut out, name, kind, help, samples)
    };
    // An unreadable value is exported as NaN: a gap an alert can catch, never a 0.
    let value = |v: Option<i32>| v.map_or_else(|| "NaN".to_string(), |v| v.to_string());
    // Only interfaces loopgate manages or guards, and those open (or unreadable): a
    // series per container veth at 0 would churn with every container.
    let shown = |i: &&InterfaceReport| {
        i.managed || i.guarded || i.effective != 0 || i.route_localnet != Some(0)
    };
    let per_iface = |f: &dyn Fn(&InterfaceReport) -> String| -> Vec<(String, String)> {
        r.interfaces
            .iter()
            .filter(shown)
            .map(|i| (format!("{{{}}}", iface_labels(r, &i.name)), f(i)))
            .collect()
    };
    // A runtime network's grants that are pending (its project is down) read 0, not a
    // series that disappears until the network is back.
    let mut down: Vec<&str> = r
        .pending
        .iter()
        .filter_map(|p| p.network.as_ref().map(|n| n.name.as_str()))
        .filter(|n| {
            !r.interfaces.iter().any(|i| {
                i.grants
                    .iter()
                    .any(|g| g.network.as_ref().is_some_and(|x| x.name == *n))
            })
        })
        .collect();
    down.sort();
    down.dedup();
    let mut grants = per_iface(&|i| i.grants.len().to_string());
    grants.extend(
        down.iter()
            .map(|n| (format!("{{network=\"{}\"}}", label(n)), "0".to_string())),
    );
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
        "Published ports (grants) on the interface; 0 with only a network label for a runtime network whose grants are pending (its project is down).",
        grants,
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
            (
                format!("{{severity=\"{}\"}}", severity_name(*s)),
                r.findings
                    .iter()
                    .filter(|f| f.severity == *s)
                    .count()
                    .to_string(),
            )
        })
        .collect();
    family("findings", "gauge", "Audit findings by severity.", findings);
    let mut by_code: std::collections::BTreeMap<(&str, Severity), usize> =
        std::collections::BTreeMap::new();
    for f in &r.findings {
        *by_code.entry((f.code.as_str(), f.severity)).or_default() += 1;
    }
    family(
        "findings_by_code",
        "gauge",
        "Audit findings by code and severity (codes without a finding have no series).",
        by_code
            .into_iter()
            .map(|((code, severity), n)| {
                (
                    format!(
                        "{{code=\"{code}\",severity=\"{}\"}}",
                        severity_name(severity)
                    ),
                    n.to_string(),
                )
            })
            .collect(),
    );
    family(
        "pending_grants",
        "gauge",
        "Grants asked for (command line or policy) that are not served now: a missing interface or network, an address that is gone.",
        vec![(String::new(), r.pending.len().to_string())],
    );
    // Rules sharing a chain and comment (tcp and udp of one grant) are summed: one series each.
    let mut sums: std::collections::BTreeMap<(String, String), (u64, u64)> =
        std::collections::BTreeMap::new();
    for c in &r.counters {
        let e = sums.entry((c.chain.clone(), c.rule.clone())).or_default();
        e.0 += c.packets;
        e.1 += c.bytes;
    }
    // The runtime network a rule serves (its grant's, or its bridge's guard), as a
    // label that outlives the bridge id in the rule's comment.
    let network_of = |rule: &str| -> Option<String> {
        r.interfaces.iter().find_map(|i| {
            let net = i.grants.iter().find_map(|g| g.network.as_ref())?;
            let serves = rule.starts_with(&format!("{} guard", i.name))
                || i.grants.iter().any(|g| rule == format!("grant {}", g.name));
            serves.then(|| net.name.clone())
        })
    };
    let series = |pick: fn(&(u64, u64)) -> u64| -> Vec<(String, String)> {
        sums.iter()
            .map(|((chain, rule), v)| {
                let network = network_of(rule)
                    .map(|n| format!(",network=\"{}\"", label(&n)))
                    .unwrap_or_default();
                (
                    format!(
                        "{{chain=\"{}\",rule=\"{}\"{network}}}",
                        label(chain),
                        label(rule)
                    ),
                    pick(v).to_string(),
                )
            })
            .collect()
    };
    family(
        "rule_packets_total",
        "counter",
        "Packets matched by each rule of table ip loopgate since loopgate last wrote it (a rewrite starts them at 0, a counter reset).",
        series(|v| v.0),
    );
    family(
        "rule_bytes_total",
        "counter",
        "Bytes matched by each rule of table ip loopgate since loopgate last wrote it (a rewrite starts them at 0, a counter reset).",
        series(|v| v.1),
    );
    let blocked = |pick: fn(&super::Blocked) -> u64| -> Vec<(String, String)> {
        r.blocked_total
            .iter()
            .map(|b| {
                (
                    format!("{{{},kind=\"{}\"}}", iface_labels(r, &b.interface), b.kind),
                    pick(b).to_string(),
                )
            })
            .collect()
    };
    family(
        "blocked_packets_total",
        "counter",
        "Packets the guard of each interface dropped, by kind (direct-to-loopback, spoofed-loopback-source, leaked-loopback-source, input-drop); a running total that table rewrites do not reset.",
        blocked(|b| b.packets),
    );
    family(
        "blocked_bytes_total",
        "counter",
        "Bytes of the packets in loopgate_blocked_packets_total.",
        blocked(|b| b.bytes),
    );
    out
}
