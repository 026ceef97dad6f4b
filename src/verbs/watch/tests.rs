//! Watch's decisions over the fake kernel: what it does, in which order.

use super::sweep_clock::SWEEP_EVERY;
use super::*;
use crate::grant::{Grant, Proto};
use crate::kernel::fake::{Fake, FakeTable, TempStore};
use crate::kernel::host::HostInterfaces;
use crate::kernel::monitor::Batch;
use crate::kernel::nft;
use crate::state::{Original, State, STATE_VERSION};
use crate::txn;
use std::net::{Ipv4Addr, SocketAddrV4};

#[test]
fn a_batch_is_loopgates_by_its_generation_or_its_pid_and_unknown_ones_are_foreign() {
    let me = std::process::id();
    let state = State {
        writers: vec![4242],
        ..State::default()
    };
    let own = |g: u32| g == 7;
    let b = |pid: Option<u32>, generation: Option<u32>| Batch { pid, generation };
    let foreign = |batches: &[Batch]| super::foreign(batches, Some(&state), own);
    // Inside a PID namespace the kernel's pid is meaningless; the generation decides.
    assert!(!foreign(&[b(Some(900_001), Some(7))]));
    assert!(foreign(&[b(Some(900_001), Some(8))]));
    assert!(!foreign(&[b(Some(me), Some(8)), b(Some(4242), None)]));
    assert!(foreign(&[b(Some(me), Some(7)), b(None, None)]));
    assert!(!super::foreign(&[], None, own));
}

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

/// A host converged to `grants` on the fake, history cleared.
fn converged(devices: &[(u32, &str, i32)], grants: Vec<Grant>) -> (Fake, TempStore) {
    let kernel = Fake::with_devices(devices);
    let store = TempStore::new();
    let old = store.store.load().unwrap();
    let target = txn::Target {
        grants,
        ..txn::Target::recorded(&old)
    };
    let (change, snap) = txn::observe_and_compute(&kernel, old, target).unwrap();
    txn::execute(&kernel, &store.store, &change, &snap).unwrap();
    kernel.state.borrow_mut().history.clear();
    (kernel, store)
}

fn steps(kernel: &Fake) -> Vec<String> {
    kernel.history().into_iter().map(|m| m.what).collect()
}

#[test]
fn a_dormant_or_flushed_table_is_closed_first_then_restored_then_reopened() {
    let g = vec![grant("br0", 3306)];
    for broken in [
        None,
        Some(FakeTable::broken(nft::planned_image(
            &crate::plan::ruleset(&[grant("br0", 9999)]).unwrap(),
        ))),
    ] {
        let (kernel, store) = converged(&[(5, "br0", 0)], g.clone());
        // Another process's commit (the real kernel changes no table without one).
        kernel.tamper(broken.clone());
        let (lines, result) = repair_with(&kernel, &store.store, &kernel, None, None);
        result.unwrap();
        assert_eq!(
            steps(&kernel),
            ["write br0=0", "apply", "write br0=1"],
            "{lines:?}"
        );
        assert!(lines
            .iter()
            .any(|l| l.contains("closed route_localnet on [br0] first")));
        // Converged: the next pass does nothing.
        kernel.state.borrow_mut().history.clear();
        let (lines, result) = repair_with(&kernel, &store.store, &kernel, None, None);
        result.unwrap();
        assert!(lines.is_empty() && steps(&kernel).is_empty(), "{lines:?}");
    }
}

#[test]
fn an_interrupted_expose_is_rolled_back_with_its_interface_closed_before_the_table() {
    let committed = vec![grant("br0", 3306)];
    let pending = vec![grant("br0", 3306), grant("br1", 3307)];
    let (kernel, store) = converged(&[(5, "br0", 0), (6, "br1", 0)], pending.clone());
    // As if `expose br1` had died after raising br1, before committing.
    let state = State {
        version: STATE_VERSION,
        grants: committed,
        originals: vec![
            Original {
                iface: "br0".into(),
                ifindex: 5,
                value: 0,
            },
            Original {
                iface: "br1".into(),
                ifindex: 6,
                value: 0,
            },
        ],
        pending: Some(pending),
        vouch: None,
        writers: vec![],
        specs: vec![],
        guards: vec![],
        guarded: vec![],
        admitted: vec![],
    };
    store.store.save(&state).unwrap();
    let (lines, result) = repair_with(&kernel, &store.store, &kernel, None, None);
    result.unwrap();
    assert_eq!(steps(&kernel), ["write br1=0", "apply"], "{lines:?}");
    assert!(lines
        .iter()
        .any(|l| l.contains("interrupted transaction was rolled back")));
    assert_eq!(kernel.value("br0"), Some(1));
    assert!(store.store.load().unwrap().pending.is_none());
}

