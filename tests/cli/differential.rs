//! Topic: the differential corpus (issue 20, section 4): the kernel is the judge of
//! audit's firewall model.
//!
//! Each file under `tests/firewalls/` is a ruleset another project really installs
//! (its header names the project, the source file, the version and what was adapted to
//! the lab). For each one, its own `#[test]`:
//!
//! 1. Control: in a fresh lab, without the foreign ruleset, the grant
//!    (`expose br0 --allow 192.0.2.10/32 --port P`) carries the client's traffic and
//!    audit agrees; then it is revoked.
//! 2. The entry's `lab-setup` commands run in the host namespace and the ruleset is
//!    loaded there (by its extension: `.nft` with `nft -f`, `.iptables-nft` with
//!    `iptables-nft-restore`, `.iptables-legacy` with `iptables-legacy-restore`). A
//!    foreign forward the entry declares (`lab-forward`) must work now, before
//!    loopgate: otherwise the fixture is wrong.
//! 3. The grant is made again, as on a real host where the firewall was there first.
//! 4. The kernel decides: the allowed client (192.0.2.10) connects to
//!    `192.0.2.1:P` or not, and the foreign forward still answers or not.
//! 5. `loopgate audit --format json` decides too, and the two must agree.
//!
//! How audit's report maps to a verdict on the grant, from the findings about the
//! grant's interface:
//! - **blocked**: a finding that says the flow cannot work: `firewall-drops`, `notrack`,
//!   `reply-route`, `allow-route`, `not-listening`, `listener-bound-to-device`,
//!   `grant-inactive`, `listen-address-gone`.
//! - **undecided**: only `firewall-may-drop` ("may drop").
//! - **works**: none of these.
//!
//! The kernel's answer is binary, so "undecided" agrees with neither: on a grant that
//! works it is the false alarm that keeps a monitoring check at exit 1 for ever, and on
//! a grant that is blocked it understates a certain drop (issue 20: "certain, not
//! may"). The corpus's rulesets and packets are concrete; audit has everything it needs
//! to decide. Audit's exit code must be 1 exactly when a warning or critical finding is
//! listed, so a blocked grant is always exit 1; a working grant leaves exit 0 unless
//! another finding (not about the grant, e.g. `all-open` for the foreign tool's
//! `conf.all.route_localnet=1`) is listed, which the failure message shows.
//!
//! A foreign forward (`lab-forward: 169.254.170.2:80 -> 127.0.0.1:51679`, the ECS
//! agent's credentials endpoint) maps the same way from the findings that name its
//! original destination: audit says it is **cut** when such a finding has a code in
//! [`FORWARD_CUT`], **works** when any other finding names it (it is listed as an
//! exposure), and is **silent** otherwise. Silence agrees with neither: the rule
//! is "never silent" about another tool's forward into 127/8 on a managed interface.
//!
//! Expected results are not written down anywhere the test reads: the kernel decides
//! at run time. Headers may say what was observed, for people.

use super::*;
use std::path::{Path, PathBuf};

/// Finding codes that say the grant's flow cannot work.
const BLOCKS: [&str; 8] = [
    "firewall-drops",
    "notrack",
    "reply-route",
    "allow-route",
    "not-listening",
    "listener-bound-to-device",
    "grant-inactive",
    "listen-address-gone",
];

/// Finding codes that say the grant's flow may not work.
const MAY_BLOCK: [&str; 1] = ["firewall-may-drop"];

/// Finding codes that say a foreign forward into 127/8 is cut by loopgate's guard.
/// (A forward audit lists under any other code is one it says works.)
const FORWARD_CUT: [&str; 0] = [];

/// The client the grant allows, and the only source the grant names: audit judges
/// exactly the flow the kernel is asked about.
const CLIENT: &str = "192.0.2.10/32";

/// What a corpus file says about itself.
#[derive(Debug)]
struct Entry {
    path: PathBuf,
    project: String,
    source: String,
    version: String,
    /// Shell commands run in the host namespace before the ruleset is loaded.
    setup: Vec<String>,
    /// (original destination, loopback target) of a foreign DNAT into 127/8.
    forward: Option<(std::net::SocketAddrV4, std::net::SocketAddrV4)>,
    /// The grant's port (and the loopback service's): 3306 unless `lab-port` says.
    port: u16,
    /// `lab-routed: IFACE`: the client is a pod behind its own veth IFACE, routed by a
    /// /32 as Calico does it (no bridge, no address on the veth, route_localnet=1 as
    /// the CNI plugin sets it; the pod's default route via 169.254.1.1), and the grant
    /// is on IFACE with `--listen 192.0.2.1`.
    routed: Option<String>,
    /// `lab-allow`: the grant's --allow (default: exactly the client).
    allow: String,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/firewalls")
}

