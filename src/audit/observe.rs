//! Reading what audit judges: the host through the kernel seam (so the judgement can
//! be tested over the fake kernel), plus the running watch's presence file and the
//! nftables configuration file (`/etc/nftables.conf`, or `LOOPGATE_NFTABLES_CONF`).

use crate::input::loopback;
use crate::kernel::host::{IfAddr, Listener, RouteLookup};
use crate::kernel::nft::{RuleCounter, TableImage};
use crate::kernel::seam::{Kernel, TableSnapshot};
use crate::kernel::sysctl::Reading;
use crate::state::State;
use anyhow::Result;
use std::collections::BTreeMap;

/// Everything audit reads from the kernel, gathered before any judgement.
#[derive(Debug, Default)]
pub struct Observed {
    /// route_localnet of every IPv4 conf directory, `all` and `default` included.
    pub sysctls: Vec<(String, Reading)>,
    /// The ifindex of each interface in `sysctls` (absent for `all`, `default`, or a
    /// device that vanished while being read).
    pub ifindexes: BTreeMap<String, u32>,
    /// The current name of each device loopgate holds an original for (`None`: gone).
    pub recorded_names: BTreeMap<u32, Option<String>>,
    /// loopgate's table as read, `None` when absent.
    pub table: Option<TableImage>,
    /// True when the table exists but holds nothing (no chain, set or rule): what a
    /// watch that held the name leaves, or `nft flush table` (`table` is then `None`).
    pub empty_table: bool,
    /// The nftables configuration file (`/etc/nftables.conf`, or
    /// `$LOOPGATE_NFTABLES_CONF`) when it names `table ip loopgate`.
    pub nftables_conf_names_table: Option<String>,
    /// True when the table's elements were vouched for instead of read back.
    pub elements_vouched: bool,
    /// Which protection keeps other processes off loopgate's table: `owned by watch
    /// (pid N)` while a running watch holds it, else `not owned`.
    pub protection: String,
    /// What is asked for but cannot be served now (see [`crate::spec::resolve`]).
    pub pending: Vec<crate::spec::Pending>,
    /// Runtime networks' grants in force as last resolved, which their runtime could
    /// not confirm now ([`crate::spec::PendingKind::Unconfirmed`]): not pending.
    pub unconfirmed: Vec<crate::spec::Pending>,
    /// How long each pending spec (by label) has been pending, in seconds, as far as
    /// loopgate has seen (see [`super::pending_since`]); missing: just now.
    pub pending_for: BTreeMap<String, u64>,
    /// Labels of the pending specs that were served at an earlier audit (a runtime
    /// network that was there and is gone: a project that is down, not a typo).
    pub served_before: std::collections::BTreeSet<String>,
    /// How long a spec may be pending before that is a warning, in seconds
    /// ([`super::pending_since::grace`]).
    pub pending_grace: u64,
    /// For each runtime network that does not exist (by pending spec label): the
    /// runtime's networks that do, closest name first (at most a few); empty when the
    /// runtime was not asked or has none.
    pub closest_networks: BTreeMap<String, Vec<String>>,
    /// Sockets listening on 127.0.0.0/8 or on 0.0.0.0 (which answers as 127.0.0.1
    /// too), with the device each is bound to, if any.
    pub loopback_listeners: Vec<Listener>,
    /// What each rule of loopgate's table has matched (empty when there is no table).
    pub counters: Vec<RuleCounter>,
    /// Every IPv4 address of the namespace with its interface and prefix length.
    pub addresses: Vec<IfAddr>,
    /// The route to each address audit samples from the grants' allowed networks
    /// (a few addresses of each, see the `reachability` module).
    pub routes: BTreeMap<std::net::Ipv4Addr, RouteLookup>,
    /// The unicast routes through one interface (destination, interface), read when
    /// there are grants: which interface a part of an allowed network lives behind.
    pub route_table: Vec<(ipnetwork::Ipv4Network, String)>,
    /// Every other firewall's chains, for the firewall findings (see [`super::firewall`]).
    pub firewall: crate::kernel::firewall::Foreign,
}

/// The nftables configuration file nftables.service loads; `LOOPGATE_NFTABLES_CONF`
/// names another (tests, or a distribution that keeps it elsewhere).
pub fn nftables_conf() -> std::path::PathBuf {
    std::env::var_os("LOOPGATE_NFTABLES_CONF")
        .map(Into::into)
        .unwrap_or_else(|| "/etc/nftables.conf".into())
}

