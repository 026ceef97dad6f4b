//! Long allow lists of the state, each kept once in a file of its own named by the
//! SHA-256 of its content (`allow-<hex>.json` beside `state.json`), which the state file
//! refers to as `"sha256:<hex>"`.
//!
//! A grant and the spec it resolves from carry the same list, and every transaction
//! writes the state twice (journal, commit): inline, a 100,000-network list was printed
//! four times per change and read back by every pass of `watch`, although it rarely
//! changes. A list file is immutable (same name, same bytes), so a state whose lists
//! did not change is written without them; [`Memo`] keeps the lists a process last read
//! or wrote, so it neither prints nor hashes them again. Lists shorter than
//! [`FILE_MIN`] stay inline, where people read them.
//!
//! Order of writes: a list file is written (0600, no link followed, synced) before any
//! state file that refers to it, and the directory is synced in between, so a state
//! file never refers to a list that is not there. A crash leaves at most unreferenced
//! list files. [`collect`] removes those once a transaction has committed, never
//! during one: its rollback puts back the bytes of the state file as it was before,
//! which refer to the lists of that time. A list is verified against its name whenever
//! it is read; a mismatch is a corrupt state.

use crate::files::PrivateDir;
use anyhow::{Context, Result};
use ipnetwork::Ipv4Network;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap, HashSet};

/// Lists of at least this many networks are kept in a file of their own; shorter ones
/// inline in the state file (64 networks are about 1.2 kB of text).
pub const FILE_MIN: usize = 64;

/// The content address of one list file: the SHA-256 of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListId([u8; 32]);

/// How the state file writes a reference: `sha256:` and 64 lowercase hex digits.
const REF_PREFIX: &str = "sha256:";
const FILE_PREFIX: &str = "allow-";
const FILE_SUFFIX: &str = ".json";

impl ListId {
    fn of(bytes: &[u8]) -> ListId {
        ListId(Sha256::digest(bytes).into())
    }

    fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn from_hex(hex: &str) -> Option<ListId> {
        let digits = hex.as_bytes();
        if digits.len() != 64 {
            return None;
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
        }
        Some(ListId(out))
    }

    /// The reference as the state file writes it, `sha256:<hex>`.
    pub fn reference(&self) -> String {
        format!("{REF_PREFIX}{}", self.hex())
    }

    /// The id a state file's reference names; `None` for any other text.
    pub fn from_reference(text: &str) -> Option<ListId> {
        ListId::from_hex(text.strip_prefix(REF_PREFIX)?)
    }

    /// The list's file in the state directory, `allow-<hex>.json`.
    pub fn file_name(&self) -> String {
        format!("{FILE_PREFIX}{}{FILE_SUFFIX}", self.hex())
    }

    fn from_file_name(name: &str) -> Option<ListId> {
        ListId::from_hex(name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?)
    }
}

/// A list file's bytes: a JSON array of `a.b.c.d/n` texts, in the list's order, with
/// nothing else (no space; numbers without leading zeros), as [`decode`] reads them.
/// Written directly: 100,000 networks through the formatting machinery, a string
/// each, took milliseconds.
fn encode(list: &[Ipv4Network]) -> Vec<u8> {
    fn push_u8(out: &mut Vec<u8>, v: u8) {
        if v >= 100 {
            out.push(b'0' + v / 100);
        }
        if v >= 10 {
            out.push(b'0' + v / 10 % 10);
        }
        out.push(b'0' + v % 10);
    }
    let mut out = Vec::with_capacity(list.len() * 20 + 2);
    out.push(b'[');
    for (i, n) in list.iter().enumerate() {
        out.extend_from_slice(if i == 0 { b"\"" } else { b",\"" });
        for (k, octet) in n.ip().octets().into_iter().enumerate() {
            if k > 0 {
                out.push(b'.');
            }
            push_u8(&mut out, octet);
        }
        out.push(b'/');
        push_u8(&mut out, n.prefix());
        out.push(b'"');
    }
    out.push(b']');
    out
}

