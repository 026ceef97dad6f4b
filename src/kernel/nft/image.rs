//! Comparing tables. A planned table and one read back are both reduced to a
//! [`TableImage`]: the table's flags, each chain and set as one line of the attributes
//! that decide what it does, each rule as libnftnl prints its expressions, and the
//! elements (listed, or only a digest when vouched for). Equal images mean the kernel
//! holds exactly what loopgate would write; [`TableImage::differences`] says how they
//! differ in words an operator can act on.

use super::abi::*;
use super::elements::{self, Elem, ElemBlock};
use super::encode::{encode, TableObjects};
use super::objects::{data_of, get_str, rule_chain, rule_comment, Obj};
use super::readback::Snapshot;
use crate::ruleset::{Ruleset, TABLE};
use nftnl::nftnl_sys as sys;
use std::collections::{BTreeMap, BTreeSet};
use std::os::raw::{c_char, c_int, c_void};
use std::ptr::NonNull;

/// A canonical, comparable description of a table: chains, sets with their elements,
/// and each rule's expressions as libnftnl prints them. Planned and kernel tables are
/// both reduced to this, so "what loopgate would generate" is compared exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableImage {
    /// The table object: its flags (a dormant table hooks none of its chains) and
    /// userdata.
    pub table: String,
    /// One line per chain (name; type, hook, priority and policy of a base chain; any
    /// flags, device or userdata), sorted.
    pub chains: Vec<String>,
    /// One line per set or map (flags, key and data types and lengths, timeouts, size,
    /// userdata), sorted.
    pub sets: Vec<String>,
    /// One line per rule: `chain: [expr ...] comment "..."`, with counter values left
    /// out; grouped by chain name, each chain's rules in their order.
    pub rules: Vec<String>,
    /// The set and map elements, listed or as a digest.
    pub elements: Elements,
}

/// The elements part of a [`TableImage`].
#[derive(Debug, Clone)]
pub enum Elements {
    /// Read back from the kernel: every element, canonical and sorted, per set (sets
    /// without elements left out).
    Listed(BTreeMap<String, Vec<Elem>>),
    /// Not read back: the nftables generation has not moved since loopgate committed
    /// elements with this digest (see [`Vouch`](super::Vouch)).
    Vouched(u64),
    /// Planned: the encoded elements and their digest. Compared by digest with a
    /// vouched table, element by element with one read back.
    Planned {
        /// The digest of `blocks`, as a [`Vouch`](super::Vouch) would record it.
        digest: u64,
        /// The elements as loopgate encodes them, per set.
        blocks: Vec<ElemBlock>,
    },
}

impl Elements {
    /// The digest a [`Vouch`](super::Vouch) records: of the encoded elements loopgate
    /// writes.
    pub fn digest(&self) -> Option<u64> {
        match self {
            Elements::Listed(_) => None,
            Elements::Vouched(d) | Elements::Planned { digest: d, .. } => Some(*d),
        }
    }

    fn listed(&self) -> Option<std::borrow::Cow<'_, BTreeMap<String, Vec<Elem>>>> {
        match self {
            Elements::Listed(sets) => Some(std::borrow::Cow::Borrowed(sets)),
            Elements::Vouched(_) => None,
            Elements::Planned { blocks, .. } => Some(std::borrow::Cow::Owned(listed(blocks))),
        }
    }
}

/// Canonical elements per set.
fn listed<'a>(blocks: impl IntoIterator<Item = &'a ElemBlock>) -> BTreeMap<String, Vec<Elem>> {
    let mut of: BTreeMap<&str, Vec<&ElemBlock>> = BTreeMap::new();
    for block in blocks {
        of.entry(&block.set).or_default().push(block);
    }
    of.into_iter()
        .map(|(name, blocks)| (name.to_string(), elements::canonical(&blocks)))
        .filter(|(_, elems)| !elems.is_empty())
        .collect()
}

impl PartialEq for Elements {
    fn eq(&self, other: &Self) -> bool {
        match (self.digest(), other.digest()) {
            (Some(a), Some(b)) => a == b,
            _ => match (self.listed(), other.listed()) {
                (Some(a), Some(b)) => a == b,
                // Vouched against read back: no common ground, so not known equal.
                _ => false,
            },
        }
    }
}

impl Eq for Elements {}

