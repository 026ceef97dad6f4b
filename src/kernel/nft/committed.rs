//! Reading only what can have changed. nf_tables bumps one per-namespace generation on
//! every committed batch, to any table, and nothing else changes a table's chains,
//! sets, rules or elements: when the generation read now is the one loopgate's own
//! last commit created, its table is exactly what that commit wrote. Two reads build
//! on that instead of dumping the whole table (at 1,000 grants and 100,000 allowed
//! networks a whole read and its image were about 40 % of watch's reaction to a new
//! interface):
//! - [`snapshot_committed`], the read before a change: only the table object is read
//!   (its holder can change without a commit: the owning socket closing orphans or
//!   destroys the table), the rest is the committed plan, from which a rollback
//!   restores;
//! - [`read_chains`], the read back after an in-place batch: the chains the batch
//!   wrote and their rules, the rest vouched for by the generation the batch created
//!   (the caller compares it with the vouch), and the counters of chains a batch is
//!   about to flush, so that what they counted is kept.

use super::abi::NFPROTO_IPV4;
use super::batch::barrier;
use super::counters::{rule_counter, RuleCounter};
use super::generation::{generation, Vouch};
use super::image::{
    chain_text, rule_text, table_flags, table_line, table_text, Holder, TableImage,
};
use super::objects::Owned;
use super::readback::{
    dump_objects_filtered, get_one, get_table, ours, read_objects, read_rules_by_chain, request,
    snapshot, Snapshot, RULES_BY_CHAIN_FROM,
};
use crate::kernel::netlink::NlSocket;
use crate::ruleset::{Ruleset, TABLE};
use anyhow::Result;
use nftnl::nftnl_sys as sys;
use std::rc::Rc;

/// How often a read is repeated because something committed while it ran.
const TRIES: usize = 5;

/// Reads loopgate's table taking it as `plan` (imaged as `image`) when nothing has
/// committed since `vouch` was recorded, right after loopgate's commit of that plan,
/// and the plan's elements have the vouched digest; only the table object is read
/// (one request). Otherwise a full [`snapshot`] with `vouch` trusted for elements.
///
/// The snapshot restores from `plan` (encoded when a restore needs it) and has no counters
/// ([`Snapshot::counted`] is false).
///
/// Errors: the netlink requests failed, or the ruleset kept changing under the read.
pub fn snapshot_committed(
    vouch: &Vouch,
    plan: &Rc<Ruleset>,
    image: &Rc<TableImage>,
) -> Result<Snapshot> {
    // The plan taken must be the one that commit wrote, rules and all: a loopgate
    // that plans the same grants otherwise (an upgrade) reads the table.
    if image.elements.digest() != Some(vouch.elements) || vouch.plan != Some(image.digest()) {
        return snapshot(Some((vouch, image)));
    }
    let mut sock = NlSocket::netfilter()?;
    for attempt in 1..=TRIES {
        let before = generation(&mut sock)?;
        // A commit that bumped the generation may still be making itself visible.
        if !barrier(&mut sock, before)? {
            continue;
        }
        if before != vouch.generation {
            drop(sock);
            return snapshot(Some((vouch, image)));
        }
        let read = get_table(&mut sock)?;
        if generation(&mut sock)? != before {
            continue;
        }
        let mut snap = Snapshot::absent(before);
        snap.attempts = attempt;
        snap.messages = 1;
        if let Some(read) = read {
            let (flags, owner) = table_flags(read.ptr());
            snap.table = Some(table_text(read.ptr()));
            snap.holder = Some(Holder::of(flags, owner));
            snap.vouched = Some(vouch.elements);
            snap.committed = Some((Rc::clone(plan), Rc::clone(image)));
        }
        return Ok(snap);
    }
    anyhow::bail!(
        "the nftables ruleset changed {TRIES} times while table ip {TABLE} was being read; try again"
    )
}

/// Some chains of loopgate's table as read back at one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainsRead {
    /// The nftables generation the read saw from start to end.
    pub generation: u32,
    /// The table's line as an image shows it ([`TableImage::table`]); `None` when the
    /// table is absent.
    pub table: Option<String>,
    /// The line of each chain asked for that exists ([`TableImage::chains`]), in the
    /// order asked.
    pub chains: Vec<String>,
    /// Their rules' lines ([`TableImage::rules`]), chain by chain in the order asked,
    /// each chain's in its order.
    pub rules: Vec<String>,
    /// The counters of those rules that count.
    pub counters: Vec<RuleCounter>,
}

/// Reads the chains `names` of loopgate's table and their rules, one request per chain
/// and one dump of its rules, as one state (repeated while a commit overlaps it). The
/// table line treats `sanctioned` as loopgate's own holder (see
/// [`Snapshot::image_sanctioning`]). A chain that does not exist is left out.
///
/// Errors: the netlink requests failed, or the ruleset kept changing under the read.
pub fn read_chains(names: &[String], sanctioned: Option<u32>) -> Result<ChainsRead> {
    let mut sock = NlSocket::netfilter()?;
    for _ in 0..TRIES {
        let before = generation(&mut sock)?;
        if !barrier(&mut sock, before)? {
            continue;
        }
        let read = read_chains_once(&mut sock, names, before, sanctioned);
        if generation(&mut sock)? == before {
            return read;
        }
    }
    anyhow::bail!(
        "the nftables ruleset changed {TRIES} times while table ip {TABLE} was being read; try again"
    )
}

