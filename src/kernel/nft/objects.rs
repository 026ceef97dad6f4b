//! Ownership of raw libnftnl objects. libnftnl hands out heap objects that must be
//! freed with the matching `*_free`; every one loopgate keeps lives in an [`Obj`] or
//! an [`Owned`], which free it on drop, so no path (an early return, an error, a
//! filtered dump row) leaks one or frees it twice. [`Kind`] names the libnftnl
//! functions of each object type once, so code that treats tables, sets, chains and
//! rules alike (the read-back) is written once. The small readers here turn the C
//! strings and byte buffers those objects own into Rust values.

use super::elements::ElemBlock;
use crate::ruleset::TABLE;
use nftnl::nftnl_sys as sys;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_void};
use std::ptr::NonNull;

pub(super) fn cstr(s: &str) -> CString {
    // Names reaching here were validated (no NUL bytes); a NUL would be a bug.
    CString::new(s).expect("object names contain no NUL byte")
}

/// An owned libnftnl object, freed on drop.
pub(super) enum Obj {
    Table(NonNull<sys::nftnl_table>),
    Chain(NonNull<sys::nftnl_chain>),
    Set(NonNull<sys::nftnl_set>),
    /// Elements of one set, sent as NEWSETELEM (encoded without libnftnl).
    Elems(ElemBlock),
    Rule(NonNull<sys::nftnl_rule>),
}

impl Drop for Obj {
    fn drop(&mut self) {
        // SAFETY: each pointer was allocated by the matching libnftnl *_alloc and is
        // owned exclusively by this value.
        unsafe {
            match self {
                Obj::Table(p) => sys::nftnl_table_free(p.as_ptr()),
                Obj::Chain(p) => sys::nftnl_chain_free(p.as_ptr()),
                Obj::Set(p) => sys::nftnl_set_free(p.as_ptr()),
                Obj::Elems(_) => {}
                Obj::Rule(p) => sys::nftnl_rule_free(p.as_ptr()),
            }
        }
    }
}

/// `p`, which a libnftnl `*_alloc` just returned, as non-null; aborts on NULL.
pub(super) fn alloc<T>(p: *mut T) -> NonNull<T> {
    // libnftnl returns NULL when malloc fails, and nftnl_expr_alloc also for an
    // expression name it does not know (loopgate passes only names it knows). Either
    // way there is no object to use: like std on OOM, stop rather than go on with NULL.
    NonNull::new(p).unwrap_or_else(|| std::process::abort())
}

/// Copies a C string into a `String` ("" for NULL).
///
/// # Safety
/// `p` must be NULL or a NUL-terminated string that stays valid during the call: what a
/// libnftnl getter of a live object returned, or a buffer libnftnl just printed into.
pub(super) unsafe fn get_str(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: `p` is non-null (checked above), NUL-terminated and live (the caller's
    // contract, see # Safety).
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The bytes of a data attribute of a libnftnl object, if set.
///
/// # Safety
/// `get` must return a pointer valid for the length it writes, or NULL, and the bytes
/// must stay valid while the object lives (libnftnl's *_get_data do).
pub(super) unsafe fn data_of(get: impl FnOnce(&mut u32) -> *const c_void) -> Option<Vec<u8>> {
    let mut len = 0u32;
    let p = get(&mut len);
    // SAFETY: per the contract, `p` is valid for `len` bytes.
    (!p.is_null())
        .then(|| unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len as usize) }.to_vec())
}

/// The rule's comment, from its userdata (type-length-value records).
pub(super) fn rule_comment(r: NonNull<sys::nftnl_rule>) -> String {
    let mut len = 0u32;
    // SAFETY: live rule; the returned pointer is valid for `len` bytes while it lives.
    let udata = unsafe {
        let p = sys::nftnl_rule_get_data(r.as_ptr(), sys::NFTNL_RULE_USERDATA as u16, &mut len);
        if p.is_null() {
            return String::new();
        }
        std::slice::from_raw_parts(p.cast::<u8>(), len as usize)
    };
    let mut rest = udata;
    while let [ty, l, tail @ ..] = rest {
        let (value, next) = tail.split_at((*l as usize).min(tail.len()));
        if u32::from(*ty) == sys::NFTNL_UDATA_RULE_COMMENT {
            let text = value.split(|b| *b == 0).next().unwrap_or_default();
            return String::from_utf8_lossy(text).into_owned();
        }
        rest = next;
    }
    String::new()
}