impl TableImage {
    /// A digest of the whole image: the table line, every chain, set and rule line, and
    /// the elements' digest (the elements listed, when they are). Eight bytes at a time
    /// (a multiply and a shift per word): at 1,000 grants the lines are megabytes, and
    /// a byte-wise hash of them was 6 % of a watch pass. Compared only with digests of
    /// loopgate's own images; not collision resistant against a chosen input, which
    /// nothing here needs (the lines are loopgate's own plan).
    pub fn digest(&self) -> u64 {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            let mut words = bytes.chunks_exact(8);
            for w in &mut words {
                let v = u64::from_le_bytes(w.try_into().expect("eight bytes"));
                h = (h ^ v).wrapping_mul(K);
                h ^= h >> 29;
            }
            let mut tail = [0u8; 8];
            tail[..words.remainder().len()].copy_from_slice(words.remainder());
            // The length closes each part: "ab" + "c" differs from "a" + "bc".
            h = (h ^ u64::from_le_bytes(tail) ^ ((bytes.len() as u64) << 56)).wrapping_mul(K);
            h ^= h >> 29;
        };
        eat(self.table.as_bytes());
        for part in [&self.chains, &self.sets, &self.rules] {
            for line in part {
                eat(line.as_bytes());
            }
            eat(b"\xff--");
        }
        match self.elements.digest() {
            Some(d) => eat(&d.to_le_bytes()),
            None => eat(format!("{:?}", self.elements.listed()).as_bytes()),
        }
        h
    }

    /// Human-readable differences from `other` (the expected image), at most `limit`.
    pub fn differences(&self, expected: &TableImage, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        // First: a dormant table shows no other difference, and must not be cut off.
        if self.table != expected.table {
            out.push(format!(
                "table altered: {} (loopgate writes {})",
                self.table, expected.table
            ));
        }
        let mut diff = |what: &str, have: &[String], want: &[String]| {
            let before = out.len();
            for w in want.iter().filter(|w| !have.contains(w)) {
                out.push(format!("{what} missing or altered: {}", short(w)));
            }
            for h in have.iter().filter(|h| !want.contains(h)) {
                out.push(format!("unexpected {what}: {}", short(h)));
            }
            if out.len() == before && have != want {
                out.push(format!("{what}s are in a different order"));
            }
        };
        diff("chain", &self.chains, &expected.chains);
        diff("set", &self.sets, &expected.sets);
        diff("rule", &self.rules, &expected.rules);
        match (self.elements.listed(), expected.elements.listed()) {
            (Some(have), Some(want)) => {
                let empty = Vec::new();
                let names: BTreeSet<&String> = have.keys().chain(want.keys()).collect();
                for name in names {
                    let (h, w) = (
                        have.get(name).unwrap_or(&empty),
                        want.get(name).unwrap_or(&empty),
                    );
                    // Both sorted: one merge pass, however large the sets.
                    let (mut i, mut j) = (0, 0);
                    while i < h.len() || j < w.len() {
                        match (h.get(i), w.get(j)) {
                            (Some(a), Some(b)) if a == b => (i, j) = (i + 1, j + 1),
                            (Some(a), Some(b)) if a < b => {
                                out.push(format!("unexpected element in {name}: {a}"));
                                i += 1;
                            }
                            (Some(a), None) => {
                                out.push(format!("unexpected element in {name}: {a}"));
                                i += 1;
                            }
                            (_, Some(b)) => {
                                out.push(format!("element missing from {name}: {b}"));
                                j += 1;
                            }
                            (None, None) => break,
                        }
                        if out.len() > limit {
                            break;
                        }
                    }
                }
            }
            _ if self.elements != expected.elements => {
                out.push("set elements differ from what loopgate wrote".to_string())
            }
            _ => {}
        }
        out.truncate(limit);
        out
    }
}

/// Flag bits, by name where nf_tables names them.
fn flag_names(flags: u32, names: &[(u32, &str)]) -> String {
    if flags == 0 {
        return "none".to_string();
    }
    let mut out: Vec<String> = names
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| name.to_string())
        .collect();
    let known = names.iter().fold(0, |all, (bit, _)| all | bit);
    if flags & !known != 0 {
        out.push(format!("{:#x}", flags & !known));
    }
    out.join(",")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Who holds loopgate's table, as its flags and the owner the kernel reports say
