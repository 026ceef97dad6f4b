//! Test lab: throwaway network namespaces with real services and real clients.
//!
//! Every namespace is created here and deleted on drop (also when a test panics), so
//! the machine's own namespace is never touched. Services and clients are plain std
//! sockets opened from a thread that has entered the namespace with setns(2): the
//! socket stays in that namespace for its whole life.

#![allow(dead_code)]

pub mod runtimes;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_loopgate");
pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const CONTAINER_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const NEIGHBOUR_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);
/// Allowed in most tests: the container is inside, the neighbour outside.
pub const ALLOWED: &str = "192.0.2.0/25";
pub const TIMEOUT: Duration = Duration::from_millis(1500);
/// The grant most tests start from: br0's 3306 for the allowed half of the lab. Use
/// [`Lab::expose_default`] unless the test runs it some other way (a failpoint, an
/// expected refusal, `--persist`).
pub const EXPOSE_DEFAULT: [&str; 6] = ["expose", "br0", "--allow", ALLOWED, "--port", "3306"];

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Fails loudly unless the tests run as root: namespace tests never skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests create network namespaces and must run as root (scripts/test.sh does)"
    );
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A named network namespace, deleted on drop by the value that created it.
pub struct Netns {
    pub name: String,
    owned: bool,
}

/// Removes what a test process that was killed (SIGKILL, a timeout: no `Drop` ran)
/// left behind: `lgt-*` namespaces and `loopgate-test-lgt-*` state directories whose
/// creating process is gone (its pid is in the name). Once per test process, before its
/// first namespace. A pid in use again by another process keeps its leftovers: only a
/// dead creator's are removed.
fn sweep_killed_runs() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        let dead = |name: &str| {
            name.rsplit('-')
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        };
        for e in std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("lgt-") && dead(&name) {
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
            }
        }
        for e in std::fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(ns) = name.strip_prefix("loopgate-test-") {
                if ns.starts_with("lgt-") && dead(ns) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    });
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        require_root();
        sweep_killed_runs();
        let name = format!(
            "lgt-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        run("ip", &["netns", "add", &name]);
        Netns { name, owned: true }
    }

    /// A second handle, for another thread; it does not delete the namespace.
    pub fn handle(&self) -> Netns {
        Netns {
            name: self.name.clone(),
            owned: false,
        }
    }

    /// Runs a command inside the namespace and insists on success.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a command inside the namespace and returns its output, success or not.
    pub fn exec_status(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("running ip netns exec")
    }

    pub fn ip(&self, args: &str) {
        let mut full = vec!["-n", &self.name];
        full.extend(args.split_whitespace());
        run("ip", &full);
    }

    pub fn sysctl(&self, key: &str) -> String {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let out = self.exec(&["cat", &path]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn set_sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")]);
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("netns file");
            // SAFETY: valid fd; setns only changes this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}");
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Background servers on the host's loopback; stopped on drop.
pub struct Services {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// (service port, source) of every datagram a UDP service received.
    pub udp_seen: Arc<std::sync::Mutex<Vec<(u16, SocketAddr)>>>,
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// TCP servers answer `tcp:<port>` to each line; UDP servers answer `udp:<port>`.
pub fn start_services(ns: &Netns, tcp: &[SocketAddrV4], udp: &[SocketAddrV4]) -> Services {
    let stop = Arc::new(AtomicBool::new(false));
    let udp_seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for &addr in tcp {
        let listener = ns.enter(move || TcpListener::bind(addr).expect("bind tcp service"));
        listener.set_nonblocking(true).unwrap();
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut conns: Vec<TcpStream> = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                if let Ok((s, _)) = listener.accept() {
                    s.set_nonblocking(true).unwrap();
                    conns.push(s);
                }
                conns.retain_mut(|c| {
                    let mut buf = [0u8; 256];
                    match c.read(&mut buf) {
                        Ok(0) => false,
                        Ok(_) => c
                            .write_all(format!("tcp:{}\n", addr.port()).as_bytes())
                            .is_ok(),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
                        Err(_) => false,
                    }
                });
                // Pacing: the sockets are non-blocking, so poll them every 5 ms.
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
    }
    for &addr in udp {
        let sock = ns.enter(move || UdpSocket::bind(addr).expect("bind udp service"));
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let stop = stop.clone();
        let seen = udp_seen.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((_, from)) = sock.recv_from(&mut buf) {
                    seen.lock().unwrap().push((addr.port(), from));
                    let _ = sock.send_to(format!("udp:{}\n", addr.port()).as_bytes(), from);
                }
            }
        }));
    }
    Services {
        stop,
        threads,
        udp_seen,
    }
}

