//! Topic: a dormant, edited or re-flagged table of loopgate's, and netlink reads that straddle other commits.

use super::*;
use loopgate::kernel::nft;
use loopgate::kernel::seam::{Kernel, System};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whether a SYN from the container, routed to 127.0.0.1 through the host, reaches
/// the listener on 127.0.0.1:3307 (which no grant publishes).
fn loopback_reachable(lab: &Lab) -> bool {
    let before = passive_opens(&lab.host);
    fire_tcp(&lab.container, sa(LO, 3307));
    passive_opens(&lab.host) > before
}

#[test]
fn a_dormant_table_is_tampering_audit_says_so_and_watch_wakes_it_within_a_second() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    let want = table_image(&lab.host).expect("table");
    Lab::route_loopback_via_host(&lab.container);
    assert!(!loopback_reachable(&lab), "the guard blocks 127.0.0.1:3307");
    lab.assert_audit(0, &[]);

    // `flags dormant` unhooks every base chain of the table; chains, sets and rules
    // all read back unchanged, and route_localnet stays 1.
    lab.host.exec(&[
        "nft",
        "add",
        "table",
        "ip",
        "loopgate",
        "{ flags dormant; }",
    ]);
    assert!(
        loopback_reachable(&lab),
        "control: with the table dormant a neighbour reaches every 127.0.0.1 service"
    );
    // Names the flag, and br0 is no longer "open, guarded".
    let text = lab.assert_audit(
        1,
        &[
            "CRITICAL [table-tampered]",
            "flags dormant",
            "CRITICAL [unguarded]",
        ],
    );
    assert!(!text.contains("open, guarded"), "{text}");
    // plan sees it too: the same grants, but the table would be replaced.
    let policy = lab.policy(
        "p.yaml",
        &format!("grants:\n  - interface: br0\n    allow: {ALLOWED}\n    port: 3306\n"),
    );
    let out = lab.ok(&["plan", &policy]);
    assert!(out.contains("replace table ip loopgate"), "{out}");

    // watch wakes it on its first pass...
    let watch = Watch::start(&lab);
    assert_eq!(table_image(&lab.host).as_ref(), Some(&want));
    assert!(!loopback_reachable(&lab), "the guard is back");
    // ...and again within a second while it runs.
    for _ in 0..3 {
        lab.host.exec(&[
            "nft",
            "add",
            "table",
            "ip",
            "loopgate",
            "{ flags dormant; }",
        ]);
        let took = time_until(|| table_image(&lab.host).as_ref() == Some(&want))
            .unwrap_or_else(|| panic!("dormant table not restored: {}", watch.log()));
        println!(
            "watch: dormant table awake again in {} ms",
            took.as_millis()
        );
        assert!(took < Duration::from_secs(1), "took {took:?}");
        let listing = String::from_utf8_lossy(
            &lab.host
                .exec(&["nft", "list", "table", "ip", "loopgate"])
                .stdout,
        )
        .into_owned();
        assert!(!listing.contains("dormant"), "{listing}");
        assert!(!loopback_reachable(&lab), "the guard is back");
    }
    lab.assert_audit(0, &[]);
    // The replace that watch (and apply) use writes a fresh table, without the flag.
    lab.host.exec(&[
        "nft",
        "add",
        "table",
        "ip",
        "loopgate",
        "{ flags dormant; }",
    ]);
    drop(watch);
    lab.ok(&["apply", &policy]);
    assert_eq!(table_image(&lab.host).as_ref(), Some(&want));
    assert!(!loopback_reachable(&lab));
}