/// [`nftables_conf`]'s path when the file has a line that starts `table ip loopgate`
/// (as `nft list ruleset > /etc/nftables.conf` writes it); `None` otherwise, or when
/// it cannot be read (no nftables.service configuration: nothing to warn about).
fn nftables_conf_naming_table() -> Option<String> {
    let path = nftables_conf();
    let text = std::fs::read_to_string(&path).ok()?;
    text.lines()
        .any(|l| {
            let words: Vec<&str> = l.split_whitespace().take(3).collect();
            words == ["table", "ip", crate::ruleset::TABLE]
        })
        .then(|| path.display().to_string())
}

/// Reads what [`assess`](super::assess) judges, through `kernel`.
pub fn observe<K: Kernel>(
    kernel: &K,
    host: &dyn crate::spec::Host,
    state: &State,
    expected: Option<&TableImage>,
    deep: bool,
) -> Result<Observed> {
    let sysctls = kernel.route_localnet_all()?;
    let ifindexes = sysctls
        .iter()
        .filter_map(|(n, _)| kernel.ifindex_of(n).map(|i| (n.clone(), i)))
        .collect();
    let recorded_names = state
        .originals
        .iter()
        .map(|o| (o.ifindex, kernel.name_of(o.ifindex)))
        .collect();
    let trust = match deep {
        true => None,
        false => state.vouch.as_ref().zip(expected),
    };
    let snapshot = kernel.read_table(trust)?;
    let loopback_listeners = kernel
        .listeners()?
        .into_iter()
        .filter(|l| loopback().contains(l.addr) || l.addr.is_unspecified())
        .collect();
    let addresses = kernel.addresses()?;
    let routes = kernel
        .routes(&super::reachability::probes(&state.grants))?
        .into_iter()
        .collect();
    let (unconfirmed, pending): (Vec<_>, Vec<_>) =
        crate::spec::resolve_keeping(&state.specs, host, &state.grants)
            .pending
            .into_iter()
            .partition(|p| p.kind == crate::spec::PendingKind::Unconfirmed);
    // From who the kernel says holds the table, checked against the running watch:
    // a stale or forged presence file cannot make audit claim a protection.
    use crate::kernel::nft::Holder;
    let protection = match (snapshot.holder(), crate::state::running_watch()) {
        (Some(Holder::Socket(p)), Some((pid, port))) if p == port => {
            format!("owned by watch (pid {pid})")
        }
        (Some(Holder::Socket(p)), _) => {
            format!("owned by another process (netlink port {p}), not by a running loopgate watch")
        }
        _ => "not owned".to_string(),
    };
    // An empty table (no chain, set or rule) guards nothing, whoever made it: it is
    // present and empty, never "absent", and never compared rule by rule.
    let image = snapshot.image();
    let empty_table = match &image {
        Some(i) => i.chains.is_empty() && i.sets.is_empty() && i.rules.is_empty(),
        None => snapshot.holder().is_some(),
    };
    Ok(Observed {
        protection,
        pending,
        unconfirmed,
        pending_for: BTreeMap::new(),
        served_before: Default::default(),
        pending_grace: super::pending_since::DEFAULT_GRACE,
        closest_networks: BTreeMap::new(),
        sysctls,
        ifindexes,
        recorded_names,
        table: image.filter(|_| !empty_table),
        empty_table,
        nftables_conf_names_table: nftables_conf_naming_table(),
        elements_vouched: snapshot.vouched(),
        loopback_listeners,
        counters: snapshot.counters(),
        addresses,
        routes,
        route_table: match state.grants.is_empty() {
            true => vec![],
            false => kernel.route_table()?,
        },
        // Read for the grants' flows and, on guarded interfaces, other tools' forwards.
        firewall: match state.grants.is_empty() && state.guarded.is_empty() {
            true => Default::default(),
            false => kernel.foreign_firewall(),
        },
    })
}

/// The table audit judges the kernel's against: `planned` (the plan of `state`'s
/// grants), or, when `kernel` holds instead the table a loopgate from before stable
/// names wrote for those same grants (positional names, see
/// [`crate::plan::legacy_ruleset_admitting`]), that table. It guards exactly as the
/// plan does, and the next change rewrites it under the new names, so after an
/// upgrade it is neither tampered nor a reason to exit 1. Any other table is judged
/// against `planned`. Plans the old names only when `kernel` differs from `planned`.
pub fn rightful_table(
    planned: Option<TableImage>,
    kernel: Option<&TableImage>,
    state: &State,
) -> Option<TableImage> {
    let (Some(have), Some(_)) = (kernel, &planned) else {
        return planned;
    };
    if planned.as_ref() == Some(have) {
        return planned;
    }
    crate::plan::legacy_ruleset_admitting(&state.grants, &state.guarded, &state.admitted)
        .map(|r| crate::kernel::nft::planned_image(&r))
        .filter(|legacy| legacy == have)
        .or(planned)
}