impl Entry {
    fn read(file: &str) -> Entry {
        let path = corpus_dir().join(file);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let field = |key: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| l.strip_prefix("# ")?.strip_prefix(key)?.strip_prefix(':'))
                .map(|v| v.trim().to_string())
                .collect()
        };
        let one = |key: &str| -> String {
            let v = field(key);
            assert!(
                v.len() == 1 && !v[0].is_empty(),
                "{file}: the header needs exactly one `# {key}: ...` line"
            );
            v[0].clone()
        };
        assert!(
            !field("adapted").is_empty(),
            "{file}: the header needs `# adapted: ...` lines"
        );
        let forward = field("lab-forward").first().map(|f| {
            let (from, to) = f
                .split_once("->")
                .unwrap_or_else(|| panic!("{file}: lab-forward: FROM -> TO"));
            (from.trim().parse().unwrap(), to.trim().parse().unwrap())
        });
        let port = field("lab-port")
            .first()
            .map(|p| p.parse().unwrap())
            .unwrap_or(3306);
        Entry {
            routed: field("lab-routed").first().cloned(),
            allow: field("lab-allow")
                .first()
                .cloned()
                .unwrap_or_else(|| CLIENT.to_string()),
            project: one("project"),
            source: one("source"),
            version: one("version"),
            setup: field("lab-setup"),
            forward,
            port,
            path,
        }
    }

    /// Loads the ruleset into `ns` with the loader its extension names.
    fn load(&self, ns: &Netns) {
        let file = self.path.to_str().unwrap();
        let name = self.path.file_name().unwrap().to_str().unwrap();
        let args: Vec<&str> = if name.ends_with(".nft") {
            vec!["nft", "-f", file]
        } else if name.ends_with(".iptables-nft") {
            vec!["iptables-nft-restore", file]
        } else if name.ends_with(".iptables-legacy") {
            vec!["iptables-legacy-restore", file]
        } else {
            panic!("{name}: unknown extension (.nft, .iptables-nft, .iptables-legacy)")
        };
        let out = ns.exec_status(&args);
        assert!(
            out.status.success(),
            "{name}: loading the ruleset failed: {}",
            stderr(&out)
        );
    }
}

/// What audit says about the grant (see the module doc).
#[derive(Debug, PartialEq, Clone, Copy)]
enum AuditSays {
    Works,
    Undecided,
    Blocked,
}

/// What audit says about a foreign forward (see the module doc).
#[derive(Debug, PartialEq, Clone, Copy)]
enum ForwardSays {
    Works,
    Cut,
    Silent,
}

/// One run of `loopgate audit --format json`, judged.
struct Audit {
    code: Option<i32>,
    grant: AuditSays,
    forward: Option<ForwardSays>,
    /// Every finding, one line each, for failure messages.
    findings: Vec<String>,
    /// Whether a warning or critical finding is listed.
    alarming: bool,
}

fn audit(lab: &Lab, iface: &str, forward: Option<std::net::SocketAddrV4>) -> Audit {
    let out = lab.loopgate(&["audit", "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "audit --format json is not JSON ({e}): {}\n{}",
            stdout(&out),
            stderr(&out)
        )
    });
    let list = doc["findings"].as_array().cloned().unwrap_or_default();
    let code_of = |f: &serde_json::Value| f["code"].as_str().unwrap_or("").to_string();
    let on_grant = |f: &&serde_json::Value| f["interface"].as_str() == Some(iface);
    let grant = if list
        .iter()
        .filter(on_grant)
        .any(|f| BLOCKS.contains(&code_of(f).as_str()))
    {
        AuditSays::Blocked
    } else if list
        .iter()
        .filter(on_grant)
        .any(|f| MAY_BLOCK.contains(&code_of(f).as_str()))
    {
        AuditSays::Undecided
    } else {
        AuditSays::Works
    };
    let forward = forward.map(|dest| {
        let needle = dest.ip().to_string();
        let naming: Vec<&serde_json::Value> = list
            .iter()
            .filter(|f| f["message"].as_str().unwrap_or("").contains(&needle))
            .collect();
        if naming
            .iter()
            .any(|f| FORWARD_CUT.contains(&code_of(f).as_str()))
        {
            ForwardSays::Cut
        } else if naming.is_empty() {
            ForwardSays::Silent
        } else {
            ForwardSays::Works
        }
    });
    let alarming = list
        .iter()
        .any(|f| matches!(f["severity"].as_str(), Some("warning") | Some("critical")));
    Audit {
        code: out.status.code(),
        grant,
        forward,
        findings: list
            .iter()
            .map(|f| {
                format!(
                    "{} [{}] {}: {}",
                    f["severity"].as_str().unwrap_or("?"),
                    code_of(f),
                    f["interface"].as_str().unwrap_or("-"),
                    f["message"].as_str().unwrap_or("")
                )
            })
            .collect(),
        alarming,
    }
}