#[test]
fn a_renamed_interface_goes_back_to_its_original_and_the_new_copy_is_opened() {
    let g = vec![grant("br0", 3306)];
    let (kernel, store) = converged(&[(5, "br0", 0)], g);
    // br0 renamed to br9 (same ifindex), and a runtime created a new br0 at 0.
    {
        let mut s = kernel.state.borrow_mut();
        s.devices.get_mut(&5).unwrap().name = "br9".into();
        s.devices.insert(
            8,
            crate::kernel::sysctl::Device {
                ifindex: 8,
                name: "br0".into(),
                route_localnet: 0,
                ready: true,
            },
        );
    }
    let (lines, result) = repair_with(&kernel, &store.store, &kernel, None, None);
    result.unwrap();
    assert_eq!(steps(&kernel), ["write br9=0", "write br0=1"], "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("br0 (ifindex 5) is now called br9")
                && l.contains("br9 is closed")),
        "{lines:?}"
    );
    let originals = store.store.load().unwrap().originals;
    assert_eq!(
        originals,
        vec![Original {
            iface: "br0".into(),
            ifindex: 8,
            value: 0
        }]
    );
}

#[test]
fn a_guard_that_cannot_be_read_is_not_trusted() {
    let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
    kernel.fail("read");
    let (lines, result) = repair_with(&kernel, &store.store, &kernel, None, None);
    assert!(result.is_err());
    assert_eq!(steps(&kernel), ["write br0=0"], "{lines:?}");
}

#[test]
fn the_fast_path_closes_every_open_managed_interface_and_keeps_going_past_a_failure() {
    let g = vec![grant("br0", 3306), grant("br1", 3307), grant("br2", 3308)];
    let (kernel, store) = converged(&[(5, "br0", 0), (6, "br1", 0), (7, "br2", 0)], g);
    kernel.fail("write:br1:0");
    let err = close_managed(&kernel, &store.store.load().unwrap()).unwrap_err();
    assert!(format!("{err:#}").contains("closed [br0, br2]"), "{err:#}");
    assert_eq!(steps(&kernel), ["write br0=0", "write br2=0"]);
}

#[test]
fn a_sweep_clock_is_due_at_first_then_once_a_minute_and_two_clocks_are_apart() {
    let now = Instant::now();
    let mut clock = SweepClock::default();
    assert!(clock.due(now));
    clock.last = Some(now);
    assert!(!clock.due(now));
    assert!(!clock.due(now + SWEEP_EVERY - Duration::from_millis(1)));
    assert!(clock.due(now + SWEEP_EVERY));
    // A value: another clock has not swept.
    assert!(SweepClock::default().due(now));
}

/// A batch as the monitor reports it, by no pid this process knows.
fn batch(generation: u32) -> Batch {
    Batch {
        pid: Some(900_001),
        generation: Some(generation),
    }
}

#[test]
fn watchs_own_commit_closes_nothing() {
    let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
    let own = kernel.state.borrow().generation;
    let mut known = None;
    let state = store.store.load().unwrap();
    let lines = close_if_foreign(&kernel, &[batch(own)], Some(state), &mut known).unwrap();
    assert!(lines.is_empty() && steps(&kernel).is_empty(), "{lines:?}");
    assert!(known.is_some(), "the peeked state is kept");
}

#[test]
fn a_foreign_commit_closes_every_open_managed_interface_at_once() {
    let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
    kernel.tamper(None);
    let foreign = kernel.state.borrow().generation;
    let mut known = Some(store.store.load().unwrap());
    let lines = close_if_foreign(&kernel, &[batch(foreign)], None, &mut known).unwrap();
    assert_eq!(steps(&kernel), ["write br0=0"]);
    assert_eq!(
        lines,
        ["another process changed table ip loopgate; closed route_localnet on [br0] first"]
    );
}

