//! Moving the host from one set of grants to another as one transaction.
//!
//! The order of steps is what keeps the promise "route_localnet is never 1 on a managed
//! interface without its guard": sysctls that go down are written before the rules
//! change, sysctls that go up after. Each step that succeeded registers its undo; when
//! a later step fails the undos run in reverse, which restores the same order in the
//! other direction. If the previous table cannot be put back, the interfaces are closed
//! (route_localnet=0) rather than left open: failing closed beats failing open.
//!
//! The parts: this file holds the values (`Change`, `Target`, `GrantChange`) and
//! [`observe_and_compute`]; `compute` decides a change purely; `execute` runs it
//! step by step and rolls it back; `cut_flows` picks the conntrack entries a change
//! must delete.

mod compute;
pub use compute::Planning;
mod cut_flows;
mod execute;

pub use execute::{execute, Outcome};

use crate::grant::Grant;
use crate::kernel::nft;
use crate::kernel::seam::{Kernel, TableSnapshot};
use crate::kernel::sysctl::Device;
use crate::plan;
use crate::ruleset::Ruleset;
use crate::state::{Original, State, Store};
use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::rc::Rc;

/// One route_localnet write the transaction will make, on one device instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlChange {
    /// The device's name now (the write goes through /proc/sys by name).
    pub iface: String,
    /// The device the change was computed for: the write is refused if the name now
    /// denotes another one.
    pub ifindex: u32,
    /// The value read from the kernel when the change was computed.
    pub from: i32,
    /// The value to write: 0 to close, the recorded original or 1 to open.
    pub to: i32,
}

impl fmt::Display for SysctlChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "net.ipv4.conf.{}.route_localnet: {} -> {}",
            self.iface, self.from, self.to
        )
    }
}

/// A device loopgate recorded under one name that now carries another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renamed {
    /// The name in loopgate's record (the one its guard matches).
    pub was: String,
    /// The name the kernel reports for that ifindex now.
    pub now: String,
    /// The device's ifindex, the same in both.
    pub ifindex: u32,
}

/// Everything a command would change, computed without changing anything.
#[derive(Debug)]
pub struct Change {
    /// The state the change starts from, as loaded from the state file.
    pub old: State,
    /// The target grants, in canonical order ([`crate::grant::normalize`]).
    pub grants: Vec<Grant>,
    /// The planned table for `grants`; `None` when there are none (the table goes).
    /// Shared (`Rc`) with what `watch` keeps of its last plan: at 100,000 allowed
    /// networks a copy of a plan is thousands of allocations.
    pub ruleset: Option<Rc<Ruleset>>,
    /// The planned table's image (encoded once per command; shared with `watch`'s memo
    /// when it is the committed plan's).
    pub want: Option<Rc<nft::TableImage>>,
    /// The plan the kernel table was found to be exactly (the recorded grants' plan),
    /// when the change may be made in place from it (see [`Kernel::change_table`]);
    /// `None`: the table is rewritten whole.
    pub base: Option<Rc<Ruleset>>,
    /// True when the kernel table already equals the planned one.
    pub table_matches: bool,
    /// When it does: the digest of its elements, to vouch for it at commit.
    pub matched_elements: Option<u64>,
    /// The kernel table is neither the committed plan nor the interrupted
    /// transaction's: something removed, flushed, switched off (dormant) or edited the
    /// guard. Every open managed interface is then closed before the table is put back,
    /// reopened after, and flows that reached 127.0.0.0/8 meanwhile are cut.
    pub guard_lost: bool,
    /// The originals recorded once the change commits.
    pub originals: Vec<Original>,
    /// Writes made before the table changes: interfaces that close.
    pub lower: Vec<SysctlChange>,
    /// Writes made after the table is in place and read back: interfaces that open.
    pub raise: Vec<SysctlChange>,
    /// Recorded devices found under another name.
    pub renamed: Vec<Renamed>,
    /// Every device this change involves, as read: the fail-closed path closes them.
    pub devices: BTreeMap<u32, Device>,
    /// The specs recorded once the change commits ([`Target::specs`]).
    pub specs: Vec<crate::spec::Spec>,
    /// Interfaces guarded without grants once the change commits ([`Target::guarded`]).
    pub guarded: Vec<String>,
    /// Interfaces with grants whose guard admits other tables' forwards to 127/8 once
    /// the change commits ([`crate::state::State::admitted`]).
    pub admitted: Vec<String>,
    /// What `loopgate guard` asked for, recorded at commit ([`Target::guards`]).
    pub guards: Vec<crate::spec::GuardSpec>,
}

/// The names and ifindexes whose devices a change from `old` to `grants` depends on.
pub fn interesting(old: &State, grants: &[Grant]) -> (BTreeSet<String>, BTreeSet<u32>) {
    // Distinct first, copied after: a thousand grants share a dozen interfaces, and
    // watch asks on every wake-up.
    let distinct: BTreeSet<&str> = old
        .originals
        .iter()
        .map(|o| o.iface.as_str())
        .chain(grants.iter().map(|g| g.iface.as_str()))
        .chain(old.grants.iter().map(|g| g.iface.as_str()))
        .collect();
    let names: BTreeSet<String> = distinct.into_iter().map(str::to_string).collect();
    let indexes = old.originals.iter().map(|o| o.ifindex).collect();
    (names, indexes)
}

