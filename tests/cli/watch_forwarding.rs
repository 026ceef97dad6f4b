//! Topic: watch following a policy, commands borrowing watch's table, the socket loop:
//! attacks on issue 11's promises (second review). Each test states what should hold; a
//! failing test is a hole.

use super::*;
use std::io::Write;
use std::time::{Duration, Instant};

/// Starts `watch` with extra arguments, in `cwd`, logging to `log`; waits for "started".
fn spawn_watch(
    lab: &Lab,
    extra: &[&str],
    cwd: &std::path::Path,
    log: &std::path::Path,
) -> std::process::Child {
    let child = std::process::Command::new(BIN)
        .args(["--netns", &lab.host.name, "watch"])
        .args(extra)
        .current_dir(cwd)
        .env("LOOPGATE_STATE_DIR", &lab.state_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(log).unwrap_or_default();
    time_until(|| read().contains("loopgate watch: started"))
        .unwrap_or_else(|| panic!("watch did not start: {}", read()));
    child
}

fn served(lab: &Lab, port: u16) -> bool {
    tcp_request(&lab.container, sa(HOST_ADDR, port)).is_some()
}

/// The admin edits the policy watch follows: removes the grant on br0 and adds one on a
/// bridge that exists but whose address the runtime has not assigned yet (docker and
/// CNI plugins create the bridge, then add the address). `spec::resolve` calls that
/// pending; but `policy::specs_of` validates entries on existing interfaces with
/// `input::validate`, which refuses "has no IPv4 address", so the whole new policy is
/// refused ("keeping what it said before"), and it is never read again because the
/// follower reloads only when the files' (name, size, mtime) change. The removed grant
/// stays open for good, even after the address appears.
#[test]
fn attack2_a_policy_refused_for_a_transient_host_state_is_never_retried_and_a_removed_grant_stays()
{
    let (lab, _services) = lab_with_services();
    let dir = lab.state_dir.join("policy");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("a.yaml"),
        "grants:\n  - interface: br0\n    allow: 192.0.2.0/25\n    port: 3306\n",
    )
    .unwrap();
    lab.ok(&["apply", dir.to_str().unwrap()]);
    let log = lab.state_dir.join("watch-policy.log");
    let mut child = spawn_watch(
        &lab,
        &["--policy", dir.to_str().unwrap()],
        &lab.state_dir,
        &log,
    );
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(served(&lab, 3306));
    // The runtime creates br5; its address comes a moment later.
    lab.host.ip("link add br5 type bridge");
    lab.host.ip("link set br5 up");
    std::fs::write(
        dir.join("a.yaml"),
        "grants:\n  - interface: br5\n    allow: 198.51.100.0/24\n    port: 3307\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    lab.host.ip("addr add 198.51.100.1/24 dev br5");
    // Give watch ample time (ticks every 250 ms).
    let revoked = time_until(|| !served(&lab, 3306));
    let log_text = read_log();
    let _ = child.kill();
    let _ = child.wait();
    println!("{log_text}");
    assert!(
        revoked.is_some(),
        "the grant removed from the policy is still served >3 s after the policy changed and \
         br5 got its address; watch log:\n{log_text}"
    );
}

/// `loopgate apply FILE` with a relative FILE while watch runs: the command line is
/// forwarded as is and watch resolves FILE against its own working directory (`/`
/// under systemd), not the client's. Here watch's directory holds another policy under
/// the same relative name, which allows the whole /24 (the neighbour too): the client
/// asked for 192.0.2.0/25 and got /24. Without watch the same command applies the
/// client's file.
#[test]
fn attack2_a_relative_policy_path_is_read_in_watchs_directory_not_the_clients() {
    let (lab, _services) = lab_with_services();
    let client_dir = lab.state_dir.join("client");
    let watch_dir = lab.state_dir.join("watchcwd");
    for (d, allow) in [(&client_dir, "192.0.2.0/25"), (&watch_dir, "192.0.2.0/24")] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(
            d.join("p.yaml"),
            format!("grants:\n  - interface: br0\n    allow: {allow}\n    port: 3307\n"),
        )
        .unwrap();
    }
    let log = lab.state_dir.join("watch-cwd.log");
    let mut child = spawn_watch(&lab, &[], &watch_dir, &log);
    let out = std::process::Command::new(BIN)
        .args(["--netns", &lab.host.name, "apply", "p.yaml"])
        .current_dir(&client_dir)
        .env("LOOPGATE_STATE_DIR", &lab.state_dir)
        .output()
        .unwrap();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    println!("apply: {} / {}\n{log_text}", stdout(&out), stderr(&out));
    let neighbour_in = tcp_request(&lab.neighbour, sa(HOST_ADDR, 3307)).is_some();
    let state = std::fs::read_dir(&lab.state_dir)
        .unwrap()
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with("netns-"))
        .map(|d| std::fs::read_to_string(d.path().join("state.json")).unwrap_or_default())
        .collect::<String>();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        !neighbour_in && !state.contains("192.0.2.0/24"),
        "the client applied its p.yaml (allow 192.0.2.0/25) but watch applied its own \
         ./p.yaml (allow 192.0.2.0/24): neighbour reaches the service = {neighbour_in}; state: {state}"
    );
}

