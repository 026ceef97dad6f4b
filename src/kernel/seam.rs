//! The one narrow seam between loopgate's decisions and the kernel.
//!
//! The engine ([`crate::txn`]), `audit` and `watch` reach the kernel only through
//! [`Kernel`]: read route_localnet of device instances, write one, read loopgate's table
//! (image and nftables generation), replace or restore it atomically, probe features,
//! and find and cut conntrack entries; the read-only facts they judge by (sysctls,
//! names, loopback listeners, addresses, routes, other firewalls) come from its
//! supertrait [`HostFacts`]. [`System`] is the real
//! thing (netlink and /proc in the caller's network namespace). A fake that keeps the
//! same facts in memory and applies every batch all-or-nothing, with injectable
//! failures, lives in `kernel::fake` for unit tests, as knftables' `Fake` and
//! Kubernetes' sysctl fake do: rollback ordering, the never-open-without-guard invariant
//! and watch's decisions are then tested in milliseconds without root.
//!
//! The raw mutators (`sysctl::write`, `sysctl::write_device`, `nft::apply`,
//! `Snapshot::restore`, `conntrack::delete`) are visible only inside `kernel/`: outside
//! it, a change to the host that does not go through [`Kernel`] does not compile.

use super::conntrack::Flow;
use super::host::{IfAddr, Listener, RouteLookup};
use super::nft::{self, TableImage, Vouch};
use super::sysctl::{self, Device, Reading};
use crate::ruleset::Ruleset;
use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

/// What the kernel held of loopgate's table at one moment: enough to compare it with a
/// plan and to put it back.
pub trait TableSnapshot {
    /// The table's canonical image, `None` when it does not exist.
    fn image(&self) -> Option<TableImage>;
    /// [`TableSnapshot::image`], shared: a table taken as committed answers with the
    /// committed plan's own image when nothing sets it apart (megabytes at 100,000
    /// allowed networks, not copied).
    fn image_shared(&self) -> Option<Rc<TableImage>> {
        self.image().map(Rc::new)
    }
    /// The nftables generation read before the table: a vouch made from this snapshot
    /// stays valid only while nothing commits after it.
    fn generation(&self) -> u32;
    /// True when the set elements were vouched for (unchanged generation) instead of
    /// read back.
    fn vouched(&self) -> bool;
    /// Packets and bytes of every rule that counts (none for an absent table, nor for
    /// one taken as committed: see [`TableSnapshot::counted`]).
    fn counters(&self) -> Vec<nft::RuleCounter> {
        Vec::new()
    }
    /// False when the table was taken as committed without reading its rules
    /// ([`Kernel::read_committed`]): [`TableSnapshot::counters`] then knows nothing.
    fn counted(&self) -> bool {
        true
    }
    /// Who holds the table, as the kernel reported it; `None` when absent or unknown.
    fn holder(&self) -> Option<nft::Holder> {
        None
    }
}

impl TableSnapshot for nft::Snapshot {
    fn image(&self) -> Option<TableImage> {
        nft::Snapshot::image(self)
    }
    fn image_shared(&self) -> Option<Rc<TableImage>> {
        nft::Snapshot::image_shared(self)
    }
    fn generation(&self) -> u32 {
        nft::Snapshot::generation(self)
    }
    fn vouched(&self) -> bool {
        nft::Snapshot::vouched(self)
    }
    fn counters(&self) -> Vec<nft::RuleCounter> {
        nft::Snapshot::counters(self)
    }
    fn counted(&self) -> bool {
        nft::Snapshot::counted(self)
    }
    fn holder(&self) -> Option<nft::Holder> {
        nft::Snapshot::holder(self)
    }
}

/// What the engine changes, through the one seam every mutation of the host takes:
/// devices' route_localnet, loopgate's table (apply, restore, probe, generation) and
/// conntrack flows. Read-only facts come from its supertrait [`HostFacts`].
pub trait Kernel: HostFacts {
    /// The snapshot type [`Kernel::read_table`] returns and [`Kernel::restore`] takes.
    type Snapshot: TableSnapshot;

    /// The devices called one of `names` and those with one of `ifindexes`, keyed by
    /// ifindex, each with its route_localnet (see [`sysctl::devices`]).
    fn devices(
        &self,
        names: &BTreeSet<String>,
        ifindexes: &BTreeSet<u32>,
    ) -> Result<BTreeMap<u32, Device>>;

