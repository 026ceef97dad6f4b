//! The engine over the fake kernel: every failure at every step, the invariant checked
//! after every mutation, including those of the rollback.

use super::*;
use crate::grant::Proto;
use crate::kernel::fake::{Fake, FakeTable, TempStore};
use crate::kernel::{conntrack, sysctl};
use crate::state::Store;
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

/// Runs one converge from what `store` holds to `grants` over `kernel`.
fn converge(kernel: &Fake, store: &Store, grants: Vec<Grant>) -> Result<Change> {
    let old = store.load()?;
    let target = Target {
        grants,
        ..Target::recorded(&old)
    };
    let (change, snapshot) = observe_and_compute(kernel, old, target)?;
    execute(kernel, store, &change, &snapshot)?;
    Ok(change)
}

/// Every moment: an open device is guarded by the table of that moment.
fn assert_never_open_without_guard(kernel: &Fake, context: &str) {
    for m in kernel.history() {
        for d in m.devices.values() {
            let guarded = m.table.as_ref().is_some_and(|t| t.guards.contains(&d.name));
            assert!(
                !sysctl::is_open(d.route_localnet) || guarded,
                "{context}: after `{}`, {}={} without a guard; history: {:?}",
                m.what,
                d.name,
                d.route_localnet,
                kernel.history().iter().map(|m| &m.what).collect::<Vec<_>>()
            );
        }
    }
}

/// Failures of the steps every scenario takes. `restore` runs only in a rollback,
/// so it is injected together with a later failure: the batch committed but its
/// reply was lost (`apply-reply`), or the last step (`delete`). `probe` is not
/// here: removing the table (revoke) probes nothing.
const COMMON: &[&[&str]] = &[
    &["read"],
    &["apply"],
    &["apply-reply"],
    &["flows"],
    &["delete"],
    &["apply-reply", "restore"],
    &["delete", "restore"],
];

/// What replaces [`COMMON`]'s table failures when a scenario changes the table in
/// place (the kernel held the committed plan): the in-place batch refused (`change`)
/// or committed with its reply lost (`change-reply`) falls back to a whole rewrite,
/// which then fails as in [`COMMON`]; or the read back of what the in-place batch
/// wrote fails (`read-chains`). Every cell ends as the facts were before:
/// rollback restores the table byte for byte even over an in-place batch that
/// committed.
const IN_PLACE: &[&[&str]] = &[
    &["change", "apply"],
    &["change", "apply-reply"],
    &["change-reply", "apply"],
    &["change-reply", "apply-reply"],
    &["change", "apply-reply", "restore"],
    &["change-reply", "apply", "restore"],
    &["read-chains"],
];

/// A scenario: its name, the devices as (ifindex, name, route_localnet), the grants
/// before and after, whether the change is made in place, and the failures it reaches
/// besides [`COMMON`] (or, in place, [`IN_PLACE`]): `probe` when
/// it installs a table, each forward write, and each undo write of a rollback that
/// reopens (injected with `delete`, the last step, so that every undo runs). A
/// failed undo that closes has its own test:
/// `a_failed_closing_undo_leaves_the_device_behind_its_new_guard`.
struct Scenario {
    name: &'static str,
    devices: Vec<(u32, &'static str, i32)>,
    before: Vec<Grant>,
    after: Vec<Grant>,
    in_place: bool,
    writes: Vec<Vec<&'static str>>,
}

impl Scenario {
    /// Every cell of the failure matrix this scenario runs.
    fn failures(&self) -> Vec<Vec<&'static str>> {
        let table = |f: &&[&str]| f.iter().any(|x| x.starts_with("apply"));
        let common = COMMON.iter().filter(|f| !(self.in_place && table(f)));
        let in_place = IN_PLACE.iter().filter(|_| self.in_place);
        common
            .chain(in_place)
            .map(|f| f.to_vec())
            .chain(self.writes.iter().cloned())
            .collect()
    }
}

