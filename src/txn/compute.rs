//! What a change does, decided purely from what was observed: [`Change::compute`]
//! turns the old state, the devices and a [`super::Target`] into every write, and the
//! change's readings (`is_noop`, `revoked`, `grant_changes`, `describe`).

use super::{Change, GrantChange, Renamed, SysctlChange, Target};
use crate::grant::Grant;
use crate::kernel::nft;
use crate::kernel::sysctl::{self, Device};
use crate::plan;
use crate::state::{Original, State};
use std::collections::{BTreeMap, BTreeSet};

/// A planner: grants, guarded and admitted interfaces in, the table out (as
/// [`plan::ruleset_admitting`]).
pub type Planner<'a> = &'a mut dyn FnMut(
    &[Grant],
    &[String],
    &[String],
) -> Option<std::rc::Rc<crate::ruleset::Ruleset>>;

/// How [`Change::compute_planning`] plans a table and images it: pure functions, or
/// ones that reuse what an earlier plan computed (they must give the same results).
pub struct Planning<'a> {
    /// As [`plan::ruleset_admitting`]: grants, guarded and admitted interfaces in.
    pub plan: Planner<'a>,
    /// As [`nft::planned_image`], shared.
    pub image:
        &'a mut dyn FnMut(&std::rc::Rc<crate::ruleset::Ruleset>) -> std::rc::Rc<nft::TableImage>,
}

impl Change {
    /// Computes the change from the recorded state `old` to `target`, given what the
    /// kernel holds now: the `devices` involved (see
    /// [`observe_devices`](super::observe_devices)) and loopgate's table (`kernel_table`,
    /// `None` when there is none). `recorded` is the image `old`'s grants and guarded
    /// interfaces plan to (`Some(None)` when they plan none) when the caller has
    /// computed it already (at 100,000 networks each planned image costs tens of
    /// milliseconds); `None` computes it here when it is needed.
    /// Pure: no system call.
    pub fn compute(
        old: State,
        target: Target,
        devices: &BTreeMap<u32, Device>,
        kernel_table: Option<&nft::TableImage>,
        recorded: Option<Option<&nft::TableImage>>,
    ) -> Change {
        Change::compute_with_all(old, target, devices, kernel_table, recorded, false)
    }

    /// [`Change::compute`], knowing whether conf.all.route_localnet is open now
    /// (`all_open`), which decides, with the devices' originals, which interfaces'
    /// guards admit other tables' forwards to 127/8 (see `admitting`).
    pub fn compute_with_all(
        old: State,
        target: Target,
        devices: &BTreeMap<u32, Device>,
        kernel_table: Option<&nft::TableImage>,
        recorded: Option<Option<&nft::TableImage>>,
        all_open: bool,
    ) -> Change {
        Change::compute_planning(
            old,
            target,
            devices,
            kernel_table,
            recorded,
            all_open,
            Planning {
                plan: &mut |g, gu, ad| plan::ruleset_admitting(g, gu, ad).map(std::rc::Rc::new),
                image: &mut |r| std::rc::Rc::new(nft::planned_image(r)),
            },
        )
    }

