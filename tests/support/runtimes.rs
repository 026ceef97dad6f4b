//! Real container runtimes inside the lab: Debian's dockerd (20.10) and rootful podman
//! (4.3, netavark), each confined to a lab host namespace the test created.
//!
//! Confinement, per daemon (a "sandbox"):
//! - network: `ip netns exec <lab host>`; every bridge, veth, sysctl and iptables/nft
//!   rule the runtime makes lands in that namespace and dies with it;
//! - mounts: `unshare -m` (private propagation). Inside, before the runtime starts:
//!   the cgroup hierarchies are mounted again (`ip netns exec` mounted a fresh sysfs that
//!   hides them), a tmpfs is put on /run and /dev/shm, and /etc and /var get an overlay
//!   whose upper layer is in the sandbox's temporary folder, so whatever the runtime
//!   writes there (/etc/docker/key.json, /var/lib/containers/cache, ...) never reaches
//!   the machine's files;
//! - processes: `unshare -p --fork --kill-child --mount-proc` with tini as PID 1. Killing
//!   the `unshare` process (it has PR_SET_PDEATHSIG tied to the test thread, too) kills
//!   PID 1, and the kernel then kills every process of the PID namespace: daemons,
//!   containerd, shims, conmon, aardvark-dns and the containers themselves;
//! - cgroups: containers go under a cgroup parent named after the sandbox; its folders
//!   are removed on drop;
//! - addresses: documentation ranges only, disjoint from the lab's 192.0.2.0/24 (see the
//!   constants below).
//!
//! Everything is bounded in time (commands run under `timeout`, waits poll with a
//! deadline), and `Drop` cleans up also when a test panics.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::Netns;

/// docker0's address and prefix (`--bip`): docker0 is 198.51.100.0/26.
pub const DOCKER_BIP: &str = "198.51.100.1/26";
pub const DOCKER0_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// Docker's pool for user-defined networks: four /27 (203.0.113.0/27 .. .96/27).
pub const DOCKER_POOL: &str = "base=203.0.113.0/25,size=27";
/// Podman's default network `podman` (bridge podman0) uses this subnet.
pub const PODMAN_DEFAULT_SUBNET: &str = "198.51.100.128/26";
/// Podman's pool for `podman network create`: four /27 (203.0.113.128/27 .. .224/27).
pub const PODMAN_POOL_BASE: &str = "203.0.113.128/25";
pub const PODMAN_POOL_SIZE: u8 = 27;
/// The lab image (busybox + python3), imported into every daemon this module starts.
pub const IMAGE: &str = "loopgate-lab:latest";

/// Upper bound of any single runtime CLI command (`timeout` kills it after that).
const CMD_TIMEOUT_SECS: u32 = 60;
/// How long a daemon may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(40);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Where a runtime's program is installed: the first of `paths` that exists (Debian's
/// path first, then where Docker's docker-ce / containerd.io or upstream Podman put it),
/// else the first `name` on PATH. scripts/install-deps.sh installs Debian's runtimes
/// only where none is installed, so these tests run whichever the machine has. Fails the
/// test loudly when there is none: runtime tests never skip, also with CI=true.
pub fn tool(name: &str, paths: &[&str]) -> String {
    if let Some(p) = paths.iter().find(|p| Path::new(p).exists()) {
        return p.to_string();
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from))
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    });
    match on_path {
        Some(p) => p.display().to_string(),
        None => panic!(
            "container runtime tests need {name} (looked in {paths:?} and on PATH), which is not \
             installed: run scripts/install-deps.sh test (Debian's docker.io, podman, netavark, \
             aardvark-dns, tini and busybox-static where no other runtime is installed); these \
             tests fail rather than skip, also with CI={}",
            std::env::var("CI").unwrap_or_default()
        ),
    }
}

/// The docker CLI. Debian's first where it is installed: a newer CLI earlier on PATH
/// (this kind of machine has one in /usr/local/bin) may not speak to an older dockerd.
fn docker_cli() -> String {
    tool("docker", &["/usr/bin/docker"])
}

/// The podman CLI.
pub fn podman_cli() -> String {
    tool("podman", &["/usr/bin/podman"])
}

/// Fails the test loudly when a tool is missing: these tests never skip.
fn require_tools(tools: &[(&str, &[&str])]) {
    super::require_root();
    for (name, paths) in tools {
        tool(name, paths);
    }
}