/// Reads the devices a change from `old` to `grants` depends on (see [`interesting`]).
pub fn observe_devices<K: Kernel>(
    kernel: &K,
    old: &State,
    grants: &[Grant],
) -> Result<BTreeMap<u32, Device>> {
    let (names, indexes) = interesting(old, grants);
    kernel.devices(&names, &indexes)
}

/// What the host should move to: everything a command or a pass of `watch` asks for,
/// resolved against the host of this moment. One value, so that every way into the
/// engine says the same things (see [`Change::compute`] and [`observe_and_compute`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// The grants to install (any order: the change holds them in canonical order).
    pub grants: Vec<Grant>,
    /// Interfaces to guard without grants (what `guards` resolves to now): they
    /// publish nothing and loopgate never writes their route_localnet.
    pub guarded: Vec<String>,
    /// What is asked for, recorded at commit (the resolved `grants` come from it).
    pub specs: Vec<crate::spec::Spec>,
    /// What `loopgate guard` asks for, recorded at commit.
    pub guards: Vec<crate::spec::GuardSpec>,
    /// Device names not to open unless loopgate opened them before: their grants stand
    /// and guard them, but they count as not ready (see
    /// [`Device::ready`](crate::kernel::sysctl::Device::ready)). `watch` holds back a
    /// runtime's bridge that was re-created since the runtime last described it.
    pub held_back: BTreeSet<String>,
}

impl Target {
    /// The target `old` records: its grants, guarded interfaces, specs and guards;
    /// nothing held back. With other grants: `Target { grants, ..Target::recorded(&old) }`.
    pub fn recorded(old: &State) -> Target {
        Target {
            grants: old.grants.clone(),
            guarded: old.guarded.clone(),
            specs: old.specs.clone(),
            guards: old.guards.clone(),
            held_back: BTreeSet::new(),
        }
    }
}

/// Reads what a move from `old` to `target` depends on (loopgate's table, vouched for
/// by `old`'s record when the generation has not moved; the devices involved, see
/// [`observe_devices`]) and computes the change. Changes nothing.
///
/// Errors: the table or the devices cannot be read (the kernel's error).
pub fn observe_and_compute<K: Kernel>(
    kernel: &K,
    old: State,
    target: Target,
) -> Result<(Change, K::Snapshot)> {
    observe_and_compute_in(kernel, None, old, target)
}

/// [`observe_and_compute`], taking the committed plan's image from what `store`
/// remembers of the last commit when it is the same plan (see [`crate::state::Memo`]).
pub fn observe_and_compute_stored<K: Kernel>(
    kernel: &K,
    store: &Store,
    old: State,
    target: Target,
) -> Result<(Change, K::Snapshot)> {
    observe_and_compute_in(kernel, Some(store), old, target)
}

fn observe_and_compute_in<K: Kernel>(
    kernel: &K,
    store: Option<&Store>,
    old: State,
    target: Target,
) -> Result<(Change, K::Snapshot)> {
    let plan = match store {
        Some(s) => s.plan_of(&old.grants, &old.guarded, &old.admitted),
        None => plan::ruleset_admitting(&old.grants, &old.guarded, &old.admitted).map(Rc::new),
    };
    let recorded = plan.as_ref().map(|r| match store {
        Some(s) => s.image_of(r),
        None => Rc::new(nft::planned_image(r)),
    });
    // Committed and nothing committed since: the table is taken as that plan, unread
    // (see `Kernel::read_committed`). Not while a transaction was interrupted: its
    // batch may have been the last commit.
    let snapshot = match (&old.vouch, &plan, &recorded, &old.pending) {
        (Some(vouch), Some(plan), Some(image), None) => {
            kernel.read_committed(vouch, plan, image)?
        }
        _ => kernel.read_table(old.vouch.as_ref().zip(recorded.as_deref()))?,
    };
    let devices = observe_devices(kernel, &old, &target.grants)?;
    // conf.all ORs into every interface: open, every interface was open before loopgate.
    // Unreadable: not open (admitting is what widens; failing closed drops the forwards).
    let all_open = kernel
        .route_localnet("all")
        .is_ok_and(crate::kernel::sysctl::is_open);
    let change = match store {
        Some(store) => Change::compute_planning(
            old,
            target,
            &devices,
            snapshot.image_shared().as_deref(),
            Some(recorded.as_deref()),
            all_open,
            compute::Planning {
                plan: &mut |g, gu, ad| store.plan_of(g, gu, ad),
                image: &mut |r| store.image_of(r),
            },
        ),
        None => Change::compute_with_all(
            old,
            target,
            &devices,
            snapshot.image_shared().as_deref(),
            Some(recorded.as_deref()),
            all_open,
        ),
    };
    Ok((change, snapshot))
}

/// One grant a [`Change`] adds, changes or removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantChange<'a> {
    /// A grant that is new.
    Add(&'a Grant),
    /// A grant whose key stays and whose target or allowed sources change (the new one).
    Change(&'a Grant),
    /// A grant that goes.
    Remove(&'a Grant),
}

impl fmt::Display for GrantChange<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantChange::Add(g) => write!(f, "add grant {g}"),
            GrantChange::Change(g) => write!(f, "change grant {g}"),
            GrantChange::Remove(g) => write!(f, "remove grant {g}"),
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod engine;