/// (`NFT_TABLE_F_OWNER`, `NFT_TABLE_F_PERSIST`, `NFTA_TABLE_OWNER`; Linux 6.9+ for
/// persist). Only the holder may change an owned table, and `nft flush ruleset` from
/// anyone else skips it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holder {
    /// No owner flag and no persist flag: the table as `nft::apply` writes
    /// it; anyone with CAP_NET_ADMIN may change, flush or delete it.
    Nobody,
    /// `flags persist` without an owner: left behind by an owner whose socket closed.
    /// Anyone may change, flush or delete it; any process may adopt it.
    Orphaned,
    /// `flags owner` held by the netlink socket with this port id (with or without
    /// `persist`; loopgate's own [`Owner`](super::Owner) always sets both).
    Socket(u32),
}

impl Holder {
    /// The holder that a table's flags and reported owner port id describe.
    pub fn of(flags: u32, owner: Option<u32>) -> Holder {
        if flags & NFT_TABLE_F_OWNER != 0 {
            // The kernel reports the port id with every owned table; 0 is no socket's.
            Holder::Socket(owner.unwrap_or(0))
        } else if flags & NFT_TABLE_F_PERSIST != 0 {
            Holder::Orphaned
        } else {
            Holder::Nobody
        }
    }

    /// The ownership flags a table with this holder carries.
    fn flags(self) -> u32 {
        match self {
            Holder::Nobody => 0,
            Holder::Orphaned => NFT_TABLE_F_PERSIST,
            Holder::Socket(_) => NFT_TABLE_F_OWNER | NFT_TABLE_F_PERSIST,
        }
    }
}

/// The table's flags and the owner port id the kernel reported, if any.
pub(super) fn table_flags(t: NonNull<sys::nftnl_table>) -> (u32, Option<u32>) {
    // SAFETY: live table; the getters only read it.
    unsafe {
        let t = t.as_ptr();
        let owner = sys::nftnl_table_is_set(t, sys::NFTNL_TABLE_OWNER as u16)
            .then(|| sys::nftnl_table_get_u32(t, sys::NFTNL_TABLE_OWNER as u16));
        (
            sys::nftnl_table_get_u32(t, sys::NFTNL_TABLE_FLAGS as u16),
            owner,
        )
    }
}

/// The table object as compared: everything that decides whether its chains see
/// packets, and who may change them. A dormant table unregisters every base chain: the
/// guard is off, while the chains and rules read back unchanged. An owned table names
/// its owner's port id, so a table owned by another process never compares equal to
/// one loopgate's [`Owner`](super::Owner) holds.
pub(super) fn table_text(t: NonNull<sys::nftnl_table>) -> String {
    let (flags, owner) = table_flags(t);
    // SAFETY: live table; get_data's pointer is owned by it.
    let udata = unsafe {
        let t = t.as_ptr();
        data_of(|len| sys::nftnl_table_get_data(t, sys::NFTNL_TABLE_USERDATA as u16, len))
    };
    table_description(flags, owner, udata.as_deref())
}

pub(super) fn table_description(flags: u32, owner: Option<u32>, udata: Option<&[u8]>) -> String {
    let mut text = format!(
        "table ip {TABLE} flags {}",
        flag_names(
            flags,
            &[
                (NFT_TABLE_F_DORMANT, "dormant"),
                (NFT_TABLE_F_OWNER, "owner"),
                (NFT_TABLE_F_PERSIST, "persist"),
            ],
        )
    );
    if let (Some(port), true) = (owner, flags & NFT_TABLE_F_OWNER != 0) {
        text += &format!(" owner port {port}");
    }
    if let Some(u) = udata {
        text += &format!(" userdata {}", hex(u));
    }
    text
}

