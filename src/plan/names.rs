//! Names of the table's objects, each derived from what the object is for (its
//! interface, its grant's address and port, its allow list's networks) and from
//! nothing else.
//!
//! `watch` changes the table in place with a batch of only what differs between two
//! plans (`kernel::nft::diff`). Names that were positions (the N-th interface in name
//! order, the N-th grant) made one new interface that sorts first, or one grant whose
//! port moved, rename every later chain and set: the batch then refilled O(interfaces)
//! or O(grants) objects and reset the guard counters of interfaces nothing happened
//! to. With names taken from the object's own key, adding, removing or editing one
//! interface or grant touches only its own objects and their map elements.
//!
//! The scheme (`TOK` is the interface name as a token, see [`iface_token`]):
//! - `raw_if_TOK`, `input_if_TOK`, `post_if_TOK`: an interface's guard;
//! - `nat_TOK_LISTEN_PROTO_PORT`: a grant's DNAT (the key of its `nat_grants` element);
//! - `input_to_TOK_ADDR_PROTO_PORT`: the input accepts of one loopback target on one
//!   interface (the key of its `input_targets` element);
//! - `allow_HASH`, `allow_HASH_hosts`: an allow list's sets, `HASH` the 16 hex digits
//!   of a hash of its merged ranges (equal lists share their sets, as before).
//!
//! Every name is unique in the table: the prefixes differ from each other and from the
//! base chains' (`raw_prerouting`, `nat_prerouting`, `input`, `postrouting`); the
//! fields after the token (an address, `tcp`/`udp`, a number) hold no `_`, so a name
//! splits back into its token and fields from the right; and the token is injective.
//! Two allow lists whose hashes collide get the next free hash, in the table's
//! canonical order (deterministic; only the collision itself makes one list's name
//! depend on another's). Every name is a plain nft identifier (letters, digits and
//! `_-./`), so `plan::render`'s text loads with `nft -f` unquoted, and at most
//! [`MAX_NAME_LEN`] bytes, far below the kernel's 255.
//!
//! [`Naming::Positional`] gives the names the previous versions gave (`raw_if0`,
//! `nat_g3`, `allow_2`, ...): only so that a table an earlier loopgate wrote is
//! recognised as the rightful table of the same grants (see `plan::legacy_ruleset`).

use crate::cidr;
use crate::grant::Proto;
use std::net::Ipv4Addr;

/// The longest name a planned table can hold: `input_to_` (9), an interface token
/// of 15 escaped bytes (45), `_255.255.255.255` (16), `_tcp` (4) and `_65535` (6).
pub const MAX_NAME_LEN: usize = 80;

/// Which names a plan gives its objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Naming {
    /// Derived from each object's own key (the module documentation).
    Stable,
    /// The previous versions' positions: interface N in name order, grant N in
    /// canonical order, target N in key order, allow list N in order of first use.
    Positional,
}

/// The three chains of an interface's guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GuardHook {
    Raw,
    Input,
    Post,
}

impl Naming {
    /// The guard chain of `iface` at `hook`; `i` is its position in name order.
    pub fn guard(self, hook: GuardHook, i: usize, iface: &str) -> String {
        let prefix = match hook {
            GuardHook::Raw => "raw_if",
            GuardHook::Input => "input_if",
            GuardHook::Post => "post_if",
        };
        match self {
            Naming::Stable => format!("{prefix}_{}", iface_token(iface)),
            Naming::Positional => format!("{prefix}{i}"),
        }
    }

    /// The DNAT chain of the grant published at `iface . listen . proto . port`; `i`
    /// is the grant's position in canonical order.
    pub fn nat(self, i: usize, iface: &str, listen: Ipv4Addr, proto: Proto, port: u16) -> String {
        match self {
            Naming::Stable => format!("nat_{}_{listen}_{proto}_{port}", iface_token(iface)),
            Naming::Positional => format!("nat_g{i}"),
        }
    }

    /// The input chain of the loopback target `addr . proto . port` on `iface`; `i` is
    /// its position in key order.
    pub fn target(self, i: usize, iface: &str, addr: Ipv4Addr, proto: Proto, port: u16) -> String {
        match self {
            Naming::Stable => format!("input_to_{}_{addr}_{proto}_{port}", iface_token(iface)),
            Naming::Positional => format!("input_t{i}"),
        }
    }

    /// The set of an allow list: `id` is its hash ([`Naming::Stable`], see
    /// [`ranges_hash`]) or its position in order of first use; `hosts` for the hash
    /// set of its single addresses.
    pub fn set(self, id: u64, hosts: bool) -> String {
        let id = match self {
            Naming::Stable => format!("{id:016x}"),
            Naming::Positional => id.to_string(),
        };
        match hosts {
            true => format!("allow_{id}_hosts"),
            false => format!("allow_{id}"),
        }
    }
}

/// An interface name as it appears in chain names: bytes among `A-Z a-z 0-9 . _ -`
/// as they are (`br0`, `br-1a2b`, `flannel.1`, `eth0.100`), any other byte as `/`
/// and two lowercase hex digits (`a@b` is `a/40b`). Injective: a `/` in a token always
/// starts an escape, since no interface name holds one (the kernel refuses it), and
/// the result is a plain nft identifier.
pub fn iface_token(iface: &str) -> String {
    let mut out = String::with_capacity(iface.len());
    for b in iface.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("/{b:02x}"));
        }
    }
    out
}

/// A stable 64-bit hash (FNV-1a) of merged ranges: the same networks however they
/// were written give the same hash, on every host and in every version.
pub(super) fn ranges_hash(ranges: &[cidr::Range]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (a, b) in ranges {
        for byte in a.to_be_bytes().into_iter().chain(b.to_be_bytes()) {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_plain_names_and_escape_everything_else_without_collisions() {
        assert_eq!(iface_token("br0"), "br0");
        assert_eq!(iface_token("br-1a2b.100_x"), "br-1a2b.100_x");
        assert_eq!(iface_token("a@b.c+d"), "a/40b.c/2bd");
        // A name that looks like an escape is not one: `/` is always escaped.
        assert_ne!(iface_token("a/40b"), iface_token("a@b"));
        assert_ne!(iface_token("a@b"), iface_token("a#b"));
        assert_eq!(iface_token("é"), "/c3/a9");
    }

    #[test]
    fn the_longest_names_stay_within_the_bound() {
        let iface = "@".repeat(15);
        let addr = Ipv4Addr::new(255, 255, 255, 255);
        let names = [
            Naming::Stable.guard(GuardHook::Input, 0, &iface),
            Naming::Stable.nat(0, &iface, addr, Proto::Tcp, 65535),
            Naming::Stable.target(0, &iface, addr, Proto::Udp, 65535),
            Naming::Stable.set(u64::MAX, true),
        ];
        let longest = names.iter().map(String::len).max().unwrap();
        assert_eq!(longest, MAX_NAME_LEN, "{names:?}");
    }

    #[test]
    fn positional_names_are_the_previous_versions() {
        let lo = Ipv4Addr::LOCALHOST;
        let p = Naming::Positional;
        assert_eq!(p.guard(GuardHook::Raw, 2, "br0"), "raw_if2");
        assert_eq!(p.guard(GuardHook::Post, 0, "br0"), "post_if0");
        assert_eq!(p.nat(3, "br0", lo, Proto::Tcp, 1), "nat_g3");
        assert_eq!(p.target(1, "br0", lo, Proto::Tcp, 1), "input_t1");
        assert_eq!(p.set(0, true), "allow_0_hosts");
        assert_eq!(Naming::Stable.set(0xab, false), "allow_00000000000000ab");
    }
}
