//! `Change::compute` against hand-built states and devices: originals, renames,
//! reused ifindexes, lost guards, held-back devices and the journal.

use super::execute::journal_originals;
use super::*;
use crate::grant::Proto;
use crate::state::STATE_VERSION;
use std::net::{Ipv4Addr, SocketAddrV4};

fn grant(iface: &str, port: u16) -> Grant {
    Grant {
        name: format!("{iface}-{port}"),
        iface: iface.into(),
        proto: Proto::Tcp,
        listen: Ipv4Addr::new(192, 0, 2, 1),
        port,
        to: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
        allow: vec!["192.0.2.0/25".parse().unwrap()],
        network: None,
    }
}

/// The change from `old` to `grants`, everything else as `old` records it.
fn compute(
    old: State,
    grants: Vec<Grant>,
    devices: &BTreeMap<u32, Device>,
    kernel_table: Option<&nft::TableImage>,
) -> Change {
    let target = Target {
        grants,
        ..Target::recorded(&old)
    };
    Change::compute(old, target, devices, kernel_table, None)
}

fn dev(ifindex: u32, name: &str, value: i32) -> (u32, Device) {
    (
        ifindex,
        Device {
            ifindex,
            name: name.into(),
            route_localnet: value,
            ready: true,
        },
    )
}

fn rec(iface: &str, ifindex: u32, value: i32) -> Original {
    Original {
        iface: iface.into(),
        ifindex,
        value,
    }
}

fn state(grants: Vec<Grant>, originals: Vec<Original>) -> State {
    State {
        version: STATE_VERSION,
        grants,
        originals,
        pending: None,
        vouch: None,
        writers: vec![],
        specs: vec![],
        guards: vec![],
        guarded: vec![],
        admitted: vec![],
    }
}

/// The image of the table `grants` need, as a kernel holding it would show it.
fn table_of(grants: &[Grant]) -> Option<nft::TableImage> {
    plan::ruleset(grants).as_ref().map(nft::planned_image)
}

fn writes(changes: &[SysctlChange]) -> Vec<(String, u32, i32, i32)> {
    changes
        .iter()
        .map(|c| (c.iface.clone(), c.ifindex, c.from, c.to))
        .collect()
}

#[test]
fn an_original_of_an_earlier_copy_of_the_device_is_never_restored() {
    let g = vec![grant("br0", 8080)];
    // The runtime's own 1 was recorded on ifindex 5; br0 was re-created as 9 at 0.
    let old = state(g.clone(), vec![rec("br0", 5, 1)]);
    let devices = BTreeMap::from([dev(9, "br0", 0)]);
    let expose = compute(old, g.clone(), &devices, table_of(&g).as_ref());
    assert_eq!(expose.originals, vec![rec("br0", 9, 0)]);
    assert_eq!(writes(&expose.raise), vec![("br0".into(), 9, 0, 1)]);
    // Revoke then closes what loopgate opened on this copy.
    let after = state(g.clone(), expose.originals.clone());
    let devices = BTreeMap::from([dev(9, "br0", 1)]);
    let revoke = compute(after, vec![], &devices, table_of(&g).as_ref());
    assert_eq!(writes(&revoke.lower), vec![("br0".into(), 9, 1, 0)]);
    assert!(revoke.originals.is_empty());
}

/// netavark re-creates its bridge, sets its own route_localnet=1, then addresses
/// it. Seen before the address, the bridge is guarded but not opened; once
/// addressed, the runtime's 1 is what is recorded, and revoke leaves it.
#[test]
fn a_device_first_seen_without_an_address_is_guarded_not_opened() {
    let g = vec![grant("br0", 8080)];
    let bare = |value| {
        let (i, mut d) = dev(9, "br0", value);
        d.ready = false;
        BTreeMap::from([(i, d)])
    };
    let early = compute(state(vec![], vec![]), g.clone(), &bare(0), None);
    assert!(early.raise.is_empty() && early.lower.is_empty());
    assert!(early.originals.is_empty());
    assert!(early.ruleset.is_some(), "its guard is in the table");
    // The runtime opened it, then addressed it.
    let after = state(g.clone(), vec![]);
    let devices = BTreeMap::from([dev(9, "br0", 1)]);
    let later = compute(after, g.clone(), &devices, table_of(&g).as_ref());
    assert!(later.raise.is_empty());
    assert_eq!(later.originals, vec![rec("br0", 9, 1)]);
    let old = state(g.clone(), later.originals.clone());
    let revoke = compute(old, vec![], &devices, table_of(&g).as_ref());
    assert!(revoke.lower.is_empty() && revoke.raise.is_empty());
    // A device loopgate opened that loses its address stays open and recorded.
    let old = state(g.clone(), vec![rec("br0", 9, 0)]);
    let kept = compute(old, g.clone(), &bare(1), table_of(&g).as_ref());
    assert!(kept.lower.is_empty() && kept.raise.is_empty());
    assert_eq!(kept.originals, vec![rec("br0", 9, 0)]);
}

