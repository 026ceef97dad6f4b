//! Numbers from the kernel's nf_tables ABI (linux/netfilter/nf_tables.h and
//! nfnetlink.h) and from nft's own datatype and byte order numbering, in one place.
//! libnftnl names the attributes of its objects but not these values: loopgate writes
//! them into messages and reads them back, so a wrong one is a wrong message.

pub(super) const NFPROTO_IPV4: u16 = libc::NFPROTO_IPV4 as u16;
pub(super) const NFT_SET_INTERVAL: u32 = 0x4;
pub(super) const NFT_SET_MAP: u32 = 0x8;
/// The data type of a verdict map (`NFT_DATA_VERDICT`).
pub(super) const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
/// nft composes a concatenated key's datatype by shifting in 6 bits per field.
pub(super) const TYPE_BITS: u32 = 6;
/// `ipv4_addr` in nft's datatype numbering; lets `nft list` print the set readably.
pub(super) const TYPE_IPV4_ADDR: u32 = 7;
pub(super) const TYPE_INET_PROTOCOL: u32 = 12;
pub(super) const TYPE_INET_SERVICE: u32 = 13;
pub(super) const TYPE_IFNAME: u32 = 41;
/// nft's byte order names, stored in a set's userdata so `nft list` prints its keys.
pub(super) const BYTEORDER_HOST_ENDIAN: u32 = 1;
pub(super) const BYTEORDER_BIG_ENDIAN: u32 = 2;

// nf_tables expression constants (linux/netfilter/nf_tables.h).
pub(super) const REG_VERDICT: u32 = 0;
pub(super) const REG_1: u32 = 1;
pub(super) const REG_2: u32 = 2;
pub(super) const CMP_EQ: u32 = 0;
pub(super) const CMP_NEQ: u32 = 1;
pub(super) const PAYLOAD_NETWORK: u32 = 1;
pub(super) const PAYLOAD_TRANSPORT: u32 = 2;
pub(super) const META_IIFNAME: u32 = 6;
pub(super) const META_OIFNAME: u32 = 7;
pub(super) const META_L4PROTO: u32 = 16;
pub(super) const CT_DIRECTION: u32 = 1;
pub(super) const CT_STATUS: u32 = 2;
pub(super) const CT_PROTOCOL: u32 = 10;
pub(super) const CT_PROTO_DST: u32 = 12;
pub(super) const CT_DST_IP: u32 = 20;
pub(super) const IPS_DST_NAT: u32 = 1 << 5;
pub(super) const NAT_DNAT: u32 = 1;
pub(super) const NAT_RANGE_MAP_IPS: u32 = 1;
pub(super) const NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
pub(super) const NF_DROP: u32 = 0;
pub(super) const NF_ACCEPT: u32 = 1;
/// `NFT_REG32_00`: the first 32-bit register; `NFT_REG32_xx` is this plus `xx`.
pub(super) const NFT_REG32_00: u32 = 8;

// Message attributes written and read without libnftnl (linux/netfilter/nf_tables.h).
/// `NFTA_GEN_ID`: the generation in a GETGEN reply.
pub(super) const NFTA_GEN_ID: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
/// `NFTA_SET_ELEM_LIST_ELEMENTS`: the attribute of a NEWSETELEM message holding them.
pub(super) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(super) const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
pub(super) const NFTA_LIST_ELEM: u16 = 1;
pub(super) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(super) const NFTA_SET_ELEM_DATA: u16 = 2;
pub(super) const NFTA_SET_ELEM_FLAGS: u16 = 3;
pub(super) const NFTA_DATA_VALUE: u16 = 1;
pub(super) const NFTA_DATA_VERDICT: u16 = 2;
pub(super) const NFTA_VERDICT_CODE: u16 = 1;
pub(super) const NFTA_VERDICT_CHAIN: u16 = 2;
pub(super) const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
/// `NFT_JUMP` as the kernel's u32 verdict code.
pub(super) const NFT_JUMP: u32 = -3i32 as u32;

/// Flags of a table that tie it to one netlink socket: a table restored with them would
/// belong to loopgate's own short-lived socket and vanish when it closes.
pub(super) const NFT_TABLE_F_OWNER: u32 = 0x2;
pub(super) const NFT_TABLE_F_PERSIST: u32 = 0x4;
pub(super) const NFT_TABLE_F_DORMANT: u32 = 0x1;

/// `NFT_CHAIN_BASE`: the kernel reports it on every base chain; loopgate never sends
/// it (a hook makes a chain a base chain), so a chain's hook implies it.
pub(super) const NFT_CHAIN_BASE: u32 = 0x1;
