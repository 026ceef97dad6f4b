//! The judgement: a pure function from what the kernel showed and what loopgate
//! recorded to findings. Every finding code has a table-driven unit test here.

use super::{
    Code, Finding, InterfaceReport, Observed, Report, Severity, TableReport, SCHEMA_VERSION,
};
use crate::grant::Grant;
use crate::kernel::host::Listener;
use crate::kernel::nft::TableImage;
use crate::kernel::sysctl::{self, Reading};
use crate::state::State;

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
        (None, Some(_)) if observed.empty_table => {
            vec!["table ip loopgate is empty (flushed)".to_string()]
        }
        (None, Some(_)) => vec!["table ip loopgate is missing".to_string()],
        (Some(_), None) => {
            vec!["table ip loopgate exists but loopgate has no grants here".to_string()]
        }
        (None, None) => vec![],
    };
    let table_ok = differences.is_empty();
    if !table_ok {
        let (severity, code) = if expected.is_some() {
            (Severity::Critical, Code::TableTampered)
        } else {
            (Severity::Warning, Code::TableUnexpected)
        };
        findings.push(Finding {
            severity,
            code,
            interface: None,
            message: match code {
                Code::TableTampered => format!(
                    "loopgate's table differs from what its grants require (deleted, flushed, dormant or edited): {}; run `loopgate watch --once` to put it back (a running `loopgate watch` does so by itself)",
                    differences.join("; ")
                ),
                _ => format!(
                    "loopgate's table differs from what its grants require (deleted, flushed, dormant or edited): {}",
                    differences.join("; ")
                ),
            },
        });
    }
    if state.pending.is_some() {
        findings.push(Finding {
            severity: Severity::Warning,
            code: Code::Interrupted,
            interface: None,
            message: "a loopgate transaction was interrupted; repeat the command, or run `loopgate watch --once`, which rolls it back (as a running `loopgate watch` does by itself)".into(),
        });
    }
    let unreadable = |name: &str, why: &str, severity: Severity, findings: &mut Vec<Finding>| {
        findings.push(Finding {
            severity,
            code: Code::SysctlUnreadable,
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
                code: Code::AllOpen,
                interface: None,
                message: format!("net.ipv4.conf.all.route_localnet={v}: every interface routes 127.0.0.0/8, and no per-interface setting can narrow it"),
            });
        }
    }
    let default = reading("default");
    match default {
        Some(Ok(v)) if sysctl::is_open(*v) => findings.push(Finding {
            severity: Severity::Warning,
            code: Code::DefaultOpen,
            interface: None,
            message: format!("net.ipv4.conf.default.route_localnet={v}: new interfaces start with loopback routing enabled"),
        }),
        Some(Err(why)) => unreadable("default", why, Severity::Warning, &mut findings),
        _ => {}
    }

    let loopback = &observed.loopback_listeners;
    // Other tools' forwards to loopback, which the guard lets through (`forwards`).
    let foreign_forwards = super::forwards::forwards(&observed.firewall);
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
        // Guarded without grants (`loopgate guard`): another tool opened it.
        let guard_only = !managed && state.guarded.contains(name);
        let guarded = (managed || guard_only) && table_ok;
        let exposed: Vec<Listener> = if !open {
            vec![]
        } else if guarded {
            loopback
                .iter()
                .filter(|l| {
                    grants.iter().any(|g| {
                        g.proto == l.proto
                            && g.to.port() == l.port
                            && (*g.to.ip() == l.addr || l.addr.is_unspecified())
                    }) || foreign_forwards.iter().any(|f| f.reaches(name, l))
                })
                .cloned()
                .collect()
        } else {
            loopback.clone()
        };
        if open && !guarded {
            findings.push(Finding {
                severity: Severity::Critical,
                code: Code::Unguarded,
                interface: Some(name.clone()),
                message: format!(
                    "route_localnet is effectively on for {name} ({}) without loopgate's guard: any neighbour on that link can reach every loopback service ({} socket(s) listening on 127.0.0.0/8 or 0.0.0.0); to guard it without changing its route_localnet: loopgate guard {name}",
                    describe_value(value, all),
                    exposed.len()
                ),
            });
        } else if managed && !open {
            findings.push(Finding {
                severity: Severity::Warning,
                code: Code::GrantInactive,
                interface: Some(name.clone()),
                message: format!("{name} has grants but route_localnet is 0 (interface re-created?); run `loopgate watch --once` to repair it, or keep `loopgate watch` running, which repairs it as it happens"),
            });
        } else if guarded && guard_only && open {
            findings.push(Finding {
                severity: Severity::Info,
                code: Code::Guarded,
                interface: Some(name.clone()),
                message: format!(
                    "{name} is guarded (opened by another tool): nothing reaches loopback through it but replies of flows the host opened"
                ),
            });
        } else if guarded && !guard_only {
            findings.push(Finding {
                severity: Severity::Info,
                code: Code::Guarded,
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
    // conf.all=1 (kube-proxy sets it) opens every interface, but an interface loopgate
    // guards has no hole: with every interface guarded and a `*` guard (`guard
    // --all-interfaces`) that a running watch applies to each new interface as it
    // appears, the host is as the remedy leaves it. Without a watch holding the table
    // a new interface would stay open until the next command: a warning.
    let every_guarded = interfaces.iter().all(|i| i.guarded);
    let all_covered = state.guards.iter().any(|g| g.interface == "*");
    if every_guarded && all_covered {
        let watching = observed.protection.starts_with("owned by watch");
        for f in findings.iter_mut().filter(|f| f.code == Code::AllOpen) {
            f.severity = match watching {
                true => Severity::Info,
                false => Severity::Warning,
            };
            f.message.push_str(match watching {
                true => "; every interface is guarded (`loopgate guard --all-interfaces`), and the running watch guards each new one as it appears",
                false => "; every interface is guarded now (`loopgate guard --all-interfaces`), but no watch holds the table to guard a new interface as it appears: run `loopgate watch`",
            });
        }
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
            code: Code::InterfaceRenamed,
            interface: Some(now.clone()),
            message: format!(
                "{} (ifindex {}), whose route_localnet loopgate manages (it was {} before loopgate), is now called {now} (renamed, or another device with its index){}; loopgate's guard matches the name {}: run `loopgate watch --once` (or keep `loopgate watch` running), which closes it if loopgate had opened it",
                rec.iface,
                rec.ifindex,
                rec.value,
                if open { " and is open" } else { "" },
                rec.iface
            ),
        });
    }
    for p in &observed.pending {
        findings.push(pending_finding(p, observed, state));
    }
    for p in &observed.unconfirmed {
        findings.push(Finding {
            severity: Severity::Warning,
            code: Code::RuntimeUnanswered,
            interface: Some(p.interface.clone()),
            message: format!(
                "{}; bring the runtime back (loopgate cannot follow the network meanwhile)",
                p.what()
            ),
        });
    }
    let held_by_watch = observed.protection.starts_with("owned by watch");
    if observed.empty_table && !held_by_watch {
        findings.push(Finding {
            severity: Severity::Warning,
            code: Code::TableEmpty,
            interface: None,
            message: format!(
                "an empty table ip {} is in place (a watch that stopped or was killed leaves one): it guards nothing, and nft 1.0.6 prints its flags as `flags `, which makes `nft list ruleset` output unloadable; remove it: nft delete table ip {}",
                crate::ruleset::TABLE,
                crate::ruleset::TABLE
            ),
        });
    }
    if let Some(path) = &observed.nftables_conf_names_table {
        findings.push(Finding {
            severity: match held_by_watch {
                true => Severity::Critical,
                false => Severity::Warning,
            },
            code: Code::NftablesConfNamesTable,
            interface: None,
            message: format!(
                "{path} names table ip {t} (saved with `nft list ruleset`?): {why}; loopgate keeps its own table, so take it out of the file: sed -i '/^table ip {t} /,/^}}/d' {path}",
                t = crate::ruleset::TABLE,
                why = match held_by_watch {
                    true => "while watch holds that table, loading the file fails as a whole (EPERM), and `systemctl restart nftables` (flush, then load) leaves the host without its own firewall unless the loopgate drop-in for nftables.service is installed",
                    false => "once a watch holds that table, loading the file fails as a whole (EPERM); a saved owned table does not load at all",
                }
            ),
        });
    }
    let blocked = super::reachability::judge(observed, state, &mut findings);
    // Another firewall that stops a grant's flow (see `firewall`).
    findings.extend(super::firewall::findings(
        &observed.firewall,
        &state.grants,
        &observed.ifindexes,
        &super::firewall::Routes {
            lookups: &observed.routes,
            table: &observed.route_table,
        },
    ));
    // Another tool's forwards to loopback the guard lets through (see `forwards`).
    findings.extend(super::forwards::findings(
        &observed.firewall,
        &interfaces,
        &[state.guarded.as_slice(), state.admitted.as_slice()].concat(),
    ));
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));

    Report {
        schema_version: SCHEMA_VERSION,
        all_route_localnet: all.and_then(|r| r.as_ref().ok().copied()),
        default_route_localnet: default.and_then(|r| r.as_ref().ok().copied()),
        interfaces,
        table: TableReport {
            present: observed.table.is_some() || observed.empty_table,
            empty: observed.empty_table,
            expected: expected.is_some(),
            matches_expected: table_ok,
            differences,
            elements_read_back: !observed.elements_vouched,
            protection: observed.protection.clone(),
        },
        interrupted_transaction: state.pending.is_some(),
        findings,
        counters: observed.counters.clone(),
        blocked,
        blocked_total: Vec::new(),
        pending: observed.pending.clone(),
    }
}

