//! One module per verb; this module holds what they share: taking the lock, looking at
//! the kernel, and running (or only printing) a transaction. The path every changing
//! verb takes: [`change`] (expose, revoke) → [`converge`] → [`converge_guarding`]
//! (guard, unguard, apply, plan enter here) → [`converge_over`], generic over the
//! kernel seam, which calls [`crate::txn::observe_and_compute`] and
//! [`crate::txn::execute`]. While a watch holds the table, [`borrow_table`] borrows its
//! socket for that one transaction ([`TableLease`]).

pub mod apply;
pub mod audit;
pub mod expose;
pub mod guard;
pub mod owner;
pub mod revoke;
pub mod trace;
pub mod watch;

use crate::grant::Grant;
use crate::kernel::seam::{Kernel, System, TableSnapshot};
use crate::kernel::{host, nft, sysctl};
use crate::persist;
use crate::state::{State, Store};
use crate::txn::{self, Change};
use anyhow::Result;

/// How a converging command reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Change the host.
    Apply,
    /// Print the change and the resulting table; change nothing.
    DryRun,
    /// Print the change only (`plan`).
    Plan,
}

/// For a change that is a no-op: records that the table was found intact at this
/// generation, so later runs need not read a large table back while nothing in
/// nftables changes.
pub fn remember_intact(
    store: &Store,
    change: &Change,
    snapshot: &impl TableSnapshot,
) -> Result<()> {
    if let Some(elements) = change.matched_elements {
        let vouch = Some(nft::Vouch {
            generation: snapshot.generation(),
            elements,
            plan: change.want.as_deref().map(nft::TableImage::digest),
        });
        if change.old.vouch != vouch {
            store.save(&State {
                vouch,
                ..change.old.clone()
            })?;
        }
    }
    Ok(())
}

/// Moves the host to `grants` (or shows what that would do). The state lock (`store`)
/// is released before anything is printed: a reader that stops reading its pipe must
/// not hold up `watch` or other commands.
pub fn converge(
    store: Store,
    old: State,
    grants: Vec<Grant>,
    specs: Vec<crate::spec::Spec>,
    mode: Mode,
) -> Result<()> {
    let guards = old.guards.clone();
    converge_guarding(store, old, grants, specs, guards, mode)
}

/// As [`converge`], with `guards` as what `loopgate guard` asks for from now on
/// (resolved against the interfaces that exist now).
pub fn converge_guarding(
    store: Store,
    old: State,
    grants: Vec<Grant>,
    specs: Vec<crate::spec::Spec>,
    guards: Vec<crate::spec::GuardSpec>,
    mode: Mode,
) -> Result<()> {
    converge_recording(store, old, (grants, specs, guards), mode, None)
}

/// As [`converge_guarding`], writing `persist` (the policy files, rendered) once the
/// change is in force and before a borrowed table is given back: a watch following
/// the policy reads the new files before its next repair, so it never puts back what
/// was just revoked.
fn converge_recording(
    store: Store,
    old: State,
    (grants, specs, guards): (
        Vec<Grant>,
        Vec<crate::spec::Spec>,
        Vec<crate::spec::GuardSpec>,
    ),
    mode: Mode,
    persist: Option<persist::Target>,
) -> Result<()> {
    // While a watch holds the table, the transaction goes through the socket that owns
    // it, borrowed until the lease drops; a plan or dry run only reads, and knows that
    // ownership as loopgate's own.
    let lease = match mode {
        Mode::Apply => borrow_table()?,
        Mode::Plan | Mode::DryRun => TableLease::reading(),
    };
    let host = host::HostInterfaces::read()?;
    let converged = converge_over_recording(
        lease.kernel(),
        store,
        &host,
        Request {
            old,
            grants,
            specs,
            guards,
            mode,
        },
        persist,
    );
    // Given back before printing (see [`converge_over`]), and on failure too.
    drop(lease);
    let (converged, recorded) = converged?;
    converged.print()?;
    if let Some((dir, files)) = recorded.transpose()? {
        if files.is_empty() {
            crate::outln!(
                "persisted: the policy in {} already says so; no file changed",
                dir.display()
            );
        }
        for f in files {
            crate::outln!("persisted to {}", f.display());
        }
    }
    Ok(())
}

