//! Reading loopgate's table back from the kernel into a [`Snapshot`]: the table
//! object by a get, then sets, set elements, chains and rules by dumps filtered to the
//! table, repeated until no commit overlapped the read. A snapshot is kept both to
//! compare with the planned table and to restore it; it owns the libnftnl objects it
//! read (elements stay raw attribute bytes).

use super::abi::*;
use super::batch::{replace_table, FlushFirst, Send};
use super::elements::{self, ElemBlock};
use super::encode::{new_table, set_header, TableObjects};
use super::generation::{generation, Vouch};
use super::image::{table_flags, table_text, Elements, Holder, TableImage};
use super::objects::{Kind, Obj, Owned};
use crate::kernel::netlink::NlSocket;
use crate::ruleset::TABLE;
use anyhow::{Context, Result};
use nftnl::nftnl_sys as sys;
use std::collections::HashMap;
use std::io;

/// What the kernel holds of loopgate's table, kept both to compare and to restore.
pub struct Snapshot {
    /// The objects as read; `None` when the table was absent, or when it was taken as
    /// committed (`committed`).
    pub(super) objects: Option<TableObjects>,
    /// Set when nothing was dumped because the generation vouched for the whole table
    /// (see [`snapshot_committed`](super::committed::snapshot_committed)): the plan the
    /// table holds and its image.
    pub(super) committed: Option<(
        std::rc::Rc<crate::ruleset::Ruleset>,
        std::rc::Rc<TableImage>,
    )>,
    /// `committed`'s plan encoded, made only when a restore needs it.
    pub(super) encoded: std::cell::OnceCell<TableObjects>,
    /// The table object as the kernel described it (flags and all), for the image.
    pub(super) table: Option<String>,
    /// Who held the table when it was read.
    pub(super) holder: Option<Holder>,
    /// The nftables generation read before the table was.
    generation: u32,
    /// Set when the elements were not read back but vouched for (their digest).
    pub(super) vouched: Option<u64>,
    /// The port id of the socket whose ownership of the table is loopgate's own (see
    /// [`Snapshot::sanctioning`]); `None`: only an orphaned table's is.
    pub(super) sanctioned: Option<u32>,
    /// Netlink messages the final read took: a measure of how well the dumps are
    /// filtered to loopgate's table.
    pub(super) messages: usize,
    /// Reads it took to see the table unchanged from start to end (1 when nothing
    /// committed meanwhile).
    pub(super) attempts: usize,
}

impl Snapshot {
    /// The snapshot of no table, read at `generation`.
    pub(super) fn absent(generation: u32) -> Snapshot {
        Snapshot {
            objects: None,
            committed: None,
            encoded: Default::default(),
            table: None,
            holder: None,
            generation,
            vouched: None,
            sanctioned: None,
            messages: 0,
            attempts: 0,
        }
    }

    /// True when loopgate's table existed when the snapshot was read.
    pub fn present(&self) -> bool {
        self.objects.is_some() || self.committed.is_some()
    }

    /// The table's objects, as read or (taken as committed) as planned; `None` when
    /// the table was absent. What a restore writes.
    pub(super) fn table_objects(&self) -> Option<&TableObjects> {
        match (&self.objects, &self.committed) {
            (Some(o), _) => Some(o),
            (None, Some((plan, _))) => Some(self.encoded.get_or_init(|| super::encode(plan))),
            (None, None) => None,
        }
    }

    /// True when the rules were read (their counters are known): false when the table
    /// was taken as committed without reading it.
    pub fn counted(&self) -> bool {
        self.committed.is_none()
    }

    /// Who held the table when it was read ([`Holder`]); `None` when it was absent.
    pub fn holder(&self) -> Option<Holder> {
        self.holder
    }

