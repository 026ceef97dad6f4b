//! Container runtimes' networks by name: the bridge, IPv4 subnets and gateway of a
//! Docker or Podman network, asked of the runtime itself.
//!
//! Users name a network (`--docker-network myproj_default`); the bridge behind it is
//! `br-` + 12 hex digits of a network ID that changes with every `compose down/up`, and
//! its subnet may change too. loopgate asks the runtime's own command-line client
//! (`docker network inspect`, `podman network inspect`) each time it resolves the grant:
//! the CLI is each runtime's supported interface, honours `DOCKER_HOST`, contexts and
//! `CONTAINER_HOST` / podman's configuration as the user's own commands do, and needs
//! no HTTP client in loopgate. The JSON it prints is parsed here, and checked as if the
//! user had typed it (with `input`'s and `spec`'s rules); only the fields named below
//! are read. The values are the kernel layer's ([`crate::kernel::runtime`]).
//!
//! A runtime CLI can hang (a stuck dockerd, a remote `DOCKER_HOST`), so every call is
//! bounded ([`INSPECT_TIMEOUT`]: the CLI's process group is killed after it, see
//! [`crate::kernel::process`]), and `watch` asks through a [`RuntimeCache`], whose
//! worker thread asks the runtimes while watch's loop goes on with the last answers:
//! closing interfaces, guarding a new one and the fast path after a foreign commit
//! never wait for a runtime.
//!
//! The host that specs resolve against ([`crate::spec::Host`]) is the kernel's
//! [`HostInterfaces`] with the runtimes asked each time: that impl is here.

