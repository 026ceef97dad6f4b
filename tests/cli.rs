//! loopgate against the real kernel, in namespaces created per test, with real traffic.
//!
//! Each test builds a `Lab`: a host namespace with a bridge and services bound to
//! 127.0.0.1, an allowed "container" (192.0.2.10) and a disallowed neighbour
//! (192.0.2.200) on the bridge. Assertions are about what got through and what did not.
//!
//! One test binary (as ripgrep does it), one module per topic under tests/cli/; the lab
//! itself (namespaces, services, clients, running loopgate and watch) is in
//! tests/support/. This file keeps only what several topics share and that needs the
//! loopgate library.

mod support;

// Topic modules; kept under tests/cli/ so Cargo does not build each as its own binary.
#[path = "cli/audit.rs"]
mod audit;
#[path = "cli/cli_surface.rs"]
mod cli_surface;
#[path = "cli/concurrency.rs"]
mod concurrency;
#[path = "cli/conntrack.rs"]
mod conntrack;
#[path = "cli/corpus.rs"]
mod corpus;
#[path = "cli/crash.rs"]
mod crash;
#[path = "cli/device_identity_and_repair.rs"]
mod device_identity_and_repair;
#[path = "cli/differential.rs"]
mod differential;
#[path = "cli/docs.rs"]
mod docs;
#[path = "cli/exit_codes.rs"]
mod exit_codes;
#[path = "cli/files.rs"]
mod files;
#[path = "cli/firewall.rs"]
mod firewall;
#[path = "cli/firewall_incus.rs"]
mod firewall_incus;
#[path = "cli/firewall_remedies.rs"]
mod firewall_remedies;
#[path = "cli/firewall_rpfilter.rs"]
mod firewall_rpfilter;
#[path = "cli/firewall_sets.rs"]
mod firewall_sets;
#[path = "cli/firewall_xt.rs"]
mod firewall_xt;
#[path = "cli/flows_after_repair.rs"]
mod flows_after_repair;
#[path = "cli/foreign_forwards.rs"]
mod foreign_forwards;
#[path = "cli/guard.rs"]
mod guard;
#[path = "cli/held_by_watch.rs"]
mod held_by_watch;
#[path = "cli/hold_lifecycle.rs"]
mod hold_lifecycle;
#[path = "cli/host_gateway.rs"]
mod host_gateway;
#[path = "cli/install_deps.rs"]
mod install_deps;
#[path = "cli/install_scripts.rs"]
mod install_scripts;
#[path = "cli/kept_runtime_grants.rs"]
mod kept_runtime_grants;
#[path = "cli/litter.rs"]
mod litter;
#[path = "cli/names.rs"]
mod names;
#[path = "cli/one_owner.rs"]
mod one_owner;
#[path = "cli/output_and_persist.rs"]
mod output_and_persist;
#[path = "cli/owned_table.rs"]
mod owned_table;
#[path = "cli/prometheus.rs"]
mod prometheus;
#[path = "cli/reachability.rs"]
mod reachability;
#[path = "cli/reconcile.rs"]
mod reconcile;
#[path = "cli/remedies.rs"]
mod remedies;
#[path = "cli/rollback.rs"]
mod rollback;
#[path = "cli/routed_interfaces.rs"]
mod routed_interfaces;
#[path = "cli/runtime_errors.rs"]
mod runtime_errors;
#[path = "cli/runtime_grants.rs"]
mod runtime_grants;
#[path = "cli/runtime_nets_and_foreign_rules.rs"]
mod runtime_nets_and_foreign_rules;
#[path = "cli/runtimes.rs"]
mod runtimes;
#[path = "cli/stall.rs"]
mod stall;
#[path = "cli/sysctl_values.rs"]
mod sysctl_values;
#[path = "cli/table_names.rs"]
mod table_names;
#[path = "cli/table_tamper.rs"]
mod table_tamper;
#[path = "cli/trace.rs"]
mod trace;
#[path = "cli/traffic.rs"]
mod traffic;
#[path = "cli/watch.rs"]
mod watch;
#[path = "cli/watch_forwarding.rs"]
mod watch_forwarding;
#[path = "cli/watch_matrix.rs"]
mod watch_matrix;
#[path = "cli/watch_socket_and_bounded_cli.rs"]
mod watch_socket_and_bounded_cli;
#[path = "cli/words.rs"]
mod words;

use std::net::Ipv4Addr;
use support::*;

/// The transaction steps, each of which can fail before it starts or after it finished.
const STEPS: [&str; 6] = [
    "journal",
    "sysctl-lower",
    "ruleset",
    "sysctl-raise",
    "conntrack",
    "commit",
];

/// Interfaces the example policies name, with the addresses they would have.
struct ExampleHost;

impl loopgate::input::Interfaces for ExampleHost {
    fn ipv4_addresses(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        let addr = match name {
            "docker0" => Ipv4Addr::new(172, 17, 0, 1),
            "br-apps" => Ipv4Addr::new(172, 18, 0, 1),
            "cni0" => Ipv4Addr::new(10, 244, 1, 1),
            "br0" => HOST_ADDR,
            "br1" => Ipv4Addr::new(198, 51, 100, 1),
            "br-0123456789ab" => Ipv4Addr::new(172, 19, 0, 1),
            _ => return None,
        };
        Some(vec![addr])
    }

    fn owns(&self, addr: Ipv4Addr) -> bool {
        [
            "docker0",
            "br-apps",
            "cni0",
            "br0",
            "br1",
            "br-0123456789ab",
        ]
        .iter()
        .any(|n| {
            loopgate::input::Interfaces::ipv4_addresses(self, n).is_some_and(|a| a.contains(&addr))
        })
    }

    fn host_gateway(&self) -> Option<Ipv4Addr> {
        Some(Ipv4Addr::new(172, 17, 0, 1))
    }
}

/// The examples' compose network: what `docker network inspect myproj_default` says.
impl loopgate::spec::Host for ExampleHost {
    fn interface_names(&self) -> Vec<String> {
        [
            "docker0",
            "br-apps",
            "cni0",
            "br0",
            "br1",
            "br-0123456789ab",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn runtime_network(
        &self,
        _runtime: loopgate::kernel::runtime::Runtime,
        name: &str,
    ) -> Result<Option<loopgate::kernel::runtime::RuntimeNet>, String> {
        Ok(
            (name == "myproj_default").then(|| loopgate::kernel::runtime::RuntimeNet {
                bridge: "br-0123456789ab".into(),
                subnets: vec!["172.19.0.0/16".parse().unwrap()],
                gateway: Some(Ipv4Addr::new(172, 19, 0, 1)),
            }),
        )
    }
}

/// Loads the rendered table into a throwaway namespace with `nft -c` (check only).
fn nft_accepts(text: &str) {
    let ns = Netns::new("nftc");
    let path = std::env::temp_dir().join(format!("{}.nft", ns.name));
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", "-c", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "nft -c rejects the plan: {}\n{text}",
        stderr(&out)
    );
}

/// Kernel image of loopgate's table in `ns`, read with the library from a thread in it.
fn table_image(ns: &Netns) -> Option<loopgate::kernel::nft::TableImage> {
    ns.enter(|| loopgate::kernel::nft::snapshot(None).unwrap().image())
}