    /// Writes route_localnet of device `ifindex`, known as `iface`; refused when the
    /// name now denotes another device.
    fn write_route_localnet(&self, iface: &str, ifindex: u32, value: i32) -> Result<()>;

    /// Reads loopgate's table; with `trust`, elements are taken as vouched for while the
    /// generation has not moved (see [`nft::snapshot`]).
    fn read_table(&self, trust: Option<(&Vouch, &TableImage)>) -> Result<Self::Snapshot>;

    /// Reads loopgate's table taking it to be `plan` (imaged as `image`) without
    /// dumping it when nothing has committed since `vouch`, recorded right after
    /// loopgate committed that plan; else as [`Kernel::read_table`] with `vouch`
    /// trusted for elements (see [`nft::snapshot_committed`]). A snapshot so taken
    /// restores from `plan` and has no counters ([`TableSnapshot::counted`]).
    fn read_committed(
        &self,
        vouch: &Vouch,
        plan: &Rc<Ruleset>,
        image: &Rc<TableImage>,
    ) -> Result<Self::Snapshot>;

    /// Reads the chains `names` of loopgate's table and their rules at one generation,
    /// with the rules' counters (see [`nft::read_chains`]): how an in-place change is
    /// read back, and how the counters of chains it will flush are kept.
    fn read_chains(&self, names: &[String]) -> Result<nft::ChainsRead>;

    /// Replaces loopgate's table with `ruleset` (removes it for `None`) in one atomic
    /// batch; returns what vouches for the new table.
    fn apply_table(&self, ruleset: Option<&Ruleset>) -> Result<Option<Vouch>>;

    /// Changes loopgate's table from `from`, the plan it was found to hold exactly when
    /// read at `generation`, to `to`, in one atomic batch of only what differs (see
    /// [`nft::diff`]). `digest` is the digest of `to`'s planned elements
    /// ([`nft::Elements::digest`]); returns the vouch for the table after the change.
    ///
    /// Errors, the table unchanged unless the reply alone was lost: the change cannot
    /// be made in place, something committed since `generation` (ERESTART), or the
    /// kernel refused the batch. The caller then rewrites the table whole
    /// ([`Kernel::apply_table`]). The default refuses every change.
    fn change_table(
        &self,
        from: &Ruleset,
        generation: u32,
        to: &Ruleset,
        digest: u64,
    ) -> Result<Vouch> {
        let _ = (from, generation, to, digest);
        anyhow::bail!("this kernel changes no table in place")
    }

    /// Puts the table back as `snapshot` saw it, in one atomic batch.
    fn restore(&self, snapshot: &Self::Snapshot) -> Result<()>;

    /// Refuses, naming the missing feature, a ruleset this kernel cannot take. Changes
    /// nothing.
    fn probe(&self, ruleset: &Ruleset) -> Result<()>;

    /// The nftables generation now: a counter every commit to any table bumps.
    fn generation(&self) -> Result<u32>;

    /// True when `generation` was created by a commit made through this kernel value
    /// (one of its last 256), or lent from it: how `watch` tells its own commits from
    /// another process's.
    fn committed_here(&self, generation: u32) -> bool;

    /// The IPv4 conntrack entries.
    fn flows(&self) -> Result<Vec<Flow>>;

    /// Deletes `flows`; returns how many were deleted.
    fn delete_flows(&self, flows: &[Flow]) -> Result<usize>;
}

/// Read-only facts about the current network namespace that audit, watch and the engine
/// judge by: sysctls, interface names, listeners, conntrack, addresses, routes and the
/// other firewalls. Nothing here changes the host. (The resolver's view of interfaces
/// and container networks is [`super::host::Interfaces`] and `spec::Host`: a snapshot
/// taken once per pass, with the runtimes asked above this layer.)
pub trait HostFacts {
    /// route_localnet of every IPv4 conf directory, `all` and `default` included.
    fn route_localnet_all(&self) -> Result<Vec<(String, Reading)>>;

    /// route_localnet of the IPv4 conf directory `conf` (`all`, `default` or a device).
    fn route_localnet(&self, conf: &str) -> Result<i32>;