fn read_chains_once(
    sock: &mut NlSocket,
    names: &[String],
    generation: u32,
    sanctioned: Option<u32>,
) -> Result<ChainsRead> {
    let table = get_table(sock)?.map(|t| {
        let (flags, owner) = table_flags(t.ptr());
        table_line(
            &table_text(t.ptr()),
            Some(Holder::of(flags, owner)),
            sanctioned,
        )
    });
    let mut out = ChainsRead {
        generation,
        table,
        chains: Vec::new(),
        rules: Vec::new(),
        counters: Vec::new(),
    };
    if out.table.is_none() {
        return Ok(out);
    }
    if names.len() > ONE_DUMP_FROM {
        read_in_one_dump(sock, names, &mut out)?;
        return Ok(out);
    }
    for name in names {
        let Some(chain) = get_chain(sock, name)? else {
            continue;
        };
        out.chains.push(chain_text(chain.ptr()));
        let filter = [
            (sys::NFTNL_RULE_TABLE, TABLE),
            (sys::NFTNL_RULE_CHAIN, name.as_str()),
        ];
        let rows = dump_objects_filtered::<sys::nftnl_rule>(sock, &filter)?;
        for (rule, _) in rows.iter().filter_map(|row| ours::<sys::nftnl_rule>(row)) {
            out.rules.push(rule_text(rule.ptr()));
            out.counters.extend(rule_counter(rule.ptr()));
        }
    }
    Ok(out)
}

/// From how many chains [`read_chains`] reads them with one dump of the table's chains
/// and one of its rules instead of two requests per chain (a revoke of 1,000 grants
/// reads the counters of about 1,000 guard chains: 2,000 requests were four tenths of
/// its time).
const ONE_DUMP_FROM: usize = 32;

/// The chains `names` and their rules out of one dump of the table's chains and one of
/// its rules (see [`ONE_DUMP_FROM`]), in the order asked.
fn read_in_one_dump(sock: &mut NlSocket, names: &[String], out: &mut ChainsRead) -> Result<()> {
    use std::collections::HashMap;
    let mut lines: HashMap<&str, (Option<String>, Vec<String>)> = names
        .iter()
        .map(|n| (n.as_str(), (None, Vec::new())))
        .collect();
    let mut messages = 0;
    let chains = read_objects::<sys::nftnl_chain>(sock, &mut messages)?;
    let table_chains = chains.len();
    let mut found = Vec::new();
    for (chain, _) in chains {
        let name = chain.get_str(sys::NFTNL_CHAIN_NAME);
        if let Some(entry) = lines.get_mut(name.as_str()) {
            entry.0 = Some(chain_text(chain.ptr()));
            found.push(name);
        }
    }
    // As a whole read does: one dump of every rule costs the kernel O(rules²) on a
    // large table, one dump per chain does not.
    let rules = match table_chains > RULES_BY_CHAIN_FROM {
        true => read_rules_by_chain(sock, &found, &mut messages)?,
        false => read_objects::<sys::nftnl_rule>(sock, &mut messages)?,
    };
    for (rule, _) in rules {
        let chain = rule.get_str(sys::NFTNL_RULE_CHAIN);
        if let Some(entry) = lines.get_mut(chain.as_str()) {
            entry.1.push(rule_text(rule.ptr()));
            out.counters.extend(rule_counter(rule.ptr()));
        }
    }
    for name in names {
        if let Some((Some(chain), rules)) = lines.remove(name.as_str()) {
            out.chains.push(chain);
            out.rules.extend(rules);
        }
    }
    Ok(())
}

/// Looks up one chain of loopgate's table by name (a get, not a dump).
fn get_chain(sock: &mut NlSocket, name: &str) -> Result<Option<Owned<sys::nftnl_chain>>> {
    let key = Owned::<sys::nftnl_chain>::naming_table();
    key.set_str(sys::NFTNL_CHAIN_NAME, name);
    let req = request(
        libc::NFT_MSG_GETCHAIN as u16,
        libc::NLM_F_ACK as u16,
        // SAFETY: the payload is two names, far below the 4 KiB request buffer.
        |nlh| unsafe { key.build_payload(nlh) },
    );
    let Some(row) = get_one(sock, &req, &format!("chain {name}"))? else {
        return Ok(None);
    };
    Ok(ours::<sys::nftnl_chain>(&row)
        .map(|(chain, _)| chain)
        .filter(|c| c.get_u32(sys::NFTNL_CHAIN_FAMILY) == NFPROTO_IPV4 as u32))
}

/// The lines an image of `want` gives the chains `names` and their rules, in the shape
/// [`read_chains`] returns them: what a read back of those chains must equal.
pub fn expected_chains(want: &TableImage, names: &[String]) -> (Vec<String>, Vec<String>) {
    let asked: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
    let mut of: std::collections::HashMap<&str, (Vec<String>, Vec<String>)> = Default::default();
    for c in &want.chains {
        let name = c.split(' ').next().unwrap_or_default();
        if asked.contains(name) {
            of.entry(name).or_default().0.push(c.clone());
        }
    }
    for r in &want.rules {
        let name = r.split(':').next().unwrap_or_default();
        if asked.contains(name) {
            of.entry(name).or_default().1.push(r.clone());
        }
    }
    let mut chains = Vec::new();
    let mut rules = Vec::new();
    for name in names {
        if let Some((c, r)) = of.remove(name.as_str()) {
            chains.extend(c);
            rules.extend(r);
        }
    }
    (chains, rules)
}