/// Whether the allowed client gets an answer through the grant.
fn grant_works(client: &Netns, port: u16) -> bool {
    tcp_request(client, sa(HOST_ADDR, port)).as_deref() == Some(&format!("tcp:{port}"))
}

/// Whether the client reaches the forward's loopback service through its original
/// destination.
fn forward_works(client: &Netns, from: std::net::SocketAddrV4, to: std::net::SocketAddrV4) -> bool {
    tcp_request(client, from).as_deref() == Some(&format!("tcp:{}", to.port()))
}

/// The pod of a `lab-routed` entry: 198.51.100.10/32 behind the host's veth `iface`,
/// wired as Calico wires a workload.
pub(super) const POD_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);

pub(super) fn routed_pod(lab: &Lab, iface: &str) -> Netns {
    let pod = Netns::new("pod");
    run(
        "ip",
        &[
            "-n",
            &lab.host.name,
            "link",
            "add",
            iface,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pod.name,
        ],
    );
    lab.host.ip(&format!("link set {iface} up"));
    lab.host
        .set_sysctl(&format!("net.ipv4.conf.{iface}.proxy_arp"), "1");
    lab.host
        .set_sysctl(&format!("net.ipv4.conf.{iface}.rp_filter"), "0");
    // Calico's CNI plugin sets route_localnet=1 on the veth it creates; the veth has no
    // IPv4 address, so loopgate leaves that value as the CNI set it.
    lab.host
        .set_sysctl(&format!("net.ipv4.conf.{iface}.route_localnet"), "1");
    lab.host.ip(&format!("route add {POD_ADDR}/32 dev {iface}"));
    pod.ip(&format!("addr add {POD_ADDR}/32 dev eth0"));
    pod.ip("link set eth0 up");
    // The pod's gateway 169.254.1.1 is answered by the host's veth: Calico relies on
    // proxy ARP and a default route on the host; the lab host has none, so the pod
    // gets the neighbour entry directly.
    let mac = stdout(
        &lab.host
            .exec(&["cat", &format!("/sys/class/net/{iface}/address")]),
    );
    pod.ip(&format!(
        "neigh add 169.254.1.1 lladdr {} dev eth0",
        mac.trim()
    ));
    pod.ip("route add 169.254.1.1 dev eth0 scope link");
    pod.ip("route add default via 169.254.1.1 dev eth0");
    pod
}

/// The differential test of one corpus file (see the module doc).
fn differential(file: &str) {
    let entry = Entry::read(file);
    let lab = Lab::new();
    let mut tcp = vec![sa(LO, entry.port)];
    if let Some((_, to)) = entry.forward {
        tcp.push(to);
    }
    let _services = start_services(&lab.host, &tcp, &[]);
    let port = entry.port.to_string();
    let pod = entry.routed.as_deref().map(|iface| routed_pod(&lab, iface));
    let client = pod.as_ref().unwrap_or(&lab.container);
    let iface = entry.routed.as_deref().unwrap_or("br0");
    let host_addr = HOST_ADDR.to_string();
    let mut expose = vec!["expose", iface, "--allow", &entry.allow, "--port", &port];
    if entry.routed.is_some() {
        expose.extend(["--listen", &host_addr]);
    }

    // 1. Control: without the foreign ruleset the grant works and audit agrees.
    lab.ok(&expose);
    assert!(
        grant_works(client, entry.port),
        "{file}: control: the grant does not work without the foreign ruleset"
    );
    let control = audit(&lab, iface, None);
    assert!(
        control.grant == AuditSays::Works && control.code == Some(0),
        "{file}: control: audit (exit {:?}) without the foreign ruleset:\n{}",
        control.code,
        control.findings.join("\n")
    );
    lab.ok(&["revoke", iface, "--port", &port]);

    // 2. The foreign tool's setup and ruleset.
    for cmd in &entry.setup {
        let out = lab.host.exec_status(&["sh", "-c", cmd]);
        assert!(
            out.status.success(),
            "{file}: lab-setup `{cmd}` failed: {}",
            stderr(&out)
        );
    }
    entry.load(&lab.host);
    if let Some((from, to)) = entry.forward {
        assert!(
            forward_works(client, from, to),
            "{file}: control: the foreign forward {from} -> {to} does not work before loopgate"
        );
    }

    // 3. The grant, made on a host where the firewall was there first.
    let out = lab.loopgate(&expose);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{file}: expose refused: {}",
        stderr(&out)
    );

    // 4. The kernel's verdict; 5. audit's.
    let kernel_grant = grant_works(client, entry.port);
    let kernel_forward = entry
        .forward
        .map(|(from, to)| forward_works(client, from, to));
    let said = audit(&lab, iface, entry.forward.map(|(from, _)| from));

    let mut disagreements = Vec::new();
    let grant_agrees = match said.grant {
        AuditSays::Works => kernel_grant,
        AuditSays::Blocked => !kernel_grant,
        AuditSays::Undecided => false,
    };
    if !grant_agrees {
        disagreements.push(format!(
            "grant: the kernel says it {}, audit says {:?}",
            if kernel_grant { "works" } else { "is blocked" },
            said.grant
        ));
    }
    if let (Some(kernel), Some(audit)) = (kernel_forward, said.forward) {
        let agrees = match audit {
            ForwardSays::Works => kernel,
            ForwardSays::Cut => !kernel,
            ForwardSays::Silent => false,
        };
        if !agrees {
            disagreements.push(format!(
                "foreign forward: the kernel says it {}, audit says {audit:?}",
                if kernel { "works" } else { "is cut" }
            ));
        }
    }
    let expected_code = if said.alarming { 1 } else { 0 };
    if said.code != Some(expected_code) {
        disagreements.push(format!(
            "exit code {:?} with {} warning or critical findings",
            said.code,
            if said.alarming { "some" } else { "no" }
        ));
    }
    assert!(
        disagreements.is_empty(),
        "{file} ({}, {} at {}): audit disagrees with the kernel:\n  {}\naudit exit {:?}, findings:\n  {}",
        entry.project,
        entry.source,
        entry.version,
        disagreements.join("\n  "),
        said.code,
        said.findings.join("\n  ")
    );
}

