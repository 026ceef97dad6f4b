//! Holding loopgate's table: a netlink socket that owns `table ip loopgate`
//! (`NFT_TABLE_F_OWNER`) with `NFT_TABLE_F_PERSIST`, Linux 6.9+.
//!
//! What the kernel does (checked on 6.18, see tests/cli/owned_table.rs):
//! - While a socket owns a table, every change to it from another socket is refused
//!   with EPERM (delete, flush, new rules, `flags dormant`), and `nft flush ruleset`
//!   from another socket skips it: the table and its hooks stay.
//! - When the owning socket closes (the process exits, however it exits), a table with
//!   `persist` stays, rules and hooks included, but orphaned: `flags persist` without
//!   `owner`. An orphan is an ordinary table again: anyone may change, flush or delete
//!   it (`nft flush ruleset` removes it).
//! - A table is adopted by sending NEWTABLE with the owner flag from the new socket; the
//!   kernel accepts that only for an orphan. A table that never had `persist` cannot be
//!   given it (EOPNOTSUPP), so a plain table is replaced in one batch instead.
//! - The owner itself must never delete its table: a table created again in the same
//!   batch would be a new one, and the flags of an existing one cannot be added back.
//!   So a change empties the table (rules, sets, chains) and fills it again in one batch.
//! - Nor can the owner change any other flag of a table it owns: NEWTABLE with the owner
//!   flag is refused (EOPNOTSUPP) for a table that is not an orphan, whatever else it
//!   changes. So a flag loopgate does not write (`dormant`, set on a plain or orphaned
//!   table before watch started) is dropped when the table is adopted, never carried
//!   into the owned table, where it could not be cleared again (issue 17: a watch that
//!   adopted a dormant table failed every repair with EOPNOTSUPP, for ever).
//!
//! Reads need no ownership: the kernel answers gets and dumps of an owned table to any
//! socket. The owning socket is used for batches only; `NlSocket::dump` may replace its
//! socket, which would close the owner.

use super::abi::*;
use super::batch::{append_poison, BatchWriter, Send};
use super::encode::{encode, new_table, TableObjects};
use super::generation::{generation, is_restart, Vouch};
use super::image::{table_flags, Holder};
use super::objects::{Obj, Owned};
use super::readback::{get_table, read_objects, snapshot, Snapshot};
use crate::kernel::netlink::NlSocket;
use crate::ruleset::{Ruleset, TABLE};
use anyhow::{anyhow, Result};
use nftnl::nftnl_sys as sys;
use std::io;

/// The table the owner probe creates in a batch the kernel only validates: never
/// committed, and named so it cannot be anyone's real table.
const PROBE_TABLE: &str = "loopgate_owner_probe";

/// How often a batch bound to a generation is prepared again when another process
/// committed first.
const RESTARTS: usize = 5;

/// Whether the kernel accepts tables owned by a socket that outlive it (owner and
/// persist flags, Linux 6.9+), checked without changing anything: a batch creating a
/// throwaway owned table is sent without its end message, so the kernel validates it
/// and aborts it. `Ok(false)` when the kernel refuses the flags (EOPNOTSUPP, or EINVAL
/// from kernels older than table flags); other failures are errors.
pub fn probe_owner_support() -> Result<bool> {
    let mut sock = NlSocket::netfilter()?;
    let table = Owned::<sys::nftnl_table>::new();
    table.set_str(sys::NFTNL_TABLE_NAME, PROBE_TABLE);
    table.set_u32(sys::NFTNL_TABLE_FAMILY, NFPROTO_IPV4 as u32);
    table.set_u32(
        sys::NFTNL_TABLE_FLAGS,
        NFT_TABLE_F_OWNER | NFT_TABLE_F_PERSIST,
    );
    let mut w = BatchWriter::new(None, sock.next_seq());
    w.add(
        &table.into_obj(),
        false,
        "table flags owner,persist (needs Linux 6.9)",
    );
    match w.commit(&mut sock, Send::ValidateOnly) {
        Ok(_) => Ok(true),
        Err(e) if errno(&e).is_some_and(|c| c == libc::EOPNOTSUPP || c == libc::EINVAL) => {
            Ok(false)
        }
        Err(e) => Err(e.context("probing for owned tables")),
    }
}

/// The errno of the first I/O error in `e`'s chain.
fn errno(e: &anyhow::Error) -> Option<i32> {
    e.chain()
        .find_map(|c| c.downcast_ref::<io::Error>())
        .and_then(|e| e.raw_os_error())
}