fn scenarios() -> Vec<Scenario> {
    let devices = vec![(5, "br0", 0), (6, "br1", 0)];
    vec![
        Scenario {
            name: "expose",
            devices: devices.clone(),
            before: vec![],
            after: vec![grant("br0", 3306)],
            in_place: false,
            writes: vec![vec!["probe"], vec!["write:br0:1"]],
        },
        Scenario {
            name: "revoke",
            devices: devices.clone(),
            before: vec![grant("br0", 3306)],
            after: vec![],
            in_place: false,
            writes: vec![vec!["write:br0:0"], vec!["delete", "write:br0:1"]],
        },
        Scenario {
            name: "second interface",
            devices: devices.clone(),
            before: vec![grant("br0", 3306)],
            after: vec![grant("br0", 3306), grant("br1", 3307)],
            in_place: true,
            writes: vec![vec!["probe"], vec!["write:br1:1"]],
        },
        Scenario {
            name: "swap interfaces",
            devices,
            before: vec![grant("br0", 3306)],
            after: vec![grant("br1", 3307)],
            in_place: true,
            writes: vec![
                vec!["probe"],
                vec!["write:br0:0"],
                vec!["write:br1:1"],
                vec!["delete", "write:br0:1"],
            ],
        },
    ]
}

/// A flow no grant involves: with it the conntrack table is not empty, so a change
/// that revokes or adds a grant lists and deletes flows (and can fail doing so).
fn bystander() -> conntrack::Flow {
    conntrack::Flow {
        src: Ipv4Addr::LOCALHOST,
        dst: Ipv4Addr::LOCALHOST,
        proto: 6,
        sport: 40000,
        dport: 22,
        zone: 0,
        dnat: None,
    }
}

/// Brings a fake to `grants` without failures; returns the fake and its store.
fn arranged(devices: &[(u32, &str, i32)], grants: &[Grant]) -> (Fake, TempStore) {
    let kernel = Fake::with_devices(devices);
    let store = TempStore::new();
    if !grants.is_empty() {
        converge(&kernel, &store.store, grants.to_vec()).expect("arranging");
    }
    let mut s = kernel.state.borrow_mut();
    s.flows = vec![bystander()];
    s.history.clear();
    s.reads.clear();
    s.read_at.clear();
    drop(s);
    (kernel, store)
}