/// One `#[test]` per corpus file, so a disagreement is one named failing test, and the
/// list of files, so none under tests/firewalls/ is left out.
macro_rules! corpus {
    ($($test:ident => $file:literal,)+) => {
        $(
            #[test]
            fn $test() {
                differential($file);
            }
        )+
        const FILES: &[&str] = &[$($file),+];
    };
}

corpus! {
    amazon_ecs_agent_bridge => "amazon-ecs-agent-bridge.iptables-nft",
    amazon_ecs_agent => "amazon-ecs-agent.iptables-nft",
    calico_felix_iptables => "calico-felix-iptables.iptables-nft",
    debian_nftables_conf => "debian-nftables-conf.nft",
    docker_28_iptables => "docker-28-iptables.iptables-nft",
    docker_29_nftables => "docker-29-nftables.nft",
    fail2ban_recidive_allports => "fail2ban-recidive-allports.nft",
    fail2ban_sshd_nftables => "fail2ban-sshd-nftables.nft",
    fedora_iptables_services => "fedora-iptables-services.iptables-legacy",
    firewalld_default_zone => "firewalld-default-zone.nft",
    firewalld_strict_forward_ports => "firewalld-strict-forward-ports.nft",
    firewalld_trusted_zone => "firewalld-trusted-zone.nft",
    flannel_iptables => "flannel-iptables.iptables-nft",
    incus_network_acl => "incus-network-acl.nft",
    kube_proxy_iptables_legacy => "kube-proxy-iptables.iptables-legacy",
    kube_proxy_iptables => "kube-proxy-iptables.iptables-nft",
    kube_proxy_nftables => "kube-proxy-nftables.nft",
    libvirt_nat_network => "libvirt-nat-network.iptables-nft",
    libvirt_nat_network_nft => "libvirt-nat-network.nft",
    nftables_workstation => "nftables-workstation.nft",
    podman_netavark_iptables => "podman-netavark-iptables.iptables-nft",
    tailscale_iptables => "tailscale-iptables.iptables-nft",
    ufw_allow_rule => "ufw-allow-rule.iptables-nft",
    ufw_default_deny => "ufw-default-deny.iptables-nft",
}

#[test]
fn every_corpus_file_has_a_test_and_its_provenance() {
    let mut on_disk: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && n != "README.md")
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = FILES.iter().map(|f| f.to_string()).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "tests/firewalls/ and the corpus! list differ"
    );
    let mut projects: Vec<String> = FILES.iter().map(|f| Entry::read(f).project).collect();
    projects.sort();
    projects.dedup();
    assert!(
        FILES.len() >= 20 && projects.len() >= 12,
        "issue 20 asks for at least 20 rulesets from at least 12 projects: {} from {projects:?}",
        FILES.len()
    );
}