#[test]
fn every_edit_of_the_table_that_changes_what_packets_meet_is_tampering_and_watch_undoes_it() {
    // (what, nft script run against the exposed table, does it open 127.0.0.1:3307?)
    let cases: &[(&str, &str, bool)] = &[
        (
            "an accept rule ahead of each guard",
            "insert rule ip loopgate raw_if_br0 accept\ninsert rule ip loopgate input_if_br0 accept\n\
             insert rule ip loopgate post_if_br0 accept\n",
            true,
        ),
        (
            "a base chain re-created at another priority",
            "flush chain ip loopgate input\ndelete chain ip loopgate input\n\
             add chain ip loopgate input { type filter hook input priority 100; policy accept; }\n",
            false,
        ),
        (
            "a base chain's policy changed",
            "add chain ip loopgate raw_prerouting { type filter hook prerouting priority raw; policy drop; }\n",
            false,
        ),
        (
            "an extra base chain",
            "add chain ip loopgate extra { type filter hook input priority -400; policy accept; }\n",
            false,
        ),
        ("an extra regular chain", "add chain ip loopgate extra\n", false),
        (
            "the table deleted and re-created dormant",
            "delete table ip loopgate\nadd table ip loopgate { flags dormant; }\n",
            true,
        ),
    ];
    for (what, script, opens) in cases {
        let (lab, _services) = lab_with_services();
        lab.expose_default();
        let want = table_image(&lab.host).expect("table");
        Lab::route_loopback_via_host(&lab.container);
        let path = lab.state_dir.join("tamper.nft");
        std::fs::write(&path, script).unwrap();
        lab.host.exec(&["nft", "-f", path.to_str().unwrap()]);
        assert_eq!(loopback_reachable(&lab), *opens, "{what}: control");
        let (code, text) = lab.audit();
        assert_eq!(code, Some(1), "{what}: {text}");
        assert!(text.contains("CRITICAL [table-tampered]"), "{what}: {text}");
        let watch = Watch::start(&lab);
        assert_eq!(
            table_image(&lab.host).as_ref(),
            Some(&want),
            "{what}: {}",
            watch.log()
        );
        assert!(!loopback_reachable(&lab), "{what}: guard back");
        assert_eq!(lab.audit().0, Some(0), "{what}");
    }
}

/// Grants for one port, as a ruleset.
fn ruleset_for(port: u16, networks: usize) -> loopgate::ruleset::Ruleset {
    let allow: Vec<String> = (0..networks)
        .map(|i| {
            format!(
                "10.{}.{}.0/24",
                i / 256 + usize::from(port % 2) * 100,
                i % 256
            )
        })
        .chain([ALLOWED.to_string()])
        .collect();
    let policy = loopgate::policy::parse(
        &format!(
            "grants:\n  - interface: br0\n    allow: [{}]\n    port: {port}\n",
            allow.join(", ")
        ),
        "torn",
    )
    .unwrap();
    let specs = loopgate::policy::specs_of(&[("torn".into(), policy)]).unwrap();
    let grants = loopgate::spec::resolve(&specs, &ExampleHost).grants;
    loopgate::plan::ruleset(&grants).expect("a table")
}

