//! An in-memory kernel for unit tests of the engine, audit and watch.
//!
//! It keeps what [`Kernel`] exposes, devices with their route_localnet, loopgate's
//! table and the nftables generation, conntrack entries and listeners, and applies every
//! table batch all-or-nothing, like the real one. Failures are injected by name
//! (`apply`, `restore`, `read`, `devices`, `flows`, `delete`, `probe`, `generation`,
//! `sysctl:<conf>`, `write:<iface>:<value>`, `apply-reply`: the batch commits but its
//! reply is lost; `change` and `change-reply`: the same for an in-place change, which
//! then falls back to a whole rewrite as the engine does; `read-chains`: reading some
//! chains back, [`Kernel::read_chains`]),
//! and each one that fires is recorded in [`FakeState::fired`], so a test can tell an
//! injected failure from one that was never reached. Every mutation is recorded in
//! [`Fake::history`] with the facts after it, so a test can check an invariant at every
//! step a transaction takes, including the steps of a rollback.
//!
//! Reading the table with a [`Vouch`] whose generation is still the current one takes
//! the vouched path, as the real kernel does: the elements are not read but taken to
//! be the planned ones (see [`FakeState::reads`]); through [`Kernel::read_committed`]
//! the whole table is taken as the committed plan, and the fake checks that it holds
//! exactly that plan (no table changes without a commit, which bumps the generation:
//! a test that edits [`FakeState::table`] directly models no real kernel; use
//! [`Fake::tamper`]).
//!
//! An in-place change ([`Kernel::change_table`]) is applied as the real kernel applies
//! its batch: only when the generation is still the one the caller read `from` at
//! (else refused, changing nothing), all of it or none; the resulting table is recorded
//! as a `change` moment, so a test can tell it from a whole rewrite (`apply`).

use super::conntrack::Flow;
use super::host::{IfAddr, Listener, RouteLookup};
use super::nft::{planned_image, Elements, TableImage, Vouch};
use super::seam::{HostFacts, Kernel, TableSnapshot};
use super::sysctl::{Device, Reading};
use crate::ruleset::{KeyValue, Ruleset};
use anyhow::Result;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

/// loopgate's table as the fake holds it: its image and the interfaces it guards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeTable {
    /// What reading the table back gives.
    pub image: TableImage,
    /// Interfaces present in all three guard maps (raw, input, postrouting): the ones
    /// a packet from cannot reach 127/8 unchecked. Empty for a broken table.
    pub guards: BTreeSet<String>,
}