/// A table object for the owned table: `flags` plus owner and persist.
fn owned_table(flags: u32) -> Obj {
    let table = new_table();
    if let Obj::Table(t) = &table {
        // SAFETY: live table owned by `table`.
        unsafe {
            sys::nftnl_table_set_u32(
                t.as_ptr(),
                sys::NFTNL_TABLE_FLAGS as u16,
                flags | NFT_TABLE_F_OWNER | NFT_TABLE_F_PERSIST,
            )
        };
    }
    table
}

/// Loopgate's table held by a netlink socket of this process: no other process can
/// change, flush or delete it while this value lives (Linux 6.9+; check with
/// [`probe_owner_support`] first). Dropping it (or exiting, or being killed) closes the
/// socket and leaves the table in place with its rules, orphaned, until the next
/// [`Owner::adopt`].
///
/// The socket belongs to the network namespace of the thread that called `adopt`;
/// every later call works on that namespace's table.
pub struct Owner {
    /// The socket that owns the table; batches only (see the module documentation).
    sock: NlSocket,
    /// Reads: the generation, the table, its chains and sets.
    reads: NlSocket,
    /// The generations this owner's batches created since the seam last took them
    /// (see [`Owner::take_created`]).
    created: Vec<u32>,
}

impl Owner {
    /// Takes hold of `table ip loopgate`, leaving what it holds as it is:
    /// - absent: creates it empty, owned;
    /// - orphaned (`flags persist`): adopts it (NEWTABLE with the owner flag), the
    ///   rules untouched by the kernel, any other flag (dormant) cleared in the same
    ///   message;
    /// - plain (no ownership flags, as `apply` writes it): the kernel will not add
    ///   `persist` to an existing table, so it is read back and, in one batch bound to
    ///   the generation it was read at, deleted and created again owned with the same
    ///   contents and no other flag (a dormant table wakes up: its hooks are loopgate's
    ///   guard, and the repair that follows replaces whatever else was edited in);
    /// - owned by another socket: an EPERM error, nothing changed.
    ///
    /// Afterwards the table is read back to check that this socket holds it.
    pub fn adopt() -> Result<Owner> {
        let mut owner = Owner {
            sock: NlSocket::netfilter()?,
            reads: NlSocket::netfilter()?,
            created: Vec::new(),
        };
        let mut restarts = 0;
        loop {
            match owner.try_adopt() {
                Ok(()) => break,
                Err(e) if is_restart(&e) && restarts < RESTARTS => restarts += 1,
                Err(e) => return Err(e.context(format!("taking hold of table ip {TABLE}"))),
            }
        }
        match owner.holder()? {
            Some(Holder::Socket(port)) if port == owner.portid() => Ok(owner),
            other => Err(anyhow!(
                "table ip {TABLE} is not held by loopgate after adopting it (holder: {other:?})"
            )),
        }
    }

    fn try_adopt(&mut self) -> Result<()> {
        let before = generation(&mut self.reads)?;
        let read = get_table(&mut self.reads)?.map(|t| table_flags(t.ptr()));
        let mut w = BatchWriter::new(Some(before), self.sock.next_seq());
        match read.map(|(flags, port)| (flags, Holder::of(flags, port))) {
            None => w.add(&owned_table(0), false, "table ip loopgate (create, owned)"),
            Some((_, Holder::Socket(port))) if port == self.portid() => return Ok(()),
            Some((_, Holder::Socket(port))) => {
                return Err(
                    anyhow!(io::Error::from_raw_os_error(libc::EPERM)).context(format!(
                        "table ip {TABLE} is owned by another process (netlink port id {port})"
                    )),
                )
            }
            Some((_, Holder::Orphaned)) => {
                w.add(&owned_table(0), false, "table ip loopgate (adopt)");
            }
            Some((_, Holder::Nobody)) => {
                // Read again as one consistent state, and bind the batch to that state.
                let snap = snapshot(None)?;
                let Some(objects) = snap.table_objects() else {
                    // Deleted since: start over.
                    return Err(anyhow!(io::Error::from_raw_os_error(libc::ERESTART)));
                };
                w = BatchWriter::new(Some(snap.generation()), self.sock.next_seq());
                w.add(&new_table(), true, "table ip loopgate (delete, to own it)");
                w.add(&owned_table(0), false, "table ip loopgate (create, owned)");
                add_contents(&mut w, objects);
            }
        }
        self.created.extend(w.commit(&mut self.sock, Send::Commit)?);
        Ok(())
    }