/// A root process that connects to watch.sock and trickles its request (one byte every
/// second, never a newline): `rpc::serve` reads with a 5 s timeout *per read*, on
/// watch's only thread, so watch neither repairs nor runs its fast path while it waits.
/// A flush of the ruleset meanwhile (watch --no-hold, as on every kernel before 6.9)
/// leaves br0 at route_localnet=1 with no guard for as long as the client likes.
#[test]
fn attack2_a_client_that_trickles_its_request_stalls_watch_and_a_flush_stays_unrepaired() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    let watch = Watch::start(&lab);
    let sock = lab.watch_socket();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickler = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
            let deadline = Instant::now() + Duration::from_secs(12);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
                if s.write_all(b" ").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    lab.host.exec(&["nft", "flush", "ruleset"]);
    // Unguarded and open: how long does it stay so?
    let start = Instant::now();
    let mut open_unguarded = Duration::ZERO;
    while start.elapsed() < Duration::from_secs(8) {
        if GuardSampler::check(&lab.host).is_empty() {
            break;
        }
        open_unguarded = start.elapsed();
        // The polling interval of this bounded measurement.
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    trickler.join().unwrap();
    println!("{}", watch.log());
    assert!(
        open_unguarded < Duration::from_secs(1),
        "br0 stayed open without its guard for {open_unguarded:?} while a client \
         trickled its request to watch.sock"
    );
}

