//! Writing and sending one nf_tables batch: libnftnl's paged buffer framed by
//! batch-begin and batch-end, every object as one message, the whole batch in one
//! `sendmsg` so the kernel applies all of it or none, and every reply matched back to
//! the object it answers. A batch sent without its end message is only validated,
//! which is how [`probe`] checks the kernel's features before anything changes.

use super::abi::*;
use super::elements::ElemBlock;
use super::encode::{encode, new_chain, new_table, TableObjects};
use super::expr::new_rule;
use super::objects::{alloc, Obj};
use crate::kernel::netlink::{self, NlSocket};
use crate::ruleset::{Attachment, Chain, ChainKind, Hook, Match, Rule, Ruleset, Verdict, TABLE};
use anyhow::{anyhow, Result};
use nftnl::nftnl_sys as sys;
use std::collections::BTreeSet;
use std::io;
use std::os::raw::c_char;
use std::ptr::NonNull;

/// Writes a NEWSETELEM payload for `block` after the message header `nlh`, as
/// `nftnl_set_elems_nlmsg_build_payload` would, from loopgate's own element bytes.
///
/// # Safety
/// `nlh` must point at a message header in a buffer with room for one maximal message
/// (`nft_nlmsg_maxsize`); blocks are bounded well below that.
unsafe fn append_elements(nlh: *mut libc::nlmsghdr, block: &ElemBlock) {
    let mut payload = Vec::with_capacity(block.attrs.len() + 64);
    let strz = |s: &str| [s.as_bytes(), &[0]].concat();
    netlink::put_attr(&mut payload, NFTA_SET_ELEM_LIST_TABLE, &strz(TABLE));
    netlink::put_attr(&mut payload, NFTA_SET_ELEM_LIST_SET, &strz(&block.set));
    netlink::put_attr(
        &mut payload,
        NFTA_SET_ELEM_LIST_SET_ID,
        &block.set_id.to_be_bytes(),
    );
    // No element list: a DELSETELEM then flushes the set (`nft flush set`).
    if !block.attrs.is_empty() {
        netlink::nest_attr(&mut payload, NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
            b.extend_from_slice(&block.attrs)
        });
    }
    // SAFETY: per the contract, the buffer behind `nlh` has room for the payload.
    unsafe { append_attrs(nlh, &payload) }
}

/// Appends already encoded attributes to the message at `nlh`.
///
/// # Panics
/// When the message plus `attrs` would be longer than one maximal message.
///
/// # Safety
/// `nlh` must point at a message header in a buffer with room for one maximal message
/// (`nft_nlmsg_maxsize` bytes) from `nlh` on, as every message start in a libnftnl
/// batch has.
pub(super) unsafe fn append_attrs(nlh: *mut libc::nlmsghdr, attrs: &[u8]) {
    // SAFETY: `nlh` points at a message header (the contract).
    let len = unsafe { (*nlh).nlmsg_len } as usize;
    assert!(
        len + attrs.len() <= nftnl::nft_nlmsg_maxsize() as usize,
        "{} bytes of attributes overflow a {len}-byte netlink message",
        attrs.len()
    );
    // SAFETY: the buffer holds one maximal message from `nlh` on (the contract), and
    // the message plus `attrs` fit in that (checked above).
    unsafe {
        let at = nlh.cast::<u8>().add(len);
        std::ptr::copy_nonoverlapping(attrs.as_ptr(), at, attrs.len());
        (*nlh).nlmsg_len += attrs.len() as u32;
    }
}

/// One batch being written: libnftnl's paged buffer plus a label per sequence number.
pub(super) struct BatchWriter {
    batch: NonNull<sys::nftnl_batch>,
    /// The generation the batch is bound to, if any.
    generation: Option<u32>,
    /// The batch-begin message's number: errors about the whole batch (a stale
    /// generation's ERESTART) answer it.
    begin_seq: u32,
    seq: u32,
    labels: Vec<(u32, String)>,
}

impl Drop for BatchWriter {
    fn drop(&mut self) {
        // SAFETY: allocated by nftnl_batch_alloc, owned by this value.
        unsafe { sys::nftnl_batch_free(self.batch.as_ptr()) }
    }
}