impl FakeTable {
    /// The table a real kernel would hold after a batch of `ruleset`.
    pub fn of(ruleset: &Ruleset) -> FakeTable {
        let names = |map: &str| -> BTreeSet<String> {
            ruleset
                .map(map)
                .map(|m| {
                    m.elements
                        .iter()
                        .filter_map(|e| match e.key.first() {
                            Some(KeyValue::Name(n)) => Some(n.clone()),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let raw = names("raw_ifaces");
        let input = names("input_ifaces");
        let post = names("post_ifaces");
        FakeTable {
            image: planned_image(ruleset),
            guards: raw
                .into_iter()
                .filter(|n| input.contains(n) && post.contains(n))
                .collect(),
        }
    }

    /// A table that reads back as something else and guards nothing: dormant, flushed
    /// chains, an edited rule. `of` gives it the image of a different ruleset.
    pub fn broken(image: TableImage) -> FakeTable {
        FakeTable {
            image,
            guards: BTreeSet::new(),
        }
    }
}

/// The facts after one mutation.
#[derive(Debug, Clone)]
pub struct Moment {
    /// What was done, e.g. `write br0=1`, `apply`, `restore`.
    pub what: String,
    /// Every device after it, by ifindex.
    pub devices: BTreeMap<u32, Device>,
    /// loopgate's table after it; `None` when absent.
    pub table: Option<FakeTable>,
}

/// The fake's state; public so tests can arrange and inspect it.
#[derive(Debug, Clone, Default)]
pub struct FakeState {
    /// The network devices, by ifindex, each with its name and route_localnet.
    pub devices: BTreeMap<u32, Device>,
    /// `conf.all.route_localnet`.
    pub all: i32,
    /// `conf.default.route_localnet`.
    pub default: i32,
    /// loopgate's table; `None` when absent.
    pub table: Option<FakeTable>,
    /// The nftables generation, bumped by every apply and restore.
    pub generation: u32,
    /// The generations the fake's own applies and restores created (not
    /// [`Fake::tamper`]'s): what [`Kernel::committed_here`] knows.
    pub own_commits: Vec<u32>,
    /// The conntrack entries.
    pub flows: Vec<Flow>,
    /// The listening sockets `listeners()` reports.
    pub listeners: Vec<Listener>,
    /// The names of the operations that fail (see the module doc).
    pub fail: BTreeSet<String>,
    /// The injected failures that fired, in order (one entry per failed call).
    pub fired: Vec<String>,
    /// One entry per table read, true when its elements were vouched for.
    pub reads: Vec<bool>,
    /// One entry per table read: how many moments [`FakeState::history`] held then,
    /// so a test can place each read among the mutations.
    pub read_at: Vec<usize>,
    /// One [`Moment`] per mutation, oldest first.
    pub history: Vec<Moment>,
    /// IPv4 addresses per device name, for spec resolution (default 192.0.2.1).
    pub addresses: BTreeMap<String, Vec<std::net::Ipv4Addr>>,
    /// The routing table `routes()` looks up, longest prefix first wins; a destination
    /// no entry covers is unroutable.
    pub routes: Vec<(ipnetwork::Ipv4Network, RouteLookup)>,
}

/// An in-memory [`Kernel`].
#[derive(Debug, Default)]
pub struct Fake {
    /// Everything the fake holds; a `RefCell` because [`Kernel`] takes `&self`.
    pub state: RefCell<FakeState>,
}

/// A snapshot of the fake's table.
#[derive(Debug, Clone)]
pub struct FakeSnapshot {
    /// The table as it was read.
    pub table: Option<FakeTable>,
    /// The generation it was read at.
    pub generation: u32,
    /// The digest its elements were vouched for with, when they were not read.
    pub vouched: Option<u64>,
    /// False when it was taken as committed ([`Kernel::read_committed`]).
    pub counted: bool,
}

impl TableSnapshot for FakeSnapshot {
    fn image(&self) -> Option<TableImage> {
        self.table.as_ref().map(|t| {
            let mut image = t.image.clone();
            if let Some(digest) = self.vouched {
                image.elements = Elements::Vouched(digest);
            }
            image
        })
    }
    fn generation(&self) -> u32 {
        self.generation
    }
    fn vouched(&self) -> bool {
        self.vouched.is_some()
    }
    fn counted(&self) -> bool {
        self.counted
    }
}

impl Fake {
    /// A fake with these devices (`(ifindex, name, route_localnet)`) and no table.
    pub fn with_devices(devices: &[(u32, &str, i32)]) -> Fake {
        let fake = Fake::default();
        fake.state.borrow_mut().devices = devices
            .iter()
            .map(|&(ifindex, name, value)| {
                (
                    ifindex,
                    Device {
                        ifindex,
                        name: name.to_string(),
                        route_localnet: value,
                        ready: true,
                    },
                )
            })
            .collect();
        fake.state.borrow_mut().generation = 1;
        fake
    }

    /// Makes the named operation fail from now on.
    pub fn fail(&self, what: &str) {
        self.state.borrow_mut().fail.insert(what.to_string());
    }

    /// route_localnet of the device called `name`.
    pub fn value(&self, name: &str) -> Option<i32> {
        self.state
            .borrow()
            .devices
            .values()
            .find(|d| d.name == name)
            .map(|d| d.route_localnet)
    }

    /// Replaces the table as another process would, bumping the generation (any
    /// commit does): `None` deletes it, [`FakeTable::broken`] switches it off or edits it.
    pub fn tamper(&self, table: Option<FakeTable>) {
        let mut s = self.state.borrow_mut();
        s.table = table;
        s.generation = s.generation.wrapping_add(1).max(1);
    }

    /// The injected failures that fired so far.
    pub fn fired(&self) -> Vec<String> {
        self.state.borrow().fired.clone()
    }

    /// Every recorded moment.
    pub fn history(&self) -> Vec<Moment> {
        self.state.borrow().history.clone()
    }

    fn check(&self, what: &str) -> Result<()> {
        let mut s = self.state.borrow_mut();
        if s.fail.contains(what) {
            s.fired.push(what.to_string());
            anyhow::bail!("fake kernel: injected failure at {what}");
        }
        Ok(())
    }

    fn record(&self, what: String) {
        let mut s = self.state.borrow_mut();
        let moment = Moment {
            what,
            devices: s.devices.clone(),
            table: s.table.clone(),
        };
        s.history.push(moment);
    }

    fn commit(&self, table: Option<FakeTable>, what: &str) {
        {
            let mut s = self.state.borrow_mut();
            s.table = table;
            s.generation = s.generation.wrapping_add(1).max(1);
            let g = s.generation;
            s.own_commits.push(g);
        }
        self.record(what.to_string());
    }
}

impl Kernel for Fake {
    type Snapshot = FakeSnapshot;

    fn devices(
        &self,
        names: &BTreeSet<String>,
        ifindexes: &BTreeSet<u32>,
    ) -> Result<BTreeMap<u32, Device>> {
        self.check("devices")?;
        Ok(self
            .state
            .borrow()
            .devices
            .iter()
            .filter(|(i, d)| names.contains(&d.name) || ifindexes.contains(i))
            .map(|(i, d)| (*i, d.clone()))
            .collect())
    }

    fn write_route_localnet(&self, iface: &str, ifindex: u32, value: i32) -> Result<()> {
        self.check(&format!("write:{iface}:{value}"))?;
        {
            let mut s = self.state.borrow_mut();
            match s.devices.get_mut(&ifindex) {
                Some(d) if d.name == iface => d.route_localnet = value,
                _ => anyhow::bail!("{iface} is no longer the device (ifindex {ifindex})"),
            }
        }
        self.record(format!("write {iface}={value}"));
        Ok(())
    }

    fn read_table(&self, trust: Option<(&Vouch, &TableImage)>) -> Result<FakeSnapshot> {
        self.check("read")?;
        let mut s = self.state.borrow_mut();
        // As the real read: elements planned with the vouched digest, at the vouched
        // generation, are not read back (nothing committed since they were written).
        let vouched = match (trust, &s.table) {
            (Some((v, want)), Some(_))
                if v.generation == s.generation
                    && matches!(want.elements, Elements::Planned { digest, .. } if digest == v.elements) =>
            {
                Some(v.elements)
            }
            _ => None,
        };
        s.reads.push(vouched.is_some());
        let at = s.history.len();
        s.read_at.push(at);
        Ok(FakeSnapshot {
            table: s.table.clone(),
            generation: s.generation,
            vouched,
            counted: true,
        })
    }

    fn read_committed(
        &self,
        vouch: &Vouch,
        plan: &std::rc::Rc<Ruleset>,
        image: &std::rc::Rc<TableImage>,
    ) -> Result<FakeSnapshot> {
        let committed = {
            let s = self.state.borrow();
            s.table.is_some()
                && vouch.generation == s.generation
                && image.elements.digest() == Some(vouch.elements)
                && vouch.plan == Some(image.digest())
        };
        if !committed {
            return self.read_table(Some((vouch, image)));
        }
        self.check("read")?;
        let mut s = self.state.borrow_mut();
        // As the real kernel guarantees: nothing committed since the vouch, so the
        // table is what that commit wrote. An engine whose vouch and plan disagree with
        // the table would restore the wrong table: caught here.
        let taken = FakeTable::of(plan);
        assert_eq!(
            s.table.as_ref(),
            Some(&taken),
            "fake kernel: a table taken as committed that the kernel does not hold"
        );
        s.reads.push(true);
        let at = s.history.len();
        s.read_at.push(at);
        Ok(FakeSnapshot {
            table: Some(taken),
            generation: s.generation,
            vouched: Some(vouch.elements),
            counted: false,
        })
    }

    fn read_chains(&self, names: &[String]) -> Result<crate::kernel::nft::ChainsRead> {
        self.check("read-chains")?;
        let mut s = self.state.borrow_mut();
        let at = s.history.len();
        s.read_at.push(at);
        let (chains, rules) = match &s.table {
            Some(t) => crate::kernel::nft::expected_chains(&t.image, names),
            None => (vec![], vec![]),
        };
        Ok(crate::kernel::nft::ChainsRead {
            generation: s.generation,
            table: s.table.as_ref().map(|t| t.image.table.clone()),
            chains,
            rules,
            counters: vec![],
        })
    }

    fn apply_table(&self, ruleset: Option<&Ruleset>) -> Result<Option<Vouch>> {
        self.check("apply")?;
        let table = ruleset.map(FakeTable::of);
        let elements = table.as_ref().and_then(|t| t.image.elements.digest());
        self.commit(table, "apply");
        // Committed; the acknowledgement never arrives.
        self.check("apply-reply")?;
        let generation = self.state.borrow().generation;
        Ok(elements.map(|elements| Vouch {
            generation,
            elements,
            plan: None,
        }))
    }

    fn change_table(
        &self,
        from: &Ruleset,
        generation: u32,
        to: &Ruleset,
        digest: u64,
    ) -> Result<Vouch> {
        // As the real kernel's: an in-place batch when the change can be one, refused
        // as a whole when anything committed since `generation`.
        crate::kernel::nft::diff(from, to)
            .ok_or_else(|| anyhow::anyhow!("fake kernel: not a change in place"))?;
        self.check("change")?;
        {
            let s = self.state.borrow();
            if s.generation != generation {
                anyhow::bail!("fake kernel: generation moved (ERESTART)");
            }
            // Bound to the generation `from` was read at, the table is `from`: an
            // engine that says otherwise sent a batch against a table it never saw.
            assert_eq!(
                s.table.as_ref().map(|t| &t.image),
                Some(&planned_image(from)),
                "fake kernel: an in-place change from a table the kernel does not hold"
            );
        }
        self.commit(Some(FakeTable::of(to)), "change");
        self.check("change-reply")?;
        let generation = self.state.borrow().generation;
        Ok(Vouch {
            generation,
            elements: digest,
            plan: None,
        })
    }

    fn restore(&self, snapshot: &FakeSnapshot) -> Result<()> {
        self.check("restore")?;
        self.commit(snapshot.table.clone(), "restore");
        Ok(())
    }

    fn probe(&self, _ruleset: &Ruleset) -> Result<()> {
        self.check("probe")
    }

    fn generation(&self) -> Result<u32> {
        self.check("generation")?;
        Ok(self.state.borrow().generation)
    }

    fn committed_here(&self, generation: u32) -> bool {
        self.state.borrow().own_commits.contains(&generation)
    }

    fn flows(&self) -> Result<Vec<Flow>> {
        self.check("flows")?;
        Ok(self.state.borrow().flows.clone())
    }

    fn delete_flows(&self, flows: &[Flow]) -> Result<usize> {
        self.check("delete")?;
        let n = {
            let mut s = self.state.borrow_mut();
            let before = s.flows.len();
            s.flows.retain(|f| !flows.contains(f));
            before - s.flows.len()
        };
        self.record(format!("delete {n} flows"));
        Ok(n)
    }
}

impl HostFacts for Fake {
    fn route_localnet_all(&self) -> Result<Vec<(String, Reading)>> {
        let s = self.state.borrow();
        let mut out: Vec<(String, Reading)> = s
            .devices
            .values()
            .map(|d| (d.name.clone(), Ok(d.route_localnet)))
            .collect();
        out.push(("all".into(), Ok(s.all)));
        out.push(("default".into(), Ok(s.default)));
        out.sort();
        Ok(out)
    }

    fn route_localnet(&self, conf: &str) -> Result<i32> {
        self.check(&format!("sysctl:{conf}"))?;
        let s = self.state.borrow();
        match conf {
            "all" => Ok(s.all),
            "default" => Ok(s.default),
            name => s
                .devices
                .values()
                .find(|d| d.name == name)
                .map(|d| d.route_localnet)
                .ok_or_else(|| anyhow::anyhow!("no device {name}")),
        }
    }

    fn ifindex_of(&self, name: &str) -> Option<u32> {
        let s = self.state.borrow();
        s.devices
            .values()
            .find(|d| d.name == name)
            .map(|d| d.ifindex)
    }

    fn name_of(&self, ifindex: u32) -> Option<String> {
        self.state
            .borrow()
            .devices
            .get(&ifindex)
            .map(|d| d.name.clone())
    }

    fn listeners(&self) -> Result<Vec<Listener>> {
        Ok(self.state.borrow().listeners.clone())
    }

    fn conntrack_count(&self) -> Option<u64> {
        Some(self.state.borrow().flows.len() as u64)
    }

    /// Each device's addresses as for spec resolution, all with prefix length 24.
    fn addresses(&self) -> Result<Vec<IfAddr>> {
        use crate::input::Interfaces;
        let names: Vec<String> = crate::spec::Host::interface_names(self);
        Ok(names
            .into_iter()
            .flat_map(|iface| {
                self.ipv4_addresses(&iface)
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |addr| IfAddr {
                        iface: iface.clone(),
                        addr,
                        prefix: 24,
                    })
            })
            .collect())
    }

    fn route_table(&self) -> Result<Vec<(ipnetwork::Ipv4Network, String)>> {
        let s = self.state.borrow();
        Ok(s.routes
            .iter()
            .filter_map(|(net, r)| match r {
                RouteLookup::Out(dev) => Some((*net, dev.clone())),
                _ => None,
            })
            .collect())
    }

    fn routes(
        &self,
        dsts: &[std::net::Ipv4Addr],
    ) -> Result<Vec<(std::net::Ipv4Addr, RouteLookup)>> {
        let s = self.state.borrow();
        Ok(dsts
            .iter()
            .map(|&d| {
                let best = s
                    .routes
                    .iter()
                    .filter(|(net, _)| net.contains(d))
                    .max_by_key(|(net, _)| net.prefix());
                let found = best.map_or_else(
                    || RouteLookup::Unroutable("no route".into()),
                    |(_, r)| r.clone(),
                );
                (d, found)
            })
            .collect())
    }
}

/// A state directory for one test, removed on drop.
pub struct TempStore {
    /// The store over the temporary directory.
    pub store: crate::state::Store,
    dir: TempDir,
}

/// A temporary state directory, removed on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// Opens the store over the directory again (waiting for its lock).
    pub fn open(&self) -> crate::state::Store {
        crate::state::Store::open_at(self.0.clone()).expect("state directory")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Default for TempStore {
    fn default() -> Self {
        Self::new()
    }
}

impl TempStore {
    /// A fresh, empty state directory under the system's temporary directory.
    pub fn new() -> TempStore {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "loopgate-unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let store = crate::state::Store::open_at(dir.clone()).expect("state directory");
        TempStore {
            store,
            dir: TempDir(dir),
        }
    }

    /// The store, for a function that takes it (and releases its lock), and the
    /// directory, to open it again afterwards.
    pub fn into_parts(self) -> (crate::state::Store, TempDir) {
        (self.store, self.dir)
    }
}

/// The fake's devices as a host for resolving specs: every device has the addresses
/// in [`FakeState::addresses`], or 192.0.2.1 when none are set for it.
impl crate::input::Interfaces for Fake {
    fn ipv4_addresses(&self, name: &str) -> Option<Vec<std::net::Ipv4Addr>> {
        let s = self.state.borrow();
        s.devices.values().find(|d| d.name == name)?;
        Some(
            s.addresses
                .get(name)
                .cloned()
                .unwrap_or_else(|| vec![std::net::Ipv4Addr::new(192, 0, 2, 1)]),
        )
    }
}

impl crate::spec::Host for Fake {
    fn interface_names(&self) -> Vec<String> {
        self.state
            .borrow()
            .devices
            .values()
            .map(|d| d.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_localnet_reads_all_default_and_a_device_and_fails_by_name() {
        let fake = Fake::with_devices(&[(5, "br0", 1)]);
        fake.state.borrow_mut().all = 2;
        assert_eq!(fake.route_localnet("all").unwrap(), 2);
        assert_eq!(fake.route_localnet("default").unwrap(), 0);
        assert_eq!(fake.route_localnet("br0").unwrap(), 1);
        assert!(fake.route_localnet("br9").is_err());
        fake.fail("sysctl:all");
        assert!(fake.route_localnet("all").is_err());
        assert_eq!(fake.fired(), ["sysctl:all"]);
    }

    #[test]
    fn own_commits_are_the_fakes_applies_and_restores_not_a_tamper() {
        let fake = Fake::with_devices(&[(5, "br0", 0)]);
        fake.apply_table(None).unwrap();
        let applied = fake.generation().unwrap();
        assert!(fake.committed_here(applied));
        let snap = fake.read_table(None).unwrap();
        fake.tamper(None);
        let tampered = fake.generation().unwrap();
        assert!(!fake.committed_here(tampered));
        fake.restore(&snap).unwrap();
        assert!(fake.committed_here(fake.generation().unwrap()));
        fake.fail("generation");
        assert!(fake.generation().is_err());
    }
}