#[test]
fn snapshots_taken_while_others_commit_are_never_torn() {
    // Two tables loopgate could write, different in every part (rules, elements), and
    // large enough that reading one takes many netlink messages. One thread replaces
    // one with the other as fast as it can, another commits to a foreign table; every
    // snapshot taken meanwhile must be exactly one of the two.
    let ns = Netns::new("torn");
    let (a, b) = (ruleset_for(3306, 1500), ruleset_for(3307, 1500));
    let images = [nft::planned_image(&a), nft::planned_image(&b)];
    ns.enter({
        let a = a.clone();
        move || System::default().apply_table(Some(&a)).map(|_| ()).unwrap()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(4);
    let flipper = std::thread::spawn({
        let (stop, ns) = (stop.clone(), ns.handle());
        move || {
            ns.enter(move || {
                let mut commits = 0;
                while !stop.load(Ordering::SeqCst) && commits < 2000 {
                    let next = if commits % 2 == 0 { &b } else { &a };
                    System::default().apply_table(Some(next)).unwrap();
                    commits += 1;
                }
                commits
            })
        }
    });
    let foreign = std::thread::spawn({
        let (stop, ns) = (stop.clone(), ns.handle());
        move || {
            let mut commits = 0;
            while !stop.load(Ordering::SeqCst) && commits < 500 {
                ns.exec(&["nft", "add table ip foreign; delete table ip foreign"]);
                commits += 1;
            }
            commits
        }
    });
    let (mut taken, mut retried, mut gave_up, mut torn) = (0, 0, 0, Vec::new());
    let reader_stop = stop.clone();
    let sampled = ns.enter(move || {
        while Instant::now() < deadline && !reader_stop.load(Ordering::SeqCst) {
            match nft::snapshot(None) {
                Ok(s) => {
                    taken += 1;
                    retried += usize::from(s.attempts() > 1);
                    let image = s.image().expect("the table is never absent");
                    if !images.contains(&image) {
                        torn.push(image.differences(&images[0], 3));
                    }
                }
                Err(e) => {
                    let text = format!("{e:#}");
                    assert!(text.contains("changed 5 times"), "{text}");
                    gave_up += 1;
                }
            }
        }
        (taken, retried, gave_up, torn)
    });
    stop.store(true, Ordering::SeqCst);
    let flips = flipper.join().unwrap();
    let foreign_commits = foreign.join().unwrap();
    let (taken, retried, gave_up, torn) = sampled;
    println!(
        "snapshots: {taken} consistent ({retried} re-read after a concurrent commit), {gave_up} gave up; {flips} replaces and {foreign_commits} foreign commits meanwhile"
    );
    assert!(
        torn.is_empty(),
        "{} torn snapshots: {:?}",
        torn.len(),
        torn.first()
    );
    assert!(taken >= 20, "too few snapshots completed: {taken}");
    assert!(
        retried > 0,
        "no snapshot overlapped a commit: the test proves nothing"
    );
}

#[test]
fn a_large_foreign_ruleset_is_not_read_and_never_shows_in_the_image() {
    let ns = Netns::new("foreign");
    let ruleset = ruleset_for(3306, 10);
    let want = nft::planned_image(&ruleset);
    ns.enter(move || {
        System::default()
            .apply_table(Some(&ruleset))
            .map(|_| ())
            .unwrap()
    });
    let quiet = ns.enter(|| nft::snapshot(None).unwrap().messages_read());

    // Someone else's big table, plus look-alikes: the same table name in another
    // family, and chains named like loopgate's in another table.
    let mut script = String::from(
        "table ip foreign {\n chain input { type filter hook input priority 0; policy accept; }\n",
    );
    script += " chain raw_if_br0 {\n";
    for i in 0..20_000u32 {
        script += &format!(
            "  ip saddr 10.{}.{}.{} tcp dport {} accept\n",
            i >> 16 & 255,
            i >> 8 & 255,
            i & 255,
            1 + i % 60000
        );
    }
    script += " }\n}\n";
    script += "table inet loopgate {\n chain raw_if_br0 { ip daddr 127.0.0.0/8 accept; }\n}\n";
    script += "table ip loopgate2 {\n chain raw_if_br0 { ip daddr 127.0.0.0/8 accept; }\n}\n";
    let path = std::env::temp_dir().join(format!("{}.nft", ns.name));
    std::fs::write(&path, script).unwrap();
    ns.exec(&["nft", "-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);

    let (image, messages, took) = ns.enter(|| {
        let start = Instant::now();
        let s = nft::snapshot(None).unwrap();
        (s.image(), s.messages_read(), start.elapsed())
    });
    println!(
        "snapshot beside 20,000 foreign rules: {messages} messages (alone: {quiet}), {} ms",
        took.as_millis()
    );
    assert_eq!(image.as_ref(), Some(&want), "foreign objects leaked in");
    // The chain dump is not filtered by every kernel: a few foreign chains may come
    // back, but not one message per foreign rule.
    assert!(
        messages <= quiet + 10,
        "{messages} messages read beside the foreign ruleset, {quiet} without"
    );
}

#[test]
fn rules_read_one_chain_per_dump_read_back_the_same_table_edits_included() {
    // Large tables are read back one chain per rule dump (one dump of every rule costs
    // the kernel O(rules²)); on a small table the same path must give the same image,
    // each chain's rules in their order, an edit by someone else included.
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    let by_chain = |ns: &Netns| ns.enter(|| nft::snapshot_rules_by_chain(None).unwrap().image());
    let want = table_image(&lab.host).expect("table");
    assert!(!want.rules.is_empty());
    assert_eq!(by_chain(&lab.host).as_ref(), Some(&want));
    let path = lab.state_dir.join("tamper.nft");
    std::fs::write(
        &path,
        "insert rule ip loopgate raw_if_br0 accept\nadd rule ip loopgate input_if_br0 counter\n",
    )
    .unwrap();
    lab.host.exec(&["nft", "-f", path.to_str().unwrap()]);
    let tampered = table_image(&lab.host).expect("table");
    assert_ne!(tampered, want, "control: the edit shows in one dump");
    assert_eq!(by_chain(&lab.host), Some(tampered));
}

#[test]
fn a_table_taken_as_committed_is_read_in_one_message_restores_whole_and_any_commit_ends_it() {
    // After loopgate's own commit and nothing since, a read takes the table as that
    // plan: one message (the table object) instead of every dump, the same image a
    // full read gives, and a rollback from it puts the whole table back.
    let ns = Netns::new("committed");
    let (one, two) = (ruleset_for(3306, 50), ruleset_for(3307, 50));
    let want = nft::planned_image(&one);
    let (taken, full, restored) = ns.enter({
        let want = want.clone();
        move || {
            let (one, want) = (Rc::new(one), Rc::new(want));
            let k = System::default();
            let unnamed = k.apply_table(Some(&one)).unwrap().expect("a vouch");
            // A vouch that does not name the plan (a state written before vouches did)
            // vouches for elements only: the table is read.
            let read = k.read_committed(&unnamed, &one, &want).unwrap().counted();
            let vouch = unnamed.for_plan(Some(&want));
            let taken = k.read_committed(&vouch, &one, &want).unwrap();
            let full = nft::snapshot(None).unwrap();
            assert_eq!(
                taken.image_shared().as_deref(),
                taken.image().as_ref(),
                "the shared image is the image"
            );
            let facts = (taken.messages_read(), taken.counted(), taken.image(), read);
            k.apply_table(Some(&two)).unwrap();
            k.restore(&taken).unwrap();
            let restored = nft::snapshot(None).unwrap().image();
            (facts, (full.messages_read(), full.image()), restored)
        }
    });
    assert!(taken.3, "a vouch naming no plan: read");
    assert_eq!(taken.0, 1, "taken as committed: the table object alone");
    assert!(!taken.1, "its counters were not read");
    assert!(full.0 > 5, "control: a full read takes {} messages", full.0);
    assert_eq!(taken.2.as_ref(), Some(&want), "taken as the plan");
    assert_eq!(
        full.1.as_ref(),
        Some(&want),
        "control: a full read gives the plan"
    );
    assert_eq!(
        restored.as_ref(),
        Some(&want),
        "restored from the plan, whole"
    );

    // Any commit, to any table, ends the trust: the next read dumps the table.
    let (vouch, before) = ns.enter({
        let want = want.clone();
        move || {
            let want = Rc::new(want);
            let k = System::default();
            let one = Rc::new(ruleset_for(3306, 50));
            let vouch = k.apply_table(Some(&one)).unwrap().expect("a vouch");
            let vouch = vouch.for_plan(Some(&want));
            let s = k.read_committed(&vouch, &one, &want).unwrap();
            (vouch, s.counted())
        }
    });
    assert!(
        !before,
        "control: taken as committed before the other commit"
    );
    ns.exec(&["nft", "add", "table", "ip", "someone_else"]);
    let (counted, image) = ns.enter(move || {
        let s = System::default()
            .read_committed(
                &vouch,
                &Rc::new(ruleset_for(3306, 50)),
                &Rc::new(want.clone()),
            )
            .unwrap();
        (s.counted(), s.image() == Some(want))
    });
    assert!(
        counted,
        "another table's commit: the table is read, not taken"
    );
    assert!(image, "and read as the plan");
}

#[test]
fn chains_read_back_alone_equal_the_plan_and_show_an_edit() {
    // What an in-place change reads back: the chains it wrote and their rules, as the
    // planned image shows them; an edit by someone else shows, and moves the generation.
    let ns = Netns::new("chains");
    let one = ruleset_for(3306, 5);
    let want = nft::planned_image(&one);
    let names: Vec<String> = one
        .chains
        .iter()
        .filter(|c| c.attach.is_none())
        .map(|c| c.name.clone())
        .collect();
    assert!(names.len() >= 3, "{names:?}");
    let (read, vouch) = ns.enter({
        let names = names.clone();
        move || {
            let k = System::default();
            let vouch = k.apply_table(Some(&one)).unwrap().expect("a vouch");
            (k.read_chains(&names).unwrap(), vouch)
        }
    });
    let (chains, rules) = nft::expected_chains(&want, &names);
    assert_eq!(read.generation, vouch.generation);
    assert_eq!(read.table.as_deref(), Some(want.table.as_str()));
    assert_eq!((&read.chains, &read.rules), (&chains, &rules));
    assert!(
        !read.counters.is_empty(),
        "the guards' counters come with them"
    );

    let first = names[0].clone();
    ns.exec(&["nft", "insert", "rule", "ip", "loopgate", &first, "accept"]);
    let edited = ns.enter(move || System::default().read_chains(&names).unwrap());
    assert_ne!(edited.generation, vouch.generation);
    assert_ne!(edited.rules, rules, "control: the edit shows");
    assert_eq!(edited.chains, chains);
}

#[test]
fn many_chains_read_back_in_one_dump_equal_the_plan_with_their_counters() {
    // From 33 chains on, read_chains reads one dump of chains and one of rules instead
    // of two requests per chain: the same lines, in the order asked, and only the
    // counters of the chains asked for.
    let ns = Netns::new("manychains");
    let grants: String = (0..40)
        .map(|i| {
            format!(
                "  - interface: br{}\n    allow: [{ALLOWED}]\n    port: {}\n",
                i % 4,
                4000 + i
            )
        })
        .collect();
    let policy = loopgate::policy::parse(&format!("grants:\n{grants}"), "many").unwrap();
    let specs = loopgate::policy::specs_of(&[("many".into(), policy)]).unwrap();
    let resolved = loopgate::spec::resolve(&specs, &ExampleHost).grants;
    let ruleset = loopgate::plan::ruleset(&resolved).expect("a table");
    let want = nft::planned_image(&ruleset);
    let names: Vec<String> = ruleset
        .chains
        .iter()
        .filter(|c| c.attach.is_none())
        .map(|c| c.name.clone())
        .rev()
        .collect();
    assert!(names.len() > 40, "{}", names.len());
    let counting = loopgate::plan::counting_chains(&ruleset, None);
    let (all, some) = ns.enter({
        let (names, counting) = (names.clone(), counting.clone());
        move || {
            let k = System::default();
            k.apply_table(Some(&ruleset)).unwrap();
            (
                k.read_chains(&names).unwrap(),
                k.read_chains(&counting).unwrap(),
            )
        }
    });
    let (chains, rules) = nft::expected_chains(&want, &names);
    assert_eq!((all.chains, all.rules), (chains, rules), "order as asked");
    let (chains, rules) = nft::expected_chains(&want, &counting);
    assert_eq!((some.chains, some.rules), (chains, rules));
    assert!(
        some.counters.iter().all(|c| counting.contains(&c.chain)) && !some.counters.is_empty(),
        "{:?}",
        some.counters
    );
}