/// A chain as compared: name, and for a base chain its type, hook, priority and
/// policy; any other flag, device or userdata.
pub(super) fn chain_text(c: NonNull<sys::nftnl_chain>) -> String {
    // SAFETY: live chain; strings and data are owned by it.
    unsafe {
        let c = c.as_ptr();
        let is = |attr: u32| sys::nftnl_chain_is_set(c, attr as u16);
        let name = get_str(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_NAME as u16));
        let mut text = if is(sys::NFTNL_CHAIN_HOOKNUM) {
            format!(
                "{name} type {} hook {} prio {} policy {}",
                get_str(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_TYPE as u16)),
                sys::nftnl_chain_get_u32(c, sys::NFTNL_CHAIN_HOOKNUM as u16),
                sys::nftnl_chain_get_s32(c, sys::NFTNL_CHAIN_PRIO as u16),
                sys::nftnl_chain_get_u32(c, sys::NFTNL_CHAIN_POLICY as u16),
            )
        } else {
            format!("{name} regular")
        };
        let flags = sys::nftnl_chain_get_u32(c, sys::NFTNL_CHAIN_FLAGS as u16) & !NFT_CHAIN_BASE;
        if flags != 0 {
            text += &format!(" flags {flags:#x}");
        }
        if is(sys::NFTNL_CHAIN_DEV) || is(sys::NFTNL_CHAIN_DEVICES) {
            text += &format!(
                " device {}",
                get_str(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_DEV as u16))
            );
        }
        if let Some(u) =
            data_of(|len| sys::nftnl_chain_get_data(c, sys::NFTNL_CHAIN_USERDATA as u16, len))
        {
            text += &format!(" userdata {}", hex(&u));
        }
        text
    }
}

/// A set or map as compared: how it matches (flags, key and data types and lengths),
/// and what makes its elements change on their own (timeouts, size, expressions).
pub(super) fn set_text(s: NonNull<sys::nftnl_set>) -> String {
    // SAFETY: live set; strings and data are owned by it.
    unsafe {
        let s = s.as_ptr();
        let is = |attr: u32| sys::nftnl_set_is_set(s, attr as u16);
        let u32_of = |attr: u32| sys::nftnl_set_get_u32(s, attr as u16);
        let data_type = u32_of(sys::NFTNL_SET_DATA_TYPE);
        let mut text = format!(
            "{} flags {} keytype {} keylen {} datatype {}",
            get_str(sys::nftnl_set_get_str(s, sys::NFTNL_SET_NAME as u16)),
            u32_of(sys::NFTNL_SET_FLAGS),
            u32_of(sys::NFTNL_SET_KEY_TYPE),
            u32_of(sys::NFTNL_SET_KEY_LEN),
            data_type,
        );
        // A verdict's length is fixed by its type; the kernel reports it, loopgate
        // does not send it.
        if is(sys::NFTNL_SET_DATA_LEN) && data_type != NFT_DATA_VERDICT {
            text += &format!(" datalen {}", u32_of(sys::NFTNL_SET_DATA_LEN));
        }
        if is(sys::NFTNL_SET_OBJ_TYPE) {
            text += &format!(" objtype {}", u32_of(sys::NFTNL_SET_OBJ_TYPE));
        }
        if is(sys::NFTNL_SET_TIMEOUT) {
            text += &format!(
                " timeout {}",
                sys::nftnl_set_get_u64(s, sys::NFTNL_SET_TIMEOUT as u16)
            );
        }
        if is(sys::NFTNL_SET_GC_INTERVAL) {
            text += &format!(" gc {}", u32_of(sys::NFTNL_SET_GC_INTERVAL));
        }
        if is(sys::NFTNL_SET_POLICY) {
            text += &format!(" policy {}", u32_of(sys::NFTNL_SET_POLICY));
        }
        // A map's size is left out: loopgate no longer sends one (see `encode::new_map`),
        // and a table written by an earlier version, with its maps sized, holds the same
        // rules (an in-place change that finds such a map full falls back to a rewrite).
        if is(sys::NFTNL_SET_DESC_SIZE) && u32_of(sys::NFTNL_SET_FLAGS) & NFT_SET_MAP == 0 {
            text += &format!(" size {}", u32_of(sys::NFTNL_SET_DESC_SIZE));
        }
        if is(sys::NFTNL_SET_DESC_CONCAT) {
            text += " concat";
        }
        if is(sys::NFTNL_SET_EXPR) || is(sys::NFTNL_SET_EXPRESSIONS) {
            text += " expressions";
        }
        if let Some(u) =
            data_of(|len| sys::nftnl_set_get_data(s, sys::NFTNL_SET_USERDATA as u16, len))
        {
            text += &format!(" userdata {}", hex(&u));
        }
        text
    }
}