#[test]
fn a_runtime_that_re_creates_its_device_open_keeps_its_value_on_revoke() {
    let g = vec![grant("br0", 8080)];
    // Recorded 0 on ifindex 5; the runtime re-created br0 (ifindex 9) with its own 1.
    let old = state(g.clone(), vec![rec("br0", 5, 0)]);
    let devices = BTreeMap::from([dev(9, "br0", 1)]);
    let revoke = compute(old, vec![], &devices, table_of(&g).as_ref());
    assert!(revoke.lower.is_empty() && revoke.raise.is_empty());
    assert!(revoke.originals.is_empty());
}

#[test]
fn every_non_zero_value_is_open_and_the_exact_original_comes_back() {
    let g = vec![grant("br0", 8080)];
    for value in [2, 3, -1, 256, i32::MIN] {
        // Already open: nothing to raise, the value is the original.
        let devices = BTreeMap::from([dev(4, "br0", value)]);
        let expose = compute(state(vec![], vec![]), g.clone(), &devices, None);
        assert!(
            expose.raise.is_empty() && expose.lower.is_empty(),
            "{value}"
        );
        assert_eq!(expose.originals, vec![rec("br0", 4, value)]);
        // Closed by hand since: reopened with the recorded value, not with 1.
        let closed = BTreeMap::from([dev(4, "br0", 0)]);
        let old = state(g.clone(), expose.originals.clone());
        let repair = compute(old, g.clone(), &closed, table_of(&g).as_ref());
        assert_eq!(writes(&repair.raise), vec![("br0".into(), 4, 0, value)]);
        // Revoked after loopgate raised it from 0 to 1: back to exactly 0; with a
        // foreign value recorded and a different one now: back to the recorded one.
        let old = state(g.clone(), vec![rec("br0", 4, value)]);
        let now = BTreeMap::from([dev(4, "br0", 1)]);
        let revoke = compute(old, vec![], &now, table_of(&g).as_ref());
        assert_eq!(writes(&revoke.raise), vec![("br0".into(), 4, 1, value)]);
    }
}

#[test]
fn a_renamed_device_goes_back_to_its_original_under_its_new_name() {
    let g = vec![grant("br0", 8080)];
    let old = state(g.clone(), vec![rec("br0", 5, 0)]);
    let devices = BTreeMap::from([dev(5, "br9", 1)]);
    let change = compute(old, g.clone(), &devices, table_of(&g).as_ref());
    assert_eq!(
        change.renamed,
        vec![Renamed {
            was: "br0".into(),
            now: "br9".into(),
            ifindex: 5
        }]
    );
    assert_eq!(writes(&change.lower), vec![("br9".into(), 5, 1, 0)]);
    assert!(change.originals.is_empty() && change.raise.is_empty());
}

#[test]
fn a_device_that_reuses_a_recorded_ifindex_is_never_opened() {
    let g = vec![grant("br0", 8080)];
    // br0 (ifindex 5, the runtime's own 1) is gone; a pod's veth moved in got 5.
    let old = state(g.clone(), vec![rec("br0", 5, 1)]);
    let devices = BTreeMap::from([dev(5, "veth9a8b7c", 0)]);
    for grants in [g.clone(), vec![]] {
        let change = compute(old.clone(), grants, &devices, table_of(&g).as_ref());
        assert!(
            change.lower.is_empty() && change.raise.is_empty(),
            "{:?}",
            change.describe()
        );
        assert!(change.originals.is_empty());
        assert_eq!(change.renamed.len(), 1);
    }
    // A device renamed TO a managed name gets a fresh record of its own value.
    let devices = BTreeMap::from([dev(5, "br0x", 0), dev(9, "br1", 2)]);
    let old = state(vec![grant("br1", 1)], vec![rec("br0", 9, 1)]);
    let change = compute(old, vec![grant("br1", 1)], &devices, None);
    assert_eq!(change.originals, vec![rec("br1", 9, 2)]);
}

