//! Benchmark (run by scripts/bench.sh, not a test): what writing and reading the state
//! file costs with long allow lists, in the old format (version 2: every list inline)
//! and in the current one (version 3: lists of 64 networks or more in files of their
//! own, written once, named by their SHA-256).
//!
//! The state is the one `watch` records for issue 21's benchmark: `GRANTS` grants
//! (default 1,000), each with its own 2-network allow list, plus one grant of `BIG`
//! networks (default 100,000), each with the spec it resolves from (same list). Every
//! figure is the median of `ROUNDS` runs, in ms, in a temporary directory under
//! /dev/shm (tmpfs, as /run/loopgate is):
//! - `v2_save`: the state printed inline and the file replaced (what a save was);
//! - `v2_load`: that file read and parsed by a store that knows nothing yet;
//! - `v3_save_fresh`: `Store::save` by a process that has not seen the lists (a
//!   command: each long list printed and hashed, its file found in place);
//! - `v3_save_known`: `Store::save` by a store that read or wrote them before
//!   (`watch`, and a transaction's second save);
//! - `v3_load_fresh`: `Store::load` by a store that knows nothing yet (each list file
//!   read and verified);
//! - `v3_load_known`: `Store::load` of a changed state file by a store whose memo
//!   holds the lists (`watch` after another command's commit).
//!
//! A transaction saves twice (journal, commit). Prints one JSON line.
//!
//!     cargo run --release --example state_io -- [GRANTS [BIG]]

use ipnetwork::Ipv4Network;
use loopgate::grant::{Grant, Proto};
use loopgate::spec::{Source, Spec};
use loopgate::state::{State, Store, STATE_VERSION};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

const ROUNDS: usize = 7;

/// The `i`-th of a run of disjoint networks in 10.0.0.0/8: /32s (a fleet's list of
/// hosts), or /31s for the small lists so that no two grants share one.
fn net(i: usize, prefix: u8) -> Ipv4Network {
    let step = 1u32 << (32 - prefix);
    Ipv4Network::new(Ipv4Addr::from(0x0a00_0000 + i as u32 * step), prefix).unwrap()
}

fn state(grants: usize, big: usize) -> State {
    let mut all: Vec<Grant> = (0..grants)
        .map(|g| Grant {
            name: format!("grant-{g}"),
            iface: format!("br{}", g % 10),
            proto: Proto::Tcp,
            listen: Ipv4Addr::new(192, 0, 2, 1 + (g % 10) as u8),
            port: 1000 + g as u16,
            to: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1000 + g as u16),
            allow: vec![net(2 * g, 31), net(2 * g + 1, 31)],
            network: None,
        })
        .collect();
    all.push(Grant {
        name: "big".into(),
        iface: "br0".into(),
        proto: Proto::Tcp,
        listen: Ipv4Addr::new(192, 0, 2, 1),
        port: 999,
        to: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 999),
        // Above the small lists' /31s.
        allow: (0..big).map(|i| net(4 * grants + i, 32)).collect(),
        network: None,
    });
    State {
        version: STATE_VERSION,
        specs: all
            .iter()
            .map(|g| Spec::of_grant(g, Source::Policy))
            .collect(),
        grants: all,
        ..Default::default()
    }
}

/// Median wall time of `f` over `ROUNDS` runs, in ms; `f` gets the round's number.
fn median_ms(mut f: impl FnMut(usize) -> std::time::Duration) -> f64 {
    let mut times: Vec<f64> = (0..ROUNDS).map(|r| f(r).as_secs_f64() * 1000.0).collect();
    times.sort_by(f64::total_cmp);
    times[ROUNDS / 2]
}

/// Times `f` alone.
fn timed(f: impl FnOnce()) -> std::time::Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let grants: usize = args.next().map_or(1000, |a| a.parse().expect("GRANTS"));
    let big: usize = args.next().map_or(100_000, |a| a.parse().expect("BIG"));
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    let dir = base.path().join("netns-bench");
    let open = || Store::open_at(dir.clone()).unwrap();
    let mut s = state(grants, big);

    // Version 2: what a save and a load were (every list inline).
    let mut v2 = s.clone();
    v2.version = 2;
    let v2_save = median_ms(|r| {
        v2.writers = vec![r as u32];
        let store = open();
        timed(|| {
            let bytes = serde_json::to_vec(&v2).unwrap();
            store.write_raw(Some(&bytes)).unwrap();
        })
    });
    let v2_bytes = open().read_raw().unwrap().unwrap().len();
    let v2_load = median_ms(|_| {
        let store = open();
        timed(|| assert_eq!(store.load().unwrap().grants.len(), grants + 1))
    });

    // Version 3. The first save writes the long list's file; later ones find it.
    open().save(&s).unwrap();
    let v3_save_fresh = median_ms(|r| {
        s.writers = vec![r as u32];
        let store = open();
        timed(|| store.save(&s).unwrap())
    });
    let v3_bytes = open().read_raw().unwrap().unwrap().len();
    let v3_load_fresh = median_ms(|_| {
        let store = open();
        timed(|| assert_eq!(store.load().unwrap().grants.len(), grants + 1))
    });
    let known = open();
    known.load().unwrap();
    let v3_save_known = median_ms(|r| {
        s.writers = vec![100 + r as u32];
        timed(|| known.save(&s).unwrap())
    });
    let mut memo = known.take_memo();
    drop(known);
    let v3_load_known = median_ms(|r| {
        // Another process changes the state file (not its lists).
        let mut other = s.clone();
        other.writers = vec![200 + r as u32];
        open().save(&other).unwrap();
        let store = open();
        store.adopt(std::mem::take(&mut memo));
        let t = timed(|| assert_eq!(store.load().unwrap().grants.len(), grants + 1));
        memo = store.take_memo();
        t
    });
    let lists: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("allow-"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    println!(
        "{{\"kind\":\"state_io\",\"grants\":{grants},\"big\":{big},\"v2_bytes\":{v2_bytes},\"v3_bytes\":{v3_bytes},\"v3_list_bytes\":{lists},\"v2_save_ms\":{v2_save:.2},\"v2_load_ms\":{v2_load:.2},\"v3_save_fresh_ms\":{v3_save_fresh:.2},\"v3_save_known_ms\":{v3_save_known:.2},\"v3_load_fresh_ms\":{v3_load_fresh:.2},\"v3_load_known_ms\":{v3_load_known:.2}}}"
    );
}