fn short(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.len() > 160 {
        format!(
            "{}...",
            &one[..one
                .char_indices()
                .nth(157)
                .map(|(i, _)| i)
                .unwrap_or(one.len())]
        )
    } else {
        one
    }
}

unsafe extern "C" fn print_expr(e: *mut sys::nftnl_expr, data: *mut c_void) -> c_int {
    // SAFETY: `data` is the &mut Vec<String> passed by `rule_text`; `e` is live during
    // the callback.
    unsafe {
        let out = &mut *data.cast::<Vec<String>>();
        let mut buf = [0 as c_char; 1024];
        sys::nftnl_expr_snprintf(buf.as_mut_ptr(), buf.len(), e, sys::NFTNL_OUTPUT_DEFAULT, 0);
        let name = get_str(sys::nftnl_expr_get_str(e, sys::NFTNL_EXPR_NAME as u16));
        if name == "counter" {
            // Counter values move with traffic; they are not part of what was generated.
            out.push("[counter]".to_string());
        } else {
            out.push(format!("[{name} {}]", get_str(buf.as_ptr())));
        }
    }
    0
}

pub(super) fn rule_text(r: NonNull<sys::nftnl_rule>) -> String {
    let mut exprs: Vec<String> = Vec::new();
    // SAFETY: live rule; the callback only reads expressions and pushes to `exprs`.
    unsafe {
        sys::nftnl_expr_foreach(
            r.as_ptr(),
            Some(print_expr),
            (&mut exprs as *mut Vec<String>).cast(),
        );
    }
    format!(
        "{}: {} comment {:?}",
        rule_chain(r),
        exprs.join(" "),
        rule_comment(r)
    )
}

impl Snapshot {
    /// Declares `port` (the netlink port id of a running `loopgate watch`'s
    /// [`Owner`](super::Owner), or of the one this process borrowed from it) as
    /// loopgate's own for [`Snapshot::image`]: see [`Snapshot::image_sanctioning`].
    pub fn sanctioning(mut self, port: Option<u32>) -> Snapshot {
        self.sanctioned = port.filter(|p| *p != 0);
        self
    }

    /// A canonical description for comparison with a planned table:
    /// [`Snapshot::image_sanctioning`] with the port the snapshot was read for (see
    /// [`Snapshot::sanctioning`]; none unless so declared).
    pub fn image(&self) -> Option<TableImage> {
        self.image_sanctioning(self.sanctioned)
    }

    /// [`Snapshot::image`], shared: for a table taken as committed whose table line is
    /// the plan's, the committed plan's own image (equal to what `image` gives: the
    /// elements compare by the vouched digest either way).
    pub fn image_shared(&self) -> Option<std::rc::Rc<TableImage>> {
        if let (Some((_, planned)), Some(table)) = (&self.committed, &self.table) {
            if table_line(table, self.holder, self.sanctioned) == planned.table {
                return Some(std::rc::Rc::clone(planned));
            }
        }
        self.image().map(std::rc::Rc::new)
    }

    /// A canonical description for comparison with a planned table, in which a table
    /// owned by `sanctioned` (the netlink port id of a running `loopgate watch`'s
    /// [`Owner`](super::Owner)) with nothing else different compares equal to the
    /// plan. An orphaned table (persist, no owner: left by a watch that stopped) always
    /// does. Any other owner, or any other flag (dormant), stays a difference.
    pub fn image_sanctioning(&self, sanctioned: Option<u32>) -> Option<TableImage> {
        let contents = match (&self.objects, &self.committed) {
            (Some(o), _) => Some(match self.vouched {
                Some(d) => o.image_with(Elements::Vouched(d)),
                None => o.image(),
            }),
            // Taken as committed: the plan's image, its elements by their digest.
            (None, Some((_, planned))) => Some(TableImage {
                table: planned.table.clone(),
                chains: planned.chains.clone(),
                sets: planned.sets.clone(),
                rules: planned.rules.clone(),
                elements: match self.vouched {
                    Some(d) => Elements::Vouched(d),
                    None => planned.elements.clone(),
                },
            }),
            (None, None) => None,
        };
        let image = contents.map(|mut image| {
            // As read, not as a restore would write it (which drops owner flags),
            // except loopgate's own protection (`sanctioned`), which is no difference
            // from the plan.
            if let Some(table) = &self.table {
                image.table = table_line(table, self.holder, sanctioned);
            }
            image
        });
        // loopgate's own empty held table (all grants revoked while watch holds the
        // name) is what "no table" means for the plan.
        match image {
            Some(i)
                if i.chains.is_empty()
                    && i.sets.is_empty()
                    && i.rules.is_empty()
                    && i.table == table_description(0, None, None)
                    && self.holder.is_some_and(|h| h != Holder::Nobody) =>
            {
                None
            }
            other => other,
        }
    }
}

