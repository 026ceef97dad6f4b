//! Topic: loopgate's table held by an owning netlink socket (`nft::Owner`, Linux 6.9+):
//! flush-proof and edit-proof while held, left in place when the owner goes, adopted by
//! the next. On a kernel without owned tables the ownership assertions are skipped, and
//! said so on stderr, while the fallback ones still run.

use super::*;
use loopgate::kernel::nft::{self, Holder, Owner};
use loopgate::kernel::seam::{Kernel, System};
use std::io::Write;
use std::sync::mpsc;

/// Whether a SYN from the container, routed to 127.0.0.1 through the host, reaches
/// the listener on 127.0.0.1:3307 (which no grant publishes): the guard is off.
fn loopback_reachable(lab: &Lab) -> bool {
    let before = passive_opens(&lab.host);
    fire_tcp(&lab.container, sa(LO, 3307));
    passive_opens(&lab.host) > before
}

/// Whether the published service (br0's address, port 3306) answers the container.
fn published(lab: &Lab) -> bool {
    tcp_request(&lab.container, sa(HOST_ADDR, 3306)).is_some()
}

/// The ruleset `expose br0 --allow ALLOWED --port <ports>` installs.
fn ruleset(ports: &[u16]) -> loopgate::ruleset::Ruleset {
    let mut text = String::from("grants:\n");
    for port in ports {
        text += &format!("  - interface: br0\n    allow: {ALLOWED}\n    port: {port}\n");
    }
    let policy = loopgate::policy::parse(&text, "owned").unwrap();
    let specs = loopgate::policy::specs_of(&[("owned".into(), policy)]).unwrap();
    let grants = loopgate::spec::resolve(&specs, &ExampleHost).grants;
    loopgate::plan::ruleset(&grants).expect("a table")
}

/// Says on the real stderr (not captured by the test harness) that assertions were
/// skipped, so a run on an older kernel never passes silently.
fn say_skipped(why: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "owned_table: SKIPPED the ownership assertions: {why}; the fallback assertions ran"
    );
}

/// `nft` run by another process in `ns`: (success, stdout + stderr).
fn nft(ns: &Netns, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

type Job = Box<dyn FnOnce(&mut Owner) + Send>;

/// An [`Owner`] living on a thread inside a namespace (an owner is tied to its socket's
/// namespace and cannot leave its thread); jobs run on it there. Dropping this drops the
/// owner: its socket closes.
struct Held {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    port: u32,
}

impl Held {
    fn adopt(ns: &Netns) -> Result<Held, String> {
        let path = format!("/run/netns/{}", ns.name);
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready, adopted) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("netns file");
            // SAFETY: valid fd; setns only changes this thread's namespace.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}");
            let mut owner = match Owner::adopt() {
                Ok(o) => o,
                Err(e) => return ready.send(Err(format!("{e:#}"))).unwrap(),
            };
            ready.send(Ok(owner.portid())).unwrap();
            for job in inbox {
                job(&mut owner);
            }
        });
        match adopted.recv().unwrap() {
            Ok(port) => Ok(Held {
                jobs: Some(jobs),
                thread: Some(thread),
                port,
            }),
            Err(e) => {
                thread.join().unwrap();
                Err(e)
            }
        }
    }

    fn with<R: Send + 'static>(&self, f: impl FnOnce(&mut Owner) -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |o| tx.send(f(o)).unwrap());
        self.jobs.as_ref().unwrap().send(job).unwrap();
        rx.recv().expect("the owner's thread panicked")
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn holder(ns: &Netns) -> Option<Holder> {
    ns.enter(|| nft::snapshot(None).unwrap().holder())
}