use crate::kernel::host::HostInterfaces;
use crate::kernel::process::{self, Bounded};
pub use crate::kernel::runtime::{Refusal, Runtime, RuntimeNet};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// How long a runtime's CLI may take to answer one `network inspect` before it is
/// killed and the answer counts as a failure: a healthy dockerd answers in tens of
/// milliseconds.
pub const INSPECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks `runtime` about network `name`: `Ok(None)` when the runtime says it does not
/// exist (yet), `Err` (one line) when its CLI is missing or fails otherwise, or the
/// network is not a bridge network or has no IPv4 subnet.
pub fn inspect(runtime: Runtime, name: &str) -> Result<Option<RuntimeNet>, Refusal> {
    if name.starts_with('-') {
        return Err(format!("invalid {} network name {name:?}", runtime.cli()));
    }
    let mut cmd = Command::new(runtime.cli());
    // `--`: a name is never read as an option of the runtime's CLI.
    cmd.args(["network", "inspect", "--", name]);
    let out = process::run_bounded(cmd, INSPECT_TIMEOUT).map_err(|e| match e {
        Bounded::Spawn(e) => format!(
            "cannot run `{} network inspect` ({}): is {} installed?",
            runtime.cli(),
            crate::error::plain_io(&e),
            runtime.cli()
        ),
        Bounded::TimedOut => format!(
            "`{} network inspect {name}` did not answer within {} s (killed)",
            runtime.cli(),
            INSPECT_TIMEOUT.as_secs()
        ),
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let lower = stderr.to_lowercase();
        if lower.contains("no such network")
            || lower.contains("not found")
            || lower.contains("unable to find network")
        {
            return Ok(None);
        }
        return Err(format!(
            "`{} network inspect {name}` failed: {}",
            runtime.cli(),
            stderr.lines().next().unwrap_or("no message").trim()
        ));
    }
    parse(runtime, name, &out.stdout)
}

/// The names of `runtime`'s networks (`docker network ls`), for naming the ones that
/// exist when a name does not. Errors (one line): the CLI is missing, fails or hangs.
pub fn list(runtime: Runtime) -> Result<Vec<String>, Refusal> {
    let mut cmd = Command::new(runtime.cli());
    cmd.args(["network", "ls", "--format", "{{.Name}}"]);
    let out = process::run_bounded(cmd, INSPECT_TIMEOUT).map_err(|e| match e {
        Bounded::Spawn(e) => format!(
            "cannot run `{} network ls` ({})",
            runtime.cli(),
            crate::error::plain_io(&e)
        ),
        Bounded::TimedOut => format!("`{} network ls` did not answer", runtime.cli()),
    })?;
    if !out.status.success() {
        return Err(format!("`{} network ls` failed", runtime.cli()));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// `names`, closest to `name` first (by edit distance, then name): what the user
/// probably meant.
pub fn closest_first(name: &str, mut names: Vec<String>) -> Vec<String> {
    names.sort_by_key(|n| (edit_distance(name, n), n.clone()));
    names.dedup();
    names
}

/// The networks of `runtime` that exist, closest to `name` first, at most `max`:
/// what a typo'd name in a policy is shown beside. Empty when the runtime cannot be
/// asked (the pending grant says why elsewhere).
pub fn closest_existing(runtime: Runtime, name: &str, max: usize) -> Vec<String> {
    match list(runtime) {
        Ok(names) => closest_first(name, names).into_iter().take(max).collect(),
        Err(_) => Vec::new(),
    }
}

/// The Levenshtein distance of `a` and `b` (insertions, deletions, substitutions of
/// one character each): a transposition counts 2, which still ranks
/// `myproj_defualt` next to `myproj_default`.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// What a runtime said of one network (see [`inspect`]).
pub type Answer = Result<Option<RuntimeNet>, Refusal>;

type Key = (Runtime, String);

/// An answer, with the ifindex its bridge had right after the runtime gave it.
type Heard = (Answer, Option<u32>);

#[derive(Default)]
struct Known {
    answers: HashMap<Key, Heard>,
    asking: HashSet<Key>,
}

/// Asks the runtime, and notes which device instance its bridge is right after.
fn hear(runtime: Runtime, name: &str) -> Heard {
    let answer = inspect(runtime, name);
    let ifindex = match &answer {
        Ok(Some(net)) => crate::kernel::sysctl::ifindex_of(&net.bridge),
        _ => None,
    };
    (answer, ifindex)
}

/// Runtime answers for `watch`, asked by a worker thread. A lookup returns the last
/// answer at once and never waits for a runtime, except the first time a network is
/// looked up (then it asks on the caller's thread, bounded by [`INSPECT_TIMEOUT`]: with
/// no answer yet, a grant cannot be resolved at all). [`RuntimeCache::refresh`] asks
/// again about every network in the background; an answer that differs from the last
/// one makes [`RuntimeCache::wake_fd`] readable, so watch runs a pass with it.
pub struct RuntimeCache {
    known: Arc<Mutex<Known>>,
    jobs: mpsc::Sender<Key>,
    wake: OwnedFd,
}

impl RuntimeCache {
    /// Starts the worker thread. Errors: no pipe could be made.
    pub fn start() -> anyhow::Result<RuntimeCache> {
        let (wake, signal) = crate::kernel::process::wake_pipe()?;
        let known: Arc<Mutex<Known>> = Arc::default();
        let (jobs, rx) = mpsc::channel::<Key>();
        let shared = Arc::clone(&known);
        std::thread::spawn(move || {
            for key in rx {
                let heard = hear(key.0, &key.1);
                let mut k = shared.lock().unwrap_or_else(|e| e.into_inner());
                k.asking.remove(&key);
                if k.answers.get(&key) != Some(&heard) {
                    k.answers.insert(key, heard);
                    // Full pipe: a wake-up is pending anyway.
                    let _ = nix::unistd::write(&signal, b"x");
                }
            }
        });
        Ok(RuntimeCache { known, jobs, wake })
    }

    /// The descriptor to poll: readable when an answer changed since [`Self::woken`].
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Empties the wake-up pipe; true when an answer had changed.
    pub fn woken(&self) -> bool {
        let mut buf = [0u8; 64];
        let mut any = false;
        while matches!(nix::unistd::read(&self.wake, &mut buf), Ok(n) if n > 0) {
            any = true;
        }
        any
    }

    /// The last answer about `name` (see the type's documentation), and the ifindex
    /// its bridge had when the runtime gave it: a bridge whose ifindex is another one
    /// now was re-created since, and the runtime has not described it yet.
    pub fn lookup(&self, runtime: Runtime, name: &str) -> (Answer, Option<u32>) {
        let key = (runtime, name.to_string());
        if let Some(a) = self.lock().answers.get(&key) {
            return a.clone();
        }
        let heard = hear(runtime, name);
        self.lock().answers.insert(key, heard.clone());
        heard
    }

    /// Asks again about every network looked up so far, in the background.
    pub fn refresh(&self) {
        let mut k = self.lock();
        let keys: Vec<Key> = k.answers.keys().cloned().collect();
        for key in keys {
            if k.asking.insert(key.clone()) {
                let _ = self.jobs.send(key);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Parses `network inspect` output (a JSON array with one network).
pub fn parse(runtime: Runtime, name: &str, json: &[u8]) -> Result<Option<RuntimeNet>, Refusal> {
    let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| {
        format!(
            "{} network {name}: cannot read its description: {e}",
            runtime.cli()
        )
    })?;
    let Some(net) = value.as_array().and_then(|a| a.first()) else {
        return Ok(None);
    };
    let str_at =
        |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let (driver, bridge, pairs) = match runtime {
        Runtime::Docker => {
            let id = str_at(net, "Id").unwrap_or_default();
            let bridge = net
                .get("Options")
                .and_then(|o| o.get("com.docker.network.bridge.name"))
                .and_then(|b| b.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| format!("br-{}", id.get(..12).unwrap_or(&id)));
            let pairs: Vec<(Option<String>, Option<String>)> = net
                .pointer("/IPAM/Config")
                .and_then(|c| c.as_array())
                .map(|c| {
                    c.iter()
                        .map(|e| (str_at(e, "Subnet"), str_at(e, "Gateway")))
                        .collect()
                })
                .unwrap_or_default();
            (str_at(net, "Driver"), bridge, pairs)
        }
        Runtime::Podman => {
            let bridge = str_at(net, "network_interface").unwrap_or_default();
            let pairs: Vec<(Option<String>, Option<String>)> = net
                .get("subnets")
                .and_then(|s| s.as_array())
                .map(|s| {
                    s.iter()
                        .map(|e| (str_at(e, "subnet"), str_at(e, "gateway")))
                        .collect()
                })
                .unwrap_or_default();
            (str_at(net, "driver"), bridge, pairs)
        }
    };
    let driver = driver.unwrap_or_default();
    if driver != "bridge" {
        return Err(format!(
            "{} network {name} uses the {driver:?} driver; loopgate serves bridge networks only (a macvlan, host or none network has no bridge on the host to guard)",
            runtime.cli()
        ));
    }
    if bridge.is_empty() {
        return Err(format!("{} network {name} names no bridge", runtime.cli()));
    }
    // What the runtime says is checked as if the user had typed it: a bridge called
    // `lo` (or a pattern) would put the guard on the host's own loopback, and a subnet
    // of 0.0.0.0/0 or inside 127/8 would widen who gets in.
    if crate::spec::is_pattern(&bridge) {
        return Err(format!(
            "{} network {name} names the bridge {bridge:?}, which is not an interface name",
            runtime.cli()
        ));
    }
    crate::input::parse_iface(&bridge).map_err(|e| {
        format!(
            "{} network {name} names the bridge {bridge:?}, which loopgate will not use: {e:#}",
            runtime.cli()
        )
    })?;
    let mut subnets = Vec::new();
    let mut gateway = None;
    for (subnet, gw) in pairs {
        let Some(text) = subnet else { continue };
        if text.contains(':') {
            continue; // IPv6: route_localnet is IPv4 only
        }
        let n = crate::input::parse_cidr(&text).map_err(|e| {
            format!(
                "{} network {name} has the subnet {text:?}, which loopgate will not allow in: {e:#}",
                runtime.cli()
            )
        })?;
        subnets.push(n);
        if gateway.is_none() {
            gateway = gw.and_then(|g| g.parse().ok());
        }
    }
    if subnets.is_empty() {
        return Err(format!(
            "{} network {name} has no IPv4 subnet (IPv6 only?); route_localnet is IPv4 only",
            runtime.cli()
        ));
    }
    Ok(Some(RuntimeNet {
        bridge,
        subnets,
        gateway,
    }))
}

impl crate::spec::Host for HostInterfaces {
    fn interface_names(&self) -> Vec<String> {
        self.names().cloned().collect()
    }

    fn runtime_network(&self, runtime: Runtime, name: &str) -> Result<Option<RuntimeNet>, String> {
        inspect(runtime, name)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_closest_names_come_first() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("myproj_defualt", "myproj_default"), 2);
        let names = ["bridge", "host", "none", "myproj_default", "other_default"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            closest_first("myproj_defualt", names),
            ["myproj_default", "other_default", "bridge", "host", "none"]
        );
    }

    use super::*;

    #[test]
    fn a_compose_network_is_its_br_bridge_with_its_subnet_and_gateway() {
        let json = br#"[{"Name":"myproj_default","Id":"0123456789abcdef0123","Driver":"bridge",
            "IPAM":{"Config":[{"Subnet":"203.0.113.32/27","Gateway":"203.0.113.33"}]},"Options":{}}]"#;
        let net = parse(Runtime::Docker, "myproj_default", json)
            .unwrap()
            .unwrap();
        assert_eq!(net.bridge, "br-0123456789ab");
        assert_eq!(net.subnets, vec!["203.0.113.32/27".parse().unwrap()]);
        assert_eq!(net.gateway, Some("203.0.113.33".parse().unwrap()));
        // The default network names its bridge.
        let json = br#"[{"Name":"bridge","Id":"ff","Driver":"bridge","Options":{"com.docker.network.bridge.name":"docker0"},
            "IPAM":{"Config":[{"Subnet":"198.51.100.0/26","Gateway":"198.51.100.1"}]}}]"#;
        assert_eq!(
            parse(Runtime::Docker, "bridge", json)
                .unwrap()
                .unwrap()
                .bridge,
            "docker0"
        );
    }

    #[test]
    fn a_podman_network_names_its_interface() {
        let json = br#"[{"name":"lgpod","driver":"bridge","network_interface":"podman1",
            "subnets":[{"subnet":"fd00::/64","gateway":"fd00::1"},{"subnet":"203.0.113.64/27","gateway":"203.0.113.65"}]}]"#;
        let net = parse(Runtime::Podman, "lgpod", json).unwrap().unwrap();
        assert_eq!(net.bridge, "podman1");
        assert_eq!(net.subnets, vec!["203.0.113.64/27".parse().unwrap()]);
        assert_eq!(net.gateway, Some("203.0.113.65".parse().unwrap()));
    }

    #[test]
    fn other_drivers_and_ipv6_only_networks_are_refused_by_name() {
        let macvlan = br#"[{"Name":"mv","Id":"ab","Driver":"macvlan","IPAM":{"Config":[{"Subnet":"203.0.113.0/24"}]}}]"#;
        let e = parse(Runtime::Docker, "mv", macvlan).unwrap_err();
        assert!(e.contains("mv") && e.contains("macvlan"), "{e}");
        let v6 = br#"[{"Name":"six","Id":"ab","Driver":"bridge","IPAM":{"Config":[{"Subnet":"fd00::/64"}]}}]"#;
        let e = parse(Runtime::Docker, "six", v6).unwrap_err();
        assert!(e.contains("six") && e.contains("IPv6"), "{e}");
        assert_eq!(parse(Runtime::Docker, "x", b"[]").unwrap(), None);
    }
}