    /// The ifindex of the interface called `name`.
    fn ifindex_of(&self, name: &str) -> Option<u32>;

    /// The current name of interface `ifindex`.
    fn name_of(&self, ifindex: u32) -> Option<String>;

    /// Sockets listening on IPv4 (TCP LISTEN, bound UDP).
    fn listeners(&self) -> Result<Vec<Listener>>;

    /// How many connections are tracked, when the kernel says (cheap; a listing is not).
    fn conntrack_count(&self) -> Option<u64>;

    /// Every IPv4 address with its interface and prefix length.
    fn addresses(&self) -> Result<Vec<IfAddr>>;

    /// The route to each of `dsts`, as `ip route get` finds it.
    fn routes(&self, dsts: &[std::net::Ipv4Addr])
        -> Result<Vec<(std::net::Ipv4Addr, RouteLookup)>>;

    /// The unicast routes through one interface: (destination, interface); see
    /// [`super::host::route_table`].
    fn route_table(&self) -> Result<Vec<(ipnetwork::Ipv4Network, String)>>;

    /// Every other firewall's chains (other nft tables, iptables-legacy), for audit's
    /// firewall findings; what cannot be read is noted in it, never an error. None by
    /// default: the fake kernel has no other firewall.
    fn foreign_firewall(&self) -> super::firewall::Foreign {
        Default::default()
    }
}

/// How long watch lends its table to one command before it takes it back: a
/// transaction takes milliseconds to a second or two (100,000 allowed networks);
/// meanwhile watch repairs nothing, so a borrower that hangs must not keep it longer.
/// The borrower's changes through the lent socket stop at it (see
/// [`System::hold_borrowed`]).
pub const LEASE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The owner loopgate's table is held with, and until when a borrowed one may be used.
struct Held {
    /// `watch`'s own, or the one a command borrowed from watch for its transaction (see
    /// [`crate::rpc`]). Every change to the table must then go through its socket (the
    /// kernel refuses any other with EPERM).
    owner: std::cell::RefCell<nft::Owner>,
    /// When a borrowed owner must no longer be used; `None` for watch's own.
    deadline: Option<std::time::Instant>,
}

/// The real kernel of the caller's network namespace.
///
/// Everything that changes how it behaves is in the value, nothing in the process: the
/// owner the table is held with (changes then go through its socket, and a probe is
/// left to the owner's own batch), the owner whose hold on the table is loopgate's own
/// (a table it holds compares equal to the plan), and the generations its own commits
/// created (how `watch` tells its commits from another process's).
#[derive(Default)]
pub struct System {
    /// Where the features probed on this boot are recorded; `None`: every
    /// [`Kernel::probe`] asks the kernel.
    known_features: Option<super::features::KnownFeatures>,
    /// The owner the table is held with, when it is (see [`System::hold`]).
    held: Option<Held>,
    /// The port id of a running watch's owner, loopgate's own though not held here
    /// (see [`System::sanctioning`]).
    sanctioned: Option<u32>,
    /// The generations the commits made through this value created.
    own: nft::OwnCommits,
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System")
            .field("known_features", &self.known_features)
            .field("held", &self.held.as_ref().map(|h| h.deadline))
            .field("sanctioned", &self.sanctioned)
            .field("own", &self.own)
            .finish()
    }
}

impl System {
    /// The real kernel, with the features probed on this boot recorded in `known` (see
    /// [`super::features`]).
    pub fn new(known: super::features::KnownFeatures) -> System {
        System {
            known_features: Some(known),
            ..System::default()
        }
    }

    /// Declares `port` (the netlink port id of a running `loopgate watch`'s
    /// [`Owner`](nft::Owner); 0: none) as loopgate's own: a table it holds, with nothing
    /// else different, reads as the plan (see [`nft::Snapshot::image_sanctioning`]).
    /// For a plan, a dry run or an audit while watch holds the table.
    pub fn sanctioning(self, port: u32) -> System {
        System {
            sanctioned: Some(port).filter(|p| *p != 0),
            ..self
        }
    }

    /// Makes the table changes made through this value go through `owner` from now on
    /// (watch, after adopting the table), and its hold loopgate's own.
    pub fn hold(&mut self, owner: nft::Owner) {
        self.hold_until(owner, None);
    }