    /// Puts the table back as it was when the snapshot was taken (without owner flags,
    /// which would tie it to this process's socket; see `restorable_table`). The
    /// snapshot is one state of the table: [`snapshot`] never returns a torn read.
    ///
    /// This deletes and re-creates the table, from a socket of its own: while another
    /// socket owns the table (an [`Owner`](super::Owner), in this process or another)
    /// the kernel refuses it with EPERM and nothing changes. The owner restores with
    /// [`Owner::restore`](super::Owner::restore), which keeps the table owned.
    pub(in crate::kernel) fn restore(&self) -> Result<()> {
        let mut sock = NlSocket::netfilter()?;
        replace_table(
            &mut sock,
            self.table_objects(),
            false,
            Send::Commit,
            FlushFirst::Yes,
            None,
        )
        .map(|_| ())
    }

    /// Netlink messages the read took (see the field); for tests and benchmarks.
    #[doc(hidden)]
    pub fn messages_read(&self) -> usize {
        self.messages
    }

    /// Reads of the whole table it took to get one not torn by a concurrent commit.
    #[doc(hidden)]
    pub fn attempts(&self) -> usize {
        self.attempts
    }

    /// The nftables generation read before the table: a vouch made from this snapshot
    /// stays valid only while nothing commits after it.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// True when the elements were vouched for instead of read back.
    pub fn vouched(&self) -> bool {
        self.vouched.is_some()
    }
}

/// The buffer a request is built in.
const REQUEST_BYTES: usize = 4096;

/// A request message about loopgate's family (`ip`); [`NlSocket::dump`] gives it its
/// sequence number.
pub(super) fn request(ty: u16, flags: u16, payload: impl FnOnce(*mut libc::nlmsghdr)) -> Vec<u8> {
    request_in(NFPROTO_IPV4, ty, flags, payload)
}

/// A request message about `family` (`NFPROTO_UNSPEC`: every family).
pub(super) fn request_in(
    family: u16,
    ty: u16,
    flags: u16,
    payload: impl FnOnce(*mut libc::nlmsghdr),
) -> Vec<u8> {
    let mut buf = vec![0u8; REQUEST_BYTES];
    // SAFETY: the buffer is large enough for a header plus a small request payload:
    // every caller writes names and numbers only, a few dozen bytes.
    let len = unsafe {
        let nlh = sys::nftnl_nlmsg_build_hdr(buf.as_mut_ptr().cast(), ty, family, flags, 0);
        payload(nlh);
        (*nlh).nlmsg_len as usize
    };
    // Checked after the fact, but a request that outgrew its buffer is never sent.
    assert!(
        len <= REQUEST_BYTES,
        "a {len}-byte request overflowed its buffer"
    );
    buf.truncate(len);
    buf
}

/// Copies a reply into u64-aligned storage, as libnftnl's parsers require.
fn aligned(bytes: &[u8]) -> Vec<u64> {
    let mut v = vec![0u64; bytes.len().div_ceil(8)];
    crate::kernel::netlink::as_bytes_mut(&mut v)[..bytes.len()].copy_from_slice(bytes);
    v
}

fn dump_rows(
    sock: &mut NlSocket,
    ty: i32,
    payload: impl FnOnce(*mut libc::nlmsghdr),
) -> Result<Vec<Vec<u64>>> {
    dump_rows_in(sock, NFPROTO_IPV4, ty, payload)
}

pub(super) fn dump_rows_in(
    sock: &mut NlSocket,
    family: u16,
    ty: i32,
    payload: impl FnOnce(*mut libc::nlmsghdr),
) -> Result<Vec<Vec<u64>>> {
    let flags = (libc::NLM_F_DUMP | libc::NLM_F_ACK) as u16;
    let req = request_in(family, ty as u16, flags, payload);
    Ok(sock.dump(&req)?.iter().map(|m| aligned(m)).collect())
}

/// The attributes of one dumped nf_tables message: what follows its netlink header
/// and nfgenmsg.
pub(super) fn message_attrs(row: &[u64]) -> &[u8] {
    let bytes = crate::kernel::netlink::as_bytes(row);
    let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    const HEADERS: usize = 16 + 4;
    bytes.get(HEADERS..len.min(bytes.len())).unwrap_or_default()
}

