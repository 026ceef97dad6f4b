//! The conntrack entries a change must delete: flows of revoked grants, flows of new or
//! retargeted grants made before their DNAT existed, and, when the guard was lost,
//! flows that reached loopback and flows of every grant made while its DNAT was gone
//! (a repair); flows of grants that stay are kept.

use super::Change;
use crate::grant::Grant;
use crate::input::loopback;
use crate::kernel::conntrack;
use crate::kernel::seam::Kernel;
use anyhow::Result;
use std::collections::BTreeMap;

pub(super) fn cut_flows<K: Kernel>(kernel: &K, change: &Change) -> Result<usize> {
    let nothing_to_cut = change.revoked().is_empty() && fresh(change).is_empty();
    if (nothing_to_cut && !change.guard_lost) || kernel.conntrack_count() == Some(0) {
        return Ok(0);
    }
    kernel.delete_flows(&doomed(change, kernel.flows()?))
}

/// Grants whose clients may hold conntrack entries made before the rule that now DNATs
/// them was in place (NAT is bound once, at a flow's first packet), which would never
/// pick the grant up: grants that are new, or whose target or allowed sources changed,
/// and, when the change repairs a lost guard (loopgate's table was deleted, flushed or
/// edited: `nft -f` of a file with `flush ruleset`), every grant, because any of their
/// flows may have begun while the DNAT rule was missing.
pub(super) fn fresh(change: &Change) -> Vec<&Grant> {
    // The old grants by key: a search of them per new grant made a new interface's
    // pass quadratic in the number of grants (6 % of watch's reaction at 1,000).
    let mut old: BTreeMap<_, Vec<&Grant>> = BTreeMap::new();
    for o in &change.old.grants {
        old.entry(o.sort_key()).or_default().push(o);
    }
    change
        .grants
        .iter()
        .filter(|g| {
            change.guard_lost
                || !old
                    .get(&g.sort_key())
                    .is_some_and(|os| os.iter().any(|o| o.to == g.to && o.allow == g.allow))
        })
        .collect()
}