pub(super) fn rule_chain(r: NonNull<sys::nftnl_rule>) -> String {
    // SAFETY: live rule; the string it returns is owned by it and copied at once.
    unsafe {
        get_str(sys::nftnl_rule_get_str(
            r.as_ptr(),
            sys::NFTNL_RULE_CHAIN as u16,
        ))
    }
}

/// One type of libnftnl object (table, set, chain, rule): its libnftnl functions and
/// what loopgate needs to know to read it back. Use it through [`Owned`].
///
/// The unsafe methods are libnftnl's functions as they are: each needs `p` to be a
/// live object of this type made by `alloc` (and `free` needs it never used again);
/// `parse` needs `nlh` to head a complete message in aligned storage, and
/// `build_payload` a buffer behind `nlh` with room for the payload.
///
/// # Safety
/// The functions must be libnftnl's own for `Self` (`nftnl_set_*` for `nftnl_set`),
/// so that what `alloc` returns is what the others accept, and `wrap` must make the
/// [`Obj`] variant that frees `Self` with its own `*_free`.
pub(super) unsafe trait Kind: Sized {
    /// The request that reads objects of this type (`NFT_MSG_GET*`).
    const GET: i32;
    /// How a label names an object: `"set"` for `set allow_HASH`.
    const NOUN: &'static str;
    /// The attribute naming the table an object is in (a table's own name).
    const TABLE: u32;
    /// The attribute holding the object's family.
    const FAMILY: u32;
    /// The attribute a label names the object by (a rule by its chain).
    const NAME: u32;
    /// Attributes the kernel assigns (handles, use counts, chain counters, rule
    /// positions): a restore must not send them, and they are no part of the image.
    const ASSIGNED: &'static [u32];

    /// `*_alloc`: a new empty object, or NULL when malloc fails.
    fn alloc() -> *mut Self;
    /// `*_free`.
    unsafe fn free(p: *mut Self);
    /// `*_nlmsg_parse`: negative when the message does not parse.
    unsafe fn parse(nlh: *const libc::nlmsghdr, p: *mut Self) -> c_int;
    /// `*_nlmsg_build_payload`.
    unsafe fn build_payload(nlh: *mut libc::nlmsghdr, p: *mut Self);
    /// `*_get_str`: NULL when unset; else owned by the object.
    unsafe fn get_str(p: *const Self, attr: u16) -> *const c_char;
    /// `*_get_u32`: 0 when unset.
    unsafe fn get_u32(p: *const Self, attr: u16) -> u32;
    /// `*_set_str`: copies the NUL-terminated `s`.
    unsafe fn set_str(p: *mut Self, attr: u16, s: *const c_char);
    /// `*_set_u32`.
    unsafe fn set_u32(p: *mut Self, attr: u16, v: u32);
    /// `*_unset`.
    unsafe fn unset(p: *mut Self, attr: u16);
    /// The [`Obj`] that owns `p` from now on.
    fn wrap(p: NonNull<Self>) -> Obj;
}