/// What a converging command is asked to do: move from `old` to `grants` (their
/// `specs`), with `guards` as what `loopgate guard` asks for, in `mode`.
pub struct Request {
    /// The state as loaded under the lock.
    pub old: State,
    /// The grants asked for.
    pub grants: Vec<Grant>,
    /// The specs they were resolved from.
    pub specs: Vec<crate::spec::Spec>,
    /// What `loopgate guard` asks for from now on.
    pub guards: Vec<crate::spec::GuardSpec>,
    /// Change the host, or only show the change.
    pub mode: Mode,
}

/// One line of what a converging command prints, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Printed {
    /// A line on stdout.
    Line(String),
    /// Text on stdout, as it is (the rendered table).
    Text(String),
    /// A warning on stderr.
    Warning(String),
}

/// What a converging command prints once the state lock and the table are given back:
/// the warnings first, then the outcome (or its error).
#[derive(Debug)]
pub struct Converged {
    /// Printed first, on stderr.
    pub warnings: Vec<String>,
    /// Then what the transaction (or the plan) printed, or why it failed.
    pub outcome: Result<Vec<Printed>>,
}

impl Converged {
    /// Prints the warnings and the outcome; returns the outcome's error, if any.
    pub fn print(self) -> Result<()> {
        for w in self.warnings {
            crate::errln!("loopgate: warning: {w}");
        }
        for p in self.outcome? {
            match p {
                Printed::Line(l) => crate::outln!("{l}"),
                Printed::Text(t) => crate::out!("{t}"),
                Printed::Warning(w) => crate::errln!("loopgate: warning: {w}"),
            }
        }
        Ok(())
    }
}

/// The converging itself, over any kernel: observes, computes the change and, in
/// [`Mode::Apply`], runs it (or records that the table was found intact). `host` is
/// what `guards` resolve against. The state lock (`store`) is released before this
/// returns, and nothing is printed here: a reader that stops reading its pipe, or a
/// stderr that blocks (^S, a stalled ssh session), must not hold up `watch` or other
/// commands, nor keep watch from repairing for a lease's limit.
///
/// Errors: the host could not be read (nothing changed). A transaction that fails is
/// in [`Converged::outcome`], after the warnings.
pub fn converge_over<K: Kernel>(
    kernel: &K,
    store: Store,
    host: &dyn crate::spec::Host,
    request: Request,
) -> Result<Converged> {
    converge_over_recording(kernel, store, host, request, None).map(|(c, _)| c)
}

/// The policy directory and the files `--persist` wrote in it (none: it already said
/// so), or why it could not ([`crate::error::NotPersisted`]).
type Recorded = Option<Result<(std::path::PathBuf, Vec<std::path::PathBuf>)>>;