/// How often [`snapshot`] reads the table again because something committed while it
/// was being read.
const SNAPSHOT_TRIES: usize = 5;

/// Reads loopgate's table from the kernel: the table object, chains, sets with
/// elements, rules.
///
/// The kernel has no single dump of one table, so the table is read in several dumps;
/// a commit by another process between two of them would leave a mix of two states
/// (chains of one, rules of the other). The nftables generation is read before and
/// after, and the whole read is repeated while it moves: a snapshot returned is one
/// state of the table, safe to compare and to `Snapshot::restore`.
///
/// With `trust` (the vouch recorded at the last commit and the image planned from the
/// recorded grants): if the nftables generation has not moved since and the plan's
/// elements have the vouched digest, the elements are taken from the plan instead of
/// being dumped. Everything else is always read back.
pub fn snapshot(trust: Option<(&Vouch, &TableImage)>) -> Result<Snapshot> {
    snapshot_reading_rules(trust, RULES_BY_CHAIN_FROM)
}

/// [`snapshot`], reading the rules one chain per dump whatever the number of chains
/// (it does so from 2,000 chains on): for tests, which compare it with [`snapshot`] on
/// small tables.
#[doc(hidden)]
pub fn snapshot_rules_by_chain(trust: Option<(&Vouch, &TableImage)>) -> Result<Snapshot> {
    snapshot_reading_rules(trust, 0)
}

fn snapshot_reading_rules(
    trust: Option<(&Vouch, &TableImage)>,
    by_chain_from: usize,
) -> Result<Snapshot> {
    let mut sock = NlSocket::netfilter()?;
    sock.size_buffers(8 << 20)?;
    for attempt in 1..=SNAPSHOT_TRIES {
        // First: a change after this point moves the generation past the one recorded.
        let before = generation(&mut sock)?;
        // Second: a commit that bumped the generation before that read may still be
        // making its changes visible; wait until it has (see `barrier`).
        if !super::batch::barrier(&mut sock, before)? {
            continue;
        }
        let read = read_table(&mut sock, before, trust, by_chain_from);
        if generation(&mut sock)? == before {
            return read.map(|snapshot| Snapshot {
                attempts: attempt,
                ..snapshot
            });
        }
        // Torn: read again. A dump that failed meanwhile (a set deleted under it
        // answers ENOENT) failed because of that change, so it is retried too.
    }
    anyhow::bail!(
        "the nftables ruleset changed {SNAPSHOT_TRIES} times while table ip {TABLE} was being read; try again"
    )
}

/// Whether loopgate's table exists now.
pub(super) fn table_exists(sock: &mut NlSocket) -> Result<bool> {
    Ok(get_table(sock)?.is_some())
}

/// Who holds loopgate's table now, read with one request; `None` when there is no
/// table. How a command tells, before it changes anything, that another process's
/// socket owns the table (a watch that did not lend it).
pub fn table_holder() -> Result<Option<Holder>> {
    let mut sock = NlSocket::netfilter()?;
    Ok(get_table(&mut sock)?.map(|t| {
        let (flags, port) = table_flags(t.ptr());
        Holder::of(flags, port)
    }))
}

/// Looks up loopgate's table alone (a get, not a dump of every table).
pub(super) fn get_table(sock: &mut NlSocket) -> Result<Option<Owned<sys::nftnl_table>>> {
    let key = Owned::<sys::nftnl_table>::naming_table();
    let req = request(
        libc::NFT_MSG_GETTABLE as u16,
        libc::NLM_F_ACK as u16,
        // SAFETY: the payload is a name, far below the 4 KiB request buffer.
        |nlh| unsafe { key.build_payload(nlh) },
    );
    let Some(row) = get_one(sock, &req, "table ip loopgate")? else {
        return Ok(None);
    };
    let table = Owned::new();
    if !table.parse(&row) {
        anyhow::bail!("cannot parse the kernel's description of table ip loopgate");
    }
    Ok(Some(table))
}