    /// [`Change::compute_with_all`], planning and imaging with `planning` (which must
    /// give what [`plan::ruleset_admitting`] and [`nft::planned_image`] give: `watch`
    /// passes ones that reuse its last plan, see [`crate::state::Store::plan_of`] and
    /// [`crate::state::Store::image_of`]).
    pub fn compute_planning(
        old: State,
        target: Target,
        devices: &BTreeMap<u32, Device>,
        kernel_table: Option<&nft::TableImage>,
        recorded: Option<Option<&nft::TableImage>>,
        all_open: bool,
        planning: Planning<'_>,
    ) -> Change {
        let Planning {
            plan: planner,
            image,
        } = planning;
        let Target {
            grants,
            guarded,
            specs,
            guards,
            held_back,
        } = target;
        let mut devices = devices.clone();
        for d in devices.values_mut() {
            if held_back.contains(&d.name) {
                d.ready = false;
            }
        }
        let grants = crate::grant::normalize(grants);
        let admitted = admitting(&grants, &old, &devices, all_open);
        let ruleset = planner(&grants, &guarded, &admitted);
        let want = ruleset.as_ref().map(&mut *image);
        let (table_matches, matched_elements) = match (kernel_table, &want) {
            (None, None) => (true, None),
            (Some(have), Some(want)) if have == &**want => (true, want.elements.digest()),
            _ => (false, None),
        };
        let guard_lost = !table_matches && {
            // The tables the host may rightly hold: the committed plan, or the plan of
            // an interrupted transaction (it may have got as far as the table).
            // Borrowed where they are at hand: at 100,000 networks an image is megabytes.
            let mut plan_of = |gs: &[Grant]| -> Option<std::borrow::Cow<'_, nft::TableImage>> {
                if crate::grant::normalize(gs.to_vec()) == grants
                    && old.guarded == guarded
                    && old.admitted == admitted
                {
                    want.as_deref().map(std::borrow::Cow::Borrowed)
                } else if let (true, Some(r)) = (gs == old.grants.as_slice(), recorded) {
                    r.map(std::borrow::Cow::Borrowed)
                } else {
                    planner(gs, &old.guarded, &old.admitted)
                        .as_ref()
                        .map(|r| std::borrow::Cow::Owned(nft::planned_image(r)))
                }
            };
            let mut rightful = vec![plan_of(&old.grants)];
            if let Some(pending) = &old.pending {
                rightful.push(plan_of(pending));
            }
            rightful.iter().any(Option::is_some)
                && !rightful.iter().any(|r| r.as_deref() == kernel_table)
                && !std::iter::once(&old.grants)
                    .chain(&old.pending)
                    .any(|gs| written_before_stable_names(kernel_table, gs, &old))
        };

        // The kernel holds exactly the committed plan (not the interrupted one's, not
        // an altered table): the change can be made in place from it.
        let base = if table_matches || guard_lost || old.pending.is_some() || kernel_table.is_none()
        {
            None
        } else {
            let old_plan = planner(&old.grants, &old.guarded, &old.admitted);
            let holds_it = match recorded {
                Some(r) => r == kernel_table,
                None => old_plan.as_deref().map(nft::planned_image).as_ref() == kernel_table,
            };
            old_plan.filter(|_| holds_it)
        };

        let managed: BTreeSet<String> = plan::interfaces(&grants).into_iter().collect();
        let mut originals: Vec<Original> = Vec::new();
        let mut renamed = Vec::new();
        // Where each involved device ends: ifindex -> value after the change.
        let mut target: BTreeMap<u32, i32> = BTreeMap::new();
        for rec in &old.originals {
            // A device that is gone has nothing left to restore; its record goes.
            let Some(dev) = devices.get(&rec.ifindex) else {
                continue;
            };
            if dev.name != rec.iface {
                // Renamed, or another device that got the same ifindex (a veth moved in
                // from a pod keeps its index when it is free): loopgate cannot tell
                // which, so the record no longer proves whose value it is. The only
                // write left is the safe one: closing what loopgate opened.
                renamed.push(Renamed {
                    was: rec.iface.clone(),
                    now: dev.name.clone(),
                    ifindex: rec.ifindex,
                });
                if !sysctl::is_open(rec.value) && sysctl::is_open(dev.route_localnet) {
                    target.insert(rec.ifindex, 0);
                }
                continue;
            }
            if managed.contains(&dev.name) {
                originals.push(rec.clone());
            } else {
                // No longer managed (revoked): back to exactly what it was before
                // loopgate, on the very device it was read from.
                target.insert(rec.ifindex, rec.value);
            }
        }
        for name in &managed {
            // A missing interface has no sysctl: its grants wait for it to return.
            let Some(dev) = devices.values().find(|d| &d.name == name) else {
                continue;
            };
            let rec = match originals.iter().find(|o| o.ifindex == dev.ifindex) {
                Some(rec) => rec.clone(),
                // Not opened yet and not ready (no IPv4 address yet, or a runtime's
                // bridge the runtime has not described since it was re-created):
                // guarded, its grant stays in the table, but left as it is, so that the
                // value recorded when it is opened is what its owner set up (see
                // `Device::ready`).
                None if !dev.ready => continue,
                None => {
                    // First seen, or a new copy of the device: its own value is the
                    // original, whatever an earlier copy had.
                    let rec = Original {
                        iface: name.clone(),
                        ifindex: dev.ifindex,
                        value: dev.route_localnet,
                    };
                    originals.push(rec.clone());
                    rec
                }
            };
            let open = match (
                sysctl::is_open(dev.route_localnet),
                sysctl::is_open(rec.value),
            ) {
                (true, _) => dev.route_localnet,
                // Closed since: reopen with the value it had, 1 if that was closed.
                (false, true) => rec.value,
                (false, false) => 1,
            };
            target.insert(dev.ifindex, open);
        }
        originals.sort_by_key(|o| o.ifindex);