/// As [`converge_over`], writing `record` (policy files, rendered) in [`Mode::Apply`]
/// once the change is in force (or found in force), before the state lock is given
/// back: a watch following the policy repairs under that lock, so it reads the new
/// files, never the old ones beside the new state, and never puts back what was just
/// revoked.
fn converge_over_recording<K: Kernel>(
    kernel: &K,
    store: Store,
    host: &dyn crate::spec::Host,
    request: Request,
    record: Option<persist::Target>,
) -> Result<(Converged, Recorded)> {
    let commit = |record: Option<persist::Target>| -> Recorded {
        let target = record?;
        let files = target.files();
        let dir = target.dir().to_path_buf();
        Some(target.commit().map(|()| (dir, files)))
    };
    let Request {
        old,
        grants,
        specs,
        guards,
        mode,
    } = request;
    let target = txn::Target {
        grants,
        guarded: crate::spec::resolve_guards(&guards, host),
        specs,
        guards,
        held_back: Default::default(),
    };
    let (change, snapshot) = txn::observe_and_compute(kernel, old, target)?;

    let mut warnings: Vec<String> = Vec::new();
    if !change.grants.is_empty() {
        match kernel.route_localnet("all") {
            Ok(v) if sysctl::is_open(v) => warnings.push(format!(
                "net.ipv4.conf.all.route_localnet is {v}: every interface is open to 127.0.0.0/8, not only the ones loopgate guards"
            )),
            Ok(_) => {}
            Err(e) => warnings.push(format!(
                "cannot tell whether every interface is open to 127.0.0.0/8: {}",
                crate::error::one_line(&e)
            )),
        }
    }
    if mode == Mode::Apply {
        warnings.extend(unserved(kernel, &change));
        warnings.extend(firewall_warnings(kernel, &change));
    }

    if change.is_noop() {
        let remembered = match mode {
            Mode::Apply => remember_intact(&store, &change, &snapshot),
            _ => Ok(()),
        };
        let recorded = match (mode, &remembered) {
            (Mode::Apply, Ok(())) => commit(record),
            _ => None,
        };
        drop(store);
        let outcome = remembered.map(|()| {
            vec![Printed::Line(
                "nothing to do: the host already matches".into(),
            )]
        });
        return Ok((Converged { warnings, outcome }, recorded));
    }
    let mut recorded = None;
    let outcome = match mode {
        Mode::Plan | Mode::DryRun => {
            drop(store);
            let header = if mode == Mode::Plan {
                "plan"
            } else {
                "dry run, nothing changed"
            };
            let mut out = vec![Printed::Line(format!("# {header}:"))];
            for line in change.describe() {
                out.push(Printed::Line(format!("#   {line}")));
            }
            if mode == Mode::DryRun {
                out.push(Printed::Line(
                    "# resulting table (other tables are never touched):".into(),
                ));
                out.push(Printed::Text(crate::plan::render(
                    change.ruleset.as_deref(),
                )));
            }
            Ok(out)
        }
        Mode::Apply => {
            let lines = change.describe();
            let outcome = txn::execute(kernel, &store, &change, &snapshot);
            if outcome.is_ok() {
                recorded = commit(record);
            }
            drop(store);
            outcome.map(|outcome| {
                let mut out: Vec<Printed> = lines.into_iter().map(Printed::Line).collect();
                out.extend(outcome.warnings.into_iter().map(Printed::Warning));
                if outcome.connections_cut > 0 {
                    out.push(Printed::Line(format!(
                        "cut {} tracked connection(s) of revoked grants",
                        outcome.connections_cut
                    )));
                }
                out
            })
        }
    };
    Ok((Converged { warnings, outcome }, recorded))
}

/// The kernel a converging command works through: the table borrowed from a running
/// `watch` for one transaction, or no table held at all. A borrowed one is given back
/// on drop (this process's copy of the socket closed first, then the connection, which
/// tells watch the lease ended).
pub struct TableLease {
    kernel: System,
    lent: Option<crate::rpc::Lent>,
}

impl TableLease {
    /// For a plan, a dry run: nothing borrowed, and the running watch's hold on the
    /// table (if any) known as loopgate's own.
    fn reading() -> TableLease {
        let port = crate::state::running_watch().map_or(0, |(_, port)| port);
        TableLease {
            kernel: system().sanctioning(port),
            lent: None,
        }
    }

    /// The kernel to converge through (holding the borrowed owner, if any).
    pub fn kernel(&self) -> &System {
        &self.kernel
    }
}

impl Drop for TableLease {
    fn drop(&mut self) {
        if self.lent.is_some() {
            drop(self.kernel.release());
        }
    }
}

/// How long a command waits for a running watch to lend its table: watch serves one
/// borrower at a time, each for at most [`crate::rpc::LEASE_LIMIT`].
const BORROW_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// When a `watch` runs in this namespace and holds loopgate's table, borrows the
/// socket that owns it, so that this command's transaction (the same one it runs with
/// no watch) goes through it. No watch, or one that does not hold the table: nothing
/// to borrow, the command changes the table directly.
///
/// Errors (nothing changed): watch refused (the reason: a peer without CAP_NET_ADMIN,
/// another protocol version), did not answer within 30 s, or lent a socket that does
/// not own the table.
pub fn borrow_table() -> Result<TableLease> {
    let path = crate::state::namespace_dir()?.join(watch::SOCKET);
    let command: Vec<String> = std::env::args().skip(1).collect();
    let why = match crate::rpc::borrow(&path, &command.join(" "), BORROW_WAIT)? {
        crate::rpc::Borrowed::NoServer => format!("nothing answers at {}", path.display()),
        crate::rpc::Borrowed::NotHeld => "the watch there says it does not hold it".to_string(),
        crate::rpc::Borrowed::Lent(mut lent) => {
            let socket = lent
                .take_socket()
                .expect("a lent table comes with its socket");
            let owner = nft::Owner::borrowed(socket)?;
            let mut kernel = system();
            kernel.hold_borrowed(owner, lent.deadline);
            return Ok(TableLease {
                kernel,
                lent: Some(lent),
            });
        }
    };
    // Nothing lent: the table must then be nobody's, or the kernel refuses the change
    // half way (EPERM) and the undo with it. Say so now, with nothing changed.
    if let Some(nft::Holder::Socket(port)) = nft::table_holder()? {
        let who = match crate::state::running_watch() {
            Some((pid, p)) if p == port => format!("loopgate watch (pid {pid})"),
            _ => format!("another process's netlink socket (port id {port})"),
        };
        anyhow::bail!(
            "table ip loopgate is held by {who}, and {why}; nothing was changed: restart loopgate watch (systemctl restart loopgate-watch.service) and try again"
        );
    }
    Ok(TableLease {
        kernel: system(),
        lent: None,
    })
}