#[test]
fn a_foreign_commit_with_no_state_known_closes_nothing() {
    let (kernel, _store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
    kernel.tamper(None);
    let foreign = kernel.state.borrow().generation;
    let lines = close_if_foreign(&kernel, &[batch(foreign)], None, &mut None).unwrap();
    assert!(lines.is_empty() && steps(&kernel).is_empty());
}

#[test]
fn a_commit_by_a_recorded_writer_is_not_foreign() {
    let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
    kernel.tamper(None);
    let state = State {
        writers: vec![900_001],
        ..store.store.load().unwrap()
    };
    let g = kernel.state.borrow().generation;
    let lines = close_if_foreign(&kernel, &[batch(g)], Some(state), &mut None).unwrap();
    assert!(lines.is_empty() && steps(&kernel).is_empty());
}

#[test]
fn the_fast_close_reports_a_write_that_fails() {
    let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
    kernel.tamper(None);
    kernel.fail("write:br0:0");
    let g = kernel.state.borrow().generation;
    let state = store.store.load().unwrap();
    assert!(close_if_foreign(&kernel, &[batch(g)], Some(state), &mut None).is_err());
    assert_eq!(kernel.fired(), ["write:br0:0"]);
}

#[test]
fn without_the_lock_an_intact_table_is_left_alone() {
    let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
    let lines = judge_unlocked(&kernel, &store.store.load().unwrap()).unwrap();
    assert!(lines.is_empty() && steps(&kernel).is_empty(), "{lines:?}");
}

#[test]
fn without_the_lock_a_lost_guard_closes_but_nothing_is_restored() {
    let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
    kernel.tamper(None);
    let lines = judge_unlocked(&kernel, &store.store.load().unwrap()).unwrap();
    assert_eq!(
        steps(&kernel),
        ["write br0=0"],
        "no apply: the lock holder may be mid-way"
    );
    assert!(
        lines[0].starts_with("the state lock has been held by another process for over 1000 ms")
    );
    assert!(kernel.state.borrow().table.is_none());
}

#[test]
fn without_the_lock_a_table_that_cannot_be_read_is_an_error_and_changes_nothing() {
    let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
    kernel.fail("read");
    assert!(judge_unlocked(&kernel, &store.store.load().unwrap()).is_err());
    assert!(steps(&kernel).is_empty());
}

#[test]
fn the_stamp_moves_with_a_commit_or_a_managed_device_and_not_otherwise() {
    let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
    let state = store.store.load().unwrap();
    let host = HostInterfaces::default();
    let stamp = || Stamp::now(&kernel, &state, &host, None).unwrap();
    let first = stamp();
    assert_eq!(first, stamp(), "nothing moved");
    let table = kernel.state.borrow().table.clone();
    kernel.tamper(table);
    let after_commit = stamp();
    assert_ne!(first, after_commit);
    kernel
        .state
        .borrow_mut()
        .devices
        .get_mut(&5)
        .unwrap()
        .route_localnet = 0;
    assert_ne!(after_commit, stamp());
    kernel.fail("generation");
    assert!(Stamp::now(&kernel, &state, &host, None).is_err());
}

#[test]
fn a_converged_host_is_a_no_op_that_reads_nothing_back_in_full() {
    let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
    kernel.state.borrow_mut().reads.clear();
    let (lines, result) = repair_with(&kernel, &store.store, &kernel, None, None);
    result.unwrap();
    assert!(lines.is_empty() && steps(&kernel).is_empty(), "{lines:?}");
    assert_eq!(kernel.state.borrow().reads, [true], "vouched, not dumped");
}

#[test]
fn an_intact_table_after_a_foreign_commit_is_vouched_for_again() {
    let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
    let before = store.store.load().unwrap().vouch.unwrap();
    let table = kernel.state.borrow().table.clone();
    kernel.tamper(table);
    let (lines, result) = repair_with(&kernel, &store.store, &kernel, None, None);
    result.unwrap();
    assert!(lines.is_empty() && steps(&kernel).is_empty(), "{lines:?}");
    let after = store.store.load().unwrap().vouch.unwrap();
    assert_eq!(after.generation, kernel.state.borrow().generation);
    assert_ne!(after.generation, before.generation);
}

#[test]
fn nothing_recorded_and_nothing_asked_reads_nothing() {
    let kernel = Fake::with_devices(&[(5, "br0", 0)]);
    let store = TempStore::new();
    let (lines, result) = repair_with(&kernel, &store.store, &kernel, None, None);
    result.unwrap();
    assert!(lines.is_empty());
    assert!(kernel.state.borrow().reads.is_empty());
}

#[test]
fn a_repair_whose_batch_fails_says_so_and_leaves_the_interface_closed() {
    let (kernel, store) = converged(&[(5, "br0", 0)], vec![grant("br0", 3306)]);
    kernel.tamper(None);
    kernel.fail("apply");
    let (lines, result) = repair_with(&kernel, &store.store, &kernel, None, None);
    assert!(result.is_err());
    assert!(
        lines.iter().any(|l| l.starts_with("could not converge")),
        "{lines:?}"
    );
    assert_eq!(kernel.value("br0"), Some(0));
    assert_eq!(kernel.fired(), ["apply"]);
}

#[test]
fn a_new_grant_is_opened_and_only_a_device_closed_behind_loopgates_back_was_changed_by_hand() {
    let (kernel, store) = converged(&[(5, "br0", 0), (6, "br1", 0)], vec![grant("br0", 3306)]);
    let reported = |grants: Vec<Grant>| {
        let old = store.store.load().unwrap();
        let target = txn::Target {
            grants,
            ..txn::Target::recorded(&old)
        };
        let (change, _) = txn::observe_and_compute(&kernel, old, target).unwrap();
        super::repair::report(&change, 0)
    };
    // A policy edit adds a grant on br1: it is being opened, nobody changed anything.
    let lines = reported(vec![grant("br0", 3306), grant("br1", 3307)]);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("opening br1 for its new grant")),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.contains("by hand")), "{lines:?}");
    // br0, opened by loopgate, found at 0: that was by hand.
    kernel
        .state
        .borrow_mut()
        .devices
        .get_mut(&5)
        .unwrap()
        .route_localnet = 0;
    let lines = reported(vec![grant("br0", 3306)]);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("route_localnet on br0 was 0 (changed by hand)")),
        "{lines:?}"
    );
}