/// The table line of an image, from the table as read (`table`, see [`table_text`]) and
/// its holder: loopgate's own protection (`sanctioned`, see
/// [`Snapshot::image_sanctioning`]) is no difference from the plan.
pub(super) fn table_line(table: &str, holder: Option<Holder>, sanctioned: Option<u32>) -> String {
    match holder {
        Some(h) if is_sanctioned(h, sanctioned) && table == holder_description(h) => {
            table_description(0, None, None)
        }
        _ => table.to_string(),
    }
}

/// Whether `holder`'s hold on the table is loopgate's own: an orphan's, or that of the
/// socket `sanctioned` names.
fn is_sanctioned(holder: Holder, sanctioned: Option<u32>) -> bool {
    match holder {
        Holder::Nobody => false,
        Holder::Orphaned => true,
        Holder::Socket(p) => p != 0 && Some(p) == sanctioned,
    }
}

/// The table line of a table with `holder` and nothing else set.
fn holder_description(holder: Holder) -> String {
    let owner = match holder {
        Holder::Socket(port) => Some(port),
        _ => None,
    };
    table_description(holder.flags(), owner, None)
}

impl TableObjects {
    fn image(&self) -> TableImage {
        self.image_with(self.elements_image())
    }

    /// Every element of the table, canonical, per set.
    fn elements_image(&self) -> Elements {
        Elements::Listed(listed(self.element_blocks()))
    }

    fn image_with(&self, elements: Elements) -> TableImage {
        let mut img = TableImage {
            table: String::new(),
            chains: vec![],
            sets: vec![],
            rules: vec![],
            elements,
        };
        // Every pointer is a live object owned by self, as the *_text helpers need.
        for (obj, _) in &self.objs {
            match obj {
                Obj::Table(t) => img.table = table_text(*t),
                Obj::Chain(c) => img.chains.push(chain_text(*c)),
                Obj::Set(s) => img.sets.push(set_text(*s)),
                Obj::Elems(_) => {}
                Obj::Rule(r) => img.rules.push(rule_text(*r)),
            }
        }
        img.chains.sort();
        img.sets.sort();
        // Rules by chain, each chain's in its order: the kernel lists chains in the
        // order they were created, and a chain added in place comes last there while
        // the plan puts it among its kind.
        img.rules
            .sort_by(|a, b| a.split(':').next().cmp(&b.split(':').next()));
        img
    }
}

/// The canonical image of a planned table, for comparison with [`Snapshot::image`]:
/// the table as `nft::apply` writes it, without flags.
pub fn planned_image(ruleset: &Ruleset) -> TableImage {
    planned_image_held(Some(ruleset), Holder::Nobody)
}