#[test]
fn every_failure_fires_rolls_back_and_no_step_leaves_an_interface_open_without_its_guard() {
    let mut cells = 0;
    for sc in scenarios() {
        for failure in sc.failures() {
            cells += 1;
            let (kernel, store) = arranged(&sc.devices, &sc.before);
            let facts_before = (
                kernel.state.borrow().devices.clone(),
                kernel.state.borrow().table.clone(),
            );
            let state_before = store.store.load().unwrap();
            for f in &failure {
                kernel.fail(f);
            }
            let result = converge(&kernel, &store.store, sc.after.clone());
            let context = format!("{} failing at {failure:?}", sc.name);
            // The cell tests what it names: every injected failure fired.
            let fired = kernel.fired();
            for f in &failure {
                assert!(
                    fired.iter().any(|x| x == f),
                    "{context}: `{f}` never fired (fired: {fired:?}); history: {:?}",
                    kernel.history().iter().map(|m| &m.what).collect::<Vec<_>>()
                );
            }
            assert_never_open_without_guard(&kernel, &context);
            let rollback_failed = failure.contains(&"restore")
                || failure.len() > 1 && {
                    // A refused or unacknowledged in-place batch with a failing rewrite is
                    // one failure of the table step.
                    !failure.iter().any(|f| f.starts_with("change"))
                };
            let s = kernel.state.borrow();
            if failure.contains(&"restore") {
                // The previous table cannot be put back: every interface is closed.
                assert!(result.is_err(), "{context}");
                assert!(
                    s.devices.values().all(|d| d.route_localnet == 0),
                    "{context}"
                );
            } else if rollback_failed {
                // An undo write failed: the rest of the rollback ran, and the one
                // device left as it was is closed (checked above: never open
                // unguarded).
                assert!(result.is_err(), "{context}");
                assert_eq!(s.table, facts_before.1, "{context}");
            } else {
                // One failure: all or nothing, the facts as they were.
                assert!(result.is_err(), "{context}");
                assert_eq!(
                    (s.devices.clone(), s.table.clone()),
                    facts_before,
                    "{context}"
                );
            }
            assert_eq!(store.store.load().unwrap(), state_before, "{context}");
        }
        // And without a failure the change lands, as it does when the in-place batch
        // alone fails (refused, or committed with its reply lost: the whole rewrite
        // after it lands the same table); a committed table was read through its vouch
        // (the elements not read back).
        let fallbacks: &[&str] = if sc.in_place {
            &["", "change", "change-reply"]
        } else {
            &[""]
        };
        for &failure in fallbacks {
            let context = format!("{} with {failure:?} failing", sc.name);
            let (kernel, store) = arranged(&sc.devices, &sc.before);
            if !failure.is_empty() {
                kernel.fail(failure);
            }
            converge(&kernel, &store.store, sc.after.clone()).expect(&context);
            assert_never_open_without_guard(&kernel, &context);
            let s = kernel.state.borrow();
            assert_eq!(
                s.reads.first(),
                Some(&!sc.before.is_empty()),
                "{context}: the vouched path"
            );
            assert_eq!(
                s.fired,
                [failure]
                    .iter()
                    .filter(|f| !f.is_empty())
                    .copied()
                    .collect::<Vec<_>>(),
                "{context}"
            );
            let want = plan::ruleset(&sc.after);
            assert_eq!(s.table, want.as_ref().map(FakeTable::of), "{context}");
            for d in s.devices.values() {
                let managed = sc.after.iter().any(|g| g.iface == d.name);
                assert_eq!(
                    d.route_localnet,
                    i32::from(managed),
                    "{context}: {}",
                    d.name
                );
            }
            // The table changed the way the scenario says: in place (one `change`
            // moment and no rewrite), or rewritten whole after a failed in-place batch.
            let steps: Vec<&str> = s.history.iter().map(|m| m.what.as_str()).collect();
            let table_steps: Vec<&str> = steps
                .iter()
                .copied()
                .filter(|w| *w == "apply" || *w == "change")
                .collect();
            let expected: &[&str] = match (sc.in_place, failure) {
                (false, _) => &["apply"],
                (true, "") => &["change"],
                (true, "change") => &["apply"],
                (true, _) => &["change", "apply"],
            };
            assert_eq!(table_steps, expected, "{context}: {steps:?}");
            // In place, the table was taken as committed before and read back only as
            // far as the batch wrote: one read of the table in all, no dump of it.
            if (sc.in_place, failure) == (true, "") {
                assert_eq!(s.reads, [true], "{context}: reads of the whole table");
            }
            // Guard read back before route_localnet is raised: a read of the table
            // comes after its last change and before any write that opens.
            let last_table = steps
                .iter()
                .rposition(|w| *w == "apply" || *w == "change")
                .expect("a table step");
            for (i, w) in steps.iter().enumerate() {
                if w.starts_with("write ") && w.ends_with("=1") {
                    assert!(
                        i > last_table
                            && s.read_at.iter().any(|&r| r > last_table && r <= i),
                        "{context}: `{w}` without the table read back first: {steps:?}, reads at {:?}",
                        s.read_at
                    );
                }
            }
        }
    }
    assert_eq!(
        cells,
        2 * (COMMON.len() + 2) + (COMMON.len() - 3 + IN_PLACE.len()) * 2 + 2 + 4
    );
}

/// An in-place batch is bound to the generation the table was read at: after another
/// commit (the same table, a new generation) it is refused and the table is rewritten
/// whole, to the same result.
#[test]
fn an_in_place_change_after_another_commit_rewrites_the_table_whole() {
    let before = vec![grant("br0", 3306)];
    let after = vec![grant("br0", 3306), grant("br1", 3307)];
    let (kernel, store) = arranged(&[(5, "br0", 0), (6, "br1", 0)], &before);
    let old = store.store.load().unwrap();
    let target = Target {
        grants: after.clone(),
        ..Target::recorded(&old)
    };
    let (change, snapshot) = observe_and_compute(&kernel, old, target).unwrap();
    assert!(change.base.is_some(), "the kernel held the committed plan");
    let held = kernel.state.borrow().table.clone();
    kernel.tamper(held);
    execute(&kernel, &store.store, &change, &snapshot).unwrap();
    let steps: Vec<String> = kernel.history().into_iter().map(|m| m.what).collect();
    assert_eq!(steps, ["apply", "write br1=1", "delete 0 flows"]);
    assert_eq!(
        kernel.state.borrow().table,
        plan::ruleset(&after).as_ref().map(FakeTable::of)
    );
    assert_never_open_without_guard(&kernel, "after another commit");
}

