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
    /// The digest of the whole planned image that commit wrote
    /// ([`TableImage::digest`](super::TableImage::digest)): table, chains, sets, rules
    /// and elements. A read takes the table as that plan
    /// ([`snapshot_committed`](super::snapshot_committed)) only when the plan it would
    /// take has this digest: a loopgate that plans the same grants differently (an
    /// upgrade that changes a rule but no element) reads the table instead. Set by the
    /// engine, which knows the plan; `None` in state files written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<u64>,
}

impl Vouch {
    /// This vouch for the table planned as `image`.
    pub fn for_plan(self, image: Option<&super::TableImage>) -> Vouch {
        Vouch {
            plan: image.map(super::TableImage::digest),
            ..self
        }
    }
}

/// The nftables generation of the current namespace: a counter the kernel bumps on
/// every committed change to any table. One small request; `watch` reads it on every
/// wake-up to tell "nothing changed" without reading the table.
///
/// Errors: the netlink request failed.
pub fn current_generation() -> Result<u32> {
    generation(&mut NlSocket::open_small(mnl::Bus::Netfilter)?)
}

/// How many of its own commits' generations a [`OwnCommits`] keeps.
const OWN_COMMITS_KEPT: usize = 256;

/// The generations that commits made through one [`System`](crate::kernel::seam::System)
/// created, newest last: a bounded window (`watch` only asks about the batches of its
/// latest wake-up). A value its holder owns, not process-wide state: `watch` asks its
/// own kernel, and two kernels never see each other's commits.
#[derive(Debug, Default)]
pub struct OwnCommits(std::cell::RefCell<std::collections::VecDeque<u32>>);

impl OwnCommits {
    /// Records `generation` as created by an own commit (the oldest beyond the window
    /// is forgotten).
    pub(in crate::kernel) fn push(&self, generation: u32) {
        let mut own = self.0.borrow_mut();
        if own.len() == OWN_COMMITS_KEPT {
            own.pop_front();
        }
        own.push_back(generation);
    }

    /// Records the generations after `before` up to and including `through` as own:
    /// the commits a borrower of the owning socket made while `watch` lent it (no other
    /// socket can change a held table, so every one of them touching the table was
    /// made through the lent socket). At most the last 256 are kept.
    pub fn record_lent(&self, before: u32, through: u32) {
        let mut g = before;
        for _ in 0..OWN_COMMITS_KEPT {
            if g == through {
                break;
            }
            g = next_generation(g);
            self.push(g);
        }
    }

    /// True when `generation` was created by one of the last 256 own commits. How
    /// `watch` knows its own commits from the monitor's `NFT_MSG_NEWGEN` when the pid
    /// there means nothing to it (a PID namespace).
    pub fn contains(&self, generation: u32) -> bool {
        self.0.borrow().contains(&generation)
    }
}

/// The generation that follows `before` (the kernel skips 0 on wrap-around).
pub(super) fn next_generation(before: u32) -> u32 {
    match before.wrapping_add(1) {
        0 => 1,
        g => g,
    }
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
/// The generation the batch created is recorded in `own`.
pub(in crate::kernel) fn apply(
    ruleset: Option<&Ruleset>,
    own: &OwnCommits,
) -> Result<Option<Vouch>> {
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
            Ok(created) => {
                if let Some(g) = created {
                    own.push(g);
                }
                let after = next_generation(before);
                return Ok(objects.as_ref().map(|o| Vouch {
                    generation: after,
                    elements: o.elements_digest(),
                    plan: None,
                }));
            }
            // Someone else committed in between: read the generation again.
            Err(e) if is_restart(&e) && attempts < 5 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Changes the table in place from the plan it holds to another ([`super::Diff`]), in
/// one batch bound to `generation`, the one at which the table was found to be exactly
/// the `diff`'s starting plan. Returns what vouches for the new table: the generation
/// the batch created and `digest`, the digest of the new plan's elements (the table is
/// then exactly that plan). ERESTART when anything committed since `generation`.
pub(in crate::kernel) fn apply_diff(
    diff: &super::Diff,
    generation: u32,
    digest: u64,
    own: &OwnCommits,
) -> Result<Vouch> {
    let mut sock = NlSocket::netfilter()?;
    if let Some(g) = super::diff::send(&mut sock, diff, generation)? {
        own.push(g);
    }
    Ok(Vouch {
        generation: next_generation(generation),
        elements: digest,
        plan: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_own_commit_is_known_by_the_generation_it_created() {
        let own = OwnCommits::default();
        own.push(next_generation(u32::MAX - 1));
        assert!(own.contains(u32::MAX));
        own.push(next_generation(u32::MAX));
        assert!(own.contains(1), "the kernel skips 0");
        assert!(!own.contains(0));
        for g in 0..OWN_COMMITS_KEPT as u32 {
            own.push(next_generation(1000 + g));
        }
        assert!(!own.contains(u32::MAX), "a bounded window");
        assert!(own.contains(1000 + OWN_COMMITS_KEPT as u32));
    }

    #[test]
    fn lent_commits_are_every_generation_after_the_lease_began_and_two_windows_are_apart() {
        let own = OwnCommits::default();
        own.record_lent(u32::MAX - 1, 2);
        assert!(
            !own.contains(u32::MAX - 1),
            "the lease's start is not one of them"
        );
        assert!(own.contains(u32::MAX) && own.contains(1) && own.contains(2));
        assert!(!own.contains(0) && !own.contains(3));
        // A value, not process-wide: another kernel's window knows none of them.
        assert!(!OwnCommits::default().contains(2));
        // Nothing committed during the lease: nothing recorded.
        let idle = OwnCommits::default();
        idle.record_lent(7, 7);
        assert!(!idle.contains(7) && !idle.contains(8));
    }
}