#[test]
fn an_owned_table_withstands_flush_delete_and_dormant_from_others_and_outlives_its_owner() {
    let (lab, _services) = lab_with_services();
    Lab::route_loopback_via_host(&lab.container);
    lab.expose_default();
    let rs = ruleset(&[3306]);
    let want = table_image(&lab.host).expect("table");
    assert_eq!(
        want,
        nft::planned_image(&rs),
        "the test's ruleset is expose's"
    );
    assert!(published(&lab) && !loopback_reachable(&lab));
    assert_eq!(holder(&lab.host), Some(Holder::Nobody));
    let policy = lab.policy(
        "p.yaml",
        &format!("grants:\n  - interface: br0\n    allow: {ALLOWED}\n    port: 3306\n"),
    );

    // Control, without ownership: a flush by anyone removes the table and the guard.
    let (ok, out) = nft(&lab.host, &["flush", "ruleset"]);
    assert!(ok, "{out}");
    assert_eq!(table_image(&lab.host), None, "flush ruleset removed it");
    assert!(
        loopback_reachable(&lab),
        "control: without its table br0 (route_localnet=1) lets 127.0.0.1:3307 be reached"
    );
    lab.ok(&["apply", &policy]);
    assert_eq!(table_image(&lab.host).as_ref(), Some(&want));

    let supported = lab.host.enter(|| nft::probe_owner_support().unwrap());
    println!("probe_owner_support: {supported}");
    // The probe leaves nothing behind.
    assert_eq!(
        nft(&lab.host, &["list", "tables"]).1.trim(),
        "table ip loopgate"
    );
    if !supported {
        say_skipped("this kernel refuses table flags owner,persist (Linux 6.9+ has them)");
        // Fallback: adopting fails and changes nothing; the plain table still guards.
        let err = Held::adopt(&lab.host).err().expect("adopt must fail");
        println!("adopt without kernel support: {err}");
        assert_eq!(table_image(&lab.host).as_ref(), Some(&want));
        assert!(published(&lab) && !loopback_reachable(&lab));
        return;
    }
    let uname = stdout(&run("uname", &["-r"]));
    assert!(
        std::env::var("CI").is_err() || supported,
        "CI on {uname}: expected owned tables"
    );

    // Adopting a plain table replaces it, contents unchanged, now owned.
    let held = Held::adopt(&lab.host).unwrap();
    let owned = nft::planned_image_held(Some(&rs), Holder::Socket(held.port));
    assert_eq!(holder(&lab.host), Some(Holder::Socket(held.port)));
    assert_eq!(table_image(&lab.host).as_ref(), Some(&owned));
    assert_ne!(owned, want, "ownership shows in the image");
    println!(
        "nft list table while owned:\n{}",
        nft(&lab.host, &["list", "table", "ip", "loopgate"]).1
    );

    // Another process: every change fails or skips the table, and the guard holds.
    let (ok, out) = nft(&lab.host, &["flush", "ruleset"]);
    println!("flush ruleset while owned: ok={ok} {out:?}");
    assert!(
        ok,
        "flush ruleset skips the owned table without an error: {out}"
    );
    // As nftables.service loads its file on restart and reload: `flush ruleset` first.
    let conf = lab.policy(
        "nftables.conf",
        "flush ruleset\ntable inet filter {\n chain input { type filter hook input priority 0; policy accept; }\n}\n",
    );
    let (ok, out) = nft(&lab.host, &["-f", &conf]);
    assert!(ok, "{out}");
    let tables = nft(&lab.host, &["list", "tables"]).1;
    assert!(
        tables.contains("table inet filter") && tables.contains("table ip loopgate"),
        "{tables}"
    );
    // A file that names loopgate's table fails as a whole (EPERM), changing nothing.
    let saved = lab.policy(
        "saved.nft",
        "flush ruleset\ntable ip loopgate {\n chain x { }\n}\n",
    );
    let (ok, out) = nft(&lab.host, &["-f", &saved]);
    println!("nft -f naming table ip loopgate while owned: ok={ok} {out:?}");
    assert!(!ok && out.contains("Operation not permitted"), "{out}");
    assert!(nft(&lab.host, &["list", "tables"])
        .1
        .contains("table inet filter"));
    let attempts: &[(&str, &[&str])] = &[
        ("delete table", &["delete", "table", "ip", "loopgate"]),
        (
            "flags dormant",
            &["add", "table", "ip", "loopgate", "{ flags dormant; }"],
        ),
        ("flush table", &["flush", "table", "ip", "loopgate"]),
        (
            "an accept rule ahead of the guard",
            &["insert", "rule", "ip", "loopgate", "input_if_br0", "accept"],
        ),
        (
            "delete a chain",
            &["delete", "chain", "ip", "loopgate", "input_if_br0"],
        ),
    ];
    for (what, args) in attempts {
        let (ok, out) = nft(&lab.host, args);
        println!("{what} while owned: ok={ok} {out:?}");
        assert!(!ok, "{what} succeeded on an owned table");
        assert!(out.contains("Operation not permitted"), "{what}: {out}");
    }
    assert_eq!(table_image(&lab.host).as_ref(), Some(&owned));
    assert!(published(&lab), "the grant still works");
    assert!(!loopback_reachable(&lab), "the guard still holds");
    // loopgate's own plain paths, from another socket: refused, nothing changed.
    let (apply, restore) = lab.host.enter(move || {
        let snap = nft::snapshot(None).unwrap();
        (
            System::default()
                .apply_table(Some(&ruleset(&[3306, 3307])))
                .map(|_| ()),
            System::default().restore(&snap),
        )
    });
    for (what, r) in [("apply", apply), ("restore", restore)] {
        let e = format!("{:#}", r.expect_err(what));
        assert!(e.contains("Operation not permitted"), "{what}: {e}");
    }
    assert_eq!(table_image(&lab.host).as_ref(), Some(&owned));
    // And adopting it while it is held elsewhere fails the same way.
    let err = Held::adopt(&lab.host).err().expect("adopt of a held table");
    assert!(err.contains("owned by another process"), "{err}");

    // The owner goes: the table stays, orphaned, still guarding.
    let old_port = held.port;
    drop(held);
    assert_eq!(holder(&lab.host), Some(Holder::Orphaned));
    // An orphan (left by a watch that stopped) is loopgate's own: it compares equal to
    // the plan, so a command after watch does not take it for tampering.
    assert_eq!(table_image(&lab.host), Some(nft::planned_image(&rs)));
    assert!(published(&lab) && !loopback_reachable(&lab));
    println!(
        "nft list table when orphaned:\n{}",
        nft(&lab.host, &["list", "table", "ip", "loopgate"]).1
    );

    // A new owner adopts the orphan in place; flushes skip it again.
    let gen_before = lab.host.enter(|| nft::snapshot(None).unwrap().generation());
    let held = Held::adopt(&lab.host).unwrap();
    // The kernel binds a process's first netlink socket to its pid: the same port id
    // again, once the old socket is gone.
    println!("owner port ids: {old_port}, then {}", held.port);
    let owned = nft::planned_image_held(Some(&rs), Holder::Socket(held.port));
    assert_eq!(table_image(&lab.host).as_ref(), Some(&owned));
    let gen_after = lab.host.enter(|| nft::snapshot(None).unwrap().generation());
    assert_eq!(
        gen_after,
        gen_before.wrapping_add(1),
        "one commit: the adoption"
    );
    let (ok, out) = nft(&lab.host, &["flush", "ruleset"]);
    assert!(ok, "{out}");
    let (ok, _) = nft(
        &lab.host,
        &["add", "table", "ip", "loopgate", "{ flags dormant; }"],
    );
    assert!(!ok);
    assert_eq!(table_image(&lab.host).as_ref(), Some(&owned));
    assert!(published(&lab) && !loopback_reachable(&lab));
    drop(held);

    // An orphan is an ordinary table again: anyone's flush removes it.
    let (ok, out) = nft(&lab.host, &["flush", "ruleset"]);
    assert!(ok, "{out}");
    assert_eq!(holder(&lab.host), None, "flush ruleset removed the orphan");
}