/// Implements [`Kind`] for one libnftnl type from its functions.
macro_rules! kind {
    (
        $raw:ident => $variant:ident, get: $get:ident, noun: $noun:literal,
        table: $table:ident, family: $family:ident, name: $name:ident,
        assigned: [$($assigned:ident),*],
        fns: $alloc:ident, $free:ident, $parse:ident, $build:ident, $get_str:ident,
            $get_u32:ident, $set_str:ident, $set_u32:ident, $unset:ident $(,)?
    ) => {
        // SAFETY: the functions passed are libnftnl's own for this type, and the
        // variant is the one whose drop calls the same type's free.
        unsafe impl Kind for sys::$raw {
            const GET: i32 = libc::$get;
            const NOUN: &'static str = $noun;
            const TABLE: u32 = sys::$table;
            const FAMILY: u32 = sys::$family;
            const NAME: u32 = sys::$name;
            const ASSIGNED: &'static [u32] = &[$(sys::$assigned),*];

            fn alloc() -> *mut Self {
                // SAFETY: a plain allocation; NULL is handled by the caller.
                unsafe { sys::$alloc() }
            }
            unsafe fn free(p: *mut Self) {
                // SAFETY: the caller keeps the contract of `Kind::free` (see the trait).
                unsafe { sys::$free(p) }
            }
            unsafe fn parse(nlh: *const libc::nlmsghdr, p: *mut Self) -> c_int {
                // SAFETY: the caller keeps the contract of `Kind::parse` (see the trait).
                unsafe { sys::$parse(nlh, p) }
            }
            unsafe fn build_payload(nlh: *mut libc::nlmsghdr, p: *mut Self) {
                // SAFETY: the caller keeps the contract of `Kind::build_payload` (see the trait).
                unsafe { sys::$build(nlh, p) }
            }
            unsafe fn get_str(p: *const Self, attr: u16) -> *const c_char {
                // SAFETY: the caller keeps the contract of `Kind::get_str` (see the trait).
                unsafe { sys::$get_str(p, attr) }
            }
            unsafe fn get_u32(p: *const Self, attr: u16) -> u32 {
                // SAFETY: the caller keeps the contract of `Kind::get_u32` (see the trait).
                unsafe { sys::$get_u32(p, attr) }
            }
            unsafe fn set_str(p: *mut Self, attr: u16, s: *const c_char) {
                // SAFETY: the caller keeps the contract of `Kind::set_str` (see the trait).
                unsafe { sys::$set_str(p, attr, s) };
            }
            unsafe fn set_u32(p: *mut Self, attr: u16, v: u32) {
                // SAFETY: the caller keeps the contract of `Kind::set_u32` (see the trait).
                unsafe { sys::$set_u32(p, attr, v) }
            }
            unsafe fn unset(p: *mut Self, attr: u16) {
                // SAFETY: the caller keeps the contract of `Kind::unset` (see the trait).
                unsafe { sys::$unset(p, attr) }
            }
            fn wrap(p: NonNull<Self>) -> Obj {
                Obj::$variant(p)
            }
        }
    };
}

kind! {
    nftnl_table => Table, get: NFT_MSG_GETTABLE, noun: "table",
    table: NFTNL_TABLE_NAME, family: NFTNL_TABLE_FAMILY, name: NFTNL_TABLE_NAME,
    assigned: [NFTNL_TABLE_HANDLE, NFTNL_TABLE_USE],
    fns: nftnl_table_alloc, nftnl_table_free, nftnl_table_nlmsg_parse,
        nftnl_table_nlmsg_build_payload, nftnl_table_get_str, nftnl_table_get_u32,
        nftnl_table_set_str, nftnl_table_set_u32, nftnl_table_unset,
}

kind! {
    nftnl_set => Set, get: NFT_MSG_GETSET, noun: "set",
    table: NFTNL_SET_TABLE, family: NFTNL_SET_FAMILY, name: NFTNL_SET_NAME,
    assigned: [NFTNL_SET_HANDLE],
    fns: nftnl_set_alloc, nftnl_set_free, nftnl_set_nlmsg_parse,
        nftnl_set_nlmsg_build_payload, nftnl_set_get_str, nftnl_set_get_u32,
        nftnl_set_set_str, nftnl_set_set_u32, nftnl_set_unset,
}

kind! {
    nftnl_chain => Chain, get: NFT_MSG_GETCHAIN, noun: "chain",
    table: NFTNL_CHAIN_TABLE, family: NFTNL_CHAIN_FAMILY, name: NFTNL_CHAIN_NAME,
    assigned: [NFTNL_CHAIN_HANDLE, NFTNL_CHAIN_USE, NFTNL_CHAIN_BYTES, NFTNL_CHAIN_PACKETS],
    fns: nftnl_chain_alloc, nftnl_chain_free, nftnl_chain_nlmsg_parse,
        nftnl_chain_nlmsg_build_payload, nftnl_chain_get_str, nftnl_chain_get_u32,
        nftnl_chain_set_str, nftnl_chain_set_u32, nftnl_chain_unset,
}

kind! {
    nftnl_rule => Rule, get: NFT_MSG_GETRULE, noun: "rule in chain",
    table: NFTNL_RULE_TABLE, family: NFTNL_RULE_FAMILY, name: NFTNL_RULE_CHAIN,
    assigned: [NFTNL_RULE_HANDLE, NFTNL_RULE_POSITION],
    fns: nftnl_rule_alloc, nftnl_rule_free, nftnl_rule_nlmsg_parse,
        nftnl_rule_nlmsg_build_payload, nftnl_rule_get_str, nftnl_rule_get_u32,
        nftnl_rule_set_str, nftnl_rule_set_u32, nftnl_rule_unset,
}

