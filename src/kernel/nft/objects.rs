//! Ownership of raw libnftnl objects. libnftnl hands out heap objects that must be
//! freed with the matching `*_free`; every one loopgate keeps lives in an [`Obj`],
//! which frees it on drop, so no path (an early return, an error, a filtered dump row)
//! leaks one or frees it twice. The small readers here turn the C strings and byte
//! buffers those objects own into Rust values.

use super::elements::ElemBlock;
use nftnl::nftnl_sys as sys;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_void};
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

pub(super) fn alloc<T>(p: *mut T) -> NonNull<T> {
    // libnftnl returns NULL only when malloc fails; like std, treat OOM as fatal.
    NonNull::new(p).unwrap_or_else(|| std::process::abort())
}

pub(super) fn get_str(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: libnftnl returns NUL-terminated strings owned by the object.
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
    // SAFETY: live rule; the string is owned by it.
    get_str(unsafe { sys::nftnl_rule_get_str(r.as_ptr(), sys::NFTNL_RULE_CHAIN as u16) })
}