/// Grants whose target has no listener yet: allowed, but probably a typo.
fn unserved(kernel: &impl Kernel, change: &Change) -> Vec<String> {
    let Ok(listeners) = kernel.listeners() else {
        return vec![];
    };
    change
        .grants
        .iter()
        .filter(|g| !host::is_listening(&listeners, g.proto, *g.to.ip(), g.to.port()))
        .map(|g| {
            format!(
                "nothing listens on {}/{} yet; grant {} is in place and will work once it does",
                g.to, g.proto, g.name
            )
        })
        .collect()
}

/// Grants another firewall stops (a foreign drop or notrack): the grant is installed
/// all the same, but the client would time out.
fn firewall_warnings(kernel: &impl Kernel, change: &Change) -> Vec<String> {
    if change.grants.is_empty() {
        return vec![];
    }
    let ifindexes = change
        .grants
        .iter()
        .filter_map(|g| kernel.ifindex_of(&g.iface).map(|i| (g.iface.clone(), i)))
        .collect();
    let foreign = kernel.foreign_firewall();
    // The routes back to the clients, for reverse path checks (`rpfilter`): as audit
    // reads them; unread, such a check is "may drop".
    let lookups = kernel
        .routes(&crate::audit::firewall::probes(&change.grants))
        .map(|r| r.into_iter().collect())
        .unwrap_or_default();
    let table = kernel.route_table().unwrap_or_default();
    let routes = crate::audit::firewall::Routes {
        lookups: &lookups,
        table: &table,
    };
    crate::audit::firewall::warnings(&foreign, &change.grants, &ifindexes, &routes)
}

/// What `expose` and `revoke` end with: move to `grants` (or only show it), recording
/// the change in the persistent policy when `persist` is given.
///
/// The persistence target is checked (and locked, and the files rendered) by the
/// caller before the host changes, so a target that cannot take the change is refused
/// with nothing changed; only the final writes are left for after the change.
pub fn change(
    store: Store,
    old: State,
    grants: Vec<Grant>,
    specs: Vec<crate::spec::Spec>,
    dry_run: bool,
    persist: Option<persist::Target>,
) -> Result<()> {
    let mode = if dry_run { Mode::DryRun } else { Mode::Apply };
    let guards = old.guards.clone();
    converge_recording(store, old, (grants, specs, guards), mode, persist)
}

/// The real kernel, remembering the features it accepted on this boot in the state
/// base directory (see [`crate::kernel::features`]).
pub fn system() -> System {
    System::new(crate::state::known_features())
}

/// Takes the namespace's state lock and reads the state.
pub fn open_store(exclusive: bool) -> Result<(Store, State)> {
    let store = Store::open(exclusive)?;
    let state = store.load()?;
    Ok((store, state))
}