    /// Makes the table changes made through this value go through `owner`, which
    /// `watch` lent until `deadline`: a change after it is refused rather than sent
    /// through a socket watch uses again.
    pub fn hold_borrowed(&mut self, owner: nft::Owner, deadline: std::time::Instant) {
        self.hold_until(owner, Some(deadline));
    }

    fn hold_until(&mut self, mut owner: nft::Owner, deadline: Option<std::time::Instant>) {
        for g in owner.take_created() {
            self.own.push(g);
        }
        self.held = Some(Held {
            owner: std::cell::RefCell::new(owner),
            deadline,
        });
    }

    /// Ends [`System::hold`] / [`System::hold_borrowed`]: returns the owner (dropping a
    /// borrowed one closes this process's copy of the socket).
    pub fn release(&mut self) -> Option<nft::Owner> {
        self.held.take().map(|h| h.owner.into_inner())
    }

    /// Runs `f` with the owner the table is held with, if it is (watch lending it, or
    /// settling its socket after a lease).
    pub fn with_held<T>(&self, f: impl FnOnce(Option<&mut nft::Owner>) -> T) -> T {
        match &self.held {
            Some(h) => {
                let mut owner = h.owner.borrow_mut();
                let out = f(Some(&mut owner));
                for g in owner.take_created() {
                    self.own.push(g);
                }
                out
            }
            None => f(None),
        }
    }

    /// True while the table is held through this value (see [`System::hold`]).
    pub fn holding(&self) -> bool {
        self.held.is_some()
    }

    /// Records the commits a borrower made through the lent owning socket, the
    /// generations after `before` through `through`, as this value's own (see
    /// [`nft::OwnCommits::record_lent`]).
    pub fn record_lent_commits(&self, before: u32, through: u32) {
        self.own.record_lent(before, through);
    }

    /// The port id whose hold on the table is loopgate's own: the owner held here, or
    /// the one declared by [`System::sanctioning`].
    fn sanctioned_port(&self) -> Option<u32> {
        match &self.held {
            Some(h) => Some(h.owner.borrow().portid()),
            None => self.sanctioned,
        }
    }

    /// The owner to change the table through, unless a borrowed one's lease ran out.
    fn through_owner<T>(
        &self,
        f: impl FnOnce(&mut nft::Owner) -> Result<T>,
        otherwise: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        match &self.held {
            Some(Held {
                deadline: Some(deadline),
                ..
            }) if std::time::Instant::now() >= *deadline => {
                anyhow::bail!(
                    "the lease of table ip loopgate from loopgate watch ran out ({} s); watch uses its socket again",
                    LEASE_LIMIT.as_secs()
                )
            }
            Some(h) => {
                let mut owner = h.owner.borrow_mut();
                let out = f(&mut owner);
                for g in owner.take_created() {
                    self.own.push(g);
                }
                out
            }
            None => otherwise(),
        }
    }
}

impl Kernel for System {
    type Snapshot = nft::Snapshot;

    fn devices(
        &self,
        names: &BTreeSet<String>,
        ifindexes: &BTreeSet<u32>,
    ) -> Result<BTreeMap<u32, Device>> {
        sysctl::devices(names, ifindexes)
    }

    fn write_route_localnet(&self, iface: &str, ifindex: u32, value: i32) -> Result<()> {
        sysctl::write_device(iface, ifindex, value)
    }

    fn read_table(&self, trust: Option<(&Vouch, &TableImage)>) -> Result<nft::Snapshot> {
        nft::snapshot(trust).map(|s| s.sanctioning(self.sanctioned_port()))
    }

    fn read_committed(
        &self,
        vouch: &Vouch,
        plan: &Rc<Ruleset>,
        image: &Rc<TableImage>,
    ) -> Result<nft::Snapshot> {
        nft::snapshot_committed(vouch, plan, image).map(|s| s.sanctioning(self.sanctioned_port()))
    }

    fn read_chains(&self, names: &[String]) -> Result<nft::ChainsRead> {
        nft::read_chains(names, self.sanctioned_port())
    }

    fn apply_table(&self, ruleset: Option<&Ruleset>) -> Result<Option<Vouch>> {
        self.through_owner(
            |owner| owner.apply(ruleset),
            || nft::apply(ruleset, &self.own),
        )
    }