#[test]
fn a_lost_guard_closes_every_open_managed_interface_before_the_table() {
    let g = vec![grant("br0", 8080), grant("br1", 8081)];
    let mut old = state(g.clone(), vec![rec("br0", 5, 0), rec("br1", 6, 3)]);
    // br1 was open before loopgate (3): its guard admits other tables' forwards.
    old.admitted = vec!["br1".into()];
    let devices = BTreeMap::from([dev(5, "br0", 1), dev(6, "br1", 3)]);
    // Flushed (no table) and dormant or edited (another table) alike.
    let other = table_of(&g[..1]);
    for kernel in [None, other.as_ref()] {
        let change = compute(old.clone(), g.clone(), &devices, kernel);
        assert!(change.guard_lost);
        assert_eq!(
            writes(&change.lower),
            vec![("br0".into(), 5, 1, 0), ("br1".into(), 6, 3, 0)]
        );
        assert_eq!(
            writes(&change.raise),
            vec![("br0".into(), 5, 0, 1), ("br1".into(), 6, 0, 3)]
        );
    }
    // Intact: nothing to do.
    let committed = plan::ruleset_admitting(&g, &[], &old.admitted).map(|r| nft::planned_image(&r));
    let intact = compute(old, g.clone(), &devices, committed.as_ref());
    assert!(
        !intact.guard_lost && intact.is_noop(),
        "{:?}",
        intact.describe()
    );
}

/// After an upgrade the kernel holds the table an earlier loopgate wrote for the
/// committed grants, under positional names: rightful, so nothing is closed; it is
/// rewritten whole (not in place) under the new names. A positional table of other
/// grants is still a lost guard.
#[test]
fn a_table_an_earlier_version_wrote_is_rewritten_without_closing_anything() {
    let g = vec![grant("br0", 8080), grant("br1", 8081)];
    let mut old = state(g.clone(), vec![rec("br0", 5, 0), rec("br1", 6, 3)]);
    old.admitted = vec!["br1".into()];
    old.guarded = vec!["br2".into()];
    let devices = BTreeMap::from([dev(5, "br0", 1), dev(6, "br1", 3)]);
    let (guarded, admitted) = (old.guarded.clone(), old.admitted.clone());
    let legacy = |gs: &[Grant]| {
        plan::legacy_ruleset_admitting(gs, &guarded, &admitted).map(|r| nft::planned_image(&r))
    };
    let upgrade = compute(old.clone(), g.clone(), &devices, legacy(&g).as_ref());
    assert!(!upgrade.guard_lost && !upgrade.table_matches);
    assert!(upgrade.base.is_none(), "rewritten whole");
    assert!(upgrade.lower.is_empty() && upgrade.raise.is_empty());
    assert_ne!(
        upgrade.want.as_deref(),
        legacy(&g).as_ref(),
        "under the new names"
    );
    // A vouch an earlier version recorded never vouches for the new plan: the element
    // digest covers set names and the maps' jumps, so the table is read, not assumed.
    assert_ne!(
        upgrade.want.as_ref().and_then(|i| i.elements.digest()),
        legacy(&g).and_then(|i| i.elements.digest())
    );
    // Also with a grant added in the same change.
    let more = vec![grant("br0", 8080), grant("br0", 9090), grant("br1", 8081)];
    let add = compute(old.clone(), more, &devices, legacy(&g).as_ref());
    assert!(
        !add.guard_lost && add.lower.is_empty(),
        "{:?}",
        add.describe()
    );
    // The control: another grant list's positional table is not this one's.
    let lost = compute(old, g.clone(), &devices, legacy(&g[..1]).as_ref());
    assert!(lost.guard_lost);
    assert_eq!(lost.lower.len(), 2);
}

#[test]
fn an_interrupted_change_is_rolled_back_and_its_interface_closed_first() {
    let committed = vec![grant("br0", 8080)];
    let pending = vec![grant("br0", 8080), grant("br1", 9090)];
    // Crashed after raising br1 (ifindex 7), before committing.
    let mut old = state(committed.clone(), vec![rec("br0", 5, 0), rec("br1", 7, 0)]);
    old.pending = Some(pending.clone());
    let devices = BTreeMap::from([dev(5, "br0", 1), dev(7, "br1", 1)]);
    let change = compute(
        old,
        committed.clone(),
        &devices,
        table_of(&pending).as_ref(),
    );
    // The table is the pending one: not tampered, so br0 stays open throughout.
    assert!(!change.guard_lost && !change.table_matches);
    assert_eq!(writes(&change.lower), vec![("br1".into(), 7, 1, 0)]);
    assert!(change.raise.is_empty());
    assert_eq!(change.originals, vec![rec("br0", 5, 0)]);
}

