//! One module per verb; this module holds what they share: taking the lock, looking at
//! the kernel, and running (or only printing) a transaction.

pub mod apply;
pub mod audit;
pub mod expose;
pub mod guard;
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
#[derive(Clone, Copy, PartialEq, Eq)]
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
    // While a watch holds the table, the transaction goes through the socket that owns
    // it, borrowed until this function returns; a plan or dry run only reads, and
    // knows that ownership as loopgate's own.
    let lease = match mode {
        Mode::Apply => borrow_table()?,
        Mode::Plan | Mode::DryRun => {
            if let Some((_, port)) = crate::state::running_watch().filter(|(_, port)| *port != 0) {
                nft::sanction_owner(port);
            }
            TableLease(None)
        }
    };
    let target = txn::Target {
        grants,
        guarded: crate::spec::resolve_guards(&guards, &host::HostInterfaces::read()?),
        specs,
        guards,
        held_back: Default::default(),
    };
    let (change, snapshot) = txn::observe_and_compute(&system(), old, target)?;

    // Printed once the table is given back: a stderr or stdout that blocks (^S, a
    // stalled ssh session) must not keep watch from repairing for the lease's limit.
    let mut warnings: Vec<String> = Vec::new();
    if !change.grants.is_empty() {
        match sysctl::read("all") {
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
        warnings.extend(unserved(&change));
        warnings.extend(firewall_warnings(&change));
    }
    let warn = |warnings: Vec<String>| {
        for w in warnings {
            crate::errln!("loopgate: warning: {w}");
        }
    };

    if change.is_noop() {
        let remembered = match mode {
            Mode::Apply => remember_intact(&store, &change, &snapshot),
            _ => Ok(()),
        };
        drop(store);
        drop(lease);
        warn(warnings);
        remembered?;
        crate::outln!("nothing to do: the host already matches");
        return Ok(());
    }
    match mode {
        Mode::Plan | Mode::DryRun => {
            drop(store);
            drop(lease);
            warn(warnings);
            let header = if mode == Mode::Plan {
                "plan"
            } else {
                "dry run, nothing changed"
            };
            crate::outln!("# {header}:");
            for line in change.describe() {
                crate::outln!("#   {line}");
            }
            if mode == Mode::DryRun {
                crate::outln!("# resulting table (other tables are never touched):");
                crate::out!("{}", crate::plan::render(change.ruleset.as_ref()));
            }
            Ok(())
        }
        Mode::Apply => {
            let lines = change.describe();
            let outcome = txn::execute(&system(), &store, &change, &snapshot);
            drop(store);
            // Given back before printing (see above), and on failure too.
            drop(lease);
            warn(warnings);
            let outcome = outcome?;
            for line in lines {
                crate::outln!("{line}");
            }
            for w in &outcome.warnings {
                crate::errln!("loopgate: warning: {w}");
            }
            if outcome.connections_cut > 0 {
                crate::outln!(
                    "cut {} tracked connection(s) of revoked grants",
                    outcome.connections_cut
                );
            }
            Ok(())
        }
    }
}

/// The table borrowed from a running `watch` for one transaction; given back on drop
/// (this process's copy of the socket closed first, then the connection, which tells
/// watch the lease ended).
pub struct TableLease(Option<crate::rpc::Lent>);

impl Drop for TableLease {
    fn drop(&mut self) {
        if self.0.is_some() {
            drop(crate::kernel::seam::release());
            nft::sanction_owner(0);
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
    if crate::kernel::seam::holding() {
        // watch itself, converging through its own socket.
        return Ok(TableLease(None));
    }
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
            nft::sanction_owner(owner.portid());
            crate::kernel::seam::hold_borrowed(owner, lent.deadline);
            return Ok(TableLease(Some(lent)));
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
    Ok(TableLease(None))
}

/// Grants whose target has no listener yet: allowed, but probably a typo.
fn unserved(change: &Change) -> Vec<String> {
    let Ok(listeners) = host::listeners() else {
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
fn firewall_warnings(change: &Change) -> Vec<String> {
    if change.grants.is_empty() {
        return vec![];
    }
    let ifindexes = change
        .grants
        .iter()
        .filter_map(|g| sysctl::ifindex_of(&g.iface).map(|i| (g.iface.clone(), i)))
        .collect();
    let foreign = system().foreign_firewall();
    crate::audit::firewall::warnings(&foreign, &change.grants, &ifindexes)
}

/// What `expose` and `revoke` end with: move to `grants` (or only show it), recording
/// the result in the persistent policy when asked.
///
/// The persistence target is checked (and locked, and the file rendered) before the host
/// changes, so a target that cannot take the change is refused with nothing changed;
/// only the final write is left for after the change.
pub fn change(
    store: Store,
    old: State,
    grants: Vec<Grant>,
    specs: Vec<crate::spec::Spec>,
    dry_run: bool,
    persist_it: bool,
) -> Result<()> {
    let mode = if dry_run { Mode::DryRun } else { Mode::Apply };
    let target = match persist_it {
        true => Some(persist::Target::prepare(
            &crate::policy::config_dir(),
            &grants,
            &host::HostInterfaces::read()?,
        )?),
        false => None,
    };
    converge(store, old, grants, specs, mode)?;
    if let Some(target) = target {
        let file = target.file();
        for w in target.commit()? {
            crate::errln!("loopgate: warning: {w}");
        }
        crate::outln!("persisted to {}", file.display());
    }
    Ok(())
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