/// The canonical image of a planned table held by `holder`: with
/// [`Holder::Socket`] the flags and owner an [`Owner`](super::Owner) with that port id
/// ([`Owner::portid`](super::Owner::portid)) gives the table, with
/// [`Holder::Orphaned`] the `persist` flag it leaves behind when it exits. Without a
/// ruleset: the empty table an `Owner` keeps when there is nothing to install.
///
/// Only the ownership flags are expected; a dormant flag or another owner's port id
/// still differs.
pub fn planned_image_held(ruleset: Option<&Ruleset>, holder: Holder) -> TableImage {
    let empty = Ruleset {
        sets: vec![],
        maps: vec![],
        chains: vec![],
    };
    let objs = encode(ruleset.unwrap_or(&empty));
    let elements = Elements::Planned {
        digest: objs.elements_digest(),
        blocks: objs.element_blocks().cloned().collect(),
    };
    let mut image = objs.image_with(elements);
    if holder != Holder::Nobody {
        let owner = match holder {
            Holder::Socket(port) => Some(port),
            _ => None,
        };
        image.table = table_description(holder.flags(), owner, None);
    }
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_digest_changes_with_any_line_and_not_otherwise() {
        let image = |rules: &[&str]| TableImage {
            table: "table ip loopgate flags none".into(),
            chains: vec!["raw_if_br0 regular".into()],
            sets: vec![],
            rules: rules.iter().map(|r| r.to_string()).collect(),
            elements: Elements::Vouched(7),
        };
        let a = image(&["raw_if_br0: [a] comment \"x\"", "raw_if_br0: [b]"]);
        assert_eq!(
            a.digest(),
            image(&["raw_if_br0: [a] comment \"x\"", "raw_if_br0: [b]"]).digest()
        );
        for other in [
            image(&["raw_if_br0: [a] comment \"x\""]),
            image(&["raw_if_br0: [b]", "raw_if_br0: [a] comment \"x\""]),
            image(&["raw_if_br0: [a] comment \"x\"raw_if_br0: [b]"]),
            TableImage {
                elements: Elements::Vouched(8),
                ..a.clone()
            },
            TableImage {
                chains: vec![],
                sets: vec!["raw_if_br0 regular".into()],
                ..a.clone()
            },
        ] {
            assert_ne!(a.digest(), other.digest(), "{other:?}");
        }
    }

    #[test]
    fn only_an_orphan_or_the_sanctioned_socket_holds_the_table_as_loopgates_own() {
        assert!(is_sanctioned(Holder::Orphaned, None));
        assert!(is_sanctioned(Holder::Orphaned, Some(7)));
        assert!(is_sanctioned(Holder::Socket(7), Some(7)));
        assert!(!is_sanctioned(Holder::Socket(7), Some(8)));
        assert!(!is_sanctioned(Holder::Socket(7), None));
        assert!(!is_sanctioned(Holder::Socket(0), Some(0)));
        assert!(!is_sanctioned(Holder::Nobody, Some(7)));
    }
    use crate::kernel::nft::encode::{new_chain, new_set};
    use crate::ruleset::{AddrSet, Attachment, Chain, ChainKind, Hook};

    fn base(name: &str) -> Chain {
        Chain {
            name: name.into(),
            attach: Some(Attachment {
                kind: ChainKind::Filter,
                hook: Hook::Prerouting,
                priority: -300,
            }),
            rules: vec![],
        }
    }

    fn chain_of(obj: &Obj) -> NonNull<sys::nftnl_chain> {
        match obj {
            Obj::Chain(c) => *c,
            _ => unreachable!(),
        }
    }

    #[test]
    fn table_flags_are_named_and_unknown_bits_kept() {
        assert_eq!(
            table_description(0, None, None),
            "table ip loopgate flags none",
            "what loopgate writes"
        );
        assert_eq!(
            table_description(NFT_TABLE_F_DORMANT, None, None),
            "table ip loopgate flags dormant"
        );
        assert_eq!(
            table_description(
                NFT_TABLE_F_OWNER | NFT_TABLE_F_PERSIST | 0x40,
                Some(77),
                Some(b"\x00\x01")
            ),
            "table ip loopgate flags owner,persist,0x40 owner port 77 userdata 0001"
        );
        // A port id without the owner flag is not an owner.
        assert_eq!(
            table_description(NFT_TABLE_F_PERSIST, Some(77), None),
            "table ip loopgate flags persist"
        );
    }

    #[test]
    fn a_planned_table_has_no_flags_and_a_dormant_one_differs_first() {
        let objs = encode(&Ruleset {
            sets: vec![],
            maps: vec![],
            chains: vec![base("raw_prerouting")],
        });
        let planned = objs.image();
        assert_eq!(planned.table, "table ip loopgate flags none");
        let mut dormant = planned.clone();
        dormant.table = table_description(NFT_TABLE_F_DORMANT, None, None);
        assert_ne!(dormant, planned);
        // Listed first, so a limit never cuts it off behind other differences.
        dormant.chains.push("extra regular".into());
        let diffs = dormant.differences(&planned, 1);
        assert_eq!(diffs.len(), 1);
        assert!(diffs[0].contains("flags dormant"), "{diffs:?}");
    }

    #[test]
    fn the_holder_is_read_from_the_flags_and_the_reported_owner() {
        let (owner, persist) = (NFT_TABLE_F_OWNER, NFT_TABLE_F_PERSIST);
        assert_eq!(Holder::of(0, None), Holder::Nobody);
        assert_eq!(Holder::of(NFT_TABLE_F_DORMANT, None), Holder::Nobody);
        assert_eq!(Holder::of(persist, None), Holder::Orphaned);
        assert_eq!(Holder::of(owner | persist, Some(9)), Holder::Socket(9));
        // Owned without persist (nft's `flags owner`) is owned all the same.
        assert_eq!(Holder::of(owner, Some(9)), Holder::Socket(9));
    }

    #[test]
    fn an_owned_plan_expects_its_own_owner_and_nothing_else() {
        let rs = Ruleset {
            sets: vec![],
            maps: vec![],
            chains: vec![base("raw_prerouting")],
        };
        let plain = planned_image(&rs);
        let mine = planned_image_held(Some(&rs), Holder::Socket(7));
        assert_eq!(
            mine.table,
            "table ip loopgate flags owner,persist owner port 7"
        );
        assert_eq!((&mine.chains, &mine.rules), (&plain.chains, &plain.rules));
        assert_eq!(mine.elements, plain.elements);
        // Another socket's ownership, a dormant owned table, an orphan or a plain
        // table: all differ, and the difference names the table first.
        let theirs = planned_image_held(Some(&rs), Holder::Socket(8));
        let mut dormant = mine.clone();
        dormant.table = table_description(
            NFT_TABLE_F_OWNER | NFT_TABLE_F_PERSIST | NFT_TABLE_F_DORMANT,
            Some(7),
            None,
        );
        let orphan = planned_image_held(Some(&rs), Holder::Orphaned);
        assert_eq!(orphan.table, "table ip loopgate flags persist");
        for other in [&theirs, &dormant, &orphan, &plain] {
            assert_ne!(other, &mine);
            let diffs = other.differences(&mine, 1);
            assert!(diffs[0].starts_with("table altered"), "{diffs:?}");
        }
        // No ruleset: an empty owned table.
        let empty = planned_image_held(None, Holder::Socket(7));
        assert_eq!(empty.table, mine.table);
        assert!(empty.chains.is_empty() && empty.sets.is_empty() && empty.rules.is_empty());
    }

    #[test]
    fn a_regular_chain_never_reads_like_a_base_chain_at_hook_zero() {
        let regular = new_chain(&Chain {
            name: "c".into(),
            attach: None,
            rules: vec![],
        });
        assert_eq!(chain_text(chain_of(&regular)), "c regular");
        let planned = new_chain(&base("c"));
        let text = chain_text(chain_of(&planned));
        assert_eq!(text, "c type filter hook 0 prio -300 policy 1");
        // The kernel reports NFT_CHAIN_BASE on a base chain; loopgate never sends it.
        let read = new_chain(&base("c"));
        let c = chain_of(&read);
        // SAFETY: live chain owned by `read`.
        unsafe { sys::nftnl_chain_set_u32(c.as_ptr(), sys::NFTNL_CHAIN_FLAGS as u16, 1) };
        assert_eq!(chain_text(c), text);
        // Any other flag, or a changed policy, is a difference.
        // SAFETY: as above.
        unsafe { sys::nftnl_chain_set_u32(c.as_ptr(), sys::NFTNL_CHAIN_FLAGS as u16, 1 | 4) };
        assert_eq!(chain_text(c), format!("{text} flags 0x4"));
        // SAFETY: as above.
        unsafe { sys::nftnl_chain_set_u32(c.as_ptr(), sys::NFTNL_CHAIN_POLICY as u16, NF_DROP) };
        assert!(chain_text(c).contains("policy 0"));
    }

    #[test]
    fn a_set_that_times_its_elements_out_differs() {
        let set = AddrSet {
            name: "allow_0".into(),
            hosts: false,
            ranges: vec![(1, 2)],
        };
        let planned = new_set(&set, 1);
        let Obj::Set(s) = &planned else {
            unreachable!()
        };
        let text = set_text(*s);
        // SAFETY: live set owned by `planned`.
        unsafe { sys::nftnl_set_set_u64(s.as_ptr(), sys::NFTNL_SET_TIMEOUT as u16, 1000) };
        assert_eq!(
            set_text(*s),
            text.replacen(" userdata", " timeout 1000 userdata", 1)
        );
    }
}
