//! The nftables generation: a per-namespace counter the kernel bumps on every commit.
//! loopgate binds each batch to the generation it read (the kernel refuses the batch
//! with ERESTART if anything committed in between, and it is retried), and records the
//! generation that follows its own commit as a [`Vouch`], so a later run can trust an
//! unchanged table without dumping every element.

use super::abi::NFTA_GEN_ID;
use super::batch::{replace_table, FlushFirst, Send};
use super::encode::encode;
use super::readback::{request, table_exists};
use crate::kernel::netlink::{self, NlSocket};
use crate::ruleset::Ruleset;
use anyhow::{Context, Result};
use std::io;

/// What vouches for loopgate's table without reading it back: the nftables generation
/// (a per-namespace counter the kernel bumps on every committed change to any table)
/// right after loopgate's own batch, and the digest of the elements that batch wrote.
/// While the generation stays put nothing in nftables has changed, so a 200,000-element
/// set need not be dumped to know it is intact. Dumping one costs seconds: the kernel
/// walks its interval tree from the start again for every 32 KiB of output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Vouch {
    /// The generation the kernel reported right after loopgate's commit.
    pub generation: u32,
    /// The FNV-1a digest of the elements that commit wrote
    /// ([`elements::digest_blocks`](super::elements::digest_blocks)).
    pub elements: u64,
}

/// The nftables generation of the current namespace.
/// The nftables generation of the current namespace: a counter the kernel bumps on
/// every committed change to any table. One small request; `watch` reads it on every
/// wake-up to tell "nothing changed" without reading the table.
///
/// Errors: the netlink request failed.
pub fn current_generation() -> Result<u32> {
    generation(&mut NlSocket::netfilter()?)
}

pub(super) fn generation(sock: &mut NlSocket) -> Result<u32> {
    let req = request(libc::NFT_MSG_GETGEN as u16, libc::NLM_F_ACK as u16, |_| {});
    let replies = sock.dump(&req).context("reading the nftables generation")?;
    replies
        .iter()
        .find_map(|m| {
            let attrs = m.get(16 + 4..)?;
            netlink::attrs(attrs)
                .find(|(t, _)| *t == NFTA_GEN_ID)
                .and_then(|(_, v)| Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?)))
        })
        .context("the kernel did not report the nftables generation")
}

/// Whether the kernel refused a batch because the generation it was bound to moved.
pub(super) fn is_restart(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|e| e.raw_os_error() == Some(libc::ERESTART))
    })
}

/// Installs the planned table (or removes it when there are no grants), atomically.
/// Returns what vouches for the installed table.
pub fn apply(ruleset: Option<&Ruleset>) -> Result<Option<Vouch>> {
    let mut sock = NlSocket::netfilter()?;
    let objects = ruleset.map(encode);
    let mut attempts = 0;
    loop {
        // Tied to the generation it was read at, the batch tells us the generation
        // that follows it: nothing else can commit in between.
        let before = generation(&mut sock)?;
        let flush = match table_exists(&mut sock)? {
            true => FlushFirst::Existing,
            false => FlushFirst::No,
        };
        let poison = crate::failpoint::armed("ruleset-batch");
        if flush == FlushFirst::No && objects.is_none() && !poison {
            return Ok(None); // nothing to remove
        }
        match replace_table(
            &mut sock,
            objects.as_ref(),
            poison,
            Send::Commit,
            flush,
            Some(before),
        ) {
            Ok(()) => {
                let after = match before.wrapping_add(1) {
                    0 => 1, // the kernel skips 0
                    g => g,
                };
                return Ok(objects.as_ref().map(|o| Vouch {
                    generation: after,
                    elements: o.elements_digest(),
                }));
            }
            // Someone else committed in between: read the generation again.
            Err(e) if is_restart(&e) && attempts < 5 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}