/// The list of a file [`encode`] wrote, read in one pass without allocating per
/// network; `None` for any other text (then read as JSON: it is still a list, if
/// not written this way).
fn decode(bytes: &[u8]) -> Option<Vec<Ipv4Network>> {
    /// A decimal number of at most 3 digits, no leading zero, at most `max`.
    fn number(bytes: &[u8], at: &mut usize, max: u32) -> Option<u32> {
        let start = *at;
        let mut v: u32 = 0;
        while let Some(d) = bytes.get(*at).filter(|c| c.is_ascii_digit()) {
            v = v * 10 + u32::from(d - b'0');
            *at += 1;
        }
        let len = *at - start;
        let canonical = (1..=3).contains(&len) && (len == 1 || bytes[start] != b'0');
        (canonical && v <= max).then_some(v)
    }
    fn expect(bytes: &[u8], at: &mut usize, c: u8) -> Option<()> {
        (bytes.get(*at) == Some(&c)).then(|| *at += 1)
    }
    let mut at = 0;
    expect(bytes, &mut at, b'[')?;
    let mut out = Vec::with_capacity(bytes.len() / 16);
    if expect(bytes, &mut at, b']').is_some() {
        return (at == bytes.len()).then_some(out);
    }
    loop {
        expect(bytes, &mut at, b'"')?;
        let mut ip = 0u32;
        for k in 0..4 {
            if k > 0 {
                expect(bytes, &mut at, b'.')?;
            }
            ip = ip << 8 | number(bytes, &mut at, 255)?;
        }
        expect(bytes, &mut at, b'/')?;
        let prefix = number(bytes, &mut at, 32)? as u8;
        expect(bytes, &mut at, b'"')?;
        out.push(Ipv4Network::new(ip.into(), prefix).ok()?);
        match bytes.get(at) {
            Some(b',') => at += 1,
            Some(b']') if at + 1 == bytes.len() => return Some(out),
            _ => return None,
        }
    }
}

/// A cheap hash of a list (FNV-1a over its length and at most 64 networks spread over
/// it), to find it among the known ones before comparing it element by element: not
/// an identity, and constant time, since the comparison reads the whole list anyway.
fn fingerprint(list: &[Ipv4Network]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ list.len() as u64;
    let stride = list.len().div_ceil(64).max(1);
    for n in list.iter().step_by(stride) {
        let word = u64::from(u32::from(n.ip())) << 8 | u64::from(n.prefix());
        h = (h ^ word).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One list a process knows, with its id: read and verified, or written.
#[derive(Debug)]
struct Known {
    nets: Vec<Ipv4Network>,
    /// The length of its file, to tell a truncated copy without reading it.
    bytes: u64,
}

/// The lists of the state a process last read or wrote, by id and by content, kept
/// with the state's [`Memo`](super::Memo) from one store to the next: a list found
/// here is neither read and verified nor printed and hashed again. Only the lists the
/// last state refers to are kept.
#[derive(Debug, Default)]
pub struct Memo {
    known: HashMap<ListId, Known>,
    by_print: HashMap<u64, ListId>,
}

impl Memo {
    /// The id of `list` if it is known.
    fn find(&self, list: &[Ipv4Network]) -> Option<ListId> {
        let id = self.by_print.get(&fingerprint(list))?;
        (self.known.get(id)?.nets == list).then_some(*id)
    }

    fn insert(&mut self, id: ListId, nets: Vec<Ipv4Network>, bytes: u64) {
        self.by_print.insert(fingerprint(&nets), id);
        self.known.insert(id, Known { nets, bytes });
    }

    /// Forgets the lists not in `keep`.
    fn retain(&mut self, keep: &BTreeSet<ListId>) {
        self.known.retain(|id, _| keep.contains(id));
        self.by_print.retain(|_, id| keep.contains(id));
    }
}

/// What one [`Store`](super::Store) knows of its directory's list files while it holds
/// the lock (nobody else removes one then).
#[derive(Debug, Default)]
pub struct Local {
    /// Files found in place or written through this store.
    present: HashSet<ListId>,
    /// The lists the state file refers to as this store last wrote it; `None` before
    /// its first save, and after the file was written raw (a rollback).
    pub written: Option<BTreeSet<ListId>>,
}

/// Puts the long lists of one state into files as the state is turned into its
/// on-disk form, then tells which it referred to ([`Writer::finish`]).
pub struct Writer<'a> {
    dir: &'a PrivateDir,
    memo: &'a mut Memo,
    local: &'a mut Local,
    refs: BTreeSet<ListId>,
    wrote: bool,
}

impl<'a> Writer<'a> {
    /// A writer into `dir`.
    pub fn new(dir: &'a PrivateDir, memo: &'a mut Memo, local: &'a mut Local) -> Writer<'a> {
        Writer {
            dir,
            memo,
            local,
            refs: BTreeSet::new(),
            wrote: false,
        }
    }

    /// The id of `list` (at least [`FILE_MIN`] networks), its file written unless it
    /// is already in place. Known lists are not printed or hashed again; their files
    /// are checked to be there (once per store), since another process may have
    /// collected them since this one last wrote.
    ///
    /// Errors: the file cannot be written (one line naming it).
    pub fn put(&mut self, list: &[Ipv4Network]) -> Result<ListId> {
        let (id, fresh) = match self.memo.find(list) {
            Some(id) => (id, None),
            None => {
                let bytes = encode(list);
                let id = ListId::of(&bytes);
                self.memo.insert(id, list.to_vec(), bytes.len() as u64);
                (id, Some(bytes))
            }
        };
        if self.refs.insert(id) && !self.local.present.contains(&id) {
            let name = id.file_name();
            let len = self.memo.known[&id].bytes;
            if !in_place(self.dir, &name, len) {
                let bytes = fresh.unwrap_or_else(|| encode(list));
                self.dir.replace(&name, &bytes, 0o600).with_context(|| {
                    format!("writing {}", self.dir.path().join(&name).display())
                })?;
                self.wrote = true;
            }
            self.local.present.insert(id);
        }
        Ok(id)
    }

    /// Makes the files written durable before the state file that refers to them is
    /// renamed into place, and forgets in the memo the lists not referred to. Returns
    /// the ids referred to.
    ///
    /// Errors: the directory cannot be synced.
    pub fn finish(self) -> Result<BTreeSet<ListId>> {
        if self.wrote {
            self.dir
                .sync()
                .with_context(|| format!("syncing {}", self.dir.path().display()))?;
        }
        self.memo.retain(&self.refs);
        Ok(self.refs)
    }
}

/// True when `name` in `dir` is a regular file of `len` bytes (a list's file can only
/// be the list: its name is its hash). A link planted there is not followed; the
/// caller then replaces it.
fn in_place(dir: &PrivateDir, name: &str, len: u64) -> bool {
    dir.open(name, libc::O_RDONLY | libc::O_NONBLOCK, 0)
        .and_then(|f| f.metadata())
        .is_ok_and(|m| m.is_file() && m.len() == len)
}

/// Why a list the state file refers to could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Its file is not there: it may have been collected after the state file that
    /// was read was replaced (a reader without the lock can see that).
    Missing(String),
    /// Anything else: unreadable, a link, or corrupt (one line naming the file).
    Other(anyhow::Error),
}

/// Reads the lists a state file refers to, verifying each against its name, through
/// the memo, then forgets in the memo the lists not referred to ([`Reader::finish`]).
pub struct Reader<'a> {
    dir: &'a PrivateDir,
    memo: &'a mut Memo,
    refs: BTreeSet<ListId>,
}