/// The converging paths over the fake kernel: no-op, plan, dry run, apply, warnings.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::Proto;
    use crate::kernel::fake::{Fake, TempStore};
    use crate::kernel::host::Listener;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn grant(iface: &str, port: u16) -> Grant {
        Grant {
            name: format!("{iface}-{port}"),
            iface: iface.into(),
            proto: Proto::Tcp,
            listen: Ipv4Addr::new(192, 0, 2, 1),
            port,
            to: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            allow: vec!["192.0.2.0/25".parse().unwrap()],
            network: None,
        }
    }

    /// Converges `kernel` from the state in `t` to `grants` in `mode`; returns what
    /// would be printed, and the state after.
    fn run(kernel: &Fake, t: TempStore, grants: Vec<Grant>, mode: Mode) -> (Converged, State) {
        let old = t.store.load().unwrap();
        let (store, dir) = t.into_parts();
        let request = Request {
            specs: old.specs.clone(),
            old,
            grants,
            guards: vec![],
            mode,
        };
        let converged = converge_over(kernel, store, kernel, request).unwrap();
        // The lock was released: the store opens again without waiting.
        let after = dir.open().load().unwrap();
        (converged, after)
    }

    /// A fake with br0 (ifindex 5) at 0 and a listener on 127.0.0.1:3306, and an
    /// empty state.
    fn host() -> (Fake, TempStore) {
        let kernel = Fake::with_devices(&[(5, "br0", 0)]);
        kernel.state.borrow_mut().listeners = vec![Listener {
            proto: Proto::Tcp,
            addr: Ipv4Addr::LOCALHOST,
            port: 3306,
            device: None,
        }];
        (kernel, TempStore::new())
    }

    fn lines(c: &Converged) -> Vec<String> {
        c.outcome
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| match p {
                Printed::Line(l) | Printed::Text(l) | Printed::Warning(l) => l.clone(),
            })
            .collect()
    }

    fn steps(kernel: &Fake) -> Vec<String> {
        kernel.history().into_iter().map(|m| m.what).collect()
    }

    #[test]
    fn nothing_asked_on_an_empty_host_is_a_no_op_that_changes_nothing() {
        let (kernel, t) = host();
        let empty = t.store.load().unwrap();
        drop(t);
        for mode in [Mode::Apply, Mode::DryRun, Mode::Plan] {
            let t = TempStore::new();
            let (c, after) = run(&kernel, t, vec![], mode);
            assert_eq!(lines(&c), ["nothing to do: the host already matches"]);
            assert!(c.warnings.is_empty(), "{:?}", c.warnings);
            assert_eq!(after, empty);
        }
        assert!(steps(&kernel).is_empty());
    }

    #[test]
    fn apply_opens_the_interface_behind_its_guard_and_prints_the_change() {
        let (kernel, t) = host();
        let (c, after) = run(&kernel, t, vec![grant("br0", 3306)], Mode::Apply);
        assert_eq!(steps(&kernel), ["apply", "write br0=1"]);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert!(!lines(&c).is_empty());
        assert_eq!(after.grants, vec![grant("br0", 3306)]);
        assert!(after.vouch.is_some());
    }

    #[test]
    fn a_dry_run_prints_the_change_and_the_table_and_changes_nothing() {
        let (kernel, t) = host();
        let empty = t.store.load().unwrap();
        let (c, after) = run(&kernel, t, vec![grant("br0", 3306)], Mode::DryRun);
        assert!(steps(&kernel).is_empty(), "{:?}", steps(&kernel));
        assert_eq!(kernel.value("br0"), Some(0));
        assert!(kernel.state.borrow().table.is_none());
        assert_eq!(after, empty);
        let out = c.outcome.unwrap();
        assert_eq!(out[0], Printed::Line("# dry run, nothing changed:".into()));
        assert!(out.contains(&Printed::Line(
            "# resulting table (other tables are never touched):".into()
        )));
        assert!(matches!(out.last(), Some(Printed::Text(t)) if t.contains("table ip loopgate")));
    }

    #[test]
    fn a_plan_prints_the_change_only() {
        let (kernel, t) = host();
        let (c, _) = run(&kernel, t, vec![grant("br0", 3306)], Mode::Plan);
        assert!(steps(&kernel).is_empty());
        let out = c.outcome.unwrap();
        assert_eq!(out[0], Printed::Line("# plan:".into()));
        assert!(out.len() > 1);
        assert!(out
            .iter()
            .all(|p| matches!(p, Printed::Line(l) if l.starts_with('#'))));
    }

    #[test]
    fn conf_all_open_is_warned_about_in_every_mode() {
        for mode in [Mode::Apply, Mode::DryRun, Mode::Plan] {
            let (kernel, t) = host();
            kernel.state.borrow_mut().all = 1;
            let (c, _) = run(&kernel, t, vec![grant("br0", 3306)], mode);
            assert!(
                c.warnings
                    .iter()
                    .any(|w| w.starts_with("net.ipv4.conf.all.route_localnet is 1")),
                "{:?}",
                c.warnings
            );
        }
    }

    #[test]
    fn conf_all_that_cannot_be_read_is_said_and_does_not_stop_the_change() {
        let (kernel, t) = host();
        kernel.fail("sysctl:all");
        let (c, after) = run(&kernel, t, vec![grant("br0", 3306)], Mode::Apply);
        assert!(c.warnings[0].starts_with("cannot tell whether every interface is open"));
        assert!(c.outcome.is_ok());
        assert_eq!(after.grants.len(), 1);
    }

    #[test]
    fn no_grants_means_no_conf_all_warning() {
        let (kernel, t) = host();
        kernel.state.borrow_mut().all = 1;
        let (c, _) = run(&kernel, t, vec![], Mode::Apply);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn a_grant_nothing_listens_behind_is_warned_about_when_applied_only() {
        let (kernel, t) = host();
        let (c, _) = run(&kernel, t, vec![grant("br0", 3307)], Mode::Apply);
        assert_eq!(
            c.warnings,
            ["nothing listens on 127.0.0.1:3307/tcp yet; grant br0-3307 is in place and will work once it does"]
        );
        let (kernel, t) = host();
        let (c, _) = run(&kernel, t, vec![grant("br0", 3307)], Mode::DryRun);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn a_failed_apply_keeps_its_warnings_and_leaves_the_interface_closed() {
        let (kernel, t) = host();
        kernel.state.borrow_mut().all = 1;
        kernel.fail("write:br0:1");
        let (c, after) = run(&kernel, t, vec![grant("br0", 3306)], Mode::Apply);
        assert!(c.outcome.is_err());
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert_eq!(kernel.value("br0"), Some(0));
        assert!(after.grants.is_empty());
        assert!(after.pending.is_none());
    }

    #[test]
    fn a_no_op_apply_vouches_for_the_table_and_a_dry_run_does_not() {
        let (kernel, t) = host();
        let (_, after) = run(&kernel, t, vec![grant("br0", 3306)], Mode::Apply);
        kernel.state.borrow_mut().history.clear();
        let unvouched = State {
            vouch: None,
            ..after
        };
        for (mode, vouched) in [(Mode::DryRun, false), (Mode::Apply, true)] {
            let t = TempStore::new();
            t.store.save(&unvouched).unwrap();
            let (c, after) = run(&kernel, t, vec![grant("br0", 3306)], mode);
            assert_eq!(lines(&c), ["nothing to do: the host already matches"]);
            assert_eq!(after.vouch.is_some(), vouched, "{mode:?}");
        }
        assert!(steps(&kernel).is_empty(), "{:?}", steps(&kernel));
    }

    #[test]
    fn a_table_that_cannot_be_read_changes_nothing_and_prints_nothing() {
        let (kernel, t) = host();
        kernel.fail("read");
        let old = t.store.load().unwrap();
        let (store, _dir) = t.into_parts();
        let request = Request {
            old,
            grants: vec![grant("br0", 3306)],
            specs: vec![],
            guards: vec![],
            mode: Mode::Apply,
        };
        assert!(converge_over(&kernel, store, &kernel, request).is_err());
        assert!(steps(&kernel).is_empty());
    }

    #[test]
    fn revoking_the_last_grant_closes_the_interface_before_the_table_goes() {
        let (kernel, t) = host();
        let (_, after) = run(&kernel, t, vec![grant("br0", 3306)], Mode::Apply);
        kernel.state.borrow_mut().history.clear();
        let t = TempStore::new();
        t.store.save(&after).unwrap();
        let (c, after) = run(&kernel, t, vec![], Mode::Apply);
        assert_eq!(steps(&kernel), ["write br0=0", "apply"]);
        assert!(c.outcome.is_ok());
        assert!(after.grants.is_empty() && after.originals.is_empty());
    }

    #[test]
    fn a_guarded_interface_is_resolved_against_the_host_given() {
        let (kernel, t) = host();
        let old = t.store.load().unwrap();
        let (store, dir) = t.into_parts();
        let guards = vec![crate::spec::GuardSpec {
            source: crate::spec::Source::Cli,
            interface: "br0".into(),
        }];
        let request = Request {
            old,
            grants: vec![],
            specs: vec![],
            guards,
            mode: Mode::Apply,
        };
        let c = converge_over(&kernel, store, &kernel, request).unwrap();
        assert!(c.outcome.is_ok());
        assert_eq!(steps(&kernel), ["apply"]);
        assert_eq!(dir.open().load().unwrap().guarded, ["br0"]);
        assert_eq!(kernel.value("br0"), Some(0), "guarding opens nothing");
    }
}