        let (mut lower, mut raise) = (Vec::new(), Vec::new());
        for (&ifindex, &to) in &target {
            let dev = &devices[&ifindex];
            let from = dev.route_localnet;
            let change = |from, to| SysctlChange {
                iface: dev.name.clone(),
                ifindex,
                from,
                to,
            };
            if guard_lost && sysctl::is_open(from) {
                // Nothing stands between this interface and 127/8 right now: close it
                // before anything else, reopen it once the guard is back.
                lower.push(change(from, 0));
                if sysctl::is_open(to) {
                    raise.push(change(0, to));
                }
            } else if from == to {
            } else if !sysctl::is_open(to) {
                lower.push(change(from, to));
            } else {
                raise.push(change(from, to));
            }
        }
        Change {
            specs,
            guards,
            guarded,
            admitted,
            old,
            grants,
            ruleset,
            want,
            base,
            table_matches,
            matched_elements,
            guard_lost,
            originals,
            lower,
            raise,
            renamed,
            devices,
        }
    }

    /// True when the host already matches: nothing would be written.
    pub fn is_noop(&self) -> bool {
        self.table_matches
            && self.lower.is_empty()
            && self.raise.is_empty()
            && self.old.pending.is_none()
            && self.old.grants == self.grants
            && self.old.originals == self.originals
            && self.old.specs == self.specs
            && self.old.guards == self.guards
            && self.old.guarded == self.guarded
            && self.old.admitted == self.admitted
    }

    /// Grants that exist now and not after, or whose allowed sources changed.
    pub fn revoked(&self) -> Vec<(&Grant, Option<&Grant>)> {
        let by_key = keyed(&self.grants);
        self.old
            .grants
            .iter()
            .filter_map(|old| {
                let new = by_key.get(&old.sort_key()).copied();
                match new {
                    Some(n) if n.allow == old.allow && n.to == old.to => None,
                    _ => Some((old, new)),
                }
            })
            .collect()
    }

    /// The grants this change adds, changes or removes, in that order.
    pub fn grant_changes(&self) -> Vec<GrantChange<'_>> {
        let mut out = Vec::new();
        let (old, new) = (keyed(&self.old.grants), keyed(&self.grants));
        for g in &self.grants {
            match old.get(&g.sort_key()) {
                None => out.push(GrantChange::Add(g)),
                Some(o) if *o != g => out.push(GrantChange::Change(g)),
                _ => {}
            }
        }
        for o in &self.old.grants {
            if !new.contains_key(&o.sort_key()) {
                out.push(GrantChange::Remove(o));
            }
        }
        out
    }

    /// The grants asked for (specs) this change adds or removes that no grant in force
    /// stands for, before or after: pending ones, which `grant_changes` cannot show.
    fn pending_changes(&self) -> Vec<String> {
        use crate::spec::Spec;
        let serves = |s: &Spec, g: &crate::grant::Grant| {
            g.proto == s.proto
                && g.port == s.port
                && s.listen.is_none_or(|l| l == g.listen)
                && match &s.network {
                    Some(n) => g.network.as_ref() == Some(n),
                    None => g.network.is_none() && s.matches(&g.iface),
                }
        };
        let mut out = Vec::new();
        for s in &self.specs {
            if !self.old.specs.iter().any(|o| o.key() == s.key())
                && !self.grants.iter().any(|g| serves(s, g))
            {
                out.push(format!(
                    "add pending grant {} (served once it can be)",
                    s.label()
                ));
            }
        }
        for o in &self.old.specs {
            if !self.specs.iter().any(|s| s.key() == o.key())
                && !self.old.grants.iter().any(|g| serves(o, g))
            {
                out.push(format!("remove pending grant {}", o.label()));
            }
        }
        out
    }

    /// A human summary of the change, one line per item.
    pub fn describe(&self) -> Vec<String> {
        let mut out: Vec<String> = self.grant_changes().iter().map(|c| c.to_string()).collect();
        out.extend(self.pending_changes());
        for g in self
            .guarded
            .iter()
            .filter(|g| !self.old.guarded.contains(g))
        {
            out.push(format!(
                "guard {g} (no grant; its route_localnet belongs to the tool that set it)"
            ));
        }
        for g in self
            .old
            .guarded
            .iter()
            .filter(|g| !self.guarded.contains(g))
        {
            out.push(format!("stop guarding {g}"));
        }
        for r in &self.renamed {
            out.push(format!(
                "ifindex {} was {} and is now called {} (renamed, or another device with the same index): its record is dropped{}",
                r.ifindex,
                r.was,
                r.now,
                if self.lower.iter().any(|s| s.ifindex == r.ifindex) {
                    ", and it is closed since loopgate had opened it"
                } else {
                    ""
                }
            ));
        }
        if self.guard_lost {
            out.push(format!(
                "table ip {} is not as loopgate left it (deleted, flushed, dormant or edited): close the managed interfaces first",
                crate::ruleset::TABLE
            ));
        }
        for s in &self.lower {
            out.push(format!("set {s}"));
        }
        if !self.table_matches {
            match &self.ruleset {
                Some(r) => out.push(format!(
                    "{} table ip {} ({} sets, {} maps, {} chains, {} rules)",
                    match self.base {
                        // In one batch of what differs, when the kernel takes it as such.
                        Some(_) => "change",
                        None => "replace",
                    },
                    crate::ruleset::TABLE,
                    r.sets.len(),
                    r.maps.len(),
                    r.chains.len(),
                    r.rule_count()
                )),
                None => out.push(format!("remove table ip {}", crate::ruleset::TABLE)),
            }
        }
        for s in &self.raise {
            out.push(format!("set {s}"));
        }
        if self.old.pending.is_some() {
            out.push("finish an interrupted transaction".to_string());
        }
        if out.is_empty() && (self.specs != self.old.specs || self.guards != self.old.guards) {
            out.push("record what is asked for (no grant changes now)".to_string());
        }
        out
    }
}