impl BatchWriter {
    /// A batch whose messages are numbered from `first_seq`; with `generation`, the
    /// kernel applies it only if the nftables generation is still that one (else it
    /// answers ERESTART and changes nothing).
    pub(super) fn new(generation: Option<u32>, first_seq: u32) -> Self {
        // SAFETY: a plain allocation with libnftnl's own page and message sizes; NULL is
        // handled by `alloc`.
        let batch = alloc(unsafe {
            sys::nftnl_batch_alloc(nftnl::default_batch_page_size(), nftnl::nft_nlmsg_maxsize())
        });
        let mut w = BatchWriter {
            batch,
            generation,
            begin_seq: first_seq,
            seq: first_seq,
            labels: Vec::new(),
        };
        // SAFETY: the buffer has room for at least one maximal message; the begin
        // message is a few bytes, and so is the attribute added to it.
        unsafe {
            let nlh = sys::nftnl_batch_begin(
                sys::nftnl_batch_buffer(w.batch.as_ptr()).cast::<c_char>(),
                w.seq,
            );
            if let Some(g) = generation {
                let mut attr = Vec::new();
                netlink::put_attr(&mut attr, libc::NFNL_BATCH_GENID as u16, &g.to_be_bytes());
                append_attrs(nlh, &attr);
            }
        }
        w.advance();
        w
    }

    fn advance(&mut self) {
        // SAFETY: live batch; a failure means malloc failed.
        if unsafe { sys::nftnl_batch_update(self.batch.as_ptr()) } < 0 {
            std::process::abort();
        }
        // 0 means "no sequence number" to netlink; skip it on wrap-around.
        self.seq = self.seq.wrapping_add(1).max(1);
    }

    /// Adds one message: `obj` created, or with `delete` deleted. A deleted rule that
    /// names only its table deletes every rule of the table (`nft flush table`);
    /// deleted elements are named by their keys, and a block without elements deletes
    /// every element of its set (`nft flush set`).
    pub(super) fn add(&mut self, obj: &Obj, delete: bool, label: &str) {
        let ack = libc::NLM_F_ACK as u16;
        let create = libc::NLM_F_CREATE as u16;
        let (ty, flags) = match (obj, delete) {
            (Obj::Table(_), false) => (libc::NFT_MSG_NEWTABLE, create | ack),
            (Obj::Table(_), true) => (libc::NFT_MSG_DELTABLE, ack),
            (Obj::Chain(_), false) => (libc::NFT_MSG_NEWCHAIN, create | ack),
            (Obj::Chain(_), true) => (libc::NFT_MSG_DELCHAIN, ack),
            (Obj::Set(_), false) => (libc::NFT_MSG_NEWSET, create | ack),
            (Obj::Set(_), true) => (libc::NFT_MSG_DELSET, ack),
            (Obj::Elems(_), false) => (libc::NFT_MSG_NEWSETELEM, create | ack),
            // The elements named by key, or with no element every one (a flush).
            (Obj::Elems(_), true) => (libc::NFT_MSG_DELSETELEM, ack),
            (Obj::Rule(_), false) => (
                libc::NFT_MSG_NEWRULE,
                create | libc::NLM_F_APPEND as u16 | ack,
            ),
            (Obj::Rule(_), true) => (libc::NFT_MSG_DELRULE, ack),
        };
        // SAFETY: the batch buffer has room for one maximal message (nft_nlmsg_maxsize),
        // and each object pointer is live.
        unsafe {
            let buf = sys::nftnl_batch_buffer(self.batch.as_ptr()).cast::<c_char>();
            let nlh = sys::nftnl_nlmsg_build_hdr(buf, ty as u16, NFPROTO_IPV4, flags, self.seq);
            match obj {
                Obj::Table(p) => sys::nftnl_table_nlmsg_build_payload(nlh, p.as_ptr()),
                Obj::Chain(p) => sys::nftnl_chain_nlmsg_build_payload(nlh, p.as_ptr()),
                Obj::Set(p) => sys::nftnl_set_nlmsg_build_payload(nlh, p.as_ptr()),
                Obj::Elems(block) => append_elements(nlh, block),
                Obj::Rule(p) => sys::nftnl_rule_nlmsg_build_payload(nlh, p.as_ptr()),
            }
        }
        self.labels.push((self.seq, label.to_string()));
        self.advance();
    }