#[test]
fn a_missing_interface_keeps_its_grant_and_drops_the_dead_record() {
    let g = vec![grant("br0", 8080)];
    let old = state(g.clone(), vec![rec("br0", 5, 0)]);
    let change = compute(old, g.clone(), &BTreeMap::new(), table_of(&g).as_ref());
    assert!(change.lower.is_empty() && change.raise.is_empty());
    assert!(change.originals.is_empty());
    assert_eq!(change.grants, g);
}

/// Everything the target says is recorded, and a device held back is guarded but
/// not opened unless loopgate opened it before.
#[test]
fn the_target_is_what_the_change_records_and_held_back_devices_stay_closed() {
    let g = vec![grant("br0", 8080), grant("br1", 9090)];
    let old = state(vec![grant("br1", 9090)], vec![rec("br1", 7, 0)]);
    let devices = BTreeMap::from([dev(5, "br0", 0), dev(7, "br1", 1)]);
    // The kernel holds the table the committed grant plans: nothing was tampered.
    let committed = table_of(&[grant("br1", 9090)]);
    let target = Target {
        grants: g.clone(),
        guarded: vec!["br2".into()],
        specs: g
            .iter()
            .map(|g| crate::spec::Spec::of_grant(g, crate::spec::Source::Cli))
            .collect(),
        guards: vec![crate::spec::GuardSpec {
            source: crate::spec::Source::Cli,
            interface: "br2".into(),
        }],
        held_back: ["br0".to_string(), "br1".to_string()].into(),
    };
    let change = Change::compute(old, target.clone(), &devices, committed.as_ref(), None);
    assert_eq!(change.grants, g);
    assert_eq!(
        (&change.guarded, &change.specs, &change.guards),
        (&target.guarded, &target.specs, &target.guards)
    );
    // br0 is new and held back: guarded (its grant planned) but left closed; br1
    // was opened by loopgate before and stays open.
    assert!(
        change.raise.is_empty() && change.lower.is_empty(),
        "{:?}",
        change.describe()
    );
    assert_eq!(change.originals, vec![rec("br1", 7, 0)]);
    assert!(!change.devices[&5].ready);
    let ruleset = change.ruleset.as_ref().expect("a table");
    assert!(ruleset.to_nft().contains("br0") && ruleset.to_nft().contains("br2"));
    // Not held back: br0 opens.
    let old = state(vec![grant("br1", 9090)], vec![rec("br1", 7, 0)]);
    let open = Change::compute(
        old,
        Target {
            held_back: BTreeSet::new(),
            ..target
        },
        &devices,
        committed.as_ref(),
        None,
    );
    assert_eq!(writes(&open.raise), vec![("br0".into(), 5, 0, 1)]);
}

#[test]
fn the_journal_keeps_every_record_a_change_may_touch() {
    let g = vec![grant("br0", 8080)];
    let old = state(vec![], vec![rec("br1", 7, 2)]);
    let devices = BTreeMap::from([dev(5, "br0", 0), dev(7, "br1", 1)]);
    let change = compute(old, g, &devices, None);
    assert_eq!(
        journal_originals(&change),
        vec![rec("br0", 5, 0), rec("br1", 7, 2)]
    );
}

#[test]
fn only_interfaces_open_before_loopgate_admit_other_tables_forwards() {
    // br0: loopgate opened it (recorded 0, now 1); br1: open before loopgate (recorded
    // 2); br2: seen now for the first time, opened by its owner (1); br3: new, closed.
    let g = vec![
        grant("br0", 1),
        grant("br1", 2),
        grant("br2", 3),
        grant("br3", 4),
    ];
    let old = state(g[..2].to_vec(), vec![rec("br0", 5, 0), rec("br1", 6, 2)]);
    let devices = BTreeMap::from([
        dev(5, "br0", 1),
        dev(6, "br1", 2),
        dev(7, "br2", 1),
        dev(8, "br3", 0),
    ]);
    let change = compute(old.clone(), g.clone(), &devices, None);
    assert_eq!(change.admitted, vec!["br1".to_string(), "br2".to_string()]);
    assert!(change.guarded.is_empty(), "no guard of their own");
    // conf.all open: every interface was open before loopgate.
    let target = Target {
        grants: g,
        ..Target::recorded(&old)
    };
    let all = Change::compute_with_all(old, target, &devices, None, None, true);
    assert_eq!(all.admitted, ["br0", "br1", "br2", "br3"]);
}