#[test]
fn the_owner_changes_contents_in_one_batch_without_letting_go() {
    let lab = Lab::new();
    let supported = lab.host.enter(|| nft::probe_owner_support().unwrap());
    if !supported {
        say_skipped("this kernel refuses table flags owner,persist (Linux 6.9+ has them)");
        let err = Held::adopt(&lab.host).err().expect("adopt must fail");
        assert_eq!(holder(&lab.host), None, "{err}: nothing created");
        return;
    }
    // No table yet: adopt creates an empty owned one.
    let held = Held::adopt(&lab.host).unwrap();
    let port = held.port;
    let empty = nft::planned_image_held(None, Holder::Socket(port));
    assert_eq!(table_image(&lab.host).as_ref(), Some(&empty));

    let (one, two) = (ruleset(&[3306]), ruleset(&[3306, 3307]));
    for rs in [&one, &two, &one] {
        let want = nft::planned_image_held(Some(rs), Holder::Socket(port));
        let (vouch, gen_before) = held.with({
            let rs = rs.clone();
            move |o| {
                let before = nft::snapshot(None).unwrap().generation();
                (o.apply(Some(&rs)).unwrap(), before)
            }
        });
        let vouch = vouch.expect("a vouch for a table");
        assert_eq!(vouch.generation, gen_before.wrapping_add(1), "one batch");
        assert_eq!(table_image(&lab.host).as_ref(), Some(&want));
        // The vouch works as apply's does: the elements are not dumped again.
        let vouched = lab.host.enter({
            let want = want.clone();
            move || {
                let s = nft::snapshot(Some((&vouch, &want))).unwrap();
                (s.vouched(), s.image() == Some(want))
            }
        });
        assert_eq!(vouched, (true, true));
        assert_eq!(holder(&lab.host), Some(Holder::Socket(port)));
    }

    // A restore through the owner puts the contents back and keeps the table owned.
    let restored = held.with({
        let two = two.clone();
        move |o| {
            let before = nft::snapshot(None).unwrap();
            o.apply(Some(&two)).unwrap();
            o.restore(&before).unwrap();
            nft::snapshot(None).unwrap().image()
        }
    });
    assert_eq!(
        restored,
        Some(nft::planned_image_held(Some(&one), Holder::Socket(port)))
    );

    // Nothing to install: an empty table, still owned, still reserving the name.
    assert_eq!(held.with(|o| o.apply(None).unwrap()), None);
    assert_eq!(table_image(&lab.host).as_ref(), Some(&empty));
    let (ok, _) = nft(&lab.host, &["delete", "table", "ip", "loopgate"]);
    assert!(!ok, "the empty owned table is still protected");

    // A lookalike owned by another process (nft -i holds its socket): adopt refuses.
    drop(held);
    let (ok, out) = nft(&lab.host, &["delete", "table", "ip", "loopgate"]);
    assert!(ok, "{out}");
    let mut other = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.host.name, "nft", "-i"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = other.stdin.take().unwrap();
    writeln!(stdin, "add table ip loopgate {{ flags owner; }}").unwrap();
    stdin.flush().unwrap();
    let seen = time_until(|| matches!(holder(&lab.host), Some(Holder::Socket(_))));
    assert!(seen.is_some(), "nft -i did not create its owned table");
    let err = Held::adopt(&lab.host)
        .err()
        .expect("adopt of a foreign table");
    assert!(err.contains("owned by another process"), "{err}");
    // Its image never equals one loopgate's owner would hold.
    let foreign = table_image(&lab.host).unwrap();
    assert_ne!(foreign, nft::planned_image_held(None, Holder::Socket(port)));
    drop(stdin);
    let _ = other.wait();
    // Without persist, the foreign table goes with its owner.
    assert!(time_until(|| holder(&lab.host).is_none()).is_some());
}