    /// Finishes the batch and sends it as one datagram, then reads every reply. Returns
    /// the first error, named by the label of the message the kernel refused; on
    /// success, the generation a generation-bound batch created, when the kernel's
    /// generation shows it was this batch's (for the caller's
    /// [`OwnCommits`](super::generation::OwnCommits)).
    ///
    /// With `Send::ValidateOnly` the batch-end message is left out: the kernel then
    /// checks every message (loading modules, resolving expression types) and aborts
    /// the whole batch, which is how `nft -c` checks a ruleset.
    pub(super) fn commit(mut self, sock: &mut NlSocket, mode: Send) -> Result<Option<u32>> {
        if mode == Send::Commit {
            // SAFETY: room for the end message is guaranteed as for any message.
            unsafe {
                sys::nftnl_batch_end(
                    sys::nftnl_batch_buffer(self.batch.as_ptr()).cast::<c_char>(),
                    self.seq,
                );
            }
            self.advance();
        }
        // SAFETY: the iovecs point into the batch's pages, which live as long as `self`.
        let pages: Vec<&[u8]> = unsafe {
            let n = sys::nftnl_batch_iovec_len(self.batch.as_ptr());
            let mut iov = vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                n as usize
            ];
            sys::nftnl_batch_iovec(self.batch.as_ptr(), iov.as_mut_ptr(), n as u32);
            iov.iter()
                .map(|v| std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len))
                .collect()
        };
        let total: usize = pages.iter().map(|p| p.len()).sum();
        // Every reply is queued before the first is read (see below), and the kernel
        // charges each acknowledgement a whole small buffer (about 1 KiB of truesize):
        // a batch of 9,000 messages (1,000 allow lists) overflowed a buffer sized by its
        // bytes alone with ENOBUFS, and the acknowledgements were lost.
        sock.size_buffers((total * 2).max(self.labels.len() * ACK_TRUESIZE))?;
        sock.used_seq_through(self.seq);
        sock.send_pages(&pages)?;
        let portid = sock.portid();
        // nfnetlink processes the batch synchronously inside sendmsg, so every reply is
        // already queued: drain without blocking and report the first error.
        let mut first_error: Option<(i32, u32)> = None;
        let mut acks = 0usize;
        while sock.recv_each(false, |r| {
            // Only replies to this batch's messages, sent to this socket, count.
            let seq = r.header.nlmsg_seq;
            // Labels are numbered consecutively from the message after batch-begin.
            let ours = (seq == self.begin_seq || label_of(&self.labels, seq).is_some())
                && (r.header.nlmsg_pid == 0 || r.header.nlmsg_pid == portid);
            if !ours {
                return Ok(());
            }
            if let Some(code) = r.error_code() {
                if code == 0 {
                    acks += 1;
                } else if first_error.is_none() {
                    first_error = Some((code, r.error_seq().unwrap_or(0)));
                }
            }
            Ok(())
        })? {}
        if let Some((code, seq)) = first_error {
            let label = label_of(&self.labels, seq).unwrap_or("the batch");
            let err = anyhow!(io::Error::from_raw_os_error(code));
            return Err(match mode {
                Send::Commit => err.context(format!(
                    "the kernel refused {label}; the whole batch was discarded"
                )),
                Send::ValidateOnly => err.context(format!(
                    "this kernel cannot load {label}: a netfilter feature loopgate needs is missing"
                )),
            });
        }
        let mut created = None;
        // (An empty batch, `barrier`, creates nothing: no need to ask.)
        if let (Send::Commit, Some(g), false) = (mode, self.generation, self.labels.is_empty()) {
            // No message refused: the bound batch committed. It created the next
            // generation unless it changed nothing (the kernel does not bump the
            // generation for an empty commit): report it only when the generation is
            // that one now. Another commit right after ours makes this one look foreign
            // to watch, which then closes and repairs: the safe way to be wrong.
            let next = super::generation::next_generation(g);
            if super::generation::generation(sock).ok() == Some(next) {
                created = Some(next);
            }
        }
        if mode == Send::Commit && acks < self.labels.len() {
            anyhow::bail!(
                "the kernel acknowledged {acks} of {} batch messages",
                self.labels.len()
            );
        }
        Ok(created)
    }
}

/// The label of message `seq` among `labels`, which are numbered consecutively (but
/// for the skipped 0 on wrap-around): found by its offset, else searched. A batch of
/// 9,000 messages searched linearly for every reply spent 3 % of a repair on it.
fn label_of(labels: &[(u32, String)], seq: u32) -> Option<&str> {
    let first = labels.first()?.0;
    let at = seq.wrapping_sub(first) as usize;
    match labels.get(at) {
        Some((s, l)) if *s == seq => Some(l),
        _ => labels
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, l)| l.as_str()),
    }
}

/// What the receive buffer is charged per acknowledgement queued for a batch message:
/// the small buffer `netlink_ack` allocates, with its overhead, rounded up.
const ACK_TRUESIZE: usize = 2048;

/// Waits for any nftables commit in progress to finish and says whether the generation
/// is still `generation`: sends a batch with nothing in it, bound to `generation`.
/// Returns `Ok(false)` when the kernel answered ERESTART (another commit moved it).
///
/// Why: a commit bumps the generation *before* it makes its changes visible, holding
/// the commit mutex throughout; a reader that saw the new generation and then dumped
/// could see half a commit, with the generation equal before and after. The kernel
/// checks a batch's generation under that mutex, so once this returns `true`, every
/// commit that had bumped the generation before the caller read it has finished. An
/// empty batch changes nothing and does not bump the generation.
pub(super) fn barrier(sock: &mut NlSocket, generation: u32) -> Result<bool> {
    let w = BatchWriter::new(Some(generation), sock.next_seq());
    match w.commit(sock, Send::Commit) {
        Ok(_) => Ok(true),
        Err(e)
            if e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.raw_os_error() == Some(libc::ERESTART)) =>
        {
            Ok(false)
        }
        Err(e) => Err(e.context("waiting for nftables commits in progress")),
    }
}