/// The answer to one get request (`req`, about `what`), in u64-aligned storage;
/// `None` when the kernel answers that there is no such object (ENOENT).
pub(super) fn get_one(sock: &mut NlSocket, req: &[u8], what: &str) -> Result<Option<Vec<u64>>> {
    let rows = match sock.dump(req) {
        Ok(rows) => rows,
        Err(e)
            if e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.raw_os_error() == Some(libc::ENOENT)) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e).with_context(|| format!("looking up {what}")),
    };
    rows.first()
        .map(|m| Some(aligned(m)))
        .with_context(|| format!("the kernel answered the lookup of {what} without it"))
}

/// The table object a restore writes: as read, less the flags that would hand the
/// table to loopgate's own socket (see [`NFT_TABLE_F_OWNER`]).
fn restorable_table(read: &Owned<sys::nftnl_table>) -> Obj {
    let table = new_table();
    if let Obj::Table(t) = &table {
        let read = read.ptr();
        // SAFETY: both tables are live; get_data's pointer is valid for `len` bytes
        // while `read` lives, and set_data copies it.
        unsafe {
            let flags = sys::nftnl_table_get_u32(read.as_ptr(), sys::NFTNL_TABLE_FLAGS as u16);
            let kept = flags & !(NFT_TABLE_F_OWNER | NFT_TABLE_F_PERSIST);
            if kept != 0 {
                sys::nftnl_table_set_u32(t.as_ptr(), sys::NFTNL_TABLE_FLAGS as u16, kept);
            }
            let mut len = 0u32;
            let udata = sys::nftnl_table_get_data(
                read.as_ptr(),
                sys::NFTNL_TABLE_USERDATA as u16,
                &mut len,
            );
            if !udata.is_null() {
                sys::nftnl_table_set_data(t.as_ptr(), sys::NFTNL_TABLE_USERDATA as u16, udata, len);
            }
        }
    }
    table
}

/// Every object of kind `K` in loopgate's table, with the label a restore gives it,
/// in the kernel's order: one dump, the reader for sets, chains and rules alike.
///
/// The request names the table; the kernel filters set and rule dumps by it (a large
/// ruleset of someone else's is neither serialised nor parsed), chain dumps may not be
/// filtered, so every object is also checked here for table and family. Attributes
/// the kernel assigns ([`Kind::ASSIGNED`]) are dropped: a restore must not send them.
pub(super) fn read_objects<K: Kind>(
    sock: &mut NlSocket,
    messages: &mut usize,
) -> Result<Vec<(Owned<K>, String)>> {
    let rows = dump_objects::<K>(sock, NFPROTO_IPV4, Some(TABLE))?;
    *messages += rows.len();
    Ok(rows.iter().filter_map(|row| ours(row)).collect())
}

/// The raw rows of one dump of objects of kind `K` in `family` (`NFPROTO_UNSPEC`:
/// every family), filtered by the kernel to `table` when one is named: what
/// [`read_objects`] reads loopgate's table with, and audit every other table.
pub(super) fn dump_objects<K: Kind>(
    sock: &mut NlSocket,
    family: u16,
    table: Option<&str>,
) -> Result<Vec<Vec<u64>>> {
    let filter: Vec<(u32, &str)> = table.map(|t| (K::TABLE, t)).into_iter().collect();
    dump_filtered::<K>(sock, family, &filter)
}

/// The raw rows of one dump of objects of kind `K`, the request carrying the string
/// attributes `filter` (none: every object of `family`).
fn dump_filtered<K: Kind>(
    sock: &mut NlSocket,
    family: u16,
    filter: &[(u32, &str)],
) -> Result<Vec<Vec<u64>>> {
    let req = filtered_request::<K>(family, filter);
    Ok(sock.dump(&req)?.iter().map(|m| aligned(m)).collect())
}