    fn change_table(
        &self,
        from: &Ruleset,
        generation: u32,
        to: &Ruleset,
        digest: u64,
    ) -> Result<Vouch> {
        let diff = nft::diff(from, to)
            .ok_or_else(|| anyhow::anyhow!("the change cannot be made in place"))?;
        // Refused (something committed since the read: ERESTART; a map an earlier
        // version sized is full: ENFILE), the batch changed nothing.
        self.through_owner(
            |owner| owner.apply_diff(&diff, generation, digest),
            || nft::apply_diff(&diff, generation, digest, &self.own),
        )
    }

    fn restore(&self, snapshot: &nft::Snapshot) -> Result<()> {
        self.through_owner(|owner| owner.restore(snapshot), || snapshot.restore())
    }

    fn probe(&self, ruleset: &Ruleset) -> Result<()> {
        // While watch holds the table, the kernel refuses a validate-only batch naming
        // it from any other socket; the owner's own batch is then the check (a refused
        // batch changes nothing and the transaction rolls back).
        if self.holding() {
            return Ok(());
        }
        // Once per boot for each feature (the test hook always probes): the probe makes
        // the next real batch wait for an RCU grace period.
        let needs = nft::features(ruleset);
        let known = self.known_features.as_ref();
        if crate::failpoint::armed("probe") || !known.is_some_and(|k| k.cover(&needs)) {
            nft::probe(ruleset)?;
            if let Some(k) = known {
                k.remember(&needs);
            }
        }
        Ok(())
    }

    fn generation(&self) -> Result<u32> {
        nft::current_generation()
    }

    fn committed_here(&self, generation: u32) -> bool {
        self.own.contains(generation)
    }

    fn flows(&self) -> Result<Vec<Flow>> {
        super::conntrack::list()
    }

    fn delete_flows(&self, flows: &[Flow]) -> Result<usize> {
        super::conntrack::delete(flows)
    }
}

impl HostFacts for System {
    fn route_localnet_all(&self) -> Result<Vec<(String, Reading)>> {
        sysctl::read_all()
    }

    fn route_localnet(&self, conf: &str) -> Result<i32> {
        sysctl::read(conf)
    }

    fn ifindex_of(&self, name: &str) -> Option<u32> {
        sysctl::ifindex_of(name)
    }

    fn name_of(&self, ifindex: u32) -> Option<String> {
        sysctl::name_of(ifindex)
    }

    fn listeners(&self) -> Result<Vec<Listener>> {
        super::host::listeners()
    }

    fn conntrack_count(&self) -> Option<u64> {
        super::conntrack::count()
    }

    fn addresses(&self) -> Result<Vec<IfAddr>> {
        super::host::addresses()
    }

    fn routes(
        &self,
        dsts: &[std::net::Ipv4Addr],
    ) -> Result<Vec<(std::net::Ipv4Addr, RouteLookup)>> {
        super::host::routes(dsts)
    }

    fn route_table(&self) -> Result<Vec<(ipnetwork::Ipv4Network, String)>> {
        super::host::route_table()
    }

    fn foreign_firewall(&self) -> super::firewall::Foreign {
        super::firewall::read()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_system_holds_nothing_and_sanctions_nobody_unless_told() {
        let plain = System::default();
        assert!(!plain.holding());
        assert_eq!(plain.sanctioned_port(), None);
        assert!(plain.with_held(|o| o.is_none()));
        assert_eq!(System::default().sanctioning(0).sanctioned_port(), None);
        assert_eq!(
            System::default().sanctioning(4242).sanctioned_port(),
            Some(4242)
        );
    }

    #[test]
    fn equal_systems_answer_alike_and_one_systems_commits_are_not_anothers() {
        let watch = System::default();
        let other = System::default();
        watch.record_lent_commits(10, 12);
        assert!(watch.committed_here(11) && watch.committed_here(12));
        assert!(!watch.committed_here(10) && !watch.committed_here(13));
        assert!(!other.committed_here(11), "no process-wide record");
    }

    #[test]
    fn releasing_what_was_never_held_gives_nothing() {
        let mut kernel = System::default();
        assert!(kernel.release().is_none());
        assert!(!kernel.holding());
    }
}