/// Whether a batch is committed or only checked by the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Send {
    Commit,
    ValidateOnly,
}

/// Replaces loopgate's table with `objects` (or removes it when `None`) in one batch.
/// With `poison`, a rule referring to a missing set is appended so the kernel rejects the
/// batch: the test hook that proves the batch is all-or-nothing. Returns the generation
/// a batch bound to `generation` created (see [`BatchWriter::commit`]).
pub(super) fn replace_table(
    sock: &mut NlSocket,
    objects: Option<&TableObjects>,
    poison: bool,
    mode: Send,
    flush: FlushFirst,
    generation: Option<u32>,
) -> Result<Option<u32>> {
    let mut w = BatchWriter::new(generation, sock.next_seq());
    let table = new_table();
    match flush {
        // add + delete makes the delete succeed whether or not the table exists.
        FlushFirst::Yes => {
            w.add(&table, false, "table ip loopgate (create)");
            w.add(&table, true, "table ip loopgate (flush)");
        }
        FlushFirst::Existing => w.add(&table, true, "table ip loopgate (flush)"),
        FlushFirst::No => {}
    }
    if let Some(objs) = objects {
        for (obj, label) in &objs.objs {
            w.add(obj, false, label);
        }
    }
    if poison {
        if objects.is_none() {
            w.add(&new_table(), false, "table ip loopgate (poison)");
        }
        append_poison(&mut w);
    }
    w.commit(sock, mode)
}

/// Appends a chain and a rule referring to a set that does not exist, so the kernel
/// refuses the batch: the `ruleset-batch` test hook, proving a batch is all-or-nothing.
pub(super) fn append_poison(w: &mut BatchWriter) {
    let chain = new_chain(&Chain {
        name: "poison".to_string(),
        attach: Some(Attachment {
            kind: ChainKind::Filter,
            hook: Hook::Input,
            priority: 0,
        }),
        rules: vec![],
    });
    let rule = new_rule(
        "poison",
        &Rule {
            matches: vec![Match::SaddrInSet("no_such_set".into())],
            verdict: Verdict::Drop,
            comment: "injected failure".into(),
        },
    );
    w.add(&chain, false, "chain poison");
    w.add(
        &rule,
        false,
        "injected failure rule (needs a set that does not exist)",
    );
}

/// Checks, before anything changes, that the kernel supports everything the planned
/// table uses (nf_tables, NAT chains, interval sets, ct and nat expressions): the whole
/// batch is validated by the kernel and then discarded.
/// The test hook `probe` adds a rule the kernel cannot load, as a kernel lacking a
/// feature would refuse one.
pub fn probe(ruleset: &Ruleset) -> Result<()> {
    let mut sock = NlSocket::netfilter()?;
    let poison = crate::failpoint::armed("probe");
    replace_table(
        &mut sock,
        Some(&encode(&feature_sample(ruleset))),
        poison,
        Send::ValidateOnly,
        FlushFirst::Yes,
        None,
    )
    .map(|_| ())
}

/// The planned table with one element per set and map: features do not depend on how
/// many elements a set holds, and this keeps the check cheap at 100,000 networks.
fn feature_sample(ruleset: &Ruleset) -> Ruleset {
    let mut sample = ruleset.clone();
    for set in &mut sample.sets {
        set.ranges.truncate(1);
    }
    for map in &mut sample.maps {
        map.elements.truncate(1);
    }
    sample
}

/// The kernel features the planned table needs, one line each (as the probe's error
/// messages name them), for remembering which were already probed on this boot.
pub fn features(ruleset: &Ruleset) -> BTreeSet<String> {
    encode(&feature_sample(ruleset))
        .objs
        .iter()
        .filter_map(|(_, label)| label.split("(needs ").nth(1))
        .map(|needs| needs.trim_end_matches(')').to_string())
        .collect()
}

/// Whether a batch first clears loopgate's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FlushFirst {
    /// `add table; delete table`: replaces whatever is there.
    Yes,
    /// `delete table`: the table is known to exist.
    Existing,
    /// The table is known to be absent (at the generation the batch is bound to):
    /// deleting it would only leave the kernel an object to free on a later RCU grace
    /// period, which a fresh `expose` would wait for.
    No,
}