/// The raw rows of one dump of loopgate's objects of kind `K`, filtered by `filter`
/// (see [`dump_filtered`]).
pub(super) fn dump_objects_filtered<K: Kind>(
    sock: &mut NlSocket,
    filter: &[(u32, &str)],
) -> Result<Vec<Vec<u64>>> {
    dump_filtered::<K>(sock, NFPROTO_IPV4, filter)
}

/// The dump request of [`dump_filtered`].
fn filtered_request<K: Kind>(family: u16, filter: &[(u32, &str)]) -> Vec<u8> {
    let filter = (!filter.is_empty()).then(|| {
        let o = Owned::<K>::new();
        for (attr, value) in filter {
            o.set_str(*attr, value);
        }
        o
    });
    let flags = (libc::NLM_F_DUMP | libc::NLM_F_ACK) as u16;
    request_in(family, K::GET as u16, flags, |nlh| {
        if let Some(filter) = &filter {
            // SAFETY: the payload is two names, far below the 4 KiB request buffer.
            unsafe { filter.build_payload(nlh) }
        }
    })
}

/// From how many chains the rules are read one chain per dump.
///
/// A dump of a table's rules that fills more than one 32 KiB message is resumed by the
/// kernel from its first chain and rule again each time, skipping what it already sent
/// (`__nf_tables_dump_rules` counts up to its resume index), so one dump of R rules
/// costs O(R²/rules per message): at 10,000 grants it was most of a second of kernel
/// time per read, and the largest single cost of a one-grant policy edit. A dump
/// filtered to one chain finds the chain by its hash and walks only its rules: linear
/// in all, at one request per chain. Below this many chains one dump is cheaper.
pub(super) const RULES_BY_CHAIN_FROM: usize = 2000;

/// Every rule of loopgate's table, one dump per chain in `chains` (the kernel's chain
/// order: the rules come out in the order one dump of the table gives them).
pub(super) fn read_rules_by_chain(
    sock: &mut NlSocket,
    chains: &[String],
    messages: &mut usize,
) -> Result<Vec<(Owned<sys::nftnl_rule>, String)>> {
    let mut out = Vec::new();
    for chain in chains {
        let filter = [
            (sys::NFTNL_RULE_TABLE, TABLE),
            (sys::NFTNL_RULE_CHAIN, chain.as_str()),
        ];
        let rows = dump_filtered::<sys::nftnl_rule>(sock, NFPROTO_IPV4, &filter)?;
        *messages += rows.len();
        out.extend(rows.iter().filter_map(|row| ours(row)));
    }
    Ok(out)
}

/// One dumped object of kind `K`, with its label, if it is in loopgate's table; the
/// attributes the kernel assigns are dropped.
pub(super) fn ours<K: Kind>(row: &[u64]) -> Option<(Owned<K>, String)> {
    let obj = Owned::<K>::new();
    // Kept or not by the table and family it reports, whatever the parse returned.
    obj.parse(row);
    if obj.get_str(K::TABLE) != TABLE || obj.get_u32(K::FAMILY) != NFPROTO_IPV4 as u32 {
        return None;
    }
    for attr in K::ASSIGNED {
        obj.unset(*attr);
    }
    let label = format!("{} {}", K::NOUN, obj.get_str(K::NAME));
    Some((obj, label))
}