/// A rollback whose undo write that would close a device fails must not restore the
/// previous table, which does not guard that device: the new table stays, and
/// nothing is reopened behind it. (Found by the failure matrix: the device was left
/// open without a guard.)
#[test]
fn a_failed_closing_undo_leaves_the_device_behind_its_new_guard() {
    for (before, after, failure) in [
        (vec![], vec![grant("br0", 3306)], "write:br0:0"),
        (
            vec![grant("br0", 3306)],
            vec![grant("br0", 3306), grant("br1", 3307)],
            "write:br1:0",
        ),
        (
            vec![grant("br0", 3306)],
            vec![grant("br1", 3307)],
            "write:br1:0",
        ),
    ] {
        let (kernel, store) = arranged(&[(5, "br0", 0), (6, "br1", 0)], &before);
        kernel.fail("delete");
        kernel.fail(failure);
        assert!(converge(&kernel, &store.store, after).is_err());
        assert!(kernel.fired().iter().any(|f| f == failure));
        assert_never_open_without_guard(&kernel, failure);
    }
}

#[test]
fn a_broken_table_is_never_restored_behind_an_open_interface() {
    let failures = ["probe", "apply", "read", "restore", "flows", "delete"]
        .into_iter()
        .chain(["write:br0:1", "write:br0:0", "write:br1:1", "write:br1:0"]);
    for failure in failures {
        let g = vec![grant("br0", 3306), grant("br1", 3307)];
        let (kernel, store) = arranged(&[(5, "br0", 0), (6, "br1", 0)], &g);
        // Another process switched the table off (dormant) or edited it.
        let other = plan::ruleset(&g[..1]).unwrap();
        kernel.tamper(Some(FakeTable::broken(nft::planned_image(&other))));
        kernel.fail(failure);
        let result = converge(&kernel, &store.store, g.clone());
        // The host starts open behind a broken table: no write may open a device
        // without a guard, and it ends either guarded or closed.
        for m in kernel.history() {
            if let Some((iface, value)) = m
                .what
                .strip_prefix("write ")
                .and_then(|w| w.split_once('='))
            {
                let guarded = m.table.as_ref().is_some_and(|t| t.guards.contains(iface));
                assert!(
                    value == "0" || guarded,
                    "{failure}: `{}` without a guard",
                    m.what
                );
            }
        }
        if result.is_err() && kernel.history().is_empty() {
            // Refused before reading the host (a failed read): nothing was changed,
            // and deciding to close is watch's (see watch's own tests).
            continue;
        }
        let s = kernel.state.borrow();
        for d in s.devices.values() {
            let guarded = s.table.as_ref().is_some_and(|t| t.guards.contains(&d.name));
            assert!(
                d.route_localnet == 0 || guarded,
                "{failure}: {} ends open unguarded",
                d.name
            );
        }
        drop(s);
        let history = kernel.history();
        // Closing comes before anything else.
        assert!(
            history
                .first()
                .is_some_and(|m| m.what.starts_with("write") && m.what.ends_with("=0"))
                || result.is_err(),
            "{failure}: {:?}",
            history.iter().map(|m| &m.what).collect::<Vec<_>>()
        );
        if result.is_err() {
            let s = kernel.state.borrow();
            let still_broken = s.table.as_ref().is_none_or(|t| t.guards.is_empty());
            if still_broken {
                assert!(
                    s.devices.values().all(|d| d.route_localnet == 0),
                    "{failure}: failed closed"
                );
            }
        }
    }
}