fn unique(tag: &str) -> String {
    format!(
        "lgrt-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `cond` every 100 ms until it holds or `limit` passes.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        // The polling interval of this bounded wait.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A PID and mount namespace running one command inside a lab network namespace.
struct Sandbox {
    /// `ip netns exec NS unshare ...` (ip execs unshare: same process).
    child: Child,
    /// PID 1 of the sandbox's PID namespace (tini), as the machine numbers it.
    init_pid: i32,
    log: PathBuf,
}

impl Sandbox {
    /// Starts `cmd` under tini inside `ns`, with the private mounts described in the
    /// module documentation. `dir` is the sandbox's temporary folder.
    fn start(ns: &str, dir: &Path, cmd: &[String], log_name: &str) -> Sandbox {
        let mut script = String::from("set -e\n");
        script.push_str(&cgroup_mounts());
        script.push_str("mount -t tmpfs -o mode=755 lgrt-run /run\n");
        script.push_str("mount -t tmpfs -o mode=1777 lgrt-shm /dev/shm\n");
        for top in ["etc", "var"] {
            let up = dir.join(format!("overlay/{top}-upper"));
            let work = dir.join(format!("overlay/{top}-work"));
            std::fs::create_dir_all(&up).unwrap();
            std::fs::create_dir_all(&work).unwrap();
            script.push_str(&format!(
                "mount -t overlay lgrt-{top} -o lowerdir=/{top},upperdir={},workdir={} /{top}\n",
                up.display(),
                work.display()
            ));
        }
        script.push_str("exec /usr/bin/tini --");
        for arg in cmd {
            script.push_str(&format!(" '{}'", arg.replace('\'', r"'\''")));
        }
        script.push('\n');
        let script_path = dir.join(format!("{log_name}.sh"));
        std::fs::write(&script_path, script).unwrap();
        let log = dir.join(format!("{log_name}.log"));
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns, "unshare", "--mount", "--propagation"])
            .args(["private", "--pid", "--fork", "--kill-child", "--mount-proc"])
            .arg("sh")
            .arg(&script_path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap());
        // SAFETY: prctl is async-signal-safe; it only sets this child's death signal.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("spawning ip netns exec unshare");
        let child_pid = child.id() as i32;
        let mut init_pid = 0;
        let found = wait_for(Duration::from_secs(10), || {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            init_pid = children(child_pid).first().copied().unwrap_or(0);
            init_pid > 0 && is_tini(init_pid)
        });
        let sandbox = Sandbox {
            child,
            init_pid,
            log,
        };
        assert!(
            found && init_pid > 0,
            "the sandbox in {ns} did not start: {}",
            sandbox.log()
        );
        sandbox
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM to the sandbox's command (tini forwards it); waits up to `limit` for it
    /// to exit. Returns whether it did.
    fn terminate(&mut self, limit: Duration) -> bool {
        if self.running() {
            // SAFETY: our own sandbox's PID 1; its parent (our child) is not reaped yet,
            // so the PID cannot have been reused.
            unsafe { libc::kill(self.init_pid, libc::SIGTERM) };
        }
        wait_for(limit, || !self.running())
    }

    /// Kills the whole PID namespace and waits (bounded) until its PID 1 is gone.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let init = self.init_pid;
        // The kernel kills the namespace's processes when PID 1 dies; PID 1 leaves
        // /proc only after all of them have been reaped.
        wait_for(Duration::from_secs(15), || {
            !is_tini(init) || !Path::new(&format!("/proc/{init}")).exists()
        });
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.kill();
    }
}

fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    out
}

fn is_tini(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "tini")
}

/// Shell lines that mount the machine's cgroup hierarchies again, as they are mounted
/// in the test's own mount namespace.
fn cgroup_mounts() -> String {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let mut script = String::new();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || !f[1].starts_with("/sys/fs/cgroup") {
            continue;
        }
        let (target, fstype, opts) = (f[1], f[2], f[3]);
        match fstype {
            "tmpfs" => script.push_str(&format!("mount -t tmpfs -o {opts} lgrt-cg {target}\n")),
            "cgroup" | "cgroup2" => script.push_str(&format!(
                "mkdir -p {target}; mount -t {fstype} -o {opts} {fstype} {target}\n"
            )),
            _ => {}
        }
    }
    assert!(
        script.contains("cgroup"),
        "no cgroup hierarchy mounted under /sys/fs/cgroup"
    );
    script
}