/// A libnftnl object of kind `K`, freed on drop unless handed on to an [`Obj`].
/// Every method takes `&self` or `self`, so the pointer inside is live for as long as
/// any call can see it.
pub(super) struct Owned<K: Kind>(NonNull<K>);

impl<K: Kind> Drop for Owned<K> {
    fn drop(&mut self) {
        // SAFETY: allocated by K::alloc, owned by this value alone, never used again.
        unsafe { K::free(self.0.as_ptr()) }
    }
}

impl<K: Kind> Owned<K> {
    /// A new empty object.
    pub(super) fn new() -> Self {
        Owned(alloc(K::alloc()))
    }

    /// An object naming only loopgate's table: the filter of a dump (the kernel lists
    /// only that table's objects) or the key of a table lookup.
    pub(super) fn naming_table() -> Self {
        let o = Self::new();
        o.set_str(K::TABLE, TABLE);
        o
    }

    /// The object's pointer, live while `self` is.
    pub(super) fn ptr(&self) -> NonNull<K> {
        self.0
    }

    /// Fills the object from one message as the kernel sent it; false when libnftnl
    /// could not parse it.
    ///
    /// # Panics
    /// When `row` is shorter than the length its netlink header claims: libnftnl
    /// would read past it.
    pub(super) fn parse(&self, row: &[u64]) -> bool {
        let bytes = std::mem::size_of_val(row);
        assert!(
            bytes >= std::mem::size_of::<libc::nlmsghdr>(),
            "a row holds a header"
        );
        // `nlmsg_len`, the header's first field: the first 4 bytes in memory order.
        let head = row[0].to_ne_bytes();
        let claimed = u32::from_ne_bytes([head[0], head[1], head[2], head[3]]);
        assert!(claimed as usize <= bytes, "a row holds its whole message");
        // libnftnl also reads the 4-byte nfgenmsg after the header.
        assert!(
            claimed as usize >= std::mem::size_of::<libc::nlmsghdr>() + 4,
            "a row holds the nfgenmsg libnftnl reads"
        );
        // SAFETY: `row` is aligned storage holding the complete message its header
        // describes, header and nfgenmsg included (both checked above); the object is
        // live and ours.
        unsafe { K::parse(row.as_ptr().cast(), self.0.as_ptr()) >= 0 }
    }

    /// Writes the object as the payload of the message headed by `nlh`.
    ///
    /// # Safety
    /// The buffer behind `nlh` must have room for the payload.
    pub(super) unsafe fn build_payload(&self, nlh: *mut libc::nlmsghdr) {
        // SAFETY: the object is live; room is the caller's contract.
        unsafe { K::build_payload(nlh, self.0.as_ptr()) }
    }

    /// A string attribute ("" when unset).
    pub(super) fn get_str(&self, attr: u32) -> String {
        // SAFETY: the object is live; the string it returns is owned by it and copied
        // by get_str before anything can change it.
        unsafe { get_str(K::get_str(self.0.as_ptr(), attr as u16)) }
    }

    /// A u32 attribute (0 when unset).
    pub(super) fn get_u32(&self, attr: u32) -> u32 {
        // SAFETY: the object is live.
        unsafe { K::get_u32(self.0.as_ptr(), attr as u16) }
    }

    pub(super) fn set_str(&self, attr: u32, value: &str) {
        let value = cstr(value);
        // SAFETY: the object is live; libnftnl copies the NUL-terminated string.
        unsafe { K::set_str(self.0.as_ptr(), attr as u16, value.as_ptr()) }
    }

    pub(super) fn set_u32(&self, attr: u32, value: u32) {
        // SAFETY: the object is live.
        unsafe { K::set_u32(self.0.as_ptr(), attr as u16, value) }
    }

    pub(super) fn unset(&self, attr: u32) {
        // SAFETY: the object is live.
        unsafe { K::unset(self.0.as_ptr(), attr as u16) }
    }

    /// Hands the object to an [`Obj`], which frees it from now on.
    pub(super) fn into_obj(self) -> Obj {
        let p = self.0;
        std::mem::forget(self);
        K::wrap(p)
    }
}