#[test]
fn a_lost_guard_cuts_flows_that_reached_loopback_and_keeps_granted_ones() {
    let g = vec![grant("br0", 3306)];
    let (kernel, store) = arranged(&[(5, "br0", 1)], &g);
    let flow = |src: [u8; 4], dst: [u8; 4], dport| conntrack::Flow {
        src: Ipv4Addr::from(src),
        dst: Ipv4Addr::from(dst),
        proto: 17,
        sport: 40000,
        dport,
        zone: 0,
        dnat: None,
    };
    let attack = flow([192, 0, 2, 200], [127, 0, 0, 1], 5354);
    let granted = flow([192, 0, 2, 10], [192, 0, 2, 1], 3306);
    let local = flow([127, 0, 0, 1], [127, 0, 0, 1], 5354);
    kernel.state.borrow_mut().flows = vec![attack, granted, local];
    kernel.tamper(None); // flushed
    converge(&kernel, &store.store, g).unwrap();
    assert_eq!(kernel.state.borrow().flows, vec![granted, local]);
}

/// What a store keeps for the next one (watch opens one per pass): the committed plan's
/// image, handed on only for the same plan, and the parsed state, re-read when the file
/// changes under it.
#[test]
fn a_commit_leaves_its_plan_image_for_the_next_store_and_a_changed_file_is_read_again() {
    let g = vec![grant("br0", 3306)];
    let (kernel, store) = arranged(&[(5, "br0", 0)], &[]);
    converge(&kernel, &store.store, g.clone()).unwrap();
    let memo = store.store.take_memo();
    let (first, dir) = store.into_parts();
    drop(first);
    let next = dir.open();
    next.adopt(memo);
    // The same plan, planned again (not the memo's own copy): compared by value.
    let plan = std::rc::Rc::new(plan::ruleset(&g).unwrap());
    assert_eq!(
        next.planned_image(&plan).as_deref(),
        Some(&nft::planned_image(&plan))
    );
    let other = std::rc::Rc::new(plan::ruleset(&[grant("br0", 3307)]).unwrap());
    assert_eq!(next.planned_image(&other), None);
    let mut changed = next.load().unwrap();
    changed.grants.clear();
    next.write_raw(Some(&serde_json::to_vec(&changed).unwrap()))
        .unwrap();
    assert!(next.load().unwrap().grants.is_empty());
}

/// An upgrade that plans the same grants with a rule changed and no element changed:
/// the vouch names the plan the older version wrote, so this one reads the table, finds
/// the rule missing and puts it back. (Found by review: the vouch named only the
/// elements, the table was taken as this version's plan, and neither `watch --once`
/// nor a change ever restored the rule.) The fake refuses to take a table as committed
/// that it does not hold: before the fix this test panicked there.
#[test]
fn a_vouch_for_another_plan_of_the_same_grants_is_not_taken_as_committed() {
    let g = vec![grant("br0", 3306)];
    let (kernel, store) = arranged(&[(5, "br0", 0)], &g);
    let planned = plan::ruleset(&g).unwrap();
    let mut older = planned.clone();
    let guard = older
        .chains
        .iter_mut()
        .find(|c| c.rules.len() > 1 && c.rules.iter().all(|r| r.comment.contains(" guard: ")))
        .expect("a guard chain of two rules");
    guard.rules.pop();
    let old_image = nft::planned_image(&older);
    assert_eq!(
        old_image.elements.digest(),
        nft::planned_image(&planned).elements.digest(),
        "control: the two plans have the same elements"
    );
    // At the vouched generation the kernel holds what the older version committed.
    kernel.state.borrow_mut().table = Some(FakeTable::of(&older));
    let mut state = store.store.load().unwrap();
    let vouch = state.vouch.expect("a vouch");
    assert_eq!(vouch.plan, Some(nft::planned_image(&planned).digest()));
    state.vouch = Some(nft::Vouch {
        plan: Some(old_image.digest()),
        ..vouch
    });
    store.store.save(&state).unwrap();
    converge(&kernel, &store.store, g.clone()).unwrap();
    assert_eq!(kernel.state.borrow().table, Some(FakeTable::of(&planned)));
    assert_never_open_without_guard(&kernel, "after the upgrade");
}