impl<'a> Reader<'a> {
    /// A reader of `dir`'s list files.
    pub fn new(dir: &'a PrivateDir, memo: &'a mut Memo) -> Reader<'a> {
        Reader {
            dir,
            memo,
            refs: BTreeSet::new(),
        }
    }

    /// The list `id` names.
    pub fn get(&mut self, id: ListId) -> std::result::Result<Vec<Ipv4Network>, ReadError> {
        self.refs.insert(id);
        if let Some(known) = self.memo.known.get(&id) {
            return Ok(known.nets.clone());
        }
        let name = id.file_name();
        let path = self.dir.path().join(&name);
        let bytes = match super::read_in(self.dir, &name) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err(ReadError::Missing(path.display().to_string())),
            Err(e) => return Err(ReadError::Other(e)),
        };
        let corrupt = |why: &str| {
            ReadError::Other(anyhow::anyhow!(
                "allow list {} of state file {} is corrupt ({why}); inspect or remove both",
                path.display(),
                self.dir.path().join(super::STATE_FILE).display()
            ))
        };
        if ListId::of(&bytes) != id {
            return Err(corrupt("its content does not match its name"));
        }
        let nets: Vec<Ipv4Network> = match decode(&bytes) {
            Some(nets) => nets,
            None => serde_json::from_slice(&bytes).map_err(|e| corrupt(&e.to_string()))?,
        };
        self.memo.insert(id, nets.clone(), bytes.len() as u64);
        Ok(nets)
    }

    /// Forgets in the memo the lists this state does not refer to.
    pub fn finish(self) {
        self.memo.retain(&self.refs);
    }
}

/// Removes the list files of `dir` that are not in `keep` (the lists of the state file
/// as committed), and temporary files of list writes a crash left. Only under the
/// exclusive lock, and only once a transaction has committed (see the module's doc).
/// `local` forgets the files removed. Returns how many files it removed.
///
/// Errors: the directory cannot be listed; a file that cannot be removed is left for
/// the next time.
pub fn collect(dir: &PrivateDir, keep: &BTreeSet<ListId>, local: &mut Local) -> Result<usize> {
    local.present.retain(|id| keep.contains(id));
    let entries = std::fs::read_dir(dir.path())
        .with_context(|| format!("listing {}", dir.path().display()))?;
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let garbage = match ListId::from_file_name(name) {
            Some(id) => !keep.contains(&id),
            // `PrivateDir::replace`'s temporary name: `<name>.<pid>.<nanos>.tmp`.
            None => name.starts_with(FILE_PREFIX) && name.ends_with(".tmp"),
        };
        if garbage && dir.remove(name).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests;
