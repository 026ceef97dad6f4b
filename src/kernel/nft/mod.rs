//! loopgate's table in the kernel: encode a [`Ruleset`] into one atomic nf_tables
//! batch, read the table back, and restore a snapshot of it.
//!
//! libnftnl (through `nftnl::nftnl_sys`) builds and parses the messages; the safe
//! `nftnl` API stops short of interval sets, `ct original ...` keys and read-back, so
//! the objects are handled raw here, each behind an owning wrapper that frees it.
//! A change is one batch, all of it or none: the whole table replaced (`add table;
//! delete table; add table; ...`), or, when the table is known to be exactly the
//! previous plan, only what differs (`diff`), bound to the generation it was known at.
//!
//! The modules follow the data: `abi` holds the numbers from the kernel headers;
//! `objects` owns libnftnl objects; `expr` compiles one rule into expressions and
//! `encode` a whole planned table into objects in batch order, with [`elements`]
//! writing set elements as raw attributes; `batch` sends objects as one batch;
//! `generation` holds `apply`, the commit entry point, binds each commit to the
//! nftables generation and records the [`Vouch`];
//! `readback` reads the table back into a [`Snapshot`]; `image` reduces planned and
//! read tables to a comparable [`TableImage`]; `counters` reads what each rule matched;
//! `owner` holds the table through a socket that owns it ([`Owner`], Linux 6.9+), so
//! no other process can flush or change it, changing its contents without ever
//! deleting it. `trace` holds `loopgate trace`'s own table, `ip loopgate_trace`.
//!
//! [`Ruleset`]: crate::ruleset::Ruleset

mod abi;
mod batch;
mod committed;
mod counters;
mod diff;
mod dnat;
pub mod elements;
mod encode;
mod expr;
mod foreign;
mod foreign_sets;
mod generation;
mod image;
mod image_cache;
mod objects;
mod owner;
mod readback;
pub mod trace;

pub use batch::{features, probe};
pub use committed::{expected_chains, read_chains, snapshot_committed, ChainsRead};
pub use counters::RuleCounter;
pub use diff::{diff, touched, Diff, Touched};
pub use elements::Elem;
pub use encode::{encode, TableObjects};
pub use foreign::foreign_chains;
pub(in crate::kernel) use generation::{apply, apply_diff};
pub use generation::{current_generation, OwnCommits, Vouch};
pub use image::{planned_image, planned_image_held, Elements, Holder, TableImage};
pub use image_cache::{planned_image_cached, ImageCache};
pub use owner::{probe_owner_support, Owner};
pub use readback::{snapshot, snapshot_rules_by_chain, table_holder, Snapshot};