/// Audit over the fake kernel: observation and judgement together, without root.
#[cfg(test)]
mod over_the_fake {
    use super::*;
    use crate::audit::{assess, Severity};
    use crate::kernel::fake::Fake;
    use crate::kernel::nft::planned_image as nft_image;
    use crate::state::STATE_VERSION;

    #[test]
    fn audit_reads_values_tables_and_listeners_through_the_seam() {
        let kernel = Fake::with_devices(&[(5, "br0", 0), (6, "br1", 2), (1, "lo", 0)]);
        kernel.state.borrow_mut().listeners = vec![Listener {
            proto: crate::grant::Proto::Tcp,
            addr: std::net::Ipv4Addr::LOCALHOST,
            port: 6379,
            device: None,
        }];
        let state = State {
            version: STATE_VERSION,
            ..Default::default()
        };
        let observed = observe(&kernel, &kernel, &state, None, false).unwrap();
        let report = assess(&observed, &state, None);
        let br1 = report.interfaces.iter().find(|i| i.name == "br1").unwrap();
        assert_eq!(
            (br1.route_localnet, br1.effective, br1.guarded),
            (Some(2), 1, false)
        );
        assert_eq!(br1.exposed_sockets.len(), 1);
        assert_eq!(report.worst(), Some(Severity::Critical));
        // A table loopgate did not make is reported too.
        kernel
            .state
            .borrow_mut()
            .devices
            .get_mut(&6)
            .unwrap()
            .route_localnet = 0;
        let g = crate::grant::Grant {
            name: "x".into(),
            iface: "br0".into(),
            proto: crate::grant::Proto::Tcp,
            listen: "192.0.2.1".parse().unwrap(),
            port: 1,
            to: "127.0.0.1:1".parse().unwrap(),
            allow: vec!["192.0.2.0/25".parse().unwrap()],
            network: None,
        };
        kernel.state.borrow_mut().table = Some(crate::kernel::fake::FakeTable::of(
            &crate::plan::ruleset(&[g]).unwrap(),
        ));
        let report = assess(
            &observe(&kernel, &kernel, &state, None, false).unwrap(),
            &state,
            None,
        );
        assert!(report.findings.iter().any(|f| f.code == "table-unexpected"));
        assert_eq!(report.worst(), Some(Severity::Warning));
    }

    /// After an upgrade the kernel holds the table an earlier loopgate wrote for the
    /// recorded grants, under positional names: audit judges it against that table
    /// (guarded, no finding above info); a positional table of other grants is still
    /// tampered.
    #[test]
    fn a_table_an_earlier_version_wrote_for_the_recorded_grants_is_not_tampered() {
        let kernel = Fake::with_devices(&[(5, "br0", 1), (1, "lo", 0)]);
        kernel.state.borrow_mut().listeners = vec![Listener {
            proto: crate::grant::Proto::Tcp,
            addr: std::net::Ipv4Addr::LOCALHOST,
            port: 3306,
            device: None,
        }];
        let grant = |port| crate::grant::Grant {
            name: format!("g{port}"),
            iface: "br0".into(),
            proto: crate::grant::Proto::Tcp,
            listen: "192.0.2.1".parse().unwrap(),
            port,
            to: format!("127.0.0.1:{port}").parse().unwrap(),
            allow: vec!["192.0.2.0/25".parse().unwrap()],
            network: None,
        };
        let state = State {
            version: STATE_VERSION,
            grants: vec![grant(3306)],
            originals: vec![crate::state::Original {
                iface: "br0".into(),
                ifindex: 5,
                value: 0,
            }],
            ..Default::default()
        };
        let planned = crate::plan::ruleset(&state.grants).map(|r| nft_image(&r));
        let judged = |legacy_of: &[crate::grant::Grant], upgrade_aware: bool| {
            let legacy = crate::plan::legacy_ruleset_admitting(legacy_of, &[], &[]).unwrap();
            kernel.state.borrow_mut().table = Some(crate::kernel::fake::FakeTable::of(&legacy));
            let observed = observe(&kernel, &kernel, &state, planned.as_ref(), false).unwrap();
            let expected = match upgrade_aware {
                true => rightful_table(planned.clone(), observed.table.as_ref(), &state),
                false => planned.clone(),
            };
            assess(&observed, &state, expected.as_ref())
        };
        let tampered =
            |r: &crate::audit::Report| r.findings.iter().any(|f| f.code == "table-tampered");
        let report = judged(&state.grants, true);
        assert!(
            report.worst() <= Some(Severity::Info),
            "{:?}",
            report.findings
        );
        // The control: judged against the new names alone, the same table is tampered.
        assert!(tampered(&judged(&state.grants, false)));
        assert!(tampered(&judged(&[grant(3307)], true)));
    }
}