/// One TCP request from inside `ns`; the reply line, or None if nothing answered.
pub fn tcp_request(ns: &Netns, to: SocketAddrV4) -> Option<String> {
    ns.enter(move || {
        let mut s = TcpStream::connect_timeout(&to.into(), TIMEOUT).ok()?;
        s.set_read_timeout(Some(TIMEOUT)).ok()?;
        s.write_all(b"ping\n").ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).trim().to_string())
    })
}

/// Sends a TCP SYN (a connect attempt) from inside `ns`, ignoring the outcome. Used
/// for attacks whose success is measured on the server side.
pub fn fire_tcp(ns: &Netns, to: SocketAddrV4) {
    ns.enter(move || {
        let _ = TcpStream::connect_timeout(&to.into(), Duration::from_millis(300));
    })
}

/// Sends one UDP datagram from inside `ns` without waiting for an answer.
pub fn fire_udp(ns: &Netns, to: SocketAddrV4) {
    ns.enter(move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("udp socket");
        let _ = s.send_to(b"probe\n", to);
    })
}

/// The host's TcpPassiveOpens counter: SYNs that a listening socket accepted.
pub fn passive_opens(ns: &Netns) -> u64 {
    let out = ns.exec(&["cat", "/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let tcp: Vec<&str> = text.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let names: Vec<&str> = tcp[0].split_whitespace().collect();
    let values: Vec<&str> = tcp[1].split_whitespace().collect();
    let i = names
        .iter()
        .position(|n| *n == "PassiveOpens")
        .expect("PassiveOpens column");
    values[i].parse().expect("counter")
}

/// An open TCP connection made from inside a namespace.
pub fn tcp_connect(ns: &Netns, to: SocketAddrV4) -> TcpStream {
    ns.enter(move || {
        let s = TcpStream::connect_timeout(&to.into(), TIMEOUT).expect("connect");
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s
    })
}

/// Sends a line on an open connection and reads the answer.
pub fn tcp_ping(s: &mut TcpStream) -> Option<String> {
    s.write_all(b"ping\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

/// One UDP request from inside `ns`; the reply, or None.
pub fn udp_request(ns: &Netns, to: SocketAddrV4) -> Option<String> {
    ns.enter(move || {
        let s = UdpSocket::bind("0.0.0.0:0").ok()?;
        s.set_read_timeout(Some(TIMEOUT)).ok()?;
        s.send_to(b"ping\n", to).ok()?;
        let mut buf = [0u8; 64];
        let (n, _) = s.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    })
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends UDP from `ns` to 127.0.0.1:5354, about 5 datagrams per millisecond, counting
/// each sent in `sent`, until `stop` is set (or 30 s pass): the flood that measures how
/// much a moment without the guard leaks.
pub fn flood_loopback(
    ns: &Netns,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> std::thread::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    let ns = ns.handle();
    std::thread::spawn(move || {
        ns.enter(move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                if s.send_to(b"flood\n", sa(LO, 5354)).is_ok() {
                    sent.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    })
}

/// How many of [`flood_loopback`]'s datagrams from the container reached the service.
pub fn leaked_from_container(services: &Services) -> usize {
    services
        .udp_seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(port, from)| *port == 5354 && from.ip() == std::net::IpAddr::V4(CONTAINER_ADDR))
        .count()
}

/// Sends one UDP datagram with a forged source address through a raw socket.
pub fn send_spoofed_udp(ns: &Netns, src: Ipv4Addr, dst: SocketAddrV4, payload: &'static [u8]) {
    flood_udp(ns, src, dst, payload, 1);
}

/// Sends `count` identical UDP datagrams with any source address through a raw socket,
/// paced so the receiving side's backlog does not overflow. Returns how many the kernel
/// accepted for sending.
pub fn flood_udp(
    ns: &Netns,
    src: Ipv4Addr,
    dst: SocketAddrV4,
    payload: &'static [u8],
    count: usize,
) -> usize {
    ns.enter(move || {
        let mut pkt = vec![0u8; 20 + 8 + payload.len()];
        let total = pkt.len() as u16;
        pkt[0] = 0x45;
        pkt[2..4].copy_from_slice(&total.to_be_bytes());
        pkt[8] = 64;
        pkt[9] = 17;
        pkt[12..16].copy_from_slice(&src.octets());
        pkt[16..20].copy_from_slice(&dst.ip().octets());
        let h = checksum(&pkt[..20]);
        pkt[10..12].copy_from_slice(&h.to_be_bytes());
        pkt[20..22].copy_from_slice(&40000u16.to_be_bytes());
        pkt[22..24].copy_from_slice(&dst.port().to_be_bytes());
        pkt[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        pkt[28..].copy_from_slice(payload);
        let mut sent = 0;
        // SAFETY: plain syscalls on a socket we own; buffers outlive the calls.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
            assert!(fd >= 0, "raw socket");
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as u16;
            sa.sin_addr.s_addr = u32::from_ne_bytes(dst.ip().octets());
            for i in 0..count {
                let rc = libc::sendto(
                    fd,
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                );
                if rc > 0 {
                    sent += 1;
                }
                if i % 200 == 199 {
                    // Pacing: a pause every 200 packets keeps the receiver's backlog
                    // from overflowing.
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
            libc::close(fd);
        }
        assert!(sent > 0, "raw sendto: {}", std::io::Error::last_os_error());
        sent
    })
}

/// A host with a bridge, an allowed container and a disallowed neighbour on it.
pub struct Lab {
    pub host: Netns,
    pub container: Netns,
    pub neighbour: Netns,
    pub state_dir: PathBuf,
    owns_state_dir: bool,
}

impl Lab {
    /// A second lab that uses `other`'s state directory: only the namespace identity
    /// keeps their state apart.
    pub fn sharing_state_with(other: &Lab) -> Lab {
        let mut lab = Lab::new();
        let _ = std::fs::remove_dir_all(&lab.state_dir);
        lab.state_dir = other.state_dir.clone();
        lab.owns_state_dir = false;
        lab
    }

    pub fn new() -> Lab {
        let host = Netns::new("host");
        let container = Netns::new("ctr");
        let neighbour = Netns::new("nbr");
        host.ip("link set lo up");
        host.ip("link add br0 type bridge");
        host.ip(&format!("addr add {HOST_ADDR}/24 dev br0"));
        host.ip("link set br0 up");
        // Kernel defaults, spelled out: reverse-path filtering off, as many CNIs set it,
        // so the spoofing tests exercise loopgate's guard and not rp_filter.
        host.set_sysctl("net.ipv4.conf.all.rp_filter", "0");
        host.set_sysctl("net.ipv4.conf.default.rp_filter", "0");
        host.set_sysctl("net.ipv4.conf.br0.rp_filter", "0");
        for (peer, addr, tag) in [
            (&container, CONTAINER_ADDR, "c"),
            (&neighbour, NEIGHBOUR_ADDR, "n"),
        ] {
            let veth = format!("v{tag}");
            run(
                "ip",
                &[
                    "-n", &host.name, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
                    "netns", &peer.name,
                ],
            );
            host.ip(&format!("link set {veth} master br0 up"));
            peer.ip(&format!("addr add {addr}/24 dev eth0"));
            peer.ip("link set eth0 up");
            peer.ip(&format!("route add default via {HOST_ADDR}"));
        }
        let state_dir = std::env::temp_dir().join(format!("loopgate-test-{}", host.name));
        std::fs::create_dir_all(&state_dir).unwrap();
        Lab {
            host,
            container,
            neighbour,
            state_dir,
            owns_state_dir: true,
        }
    }

    /// Adds a bridge `bridge` with address `host_addr`/24 to the host and one client
    /// namespace on it at `client_addr`, routed through the bridge address.
    pub fn add_bridge_with_client(
        &self,
        bridge: &str,
        host_addr: Ipv4Addr,
        client_addr: Ipv4Addr,
    ) -> Netns {
        let client = Netns::new(&format!("c{bridge}"));
        self.host.ip(&format!("link add {bridge} type bridge"));
        self.host
            .ip(&format!("addr add {host_addr}/24 dev {bridge}"));
        self.host.ip(&format!("link set {bridge} up"));
        self.host
            .set_sysctl(&format!("net.ipv4.conf.{bridge}.rp_filter"), "0");
        let veth = format!("v{bridge}");
        run(
            "ip",
            &[
                "-n",
                &self.host.name,
                "link",
                "add",
                &veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &client.name,
            ],
        );
        self.host.ip(&format!("link set {veth} master {bridge} up"));
        client.ip(&format!("addr add {client_addr}/24 dev eth0"));
        client.ip("link set eth0 up");
        client.ip(&format!("route add default via {host_addr}"));
        client
    }

    /// Lets `ns` send packets to 127.0.0.1 through the host, as an attacker on the link
    /// would: route 127.0.0.0/8 via the host and allow 127/8 on its own interface. The
    /// peers' own `lo` is never brought up, so 127/8 is not local there.
    pub fn route_loopback_via_host(ns: &Netns) {
        Lab::route_loopback_via(ns, HOST_ADDR);
    }

    /// As [`Lab::route_loopback_via_host`], through the host address `via`.
    pub fn route_loopback_via(ns: &Netns, via: Ipv4Addr) {
        ns.set_sysctl("net.ipv4.conf.eth0.route_localnet", "1");
        ns.ip(&format!("route add 127.0.0.0/8 via {via} dev eth0"));
    }

    /// Writes a policy file into the lab's state directory; returns its path.
    pub fn policy(&self, name: &str, text: &str) -> String {
        let path = self.state_dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    }

    /// Writes a policy publishing br0:3306 to 64 networks (/30s: long enough for the
    /// state to keep the list in a file of its own), all of 192.0.2.0/24 for `variant`
    /// 0, 198.51.100.0/30 instead of 192.0.2.0/30 for 1: both allow CONTAINER_ADDR.
    pub fn long_list_policy(&self, name: &str, variant: usize) -> String {
        let mut allow: Vec<String> = (0..64).map(|i| format!("192.0.2.{}/30", i * 4)).collect();
        if variant == 1 {
            allow[0] = "198.51.100.0/30".into();
        }
        self.policy(
            name,
            &format!(
                "grants:\n  - interface: br0\n    port: 3306\n    allow: [{}]\n",
                allow.join(", ")
            ),
        )
    }

    /// The allow list files of the lab's state directories (`allow-<sha256>.json`),
    /// sorted.
    pub fn allow_list_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.state_dir)
            .unwrap()
            .flatten()
            .filter(|d| d.file_name().to_string_lossy().starts_with("netns-"))
            .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("allow-"))
            .collect();
        names.sort();
        names
    }

    /// The running watch's socket (`<state dir>/netns-<cookie>/watch.sock`).
    pub fn watch_socket(&self) -> PathBuf {
        std::fs::read_dir(&self.state_dir)
            .unwrap()
            .flatten()
            .map(|e| e.path().join("watch.sock"))
            .find(|p| p.exists())
            .expect("watch.sock")
    }

    /// Runs loopgate in the host namespace.
    pub fn loopgate(&self, args: &[&str]) -> Output {
        self.loopgate_env(args, &[])
    }

    pub fn loopgate_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("--netns").arg(&self.host.name).args(args);
        cmd.env("LOOPGATE_STATE_DIR", &self.state_dir)
            .env_remove("LOOPGATE_FAILPOINT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("running loopgate")
    }

    /// Runs loopgate inside the host namespace without `--netns` (through `ip netns
    /// exec`), as an admin on that host would: `--persist` is refused with `--netns`.
    pub fn loopgate_inside(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host.name, BIN]).args(args);
        cmd.env("LOOPGATE_STATE_DIR", &self.state_dir)
            .env_remove("LOOPGATE_FAILPOINT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("running loopgate")
    }

    /// Runs loopgate and insists on exit 0.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.loopgate(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "loopgate {args:?}: stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `loopgate expose br0 --allow ALLOWED --port 3306` ([`EXPOSE_DEFAULT`]), insisting
    /// on exit 0; returns its stdout.
    #[track_caller]
    pub fn expose_default(&self) -> String {
        self.ok(&EXPOSE_DEFAULT)
    }

    /// `loopgate audit` (text report): its exit code and stdout.
    pub fn audit(&self) -> (Option<i32>, String) {
        let out = self.loopgate(&["audit"]);
        (out.status.code(), stdout(&out))
    }

    /// Runs `loopgate audit` and insists on exit `code` and on every one of `needles`
    /// in its text report; returns the report for further checks. A failure names the
    /// caller's line and prints the whole report.
    #[track_caller]
    pub fn assert_audit(&self, code: i32, needles: &[&str]) -> String {
        let out = self.loopgate(&["audit"]);
        let text = stdout(&out);
        assert_eq!(
            out.status.code(),
            Some(code),
            "audit exit code; report:\n{text}\nstderr: {}",
            stderr(&out)
        );
        for needle in needles {
            assert!(
                text.contains(needle),
                "audit does not say {needle:?}:\n{text}"
            );
        }
        text
    }

    /// Writes a fake runtime CLI called `name` into the lab's state dir that prints
    /// `json` (a `network inspect` answer) whatever it is asked; returns a PATH with it
    /// first. For the runtime's answers loopgate must refuse; the real runtimes are in
    /// `support::runtimes`.
    pub fn fake_cli(&self, name: &str, json: &str) -> String {
        self.fake_cli_script(name, &format!("cat <<'JSON'\n{json}\nJSON\n"))
    }

    /// As [`Lab::fake_cli`], with `body` as the shell script's body.
    pub fn fake_cli_script(&self, name: &str, body: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.state_dir.join("fakebin");
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join(name);
        std::fs::write(&script, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        format!(
            "{}:{}",
            dir.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// Everything that must not change on a failed or refused command: the whole
    /// ruleset, every route_localnet of the host namespace, and loopgate's state file.
    ///
    /// Rule counters are left out: they move with traffic, not with loopgate. (After a
    /// failure at `commit`, the revoked flow's conntrack entry is already gone; the
    /// client's next packet, even a delayed ACK, re-creates it through the DNAT rule.)
    pub fn fingerprint(&self) -> String {
        // `nft -s` (stateless) prints rules without counter values.
        let ruleset = self.host.exec(&["nft", "-s", "list", "ruleset"]);
        let sysctls = self.host.exec(&[
            "sh",
            "-c",
            "grep -H . /proc/sys/net/ipv4/conf/*/route_localnet",
        ]);
        let mut state = String::new();
        if let Ok(dirs) = std::fs::read_dir(&self.state_dir) {
            for d in dirs.flatten() {
                if let Ok(s) = std::fs::read_to_string(d.path().join("state.json")) {
                    state.push_str(&s);
                }
            }
        }
        format!(
            "{}\n--\n{}\n--\n{}",
            String::from_utf8_lossy(&ruleset.stdout),
            String::from_utf8_lossy(&sysctls.stdout),
            state
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.owns_state_dir {
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sa(addr: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(addr, port)
}

/// loopgate's table as `nft list table ip loopgate` prints it, split into chains and
/// verdict maps, so tests can follow a packet's path (map element -> chain -> rules)
/// in what the kernel actually holds.
pub struct NftTable {
    pub chains: std::collections::BTreeMap<String, Vec<String>>,
    /// The names of the sets (not maps), in the order listed.
    pub sets: Vec<String>,
    /// Map name -> (element key as printed, chain it jumps to).
    pub maps: std::collections::BTreeMap<String, Vec<(String, String)>>,
}

impl NftTable {
    pub fn read(ns: &Netns) -> NftTable {
        NftTable::parse(&stdout(
            &ns.exec(&["nft", "list", "table", "ip", "loopgate"]),
        ))
    }

    pub fn parse(text: &str) -> NftTable {
        let mut chains = std::collections::BTreeMap::new();
        let mut maps = std::collections::BTreeMap::new();
        let mut sets = Vec::new();
        let mut current: Option<(bool, String)> = None;
        let mut elements = String::new();
        let mut in_elements = false;
        for line in text.lines().map(str::trim) {
            if let Some(name) = line
                .strip_prefix("chain ")
                .and_then(|l| l.strip_suffix(" {"))
            {
                current = Some((true, name.to_string()));
                chains.insert(name.to_string(), Vec::new());
            } else if let Some(name) = line.strip_prefix("set ").and_then(|l| l.strip_suffix(" {"))
            {
                sets.push(name.to_string());
            } else if let Some(name) = line.strip_prefix("map ").and_then(|l| l.strip_suffix(" {"))
            {
                current = Some((false, name.to_string()));
                maps.insert(name.to_string(), Vec::new());
            } else if line == "}" && !in_elements {
                current = None;
            } else if let Some((is_chain, name)) = &current {
                if *is_chain {
                    if !line.starts_with("type ") && !line.is_empty() {
                        chains.get_mut(name).unwrap().push(line.to_string());
                    }
                    continue;
                }
                if let Some(rest) = line.strip_prefix("elements = {") {
                    in_elements = true;
                    elements = rest.to_string();
                } else if in_elements {
                    elements.push(' ');
                    elements.push_str(line);
                }
                if in_elements && elements.trim_end().ends_with('}') {
                    in_elements = false;
                    let body = elements.trim_end().trim_end_matches('}');
                    let list = maps.get_mut(name).unwrap();
                    for element in body.split(',') {
                        if let Some((key, jump)) = element.split_once(" : jump ") {
                            list.push((key.trim().to_string(), jump.trim().to_string()));
                        }
                    }
                }
            }
        }
        NftTable { chains, sets, maps }
    }

    /// The rules of the chain that `key` (as nft prints it) jumps to in `map`.
    pub fn via(&self, map: &str, key: &str) -> Option<&[String]> {
        let (_, chain) = self.maps.get(map)?.iter().find(|(k, _)| k == key)?;
        self.chains.get(chain).map(Vec::as_slice)
    }
}

/// The host's loopback address, where the lab's services listen.
pub const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A lab with TCP services on 127.0.0.1:3306 and :3307 and UDP services on
/// 127.0.0.1:5353, :5354 and 0.0.0.0:5400 in the host namespace.
pub fn lab_with_services() -> (Lab, Services) {
    let lab = Lab::new();
    let services = start_services(
        &lab.host,
        &[sa(LO, 3306), sa(LO, 3307)],
        &[sa(LO, 5353), sa(LO, 5354), sa(Ipv4Addr::UNSPECIFIED, 5400)],
    );
    (lab, services)
}

/// Sum of the packet counters of the rules whose comment contains `needle`.
pub fn counted(lab: &Lab, needle: &str) -> u64 {
    let table = stdout(&lab.host.exec(&["nft", "list", "table", "ip", "loopgate"]));
    table
        .lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| {
            l.split("counter packets ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// `loopgate watch` running in the lab's host namespace; SIGTERMed on drop.
pub struct Watch {
    child: std::process::Child,
    log: PathBuf,
}

impl Watch {
    /// Starts watch protecting the table by repair only (`--no-hold`): the path every
    /// kernel has, and the one the tamper tests exercise. Returns once its first pass is
    /// done (it logs "started").
    pub fn start(lab: &Lab) -> Watch {
        Watch::start_with(lab, &["--no-hold"])
    }

    /// Starts watch holding the table with the owner flag where the kernel has it.
    pub fn start_holding(lab: &Lab) -> Watch {
        Watch::start_with(lab, &[])
    }

    /// Starts watch with extra arguments.
    pub fn start_with(lab: &Lab, extra: &[&str]) -> Watch {
        Watch::start_env(lab, extra, &[])
    }

    /// Starts watch with extra arguments and environment (e.g. `DOCKER_HOST`, so the
    /// `docker` it runs reaches a lab's dockerd).
    pub fn start_env(lab: &Lab, extra: &[&str], env: &[(String, String)]) -> Watch {
        let mut cmd = Command::new(BIN);
        cmd.args(["--netns", &lab.host.name, "watch"])
            .args(extra)
            .envs(env.iter().map(|(k, v)| (k, v)));
        Watch::spawn(lab, cmd)
    }

    /// Starts `cmd`, a prepared `loopgate ... watch` (e.g. from `Podman::command`, which
    /// runs it inside the podman holder's namespaces), with the lab's state directory.
    pub fn spawn(lab: &Lab, mut cmd: Command) -> Watch {
        let log = lab.state_dir.join("watch.log");
        let child = cmd
            .env("LOOPGATE_STATE_DIR", &lab.state_dir)
            .env_remove("LOOPGATE_FAILPOINT")
            .stderr(std::fs::File::create(&log).unwrap())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let watch = Watch { child, log };
        time_until(|| watch.log().contains("loopgate watch: started"))
            .unwrap_or_else(|| panic!("watch did not start: {}", watch.log()));
        watch
    }

    /// The watch process's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything watch has written to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as systemd or the kubelet send; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap().code()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 5 ms for up to 3 s; returns how long it took to hold.
pub fn time_until(cond: impl Fn() -> bool) -> Option<std::time::Duration> {
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(3) {
        if cond() {
            return Some(start.elapsed());
        }
        // The polling interval of this bounded wait.
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    None
}

/// The rules a guard's chains must hold, as `nft list` prints them: (dispatch chain,
/// the rule that sends loopback traffic through a guard map), then per guard map the
/// drop rules of the chain its element jumps to. Mirrors src/plan/guards.rs and
/// src/plan/hooks.rs, checked against the kernel's copy of the table.
const GUARD_DISPATCH: [(&str, &str); 4] = [
    (
        "raw_prerouting",
        "ip daddr 127.0.0.0/8 iifname vmap @raw_ifaces",
    ),
    (
        "raw_prerouting",
        "ip saddr 127.0.0.0/8 iifname vmap @raw_ifaces",
    ),
    ("input", "ip daddr 127.0.0.0/8 iifname vmap @input_ifaces"),
    (
        "postrouting",
        "ip saddr 127.0.0.0/8 oifname vmap @post_ifaces",
    ),
];

/// Every guard map and the drop rules its chain must hold (a rule counts when it
/// starts with the prefix and drops).
const GUARD_CHAINS: [(&str, &[&str]); 3] = [
    (
        "raw_ifaces",
        &[
            "ip daddr 127.0.0.0/8 counter",
            "ip saddr 127.0.0.0/8 counter",
        ],
    ),
    // The input guard's drop is its last rule (replies and granted flows go first).
    ("input_ifaces", &["counter"]),
    ("post_ifaces", &["ip saddr 127.0.0.0/8 counter"]),
];

impl NftTable {
    /// `nft list table ip loopgate` run in the calling thread's namespace; an empty
    /// table (nothing guarded) when there is none.
    fn read_here() -> NftTable {
        let out = Command::new("nft")
            .args(["list", "table", "ip", "loopgate"])
            .output()
            .expect("running nft");
        NftTable::parse(&stdout(&out))
    }

    /// An empty table (nothing guarded) when the namespace has no loopgate table.
    pub fn read_or_empty(ns: &Netns) -> NftTable {
        NftTable::parse(&stdout(
            &ns.exec_status(&["nft", "list", "table", "ip", "loopgate"]),
        ))
    }

    /// Whether `iface` is guarded: it is in every guard map (raw_ifaces, input_ifaces,
    /// post_ifaces), the chain each element jumps to exists and holds its drop rules,
    /// and the hook chains dispatch to the maps. Err names the first part missing.
    pub fn guard_of(&self, iface: &str) -> Result<(), String> {
        for (chain, rule) in GUARD_DISPATCH {
            let present = self
                .chains
                .get(chain)
                .is_some_and(|rules| rules.iter().any(|r| r.starts_with(rule)));
            if !present {
                return Err(format!("chain {chain} lacks `{rule}`"));
            }
        }
        let key = format!("\"{iface}\"");
        for (map, drops) in GUARD_CHAINS {
            let Some(rules) = self.via(map, &key) else {
                return Err(format!("{iface} not in {map} (or its chain is missing)"));
            };
            let drops_all = if map == "input_ifaces" {
                rules
                    .last()
                    .is_some_and(|r| r.starts_with(drops[0]) && r.contains(" drop"))
            } else {
                drops.iter().all(|prefix| {
                    rules
                        .iter()
                        .any(|r| r.starts_with(prefix) && r.contains(" drop"))
                })
            };
            if !drops_all {
                return Err(format!("{map} -> {iface}'s chain lacks its drop rules"));
            }
        }
        Ok(())
    }

    /// Whether `iface` appears in any guard map at all (for "the guard is gone").
    pub fn names_in_any_guard_map(&self, iface: &str) -> bool {
        let key = format!("\"{iface}\"");
        GUARD_CHAINS.iter().any(|(map, _)| {
            self.maps
                .get(*map)
                .is_some_and(|m| m.iter().any(|(k, _)| *k == key))
        })
    }
}

/// The open devices of the calling thread's namespace: name -> route_localnet as the
/// kernel prints it. Open means non-zero, on the device or on `conf.all` (the kernel
/// ORs the two); `lo` is left out, `all` and `default` are not devices.
fn open_devices_here(watched: fn(&str) -> bool) -> std::collections::BTreeMap<String, String> {
    let read = |dev: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{dev}/route_localnet"))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let non_zero = |v: &str| !v.is_empty() && v != "0";
    let all = read("all");
    let mut open = std::collections::BTreeMap::new();
    if let Ok(dirs) = std::fs::read_dir("/proc/sys/net/ipv4/conf") {
        for d in dirs.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            if matches!(name.as_str(), "all" | "default" | "lo") || !watched(&name) {
                continue;
            }
            let v = read(&name);
            if non_zero(&v) || non_zero(&all) {
                open.insert(name, format!("{v} (all={all})"));
            }
        }
    }
    open
}

/// One sample in the calling thread's namespace: the table, every open device, the
/// table again. A device is a violation when it is open and neither table guards it:
/// the guard goes in before the device opens and out after it closes, so a guard
/// present on either side of the reading may be the one that covered it.
fn unguarded_here(watched: fn(&str) -> bool) -> Vec<String> {
    let before = NftTable::read_here();
    let open = open_devices_here(watched);
    if open.is_empty() {
        return Vec::new();
    }
    let after = NftTable::read_here();
    open.into_iter()
        .filter_map(|(dev, v)| {
            let why = before.guard_of(&dev).err()?;
            after.guard_of(&dev).err()?;
            Some(format!("{dev}={v}: {why}"))
        })
        .collect()
}

fn all_devices(_: &str) -> bool {
    true
}

/// The product's central invariant, "never open without its guard", checked in one
/// place: a device of the namespace is open when its route_localnet (or `conf.all`'s)
/// is non-zero, and guarded when [`NftTable::guard_of`] holds (every guard map names
/// it, each element's chain exists with its drop rules). [`GuardSampler::check`] looks
/// once; [`GuardSampler::start`] samples every few ms on a thread until
/// [`GuardSampler::finish`], which returns every violation seen.
pub struct GuardSampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Sampled>>,
}

/// What a [`GuardSampler`] saw: the number of samples and each violation
/// ("DEV=VALUE: what is missing at T").
#[derive(Debug)]
pub struct Sampled {
    pub samples: u32,
    pub violations: Vec<String>,
}

impl GuardSampler {
    /// One look now at every device of `ns`: the violations ("DEV=VALUE: what is
    /// missing"), empty when the invariant holds.
    pub fn check(ns: &Netns) -> Vec<String> {
        ns.enter(|| unguarded_here(all_devices))
    }

    /// Samples every device of `ns` until [`GuardSampler::finish`] (or 120 s).
    pub fn start(ns: &Netns) -> GuardSampler {
        GuardSampler::start_watching(ns, all_devices)
    }

    /// Samples the devices of `ns` whose name `watched` accepts (a runtime's bridges,
    /// when others are open on purpose).
    pub fn start_watching(ns: &Netns, watched: fn(&str) -> bool) -> GuardSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let path = format!("/run/netns/{}", ns.name);
        let thread = std::thread::spawn(move || {
            // The thread stays in the namespace: its reads of /proc/sys/net and the
            // `nft` it spawns are that namespace's, without `ip netns exec`.
            let file = std::fs::File::open(&path).expect("netns file");
            // SAFETY: valid fd; setns only changes this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}");
            let started = std::time::Instant::now();
            let mut seen = Sampled {
                samples: 0,
                violations: Vec::new(),
            };
            while !flag.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(120) {
                let at = started.elapsed();
                for v in unguarded_here(watched) {
                    seen.violations.push(format!("{v} at {at:?}"));
                }
                seen.samples += 1;
                // With the two `nft` runs, one sample every 5-10 ms.
                std::thread::sleep(Duration::from_millis(2));
            }
            seen
        });
        GuardSampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the sampling; what it saw.
    pub fn finish(mut self) -> Sampled {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().expect("sampler thread")
    }
}

impl Drop for GuardSampler {
    /// Stops the sampling also when the test fails before `finish`.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod guard_sampler_tests {
    use super::*;

    const GOLDEN: &str = include_str!("../golden/two-interfaces.nft");

    #[test]
    fn a_full_guard_is_recognised_and_each_missing_part_is_named() {
        let table = NftTable::parse(GOLDEN);
        assert_eq!(table.guard_of("br0"), Ok(()));
        assert_eq!(table.guard_of("br1"), Ok(()));
        assert!(table.guard_of("br2").is_err(), "not in any map");
        let broken = |from: &str, to: &str| {
            assert!(GOLDEN.contains(from), "{from}");
            NftTable::parse(&GOLDEN.replacen(from, to, 1)).guard_of("br0")
        };
        // br0 in the raw map only: not guarded.
        let err = broken("\"br0\" : jump post_if_br0,", "").unwrap_err();
        assert!(err.contains("post_ifaces"), "{err}");
        let err = broken("\"br0\" : jump input_if_br0,", "").unwrap_err();
        assert!(err.contains("input_ifaces"), "{err}");
        // The element is there but its chain lost a drop rule.
        let err = broken(
            "ip saddr 127.0.0.0/8 counter drop comment \"br0 guard: no spoofed",
            "ip saddr 127.0.0.0/8 counter accept comment \"br0 guard: no spoofed",
        )
        .unwrap_err();
        assert!(err.contains("raw_ifaces"), "{err}");
        let err = broken(
            "counter drop comment \"br0 guard: loopback only",
            "counter accept comment \"br0 guard: loopback only",
        )
        .unwrap_err();
        assert!(err.contains("input_ifaces"), "{err}");
        // The hook no longer dispatches to the map.
        let err = broken("oifname vmap @post_ifaces", "oifname vmap @nat_grants").unwrap_err();
        assert!(err.contains("postrouting"), "{err}");
        // No table at all.
        assert!(NftTable::parse("").guard_of("br0").is_err());
    }
}