/// Whether `kernel_table` is the table a loopgate from before names followed their
/// objects wrote for `grants` (guarded and admitted as `old` records): the same rules
/// under positional names (`raw_if0`, `nat_g3`, `allow_2`; see
/// [`plan::legacy_ruleset_admitting`]). It guards exactly as the new plan does, so after
/// an upgrade it is rightful, not a lost guard: the first change rewrites it whole
/// (never in place: `base` needs the committed plan itself) without closing any
/// interface. Planned only when the table matches nothing else (rare: an upgrade or
/// a tampered table).
fn written_before_stable_names(
    kernel_table: Option<&nft::TableImage>,
    grants: &[Grant],
    old: &State,
) -> bool {
    let Some(kernel_table) = kernel_table else {
        return false;
    };
    plan::legacy_ruleset_admitting(grants, &old.guarded, &old.admitted)
        .is_some_and(|r| &nft::planned_image(&r) == kernel_table)
}

/// `grants` by their key (interface, listen address, protocol, port; see
/// [`Grant::key`]): looked up once each, not searched (at 10,000 grants a search per
/// grant was 7 % of a watch pass).
fn keyed(
    grants: &[Grant],
) -> BTreeMap<(&str, std::net::Ipv4Addr, crate::grant::Proto, u16), &Grant> {
    grants.iter().map(|g| (g.sort_key(), g)).collect()
}

/// The interfaces `grants` publish on that were open before loopgate managed them: the
/// recorded original route_localnet (or, not recorded yet, the value now, which is what
/// gets recorded) is non-zero, or conf.all is open (`all_open`), which opens every
/// interface whatever loopgate does. Their guard lets another table's forward to 127/8
/// through (`plan::guards`): that forward worked there before loopgate and must keep
/// working; where loopgate opened the interface itself, it never worked and must not
/// start to. Sorted; committed as `State::admitted`, so audit plans the same table.
fn admitting(
    grants: &[Grant],
    old: &State,
    devices: &BTreeMap<u32, Device>,
    all_open: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for name in plan::interfaces(grants) {
        let Some(dev) = devices.values().find(|d| d.name == name) else {
            continue;
        };
        let before = old
            .originals
            .iter()
            .find(|o| o.ifindex == dev.ifindex && o.iface == dev.name)
            .map_or(dev.route_localnet, |o| o.value);
        if all_open || sysctl::is_open(before) {
            out.push(name);
        }
    }
    out.sort();
    out.dedup();
    out
}
