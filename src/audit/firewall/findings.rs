//! The verdicts as audit findings (`firewall-drops`, `firewall-may-drop`, `notrack`,
//! `iptables-legacy`) with the remedy for nft, ufw and firewalld, and as the warnings
//! `expose` prints.

use super::flow::{evaluate, flows, Flow, Routes};
use super::{Stop, Verdict};
use crate::audit::{Code, Finding, Severity};
use crate::grant::Grant;
use crate::kernel::firewall::{Foreign, Hook};
use ipnetwork::Ipv4Network;
use std::net::Ipv4Addr;

/// The findings for `grants` against the other firewalls of the host: for each grant,
/// the first stop on its flow (see [`evaluate`]), as `firewall-drops`,
/// `firewall-may-drop` or `notrack` (warnings), and the iptables-legacy tables that are
/// loaded, as info, when they stop nothing seen.
pub fn findings(
    foreign: &Foreign,
    grants: &[Grant],
    ifindexes: &std::collections::BTreeMap<String, u32>,
    routes: &Routes,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for g in grants {
        let flows = flows(
            g,
            ifindexes.get(&g.iface).copied(),
            foreign.plain_routing,
            routes,
        );
        // From any source first: a known source only prunes paths, so what passes from
        // any source passes from each allowed network, and large allow lists cost one
        // evaluation in the common case.
        let any = flows.first().map(|f| Flow {
            src: Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0 is valid"),
            route_back: Default::default(),
            ..f.clone()
        });
        if any.is_none_or(|f| evaluate(foreign, &f) == Verdict::Passes) {
            continue;
        }
        let verdict = flows
            .iter()
            .map(|f| evaluate(foreign, f))
            .find(|v| *v != Verdict::Passes)
            .unwrap_or(Verdict::Passes);
        let flow = format!(
            "{}:{}/{} on {} (DNATed to {})",
            g.listen, g.port, g.proto, g.iface, g.to
        );
        let finding = match verdict {
            Verdict::Passes => continue,
            Verdict::Drops {
                table,
                chain,
                rule,
                stop,
            } => {
                let by = match rule {
                    Some(r) => format!("{r} ({})", stop.words()),
                    None => "its policy drop".to_string(),
                };
                let at_output = foreign
                    .chains
                    .iter()
                    .find(|c| c.table == table && c.name == chain)
                    .and_then(|c| c.base.as_ref())
                    .is_some_and(|b| b.hook == Hook::Output);
                let (code, what) = match stop {
                    Stop::Notrack if at_output => (
                        Code::NotrackReplies,
                        "marks its replies untracked before conntrack, so their source is never translated back to the listen address and the client drops them",
                    ),
                    Stop::Notrack => (
                        Code::Notrack,
                        "marks it untracked before conntrack, so loopgate's DNAT never happens and the client gets no answer",
                    ),
                    _ => (
                        Code::FirewallDrops,
                        "drops it: loopgate's accept cannot override another table's drop, and the client times out",
                    ),
                };
                Finding {
                    severity: Severity::Warning,
                    code,
                    interface: Some(g.iface.clone()),
                    message: format!(
                        "grant {} ({flow}) cannot work: table {table} chain {chain} {what}; decided by {by}; {}",
                        g.name,
                        super::remedy::remedies(foreign, g, &table, &chain)
                    ),
                }
            }
            Verdict::MayDrop {
                table,
                chain,
                why,
                stop,
            } => Finding {
                severity: Severity::Warning,
                code: if stop == Some(Stop::Notrack) {
                    Code::Notrack
                } else {
                    Code::FirewallMayDrop
                },
                interface: Some(g.iface.clone()),
                message: format!(
                    "grant {} ({flow}) may not work: table {table} chain {chain} may {} it: {why}; if it does, {}",
                    g.name,
                    if stop == Some(Stop::Notrack) {
                        "mark untracked (no DNAT)"
                    } else {
                        "drop"
                    },
                    super::remedy::remedies(foreign, g, &table, &chain)
                ),
            },
        };
        out.push(finding);
    }
    if !foreign.legacy_tables.is_empty() && !grants.is_empty() {
        let input = foreign
            .chains
            .iter()
            .find(|c| c.table == "iptables-legacy filter" && c.name == "INPUT")
            .and_then(|c| c.base.as_ref())
            .map_or("INPUT not read".to_string(), |b| {
                format!(
                    "INPUT policy {}",
                    if b.policy_drop { "DROP" } else { "ACCEPT" }
                )
            });
        out.push(Finding {
            severity: Severity::Info,
            code: Code::IptablesLegacy,
            interface: None,
            message: format!(
                "iptables-legacy tables are loaded: {} ({input}); nft does not list them, audit read them through the legacy interface",
                foreign.legacy_tables.join(", ")
            ),
        });
    }
    out
}

/// The warnings `expose` prints: the findings' messages.
pub fn warnings(
    foreign: &Foreign,
    grants: &[Grant],
    ifindexes: &std::collections::BTreeMap<String, u32>,
    routes: &Routes,
) -> Vec<String> {
    findings(foreign, grants, ifindexes, routes)
        .into_iter()
        .filter(|f| f.severity >= Severity::Warning)
        .map(|f| f.message)
        .collect()
}