/// The finding of one pending spec: info while it waits for something that comes and
/// goes by itself (a pattern's first match, a runtime's bridge, a project that is
/// down), or for less than the grace period; a warning once a spec that cannot work as
/// asked (a pinned address that is gone, a missing interface, a network never seen, a
/// runtime that does not answer) has been pending longer than that.
fn pending_finding(p: &crate::spec::Pending, observed: &Observed, state: &State) -> Finding {
    use crate::spec::PendingKind;
    let spec = state.specs.iter().find(|s| s.label() == p.spec);
    let waits_rightly = match p.kind {
        PendingKind::Missing => spec.is_some_and(|s| s.is_pattern() || s.network.is_some()),
        PendingKind::NoNetwork => observed.served_before.contains(&p.spec),
        PendingKind::Unaddressed
        | PendingKind::RuntimeUnknown
        | PendingKind::Conflict
        | PendingKind::Unconfirmed => false,
    };
    let age = observed.pending_for.get(&p.spec).copied().unwrap_or(0);
    let overdue = !waits_rightly && age >= observed.pending_grace;
    let what = p.what();
    // A policy's grant is corrected in its file (revoking it there is refused); the
    // command line's is revoked.
    let remedy = match spec {
        Some(s) if s.source == crate::spec::Source::Policy => match &s.origin {
            Some(file) => format!("correct it in {file}"),
            None => "correct it in the policy".to_string(),
        },
        _ => "correct it or revoke it".to_string(),
    };
    let cli = spec
        .and_then(|s| s.network.as_ref())
        .map_or("docker", |n| n.runtime.cli());
    let closest = match observed.closest_networks.get(&p.spec) {
        Some(names) if !names.is_empty() => {
            format!("; those that exist, closest first: {}", names.join(", "))
        }
        _ => String::new(),
    };
    Finding {
        severity: match overdue {
            true => Severity::Warning,
            false => Severity::Info,
        },
        code: Code::Pending,
        interface: Some(p.interface.clone()),
        message: match (overdue, p.kind) {
            (false, _) => format!(
                "{what}{closest}; it is served as soon as that changes (while `loopgate watch` runs, or at the next command)"
            ),
            (true, PendingKind::NoNetwork) => format!(
                "{what}, for {age} s: the network does not exist (a typo, or the project is down){closest}; {remedy} (`{cli} network ls`), or bring the project up"
            ),
            (true, _) => format!(
                "{what}, for {age} s: this grant cannot work as asked; {remedy}"
            ),
        },
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
            .map(|f| (f.code.as_str(), f.severity, f.interface.clone()))
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
    fn an_interface_guarded_for_another_tool_is_guarded_and_an_unguarded_one_names_the_remedy() {
        let o = observed(&[
            ("all", Ok(0)),
            ("default", Ok(0)),
            ("br1", Ok(1)),
            ("br2", Ok(1)),
        ]);
        let mut state = empty();
        state.guarded = vec!["br1".into()];
        // The table is as planned (no image expected here means table_ok when absent
        // and none expected; give both as absent).
        let r = assess(&o, &state, None);
        let c = codes(&r);
        assert!(
            c.contains(&("guarded", Severity::Info, Some("br1".into()))),
            "{c:?}"
        );
        assert!(
            c.contains(&("unguarded", Severity::Critical, Some("br2".into()))),
            "{c:?}"
        );
        let f = r.findings.iter().find(|f| f.code == "unguarded").unwrap();
        assert!(f.message.contains("loopgate guard br2"), "{}", f.message);
        let br1 = r.interfaces.iter().find(|i| i.name == "br1").unwrap();
        assert!(br1.guarded && br1.grants.is_empty());
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

    /// Pending is info while it rightly waits or for less than the grace period, and a
    /// warning once a spec that cannot work has waited longer (a typo stays green no
    /// more): one case per kind.
    #[test]
    fn pending_turns_into_a_warning_after_the_grace_period_unless_it_rightly_waits() {
        use crate::kernel::runtime::Runtime;
        use crate::spec::{NetworkSelector, Pending, PendingKind, Source, Spec};
        let spec = |iface: &str, net: Option<&str>| Spec {
            source: Source::Policy,
            origin: None,
            name: None,
            interface: iface.into(),
            network: net.map(|n| NetworkSelector {
                runtime: Runtime::Docker,
                name: n.into(),
            }),
            proto: crate::grant::Proto::Tcp,
            port: 3306,
            to: "127.0.0.1:3306".parse().unwrap(),
            listen: None,
            host_gateway: false,
            allow: vec![],
        };
        let specs = [
            spec("veth*", None),
            spec("", Some("podnet")),
            spec("br0", None),
            spec("", Some("typo")),
            spec("", Some("down")),
            spec("br1", None),
        ];
        let kinds = [
            PendingKind::Missing,     // a pattern without a match yet
            PendingKind::Missing,     // a runtime's bridge not there (yet)
            PendingKind::Missing,     // an interface that is gone
            PendingKind::NoNetwork,   // a network never seen
            PendingKind::NoNetwork,   // a network seen served, now gone
            PendingKind::Unaddressed, // a pinned address that is gone
        ];
        let state = State {
            specs: specs.to_vec(),
            ..empty()
        };
        let mut o = observed(&[("all", Ok(0)), ("default", Ok(0))]);
        o.pending_grace = 60;
        o.pending = specs
            .iter()
            .zip(kinds)
            .map(|(s, kind)| Pending {
                spec: s.label(),
                interface: s.on(),
                reason: "r".into(),
                kind,
                network: s.network.clone(),
            })
            .collect();
        o.served_before.insert(specs[4].label());
        let severities = |o: &Observed| -> Vec<Severity> {
            let r = assess(o, &state, None);
            specs
                .iter()
                .map(|s| {
                    r.findings
                        .iter()
                        .find(|f| f.code == "pending" && f.message.starts_with(&s.label()))
                        .unwrap()
                        .severity
                })
                .collect()
        };
        use Severity::{Info as I, Warning as W};
        // Just seen: all info.
        assert_eq!(severities(&o), vec![I, I, I, I, I, I]);
        o.pending_for = specs.iter().map(|s| (s.label(), 59)).collect();
        assert_eq!(severities(&o), vec![I, I, I, I, I, I]);
        o.pending_for = specs.iter().map(|s| (s.label(), 60)).collect();
        assert_eq!(severities(&o), vec![I, I, W, W, I, W]);
        // A network never seen: it may be down as well as mistyped (what was seen
        // served is forgotten at reboot), with the names that exist; a policy's grant
        // is corrected in its file, never "revoked" (refused for a policy grant).
        o.closest_networks.insert(
            specs[3].label(),
            vec!["typo_default".into(), "other".into()],
        );
        let mut state = state;
        state.specs[3].origin = Some("/etc/loopgate/myproj.yaml".into());
        let r = assess(&o, &state, None);
        let typo = r
            .findings
            .iter()
            .find(|f| {
                f.message
                    .starts_with("docker network typo tcp/3306 is pending")
            })
            .unwrap();
        assert_eq!(
            typo.message,
            "docker network typo tcp/3306 is pending: r, for 60 s: the network does not exist (a typo, or the project is down); those that exist, closest first: typo_default, other; correct it in /etc/loopgate/myproj.yaml (`docker network ls`), or bring the project up"
        );
        assert!(r
            .findings
            .iter()
            .all(|f| !f.message.contains("revoke it") || !f.message.starts_with("docker network")));
    }
}

/// One case per finding code, over observed facts (no root): a healthy host with one
/// grant, changed in one way each. Every case must give its code, the healthy host must
/// not (so the change is what gives it), and a code without a case fails the test.
#[cfg(test)]
mod every_code {
    use super::*;
    use crate::grant::Proto;
    use crate::kernel::firewall::{BaseHook, Chain, Expr, Foreign, Hook, Rule};
    use crate::kernel::host::{IfAddr, RouteLookup};
    use crate::kernel::nft::{planned_image, RuleCounter};
    use crate::state::{Original, STATE_VERSION};
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn grant() -> Grant {
        Grant {
            name: "mysql".into(),
            iface: "br0".into(),
            proto: Proto::Tcp,
            listen: Ipv4Addr::new(192, 0, 2, 1),
            port: 3306,
            to: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 3306),
            allow: vec!["192.0.2.0/25".parse().unwrap()],
            network: None,
        }
    }

    /// The facts of one case: what was observed, what is recorded, and the table the
    /// recorded grants require.
    struct Facts {
        observed: Observed,
        state: State,
        expected: Option<TableImage>,
    }

    /// br0 open behind its intact guard, its target listening, its address and routes
    /// where they belong: only `guarded`.
    fn healthy() -> Facts {
        let grants = vec![grant()];
        let expected = crate::plan::ruleset(&grants).map(|r| planned_image(&r));
        let sample_routes = [1, 2, 126].map(|last| {
            (
                Ipv4Addr::new(192, 0, 2, last),
                RouteLookup::Out("br0".into()),
            )
        });
        Facts {
            observed: Observed {
                sysctls: vec![
                    ("all".into(), Ok(0)),
                    ("default".into(), Ok(0)),
                    ("br0".into(), Ok(1)),
                ],
                ifindexes: [("br0".to_string(), 5)].into(),
                recorded_names: [(5, Some("br0".to_string()))].into(),
                table: expected.clone(),
                protection: "not owned".into(),
                loopback_listeners: vec![Listener {
                    proto: Proto::Tcp,
                    addr: Ipv4Addr::LOCALHOST,
                    port: 3306,
                    device: None,
                }],
                addresses: vec![IfAddr {
                    iface: "br0".into(),
                    addr: Ipv4Addr::new(192, 0, 2, 1),
                    prefix: 24,
                }],
                routes: sample_routes.into_iter().collect(),
                ..Default::default()
            },
            state: State {
                version: STATE_VERSION,
                grants,
                originals: vec![Original {
                    iface: "br0".into(),
                    ifindex: 5,
                    value: 0,
                }],
                ..Default::default()
            },
            expected,
        }
    }

    fn base_chain(hook: Hook, priority: i32, policy_drop: bool, rules: Vec<Rule>) -> Foreign {
        Foreign {
            chains: vec![Chain {
                table: "inet filter".into(),
                name: "chain0".into(),
                base: Some(BaseHook {
                    hook,
                    priority,
                    policy_drop,
                    nat: false,
                }),
                rules,
            }],
            ..Default::default()
        }
    }

    fn case(code: Code) -> Facts {
        let mut f = healthy();
        let o = &mut f.observed;
        let set = |o: &mut Observed, name: &str, r: Reading| {
            o.sysctls.retain(|(n, _)| n != name);
            o.sysctls.push((name.into(), r));
        };
        match code {
            Code::Unguarded => {
                set(o, "br1", Ok(2));
                o.ifindexes.insert("br1".into(), 6);
            }
            Code::AllOpen => set(o, "all", Ok(1)),
            Code::DefaultOpen => set(o, "default", Ok(1)),
            Code::TableTampered => o.table = None,
            Code::TableUnexpected => {
                f.state.grants.clear();
                f.expected = None;
            }
            Code::TableEmpty => o.empty_table = true,
            Code::NftablesConfNamesTable => {
                o.nftables_conf_names_table = Some("/etc/nftables.conf".into())
            }
            Code::SysctlUnreadable => set(o, "br0", Err("gone".into())),
            Code::InterfaceRenamed => {
                o.recorded_names.insert(5, Some("br9".into()));
            }
            Code::GrantInactive => set(o, "br0", Ok(0)),
            Code::Interrupted => f.state.pending = Some(vec![]),
            Code::NotListening => o.loopback_listeners.clear(),
            Code::ListenerBoundToDevice => o.loopback_listeners[0].device = Some("lo".into()),
            // A sample of the allowed network on br0's link is routed elsewhere.
            Code::ReplyRoute => {
                o.routes
                    .insert(Ipv4Addr::new(192, 0, 2, 2), RouteLookup::Out("eth0".into()));
            }
            // The same, off br0's link.
            Code::AllowRoute => {
                o.addresses[0].prefix = 32;
                o.routes
                    .insert(Ipv4Addr::new(192, 0, 2, 2), RouteLookup::Out("eth0".into()));
                o.route_table
                    .push(("192.0.2.0/24".parse().unwrap(), "eth0".into()));
            }
            Code::ListenAddressGone => o.addresses.clear(),
            Code::FirewallDrops => o.firewall = base_chain(Hook::Input, 0, true, vec![]),
            Code::FirewallMayDrop => o.firewall.unreadable = vec!["a legacy table".into()],
            Code::Notrack => {
                let notrack = Rule {
                    handle: 4,
                    exprs: vec![Expr::Notrack],
                };
                o.firewall = base_chain(Hook::Prerouting, -300, false, vec![notrack]);
            }
            Code::NotrackReplies => {
                let notrack = Rule {
                    handle: 4,
                    exprs: vec![Expr::Notrack],
                };
                o.firewall = base_chain(Hook::Output, -300, false, vec![notrack]);
            }
            Code::IptablesLegacy => o.firewall.legacy_tables = vec!["filter".into()],
            // Another table DNATs every packet on br0 to 127.0.0.1:51679.
            Code::ForeignForward => {
                let dnat = Rule {
                    handle: 1,
                    exprs: vec![Expr::Dnat(crate::kernel::dnat::DnatTo {
                        addr: Some(Ipv4Addr::LOCALHOST),
                        port: Some(51679),
                    })],
                };
                o.firewall = base_chain(Hook::Prerouting, -100, false, vec![dnat]);
                o.firewall.chains[0].base.as_mut().unwrap().nat = true;
            }
            Code::Pending => o.pending.push(crate::spec::Pending {
                spec: "br1:80".into(),
                interface: "br1".into(),
                reason: "the interface does not exist now".into(),
                kind: crate::spec::PendingKind::Missing,
                network: None,
            }),
            Code::RuntimeUnanswered => o.unconfirmed.push(crate::spec::Pending {
                spec: "docker network myproj_default tcp/80".into(),
                interface: "br0".into(),
                reason: "in force on br0 as last resolved; docker does not answer: `docker network inspect` did not answer".into(),
                kind: crate::spec::PendingKind::Unconfirmed,
                network: None,
            }),
            Code::Blocked => o.counters.push(RuleCounter {
                chain: "raw_if_br0".into(),
                rule: format!("br0 guard: {}", crate::plan::GUARD_DROPS[0].0),
                packets: 3,
                bytes: 180,
            }),
            // The healthy host itself.
            Code::Guarded => {}
        }
        f
    }

    fn codes_of(f: &Facts) -> Vec<Code> {
        assess(&f.observed, &f.state, f.expected.as_ref())
            .findings
            .iter()
            .map(|f| f.code)
            .collect()
    }

    #[test]
    fn every_finding_code_has_a_case_that_gives_it() {
        let healthy = codes_of(&healthy());
        assert_eq!(healthy, vec![Code::Guarded]);
        for &code in Code::ALL {
            let got = codes_of(&case(code));
            assert!(got.contains(&code), "{code}: gave {got:?}");
            assert!(
                code == Code::Guarded || !healthy.contains(&code),
                "{code}: the healthy host gives it too"
            );
        }
    }
}