/// One read of the table (see [`snapshot`], which checks that no commit overlapped it).
fn read_table(
    sock: &mut NlSocket,
    generation: u32,
    trust: Option<(&Vouch, &TableImage)>,
    by_chain_from: usize,
) -> Result<Snapshot> {
    let mut messages = 0;
    let Some(read) = get_table(sock)? else {
        return Ok(Snapshot::absent(generation));
    };
    messages += 1;
    let table_text = table_text(read.ptr());
    let (flags, owner) = table_flags(read.ptr());
    let mut objs = vec![(restorable_table(&read), format!("table ip {TABLE}"))];
    drop(read);

    let mut set_names = Vec::new();
    for (set, label) in read_objects::<sys::nftnl_set>(sock, &mut messages)? {
        // A batch-local id, shared with the elements below, so a restore can add
        // both in one batch.
        set_names.push(set.get_str(sys::NFTNL_SET_NAME));
        set.set_u32(sys::NFTNL_SET_ID, set_names.len() as u32);
        objs.push((set.into_obj(), label));
    }
    // Elements are restored after the chains: a verdict map's elements name them.
    let mut elem_objs = Vec::new();
    let planned = trust.and_then(|(v, image)| match &image.elements {
        Elements::Planned { digest, blocks }
            if v.generation == generation && *digest == v.elements =>
        {
            Some((*digest, blocks))
        }
        _ => None,
    });
    let vouched = planned.map(|(digest, _)| digest);
    // By name, not a search per block: with a set per grant, a search made this read
    // quadratic in the number of grants (10,000 grants: half a second per read).
    let set_ids: HashMap<&str, u32> = set_names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i as u32 + 1))
        .collect();
    for block in planned
        .map(|(_, blocks)| blocks.iter())
        .into_iter()
        .flatten()
    {
        let mut block = block.clone();
        // Batch-local ids follow this snapshot's set order.
        if let Some(id) = set_ids.get(block.set.as_str()) {
            block.set_id = *id;
        }
        let label = format!("elements of set {}", block.set);
        elem_objs.push((Obj::Elems(block), label));
    }
    for (i, name) in set_names.iter().enumerate() {
        if vouched.is_some() {
            break;
        }
        let id = i as u32 + 1;
        let header = set_header(name, id);
        let rows = dump_rows(sock, libc::NFT_MSG_GETSETELEM, |nlh| {
            // SAFETY: `header` is live for the call; the payload names a table and a
            // set, far below the 4 KiB request buffer.
            unsafe { sys::nftnl_set_elems_nlmsg_build_payload(nlh, header.ptr().as_ptr()) }
        })?;
        // One block per dumped message: each is bounded by the dump buffer (32 KiB).
        messages += rows.len();
        for row in rows {
            let mut block = ElemBlock {
                set: name.clone(),
                set_id: id,
                attrs: Vec::new(),
            };
            elements::take_dumped(message_attrs(&row), &mut block.attrs);
            if !block.attrs.is_empty() {
                elem_objs.push((Obj::Elems(block), format!("elements of set {name}")));
            }
        }
    }

    let chains = read_objects::<sys::nftnl_chain>(sock, &mut messages)?;
    let chain_names: Vec<String> = chains
        .iter()
        .map(|(c, _)| c.get_str(sys::NFTNL_CHAIN_NAME))
        .collect();
    objs.extend(chains.into_iter().map(|(c, label)| (c.into_obj(), label)));
    objs.extend(elem_objs);
    let rules = if chain_names.len() > by_chain_from {
        read_rules_by_chain(sock, &chain_names, &mut messages)?
    } else {
        read_objects::<sys::nftnl_rule>(sock, &mut messages)?
    };
    objs.extend(rules.into_iter().map(|(r, label)| (r.into_obj(), label)));
    Ok(Snapshot {
        objects: Some(TableObjects { objs }),
        committed: None,
        encoded: Default::default(),
        table: Some(table_text),
        holder: Some(Holder::of(flags, owner)),
        generation,
        vouched,
        sanctioned: None,
        messages,
        attempts: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::netlink::attrs;

    /// The attributes of a request built by `request`.
    fn request_attrs(req: &[u8]) -> Vec<(u16, Vec<u8>)> {
        attrs(&req[16 + 4..])
            .map(|(t, v)| (t, v.to_vec()))
            .collect()
    }

    fn filter_of<K: Kind>() -> Vec<(u16, Vec<u8>)> {
        let filter = Owned::<K>::naming_table();
        // SAFETY: the payload is a name, far below the 4 KiB request buffer.
        request_attrs(&request(K::GET as u16, 0, |nlh| unsafe {
            filter.build_payload(nlh)
        }))
    }

    #[test]
    fn every_request_names_the_table_and_nothing_else() {
        // NFTA_TABLE_NAME, NFTA_SET_TABLE, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE are all 1.
        let only_table = vec![(1u16, b"loopgate\0".to_vec())];
        assert_eq!(filter_of::<sys::nftnl_table>(), only_table);
        assert_eq!(filter_of::<sys::nftnl_set>(), only_table);
        assert_eq!(filter_of::<sys::nftnl_chain>(), only_table);
        assert_eq!(filter_of::<sys::nftnl_rule>(), only_table);
    }

    #[test]
    fn a_rule_dump_by_chain_names_the_table_and_the_chain() {
        // NFTA_RULE_TABLE 1, NFTA_RULE_CHAIN 2: the kernel then walks that chain alone.
        let req = filtered_request::<sys::nftnl_rule>(
            NFPROTO_IPV4,
            &[
                (sys::NFTNL_RULE_TABLE, TABLE),
                (sys::NFTNL_RULE_CHAIN, "grant-br1-tcp-6000"),
            ],
        );
        let mut attrs = request_attrs(&req);
        attrs.sort();
        assert_eq!(
            attrs,
            vec![
                (1u16, b"loopgate\0".to_vec()),
                (2u16, b"grant-br1-tcp-6000\0".to_vec())
            ]
        );
        // A dump, acknowledged.
        let flags = u16::from_ne_bytes([req[6], req[7]]);
        let dump = (libc::NLM_F_DUMP | libc::NLM_F_ACK) as u16;
        assert_eq!(flags & dump, dump);
    }

    /// A chain as the kernel would dump it: with a use count, in `family`.
    fn dumped_chain(table: &str, family: u8) -> Vec<u64> {
        let chain = Owned::<sys::nftnl_chain>::new();
        chain.set_str(sys::NFTNL_CHAIN_TABLE, table);
        chain.set_str(sys::NFTNL_CHAIN_NAME, "c");
        chain.set_u32(sys::NFTNL_CHAIN_USE, 3);
        // SAFETY: the payload is a few names, far below the 4 KiB request buffer.
        let mut msg = request(libc::NFT_MSG_NEWCHAIN as u16, 0, |nlh| unsafe {
            chain.build_payload(nlh)
        });
        msg[16] = family;
        aligned(&msg)
    }

    #[test]
    fn the_reader_keeps_only_loopgates_objects_without_kernel_attributes() {
        let raw = Owned::<sys::nftnl_chain>::new();
        assert!(raw.parse(&dumped_chain(TABLE, libc::NFPROTO_IPV4 as u8)));
        assert_eq!(raw.get_u32(sys::NFTNL_CHAIN_USE), 3, "as dumped");
        let (chain, label) =
            ours::<sys::nftnl_chain>(&dumped_chain(TABLE, libc::NFPROTO_IPV4 as u8)).unwrap();
        assert_eq!(label, "chain c");
        assert_eq!(chain.get_u32(sys::NFTNL_CHAIN_USE), 0, "use count dropped");
        assert!(
            ours::<sys::nftnl_chain>(&dumped_chain("filter", libc::NFPROTO_IPV4 as u8)).is_none()
        );
        assert!(ours::<sys::nftnl_chain>(&dumped_chain(TABLE, libc::NFPROTO_INET as u8)).is_none());
    }

    #[test]
    #[should_panic(expected = "whole message")]
    fn a_row_shorter_than_its_header_claims_is_refused() {
        let mut row = dumped_chain(TABLE, libc::NFPROTO_IPV4 as u8);
        row.truncate(row.len() - 1);
        ours::<sys::nftnl_chain>(&row);
    }
}