/// A network namespace can outlive every process and every visible mount: its nsfs
/// bind mount (`ip netns add` makes one) lives on in a *mount namespace with no
/// process in it*, itself pinned by an nsfs mount (`unshare --mount=FILE`, a persistent
/// mount namespace; util-linux 2.38 sometimes races binding it, hence the retries). `state::sweep_stale` reads the mounts of its own mount namespace
/// and of the mount namespace of each process, never those of a mount namespace that
/// only an nsfs mount keeps alive, so it takes the living namespace for gone and
/// deletes its state: originals and journal lost while its route_localnet is still 1.
#[test]
fn attack2_the_sweep_deletes_the_state_of_a_namespace_kept_alive_by_a_processless_mount_namespace()
{
    let lab = Lab::new();
    let victim = Netns::new("victim");
    victim.ip("link add brv type bridge");
    victim.ip("addr add 198.51.100.1/24 dev brv");
    victim.ip("link set brv up");
    let out = std::process::Command::new(BIN)
        .args([
            "--netns",
            &victim.name,
            "expose",
            "brv",
            "--allow",
            "198.51.100.0/24",
            "--port",
            "3306",
        ])
        .env("LOOPGATE_STATE_DIR", &lab.state_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let dirs = || -> Vec<String> {
        std::fs::read_dir(&lab.state_dir)
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("netns-"))
            .collect()
    };
    let victim_dirs = dirs();
    assert_eq!(victim_dirs.len(), 1, "{victim_dirs:?}");

    // Outer private mount namespace (kept by a sleep): a tmpfs, a persistent inner mount
    // namespace bound on it, the victim's nsfs file bound inside the inner one only, then
    // /run/netns/<victim> unmounted in the outer one.
    let pin = lab.state_dir.join("pin");
    let flag = lab.state_dir.join("pinned");
    std::fs::create_dir_all(&pin).unwrap();
    let script = format!(
        "set -e; mount -t tmpfs tmpfs {pin}; mount --make-private {pin}; touch {pin}/mnt {pin}/net; \
         for i in 1 2 3 4 5 6 7 8; do unshare --mount={pin}/mnt --propagation private true && break; sleep 0.2; done; \
         grep -q '{pin}/mnt ' /proc/self/mountinfo; \
         nsenter --mount={pin}/mnt mount --bind /run/netns/{ns} {pin}/net; \
         umount /run/netns/{ns}; touch {flag}; exec sleep 60",
        pin = pin.display(),
        ns = victim.name,
        flag = flag.display()
    );
    let mut holder = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if time_until(|| flag.exists()).is_none() {
        let _ = holder.kill();
        let out = holder.wait_with_output().unwrap();
        panic!("pin not set up: {}", String::from_utf8_lossy(&out.stderr));
    }
    // The name goes from the host's view; the namespace lives on in the inner one.
    run("ip", &["netns", "del", &victim.name]);
    let alive = |what: &str| {
        let out = std::process::Command::new("nsenter")
            .args(["-t", &holder.id().to_string(), "-m", "--", "nsenter"])
            .arg(format!("--mount={}/mnt", pin.display()))
            .args(["--", "nsenter"])
            .arg(format!("--net={}/net", pin.display()))
            .args(["cat", "/proc/sys/net/ipv4/conf/brv/route_localnet"])
            .output()
            .unwrap();
        println!(
            "{what}: victim brv route_localnet = {:?} {}",
            stdout(&out).trim(),
            stderr(&out)
        );
        stdout(&out).trim().to_string()
    };
    assert_eq!(
        alive("before the sweep"),
        "1",
        "the victim namespace lives, opened by loopgate"
    );

    // Any command elsewhere sweeps.
    lab.loopgate(&["audit"]);
    let after = dirs();
    let still_open = alive("after the sweep");
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(still_open, "1");
    assert!(
        after.iter().any(|d| victim_dirs.contains(d)),
        "the state of a living namespace (route_localnet 1 on brv, opened by loopgate) was swept: {after:?}"
    );
}

/// `generate-policy | loopgate apply /dev/stdin` while watch runs: the path is
/// forwarded and watch opens *its own* standard input (/dev/null under systemd), so
/// the client's policy is never read; what watch applies instead is not what was asked.
#[test]
fn attack2_apply_of_dev_stdin_through_watch_reads_watchs_stdin_not_the_clients() {
    let (lab, _services) = lab_with_services();
    let log = lab.state_dir.join("watch-stdin.log");
    let mut child = spawn_watch(&lab, &[], &lab.state_dir, &log);
    let mut client = std::process::Command::new(BIN)
        .args(["--netns", &lab.host.name, "apply", "/dev/stdin"])
        .env("LOOPGATE_STATE_DIR", &lab.state_dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    client
        .stdin
        .take()
        .unwrap()
        .write_all(b"grants:\n  - interface: br0\n    allow: 192.0.2.0/25\n    port: 3306\n")
        .unwrap();
    let out = client.wait_with_output().unwrap();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    println!("{} / {}\n{log_text}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(served(&lab, 3306), "the piped policy's grant is in force");
}