/// Removes the cgroup folders named `name` (and everything below them) from every
/// hierarchy, at its root and below this process's own cgroup: a relative cgroup parent
/// lands below the creator's cgroup, an absolute one at the root. Processes still in
/// them are killed first: the folder name is unique to one sandbox.
fn remove_cgroups(name: &str) {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut bases: Vec<String> = own
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .map(|p| p.trim_start_matches('/').to_string())
        .collect();
    bases.push(String::new());
    bases.sort();
    bases.dedup();
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hierarchies.flatten() {
        for base in &bases {
            let dir = h.path().join(base).join(name);
            if dir.is_dir() {
                remove_cgroup_tree(&dir);
            }
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let removed = wait_for(Duration::from_secs(5), || {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: a process in a cgroup folder only this sandbox uses.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::fs::remove_dir(dir).is_ok() || !dir.exists()
    });
    if !removed {
        eprintln!("runtimes: could not remove cgroup {}", dir.display());
    }
}

/// Removes a sandbox's temporary folder (a few tries: the last mounts of the private
/// mount namespace may still be going away).
fn remove_dir(dir: &Path) {
    let gone = wait_for(Duration::from_secs(5), || {
        let _ = std::fs::remove_dir_all(dir);
        !dir.exists()
    });
    if !gone {
        eprintln!("runtimes: could not remove {}", dir.display());
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// How to start dockerd.
#[derive(Clone, Debug)]
pub struct DockerdOpts {
    /// `--userland-proxy` (Docker's default: true). With false, dockerd sets
    /// route_localnet=1 on docker0 for the 127.0.0.1:PORT hairpin.
    pub userland_proxy: bool,
    /// Import the lab image [`IMAGE`] once started.
    pub import_image: bool,
    /// More dockerd flags (e.g. `--host-gateway-ip=...`).
    pub extra_args: Vec<String>,
}

impl Default for DockerdOpts {
    fn default() -> Self {
        DockerdOpts {
            userland_proxy: true,
            import_image: true,
            extra_args: Vec::new(),
        }
    }
}

/// dockerd (with its containerd) running in a lab host namespace; everything it made
/// is removed on drop.
pub struct Dockerd {
    /// The lab namespace dockerd runs in.
    pub ns: String,
    /// Private folder: data root, exec root, socket, logs, overlay layers.
    pub dir: PathBuf,
    /// The API socket (`unix://` + this).
    pub sock: PathBuf,
    /// The cgroup parent of the containers (unique to this daemon).
    pub cgroup_parent: String,
    opts: DockerdOpts,
    sandbox: Option<Sandbox>,
    /// Logs of earlier runs (before restarts).
    old_logs: String,
}

impl Dockerd {
    /// Starts dockerd in `host` and waits until `docker info` answers (bounded).
    pub fn start(host: &Netns, opts: DockerdOpts) -> Dockerd {
        require_tools(&[
            ("dockerd", &["/usr/sbin/dockerd", "/usr/bin/dockerd"]),
            ("docker", &["/usr/bin/docker"]),
            ("containerd", &["/usr/bin/containerd"]),
            ("tini", &["/usr/bin/tini"]),
            (
                "docker-init",
                &["/usr/bin/docker-init", "/usr/libexec/docker/docker-init"],
            ),
            ("runc", &["/usr/sbin/runc", "/usr/bin/runc"]),
        ]);
        let name = unique("dock");
        let dir = temp_dir(&name);
        let sock = dir.join("docker.sock");
        let mut d = Dockerd {
            ns: host.name.clone(),
            dir,
            sock,
            cgroup_parent: name,
            opts,
            sandbox: None,
            old_logs: String::new(),
        };
        d.launch();
        if d.opts.import_image {
            let out = d.docker(&["import", lab_image().to_str().unwrap(), IMAGE]);
            assert!(out.status.success(), "docker import: {}", text(&out));
        }
        d
    }

    fn launch(&mut self) {
        let dir = &self.dir;
        let mut cmd: Vec<String> =
            vec![tool("dockerd", &["/usr/sbin/dockerd", "/usr/bin/dockerd"])];
        let path = |p: &str| dir.join(p).to_str().unwrap().to_string();
        for (flag, value) in [
            ("--data-root", path("data")),
            ("--exec-root", path("exec")),
            ("--host", format!("unix://{}", self.sock.display())),
            ("--pidfile", path("docker.pid")),
            ("--bip", DOCKER_BIP.into()),
            ("--default-address-pool", DOCKER_POOL.into()),
            ("--storage-driver", "overlay2".into()),
            ("--cgroup-parent", self.cgroup_parent.clone()),
            ("--shutdown-timeout", "1".into()),
            ("--userland-proxy", self.opts.userland_proxy.to_string()),
        ] {
            cmd.push(format!("{flag}={value}"));
        }
        cmd.extend(
            ["--iptables=true", "--ip6tables=false", "--ipv6=false"]
                .iter()
                .map(|s| s.to_string()),
        );
        cmd.extend(self.opts.extra_args.iter().cloned());
        let sandbox = Sandbox::start(&self.ns, &self.dir, &cmd, "dockerd");
        self.sandbox = Some(sandbox);
        let sock = self.sock.clone();
        let mut last = None;
        let up = wait_for(START_TIMEOUT, || {
            if !self.sandbox.as_mut().unwrap().running() {
                return true;
            }
            if !sock.exists() {
                return false;
            }
            let out = self.docker(&["info", "--format", "{{.ServerVersion}}"]);
            let ok = out.status.success();
            last = Some(out);
            ok
        });
        let alive = self.sandbox.as_mut().unwrap().running();
        assert!(
            up && alive,
            "dockerd in {} did not answer within {START_TIMEOUT:?} (alive: {alive}); last \
             docker info: {}\ndockerd log:\n{}",
            self.ns,
            last.as_ref().map(text).unwrap_or_default(),
            self.log()
        );
    }

    /// Stops dockerd as `systemctl restart docker` would (SIGTERM, bounded wait) and
    /// starts it again on the same data root. docker0 is deleted and created again.
    pub fn restart(&mut self) {
        if let Some(mut s) = self.sandbox.take() {
            let stopped = s.terminate(Duration::from_secs(20));
            self.old_logs.push_str(&s.log());
            assert!(stopped, "dockerd did not stop on SIGTERM: {}", s.log());
        }
        self.launch();
    }

    /// dockerd's (and containerd's) log so far.
    pub fn log(&self) -> String {
        let now = self.sandbox.as_ref().map(Sandbox::log).unwrap_or_default();
        format!("{}{now}", self.old_logs)
    }

    /// The environment a client outside the sandbox (e.g. loopgate run by
    /// `Lab::loopgate_env`) needs to reach this daemon: `DOCKER_HOST=unix://<sock>`.
    pub fn client_env(&self) -> Vec<(String, String)> {
        vec![(
            "DOCKER_HOST".to_string(),
            format!("unix://{}", self.sock.display()),
        )]
    }

    /// Runs the docker CLI against this daemon, inside the lab namespace; any outcome.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["-k", "5", &CMD_TIMEOUT_SECS.to_string()])
            .arg("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg(docker_cli())
            .arg("--host")
            .arg(format!("unix://{}", self.sock.display()))
            .args(args)
            .env("DOCKER_CONFIG", self.dir.join("cli"))
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .stdin(Stdio::null())
            .output()
            .expect("running the docker CLI")
    }

    /// Runs the docker CLI and insists on success; returns stdout, trimmed.
    #[track_caller]
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(out.status.success(), "docker {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `docker run -d --init --name NAME [--network NETWORK] IMAGE CMD...`; the
    /// container ID.
    #[track_caller]
    pub fn run(&self, name: &str, network: Option<&str>, cmd: &[&str]) -> String {
        let mut flags = Vec::new();
        if let Some(n) = network {
            flags.extend(["--network", n]);
        }
        self.run_with(name, &flags, cmd)
    }

    /// `docker run -d --init --name NAME FLAGS... IMAGE CMD...`; the container ID.
    /// `--init` (docker-init, i.e. tini) makes CMD stop on SIGTERM: without it a
    /// PID 1 that ignores SIGTERM holds every `docker stop` and dockerd shutdown for
    /// the full 10 s stop timeout.
    #[track_caller]
    pub fn run_with(&self, name: &str, flags: &[&str], cmd: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--init", "--name", name];
        args.extend_from_slice(flags);
        args.push(IMAGE);
        args.extend_from_slice(cmd);
        self.docker_ok(&args)
    }

    /// `docker exec CONTAINER CMD...`; any outcome.
    pub fn exec(&self, container: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", container];
        args.extend_from_slice(cmd);
        self.docker(&args)
    }

    /// The container's IPv4 address on `network` (`bridge` for the default one).
    #[track_caller]
    pub fn container_ip(&self, container: &str, network: &str) -> Ipv4Addr {
        let fmt = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
        let ip = self.docker_ok(&["inspect", "--format", &fmt, container]);
        ip.parse()
            .unwrap_or_else(|_| panic!("address of {container} on {network}: {ip:?}"))
    }

    /// The Linux bridge of a bridge network as Docker names it: docker0 for `bridge`,
    /// `com.docker.network.bridge.name` when set, else `br-` + 12 hex digits of the ID.
    #[track_caller]
    pub fn bridge_of(&self, network: &str) -> String {
        let out = self.docker_ok(&[
            "network",
            "inspect",
            "--format",
            "{{.Id}} {{index .Options \"com.docker.network.bridge.name\"}}",
            network,
        ]);
        let mut parts = out.split_whitespace();
        let id = parts.next().expect("network ID").to_string();
        match parts.next() {
            Some(name) if !name.is_empty() && name != "<no" => name.to_string(),
            _ => format!("br-{}", &id[..12]),
        }
    }

    /// The IPv4 subnets and gateway of a network, from `docker network inspect`.
    #[track_caller]
    pub fn network_ipam(&self, network: &str) -> Vec<(String, String)> {
        let out = self.docker_ok(&[
            "network",
            "inspect",
            "--format",
            "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}};{{end}}",
            network,
        ]);
        out.split(';')
            .filter_map(|e| {
                let (s, g) = e.trim().split_once(' ')?;
                Some((s.to_string(), g.to_string()))
            })
            .collect()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(mut s) = self.sandbox.take() {
            if std::thread::panicking() {
                let log = format!("{}{}", self.old_logs, s.log());
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(25)..].join("\n");
                eprintln!("dockerd log ({}), last lines:\n{tail}", self.ns);
            }
            s.kill();
        }
        remove_cgroups(&self.cgroup_parent);
        remove_dir(&self.dir);
    }
}

/// Rootful podman in a lab host namespace: a holder process keeps the private mount
/// and PID namespaces alive, and every `podman` command runs inside them.
pub struct Podman {
    pub ns: String,
    pub dir: PathBuf,
    /// The cgroup parent [`Podman::run`] gives containers (unique to this instance).
    pub cgroup_parent: String,
    holder: Option<Sandbox>,
}

impl Podman {
    /// Starts the holder in `host`, writes private containers.conf and storage.conf
    /// (netavark, cgroupfs, runc, file events) and imports the lab image.
    pub fn start(host: &Netns) -> Podman {
        require_tools(&[
            ("podman", &["/usr/bin/podman"]),
            (
                "netavark",
                &["/usr/lib/podman/netavark", "/usr/libexec/podman/netavark"],
            ),
            (
                "aardvark-dns",
                &[
                    "/usr/lib/podman/aardvark-dns",
                    "/usr/libexec/podman/aardvark-dns",
                ],
            ),
            ("conmon", &["/usr/bin/conmon", "/usr/libexec/podman/conmon"]),
            ("runc", &["/usr/sbin/runc", "/usr/bin/runc"]),
            ("tini", &["/usr/bin/tini"]),
            ("tini-static", &["/usr/bin/tini-static"]),
        ]);
        let name = unique("pod");
        let dir = temp_dir(&name);
        for sub in ["networks", "storage", "runroot", "tmp", "volumes", "home"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let d = dir.display();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                r#"[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
netns = "bridge"
log_driver = "k8s-file"
init = true
init_path = "/usr/bin/tini-static"

[network]
network_backend = "netavark"
network_config_dir = "{d}/networks"
default_network = "podman"
default_subnet = "{PODMAN_DEFAULT_SUBNET}"
default_subnet_pools = [{{"base" = "{PODMAN_POOL_BASE}", "size" = {PODMAN_POOL_SIZE}}}]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/events.log"
runtime = "runc"
stop_timeout = 2
tmp_dir = "{d}/tmp"
volume_path = "{d}/volumes"
static_dir = "{d}/storage/libpod"
"#
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/storage\"\nrunroot = \"{d}/runroot\"\n"
            ),
        )
        .unwrap();
        let holder = Sandbox::start(
            &host.name,
            &dir,
            &["/bin/sleep".to_string(), "infinity".to_string()],
            "holder",
        );
        let p = Podman {
            ns: host.name.clone(),
            dir,
            cgroup_parent: name,
            holder: Some(holder),
        };
        let out = p.podman(&["import", lab_image().to_str().unwrap(), IMAGE]);
        assert!(out.status.success(), "podman import: {}", text(&out));
        p
    }

    /// A command that runs `program` inside the holder's mount, network and PID
    /// namespaces with this instance's containers.conf and storage.conf in its
    /// environment: how a test runs loopgate when loopgate calls podman. Never run
    /// podman, or a program that calls it, outside the holder: podman bind-mounts its
    /// storage and creates /run/containers in whatever mount namespace it runs in, which
    /// would be the machine's. Bounded by `timeout` like every command here.
    pub fn command(&self, program: &str) -> Command {
        let init = self.holder.as_ref().expect("holder").init_pid;
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", &CMD_TIMEOUT_SECS.to_string()])
            .args(["nsenter", "-t", &init.to_string(), "-m", "-n", "-p"])
            .arg(program)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env("HOME", self.dir.join("home"))
            .env("TMPDIR", self.dir.join("tmp"))
            .env_remove("CONTAINER_HOST")
            .env_remove("XDG_RUNTIME_DIR")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `podman` inside the holder's namespaces with the private configuration;
    /// any outcome.
    pub fn podman(&self, args: &[&str]) -> Output {
        self.command(&podman_cli())
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(args)
            .output()
            .expect("running podman")
    }

    /// Runs podman and insists on success; returns stdout, trimmed.
    #[track_caller]
    pub fn podman_ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(out.status.success(), "podman {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `podman run -d --name NAME --cgroup-parent ... [--network NETWORK] IMAGE CMD...`.
    #[track_caller]
    pub fn run(&self, name: &str, network: Option<&str>, cmd: &[&str]) -> String {
        let mut flags = Vec::new();
        if let Some(n) = network {
            flags.extend(["--network", n]);
        }
        self.run_with(name, &flags, cmd)
    }

    /// `podman run -d --name NAME --cgroup-parent ... FLAGS... IMAGE CMD...`.
    #[track_caller]
    pub fn run_with(&self, name: &str, flags: &[&str], cmd: &[&str]) -> String {
        let parent = format!("/{}", self.cgroup_parent);
        let mut args = vec!["run", "-d", "--name", name, "--cgroup-parent", &parent];
        args.extend_from_slice(flags);
        args.push(IMAGE);
        args.extend_from_slice(cmd);
        self.podman_ok(&args)
    }

    /// `podman exec CONTAINER CMD...`; any outcome.
    pub fn exec(&self, container: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", container];
        args.extend_from_slice(cmd);
        self.podman(&args)
    }

    /// The container's IPv4 address on `network`.
    #[track_caller]
    pub fn container_ip(&self, container: &str, network: &str) -> Ipv4Addr {
        let fmt = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
        let ip = self.podman_ok(&["inspect", "--format", &fmt, container]);
        ip.parse()
            .unwrap_or_else(|_| panic!("address of {container} on {network}: {ip:?}"))
    }

    /// The Linux bridge netavark uses for `network` (`network_interface`).
    #[track_caller]
    pub fn bridge_of(&self, network: &str) -> String {
        self.podman_ok(&[
            "network",
            "inspect",
            "--format",
            "{{.NetworkInterface}}",
            network,
        ])
    }

    /// The holder's stderr (podman itself logs to the returned Output).
    pub fn log(&self) -> String {
        self.holder.as_ref().map(Sandbox::log).unwrap_or_default()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Podman puts conmon and the containers below the cgroup parent of `run`;
        // containers started through `podman()` without one go to /libpod_parent:
        // remove their folders by container ID.
        let ids = self
            .holder
            .as_ref()
            .map(|_| self.podman(&["ps", "-aq", "--no-trunc"]))
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if let Some(mut h) = self.holder.take() {
            h.kill();
        }
        remove_cgroups(&self.cgroup_parent);
        for id in ids.split_whitespace() {
            remove_cgroups(&format!("libpod_parent/libpod-{id}"));
            remove_cgroups(&format!("libpod_parent/libpod-conmon-{id}"));
        }
        remove_dir(&self.dir);
    }
}

/// The lab image as a tar file: busybox-static (a symlink per applet), python3 with
/// the libraries `ldd` lists and its standard library (without tests, GUI and build
/// parts), and two helpers: `lab-serve tcp|udp PORT` answers every request with
/// `<proto>:<port> from <peer address>`, `lab-req tcp|udp HOST PORT` prints the answer
/// (exit 1 after 2 s without one). Built once per machine and input versions, shared by
/// test processes through a file lock.
pub fn lab_image() -> &'static Path {
    static IMAGE_TAR: OnceLock<PathBuf> = OnceLock::new();
    IMAGE_TAR.get_or_init(|| {
        require_tools(&[
            ("busybox", &["/bin/busybox"]),
            ("python3", &["/usr/bin/python3"]),
        ]);
        let ldd = Command::new("ldd").arg("/bin/busybox").output().unwrap();
        assert!(
            !ldd.status.success(),
            "/bin/busybox is dynamically linked: install busybox-static"
        );
        let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
        let mut key = 0u64;
        for p in [Path::new("/bin/busybox"), python.as_path()] {
            let m = std::fs::metadata(p).unwrap();
            key = key.wrapping_mul(1_000_003) ^ m.len();
            key = key.wrapping_mul(1_000_003)
                ^ m.modified()
                    .unwrap()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
        }
        key = key.wrapping_mul(1_000_003) ^ IMAGE_RECIPE_VERSION;
        let tar = std::env::temp_dir().join(format!("loopgate-lab-image-{key:016x}.tar"));
        let lock_path = tar.with_extension("lock");
        let lock = std::fs::File::create(&lock_path).unwrap();
        // SAFETY: flock on a file we opened; released when `lock` is closed.
        let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock {}", lock_path.display());
        if !tar.exists() {
            build_image(&tar, &python);
        }
        drop(lock);
        tar
    })
}

/// Bumped whenever the recipe below changes, so a cached tar is not reused.
const IMAGE_RECIPE_VERSION: u64 = 2;

const LAB_SERVE: &str = r#"#!/usr/bin/python3
import signal, socket, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
proto, port = sys.argv[1], int(sys.argv[2])
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
if proto == "tcp":
    s.listen(64)
    while True:
        c, peer = s.accept()
        try:
            c.settimeout(2)
            c.recv(512)
            c.sendall(("tcp:%d from %s\n" % (port, peer[0])).encode())
        except OSError:
            pass
        c.close()
else:
    while True:
        data, peer = s.recvfrom(512)
        s.sendto(("udp:%d from %s\n" % (port, peer[0])).encode(), peer)
"#;

const LAB_REQ: &str = r#"#!/usr/bin/python3
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if proto == "tcp":
        s = socket.create_connection((host, port), timeout=2)
        s.sendall(b"ping\n")
        print(s.recv(512).decode().strip())
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.sendto(b"ping\n", (host, port))
        print(s.recvfrom(512)[0].decode().strip())
except OSError as e:
    print("no answer: %s" % e, file=sys.stderr)
    sys.exit(1)
"#;

fn build_image(tar: &Path, python: &Path) {
    let started = Instant::now();
    let work = temp_dir(&unique("image"));
    let root = work.join("rootfs");
    for d in [
        "bin",
        "etc",
        "tmp",
        "proc",
        "sys",
        "dev",
        "usr/bin",
        "usr/local/bin",
        "root",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let list = super::run("/bin/busybox", &["--list"]);
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();

    // python3: the interpreter, its standard library and the shared objects they need.
    let version = python.file_name().unwrap().to_str().unwrap().to_string(); // python3.11
    copy_into(&root, python);
    std::os::unix::fs::symlink(&version, root.join("usr/bin/python3")).unwrap();
    let stdlib = Path::new("/usr/lib").join(&version);
    let skip = [
        "test",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3",
        "pydoc_data",
        "site-packages",
        "dist-packages",
        "__pycache__",
    ];
    let skip_so = [
        "_tkinter",
        "_test",
        "_ctypes_test",
        "xxlimited",
        "_xxtest",
        "_curses",
        "readline",
        "_dbm",
        "nis",
        "_sqlite3",
    ];
    let mut objects = vec![python.to_path_buf()];
    copy_tree(
        &stdlib,
        &root.join(stdlib.strip_prefix("/").unwrap()),
        &|p| {
            let name = p.file_name().unwrap().to_str().unwrap_or("");
            if p.is_dir() {
                return !skip.contains(&name) && !name.starts_with("config-");
            }
            if name.ends_with(".so") {
                return !skip_so.iter().any(|s| name.starts_with(s));
            }
            true
        },
    );
    if let Ok(entries) = std::fs::read_dir(
        root.join(stdlib.strip_prefix("/").unwrap())
            .join("lib-dynload"),
    ) {
        for e in entries.flatten() {
            let host_path = Path::new("/").join(e.path().strip_prefix(&root).unwrap());
            objects.push(host_path);
        }
    }
    let mut libs = std::collections::BTreeSet::new();
    for object in &objects {
        let out = super::run("ldd", &[object.to_str().unwrap()]);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = match line.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(p) = path.filter(|p| p.starts_with('/')) {
                libs.insert(PathBuf::from(p));
            }
        }
    }
    for lib in &libs {
        copy_into(&root, lib);
    }
    for (name, body) in [("lab-serve", LAB_SERVE), ("lab-req", LAB_REQ)] {
        let p = root.join("usr/local/bin").join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    let partial = tar.with_extension(format!("tar.{}", std::process::id()));
    super::run(
        "tar",
        &[
            "-C",
            root.to_str().unwrap(),
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "-cf",
            partial.to_str().unwrap(),
            ".",
        ],
    );
    std::fs::rename(&partial, tar).unwrap();
    remove_dir(&work);
    eprintln!(
        "runtimes: built the lab image {} in {:?}",
        tar.display(),
        started.elapsed()
    );
}

/// Copies the file `host_path` (following symlinks) to the same path under `root`.
fn copy_into(root: &Path, host_path: &Path) {
    let target = root.join(host_path.strip_prefix("/").unwrap());
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(host_path, &target)
        .unwrap_or_else(|e| panic!("copying {} into the image: {e}", host_path.display()));
}

fn copy_tree(from: &Path, to: &Path, keep: &dyn Fn(&Path) -> bool) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if !keep(&p) {
            continue;
        }
        let target = to.join(e.file_name());
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            copy_tree(&p, &target, keep);
        } else if ft.is_symlink() {
            let dest = std::fs::read_link(&p).unwrap();
            std::os::unix::fs::symlink(dest, &target).unwrap();
        } else {
            std::fs::copy(&p, &target).unwrap();
        }
    }
}

/// A read-only picture of the machine's own (root) network namespace and of the files
/// a runtime would write outside its sandbox. Taken from the test process's main
/// namespaces; nothing here writes.
#[derive(Debug, PartialEq, Eq)]
pub struct RootSnapshot {
    pub ruleset: String,
    pub links: String,
    pub addrs: String,
    pub routes: String,
    pub sysctls: String,
    pub files: String,
    /// The machine's mount table, without the /run/netns entries that labs add and
    /// remove all the time.
    pub mounts: String,
}

impl RootSnapshot {
    pub fn take() -> RootSnapshot {
        // The commands inherit the calling thread's namespaces: test threads never
        // setns themselves (Netns::enter uses a thread of its own), so this reads the
        // machine's namespace.
        let cmd = |c: &str, a: &[&str]| {
            let out = Command::new(c).args(a).output().expect(c);
            assert!(out.status.success(), "{c} {a:?}: {}", text(&out));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let mut sysctls = String::new();
        let mut keys = vec![
            "net/ipv4/ip_forward".to_string(),
            "net/bridge/bridge-nf-call-iptables".to_string(),
            "net/bridge/bridge-nf-call-ip6tables".to_string(),
            "net/bridge/bridge-nf-call-arptables".to_string(),
        ];
        if let Ok(devs) = std::fs::read_dir("/proc/sys/net/ipv4/conf") {
            for d in devs.flatten() {
                let dev = d.file_name().to_string_lossy().into_owned();
                keys.push(format!("net/ipv4/conf/{dev}/route_localnet"));
                keys.push(format!("net/ipv4/conf/{dev}/forwarding"));
            }
        }
        keys.sort();
        for k in keys {
            let v = std::fs::read_to_string(format!("/proc/sys/{k}")).unwrap_or_default();
            sysctls.push_str(&format!("{k}={}", v.trim()));
            sysctls.push('\n');
        }
        let mut files = String::new();
        for f in [
            "/var/lib/docker",
            "/var/lib/containers",
            "/var/cache/containers",
            "/etc/docker/key.json",
            "/etc/docker/daemon.json",
            "/run/docker.sock",
            "/run/containers",
            "/etc/cni/net.d",
        ] {
            files.push_str(&format!("{f}: {}\n", Path::new(f).exists()));
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .filter(|l| !l.contains(" /run/netns"))
            .map(|l| format!("{l}\n"))
            .collect();
        RootSnapshot {
            mounts,
            ruleset: cmd("nft", &["-s", "list", "ruleset"]),
            links: cmd("ip", &["-o", "link", "show"]),
            addrs: cmd("ip", &["-o", "addr", "show"]),
            routes: cmd("ip", &["route", "show", "table", "all"]),
            sysctls,
            files,
        }
    }

    /// Panics with the difference when the machine's namespace or files changed.
    #[track_caller]
    pub fn assert_unchanged(&self) {
        let now = RootSnapshot::take();
        for (what, before, after) in [
            ("nft ruleset", &self.ruleset, &now.ruleset),
            ("links", &self.links, &now.links),
            ("addresses", &self.addrs, &now.addrs),
            ("routes", &self.routes, &now.routes),
            ("sysctls", &self.sysctls, &now.sysctls),
            ("files", &self.files, &now.files),
            ("mounts", &self.mounts, &now.mounts),
        ] {
            assert_eq!(
                before, after,
                "the machine's own namespace changed ({what}): before\n{before}\nafter\n{after}"
            );
        }
    }
}

/// Writes `text` to stderr with a label: timings the smoke tests report.
pub fn report(label: &str, d: Duration) {
    let _ = writeln!(std::io::stderr(), "runtimes: {label}: {d:.2?}");
}