/// The entries the change ends, out of `flows` (the namespace's conntrack table):
/// - flows of a revoked grant (gone, re-targeted, or the source no longer allowed);
/// - flows that reached 127.0.0.0/8 from outside while the guard was lost;
/// - for a [`fresh`] grant (every grant after a lost guard), flows from its allowed sources to its publication that are
///   not DNATed to where a grant on that publication sends them: stale entries made
///   before the rule (without NAT), or DNATed to an earlier target. Their next packet
///   makes a new entry, which the rule DNATs.
pub(super) fn doomed(change: &Change, flows: Vec<conntrack::Flow>) -> Vec<conntrack::Flow> {
    let revoked = change.revoked();
    let fresh = fresh(change);
    let lo = loopback();
    let same_publication =
        |a: &Grant, b: &Grant| a.listen == b.listen && a.proto == b.proto && a.port == b.port;
    flows
        .into_iter()
        .filter(|f| {
            // Reached loopback from outside while nothing guarded it.
            let window = change.guard_lost && lo.contains(f.dst) && !lo.contains(f.src);
            let of_revoked = revoked.iter().any(|(old, new)| {
                conntrack::matches(f, old.listen, old.proto, old.port)
                    && match new {
                        None => true,
                        // Re-targeted: a flow already DNATed to the new target (made
                        // since the new rule) is the grant's, not a stale one.
                        Some(n) => {
                            !n.allow.iter().any(|net| net.contains(f.src))
                                || (n.to != old.to && f.dnat != Some(n.to))
                        }
                    }
            });
            let stale = fresh.iter().any(|g| {
                conntrack::matches(f, g.listen, g.proto, g.port)
                    && g.allow.iter().any(|net| net.contains(f.src))
                    // Kept when DNATed where this publication sends it: the same
                    // address may be published on two interfaces to two targets, and
                    // conntrack does not record the interface.
                    && !f.dnat.is_some_and(|to| {
                        change
                            .grants
                            .iter()
                            .any(|o| same_publication(o, g) && o.to == to)
                    })
            });
            window || of_revoked || stale
        })
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::grant::Proto;
    use crate::state::{State, STATE_VERSION};
    use crate::txn::Target;
    use std::collections::BTreeMap;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn grant(port: u16, to: u16) -> Grant {
        Grant {
            name: format!("br0-{port}"),
            iface: "br0".into(),
            proto: Proto::Udp,
            listen: Ipv4Addr::new(192, 0, 2, 1),
            port,
            to: SocketAddrV4::new(Ipv4Addr::LOCALHOST, to),
            allow: vec!["192.0.2.0/25".parse().unwrap()],
            network: None,
        }
    }

    /// The change from `old` to `new` grants, on a host whose table is `old`'s.
    fn change(old: Vec<Grant>, new: Vec<Grant>) -> Change {
        let table = crate::plan::ruleset(&old).map(|r| crate::kernel::nft::planned_image(&r));
        change_over(old, new, table.as_ref())
    }

    /// The change from `old` to `new` grants, on a host whose table is `table`.
    fn change_over(
        old: Vec<Grant>,
        new: Vec<Grant>,
        table: Option<&crate::kernel::nft::TableImage>,
    ) -> Change {
        let old = State {
            version: STATE_VERSION,
            grants: old,
            ..Default::default()
        };
        let target = Target {
            grants: new,
            ..Target::recorded(&old)
        };
        Change::compute(old, target, &BTreeMap::new(), table, None)
    }

    fn flow(src: [u8; 4], sport: u16, dport: u16, dnat: Option<u16>) -> conntrack::Flow {
        conntrack::Flow {
            src: Ipv4Addr::from(src),
            dst: Ipv4Addr::new(192, 0, 2, 1),
            proto: 17,
            sport,
            dport,
            zone: 0,
            dnat: dnat.map(|p| SocketAddrV4::new(Ipv4Addr::LOCALHOST, p)),
        }
    }

    const CLIENT: [u8; 4] = [192, 0, 2, 10];
    const OUTSIDER: [u8; 4] = [192, 0, 2, 200];

    #[test]
    fn a_new_grant_cuts_its_allowed_sources_entries_made_without_its_dnat() {
        let stale = flow(CLIENT, 40000, 53, None);
        let dnated = flow(CLIENT, 40001, 53, Some(5353));
        let elsewhere = flow(CLIENT, 40002, 54, None); // another port
        let outsider = flow(OUTSIDER, 40003, 53, None); // not allowed: not the grant's
        let tcp = conntrack::Flow { proto: 6, ..stale }; // another protocol
        let all = vec![stale, dnated, elsewhere, outsider, tcp];
        let c = change(vec![], vec![grant(53, 5353)]);
        assert_eq!(doomed(&c, all.clone()), vec![stale]);
        // Nothing new: nothing cut, and no dump is needed.
        let same = change(vec![grant(53, 5353)], vec![grant(53, 5353)]);
        assert!(fresh(&same).is_empty());
        assert_eq!(doomed(&same, all), vec![]);
    }

    #[test]
    fn among_many_grants_only_the_new_and_changed_ones_are_fresh() {
        // The same port on two interfaces is two grants: the key includes the interface.
        let on = |iface: &str, port: u16, to: u16| Grant {
            iface: iface.into(),
            ..grant(port, to)
        };
        let old: Vec<Grant> = (0..200).map(|p| on("br0", 1000 + p, 2000 + p)).collect();
        let mut new = old.clone();
        new[7].to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9999);
        new[9].allow = vec!["192.0.2.0/24".parse().unwrap()];
        new.push(on("br1", 1000, 2000));
        let c = change(old, new);
        let fresh: Vec<(&str, u16)> = fresh(&c)
            .iter()
            .map(|g| (g.iface.as_str(), g.port))
            .collect();
        assert_eq!(fresh, vec![("br0", 1007), ("br0", 1009), ("br1", 1000)]);
    }

    #[test]
    fn a_retargeted_grant_cuts_entries_not_dnated_to_its_new_target() {
        let stale = flow(CLIENT, 40000, 53, None);
        let old_target = flow(CLIENT, 40001, 53, Some(5353));
        let new_target = flow(CLIENT, 40002, 53, Some(5354));
        let c = change(vec![grant(53, 5353)], vec![grant(53, 5354)]);
        assert_eq!(
            doomed(&c, vec![stale, old_target, new_target]),
            vec![stale, old_target]
        );
    }

    #[test]
    fn a_widened_allow_list_cuts_the_newly_allowed_sources_stale_entries() {
        let mut wide = grant(53, 5353);
        wide.allow = vec!["192.0.2.0/24".parse().unwrap()];
        let outsider_stale = flow(OUTSIDER, 40000, 53, None);
        let client_dnated = flow(CLIENT, 40001, 53, Some(5353));
        let c = change(vec![grant(53, 5353)], vec![wide]);
        assert_eq!(
            doomed(&c, vec![outsider_stale, client_dnated]),
            vec![outsider_stale]
        );
    }

    #[test]
    fn an_entry_dnated_by_the_same_address_on_another_interface_is_kept() {
        let mut other = grant(53, 6000);
        other.iface = "br1".into();
        let via_br1 = flow(CLIENT, 40000, 53, Some(6000));
        let stale = flow(CLIENT, 40001, 53, None);
        let c = change(vec![other.clone()], vec![other, grant(53, 5353)]);
        assert_eq!(doomed(&c, vec![via_br1, stale]), vec![stale]);
    }

    /// A repair: loopgate's table was deleted (`nft -f` of a file that starts with
    /// `flush ruleset`) and is put back with the same grants. A flow that began while
    /// the DNAT rule was missing holds an entry without NAT and never reaches the
    /// service; it is cut like a new grant's. Flows DNATed by the rule are kept.
    #[test]
    fn a_repair_cuts_entries_made_while_the_table_was_missing() {
        let stale = flow(CLIENT, 40000, 53, None);
        let dnated = flow(CLIENT, 40001, 53, Some(5353));
        let outsider = flow(OUTSIDER, 40002, 53, None);
        let g = vec![grant(53, 5353)];
        let repair = change_over(g.clone(), g.clone(), None);
        assert!(repair.guard_lost);
        assert_eq!(doomed(&repair, vec![stale, dnated, outsider]), vec![stale]);
        // The table in place: nothing was missing, nothing is cut.
        let intact = change(g.clone(), g);
        assert!(!intact.guard_lost);
        assert_eq!(doomed(&intact, vec![stale, dnated, outsider]), vec![]);
    }
}