    /// The generations this owner's batches created since the last call, for the
    /// seam's [`OwnCommits`](super::generation::OwnCommits): how `watch` knows its own
    /// commits among the monitor's.
    pub(in crate::kernel) fn take_created(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.created)
    }

    /// The port id of the owning socket, as the kernel reports it as the table's owner
    /// ([`Holder::Socket`]); for [`planned_image_held`](super::planned_image_held).
    pub fn portid(&self) -> u32 {
        self.sock.portid()
    }

    /// Who holds the table now, read from the kernel (`None`: no table).
    pub fn holder(&mut self) -> Result<Option<Holder>> {
        Ok(get_table(&mut self.reads)?.map(|t| {
            let (flags, port) = table_flags(t.ptr());
            Holder::of(flags, port)
        }))
    }

    /// Replaces what the table holds with the planned `ruleset` in one batch through
    /// the owning socket, bound to the nftables generation it read the table's chains
    /// and sets at: every rule, set and chain is deleted and the planned ones created,
    /// all or nothing; the table object itself stays, owned. Without a ruleset the
    /// table is left empty, still owned (its name stays reserved against lookalikes);
    /// compare it with [`planned_image_held`](super::planned_image_held)`(None, ..)`.
    ///
    /// Returns what vouches for the installed table, as `nft::apply` does.
    /// The `ruleset-batch` failpoint poisons the batch as it does `apply`'s.
    pub fn apply(&mut self, ruleset: Option<&Ruleset>) -> Result<Option<Vouch>> {
        let objects = ruleset.map(encode);
        let after = self.replace_contents(objects.as_ref(), true)?;
        Ok(objects.as_ref().map(|o| Vouch {
            generation: after,
            elements: o.elements_digest(),
            plan: None,
        }))
    }

    /// Changes the table in place through the owning socket (as `nft::apply_diff`
    /// does through a socket of its own): the table stays owned.
    pub fn apply_diff(
        &mut self,
        diff: &super::Diff,
        generation: u32,
        digest: u64,
    ) -> Result<Vouch> {
        self.created
            .extend(super::diff::send(&mut self.sock, diff, generation)?);
        Ok(Vouch {
            generation: super::generation::next_generation(generation),
            elements: digest,
            plan: None,
        })
    }

    /// Puts the table's contents back as `snapshot` read them, through the owning
    /// socket and without deleting the table: it stays owned. (A snapshot's own
    /// `Snapshot::restore` deletes and re-creates the table from a socket of its own,
    /// which the kernel refuses while this owner holds it.) The snapshot's other table
    /// flags (dormant) are not put back: the kernel refuses them on an owned table (see
    /// the module documentation), and a refused restore would leave the rollback
    /// half done; a snapshot of no table leaves the table empty.
    pub fn restore(&mut self, snapshot: &Snapshot) -> Result<()> {
        self.replace_contents(snapshot.table_objects(), false)
            .map(|_| ())
    }

    /// The generation-bound batch behind [`Owner::apply`] and [`Owner::restore`]:
    /// returns the generation that follows it.
    fn replace_contents(&mut self, objects: Option<&TableObjects>, failpoint: bool) -> Result<u32> {
        let mut restarts = 0;
        loop {
            let before = generation(&mut self.reads)?;
            match self.holder()? {
                // Absent: the batch creates it, owned.
                None => {}
                Some(Holder::Socket(port)) if port == self.portid() => {}
                Some(other) => {
                    return Err(anyhow!(io::Error::from_raw_os_error(libc::EPERM)).context(
                        format!(
                            "table ip {TABLE} is no longer held by this process (holder: {other:?}); adopt it again"
                        ),
                    ))
                }
            }
            let mut messages = 0;
            let sets = read_objects::<sys::nftnl_set>(&mut self.reads, &mut messages)?;
            let chains = read_objects::<sys::nftnl_chain>(&mut self.reads, &mut messages)?;
            let mut w = BatchWriter::new(Some(before), self.sock.next_seq());
            // The same flags: a no-op for the kernel, or a create after all.
            w.add(&owned_table(0), false, "table ip loopgate (owned)");
            // Rules first (they hold sets and chains), then sets and maps (a verdict
            // map's elements hold chains), then chains: `nft flush table`'s order.
            let all_rules = Owned::<sys::nftnl_rule>::naming_table();
            all_rules.set_u32(sys::NFTNL_RULE_FAMILY, NFPROTO_IPV4 as u32);
            w.add(
                &all_rules.into_obj(),
                true,
                "the rules of table ip loopgate",
            );
            for (set, label) in sets.iter().map(|(s, l)| (named_set(s), l)) {
                w.add(&set, true, &format!("{label} (delete)"));
            }
            for (chain, label) in chains.iter().map(|(c, l)| (named_chain(c), l)) {
                w.add(&chain, true, &format!("{label} (delete)"));
            }
            if let Some(objects) = objects {
                add_contents(&mut w, objects);
            }
            if failpoint && crate::failpoint::armed("ruleset-batch") {
                append_poison(&mut w);
            }
            match w.commit(&mut self.sock, Send::Commit) {
                Ok(created) => {
                    self.created.extend(created);
                    return Ok(super::generation::next_generation(before));
                }
                Err(e) if is_restart(&e) && restarts < RESTARTS => restarts += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Owner {
    /// Deletes the table if it holds nothing (no chain, set or rule), in one batch
    /// bound to the generation it was read at, through the owning socket: a watch that
    /// stops with nothing to protect leaves no empty orphan behind (which guards
    /// nothing, and which nft 1.0.6 prints as `flags ` in a file it cannot load).
    /// Returns whether it deleted it; a table with contents is left as it is, held
    /// until this value drops. Errors: the kernel refused (the table stays).
    pub fn delete_if_empty(&mut self) -> Result<bool> {
        let mut restarts = 0;
        loop {
            let before = generation(&mut self.reads)?;
            match self.holder()? {
                None => return Ok(false),
                Some(Holder::Socket(port)) if port == self.portid() => {}
                Some(_) => return Ok(false),
            }
            let mut messages = 0;
            let sets = read_objects::<sys::nftnl_set>(&mut self.reads, &mut messages)?;
            let chains = read_objects::<sys::nftnl_chain>(&mut self.reads, &mut messages)?;
            if !sets.is_empty() || !chains.is_empty() {
                return Ok(false);
            }
            // Deleted alone, never re-created in the same batch (see the module
            // documentation): nothing of the owner's is needed afterwards.
            let mut w = BatchWriter::new(Some(before), self.sock.next_seq());
            w.add(&new_table(), true, "table ip loopgate (delete, empty)");
            match w.commit(&mut self.sock, Send::Commit) {
                Ok(created) => {
                    self.created.extend(created);
                    return Ok(true);
                }
                Err(e) if is_restart(&e) && restarts < RESTARTS => restarts += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Everything of `objects` but its table object, in batch order.
fn add_contents(w: &mut BatchWriter, objects: &TableObjects) {
    for (obj, label) in &objects.objs {
        if !matches!(obj, Obj::Table(_)) {
            w.add(obj, false, label);
        }
    }
}

/// A set object naming only `read`'s table and name, to delete it.
fn named_set(read: &Owned<sys::nftnl_set>) -> Obj {
    let set = Owned::<sys::nftnl_set>::naming_table();
    set.set_u32(sys::NFTNL_SET_FAMILY, NFPROTO_IPV4 as u32);
    set.set_str(sys::NFTNL_SET_NAME, &read.get_str(sys::NFTNL_SET_NAME));
    set.into_obj()
}

/// A chain object naming only `read`'s table and name, to delete it.
fn named_chain(read: &Owned<sys::nftnl_chain>) -> Obj {
    let chain = Owned::<sys::nftnl_chain>::naming_table();
    chain.set_u32(sys::NFTNL_CHAIN_FAMILY, NFPROTO_IPV4 as u32);
    chain.set_str(sys::NFTNL_CHAIN_NAME, &read.get_str(sys::NFTNL_CHAIN_NAME));
    chain.into_obj()
}

/// Lending the table: `watch` holds it for as long as it runs, and a command that
/// changes it while watch runs (`expose`, `guard`, ...) borrows the owning socket for
/// its one transaction instead of asking watch to run the command (see [`crate::rpc`]).
/// While the socket is lent, watch does not use it.
impl Owner {
    /// The owning socket's descriptor, for watch to lend.
    pub fn lendable(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Drops every reply a borrower left queued on the owning socket, so that the
    /// owner's next batch reads only its own acknowledgements. Run after each lease.
    pub fn settle(&mut self) -> Result<()> {
        self.sock.settle()
    }

    /// The table held through a socket `watch` lent this process (received over its
    /// unix socket). Errors: the socket is not the one the kernel names as the
    /// table's owner (a watch that lost the table, or something that is not watch).
    pub fn borrowed(fd: std::os::fd::OwnedFd) -> Result<Owner> {
        let mut owner = Owner {
            sock: NlSocket::from_lent(fd)?,
            reads: NlSocket::netfilter()?,
            created: Vec::new(),
        };
        match owner.holder()? {
            Some(Holder::Socket(port)) if port == owner.portid() => Ok(owner),
            other => Err(anyhow!(
                "the socket loopgate watch lent does not hold table ip {TABLE} (holder: {other:?})"
            )),
        }
    }
}
