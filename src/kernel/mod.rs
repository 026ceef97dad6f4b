//! Everything that talks to the kernel, behind narrow functions: nf_tables (netlink),
//! conntrack (netlink), sysctls and socket tables (/proc), interfaces, and namespaces;
//! the plain model of other firewalls ([`firewall`]), the record of probed features
//! ([`features`]) and a bounded process runner ([`process`]). The rest of loopgate
//! decides; this layer only observes and applies, and every change the engine makes goes
//! through [`seam::Kernel`] (the raw mutators are private to this module). Outside the
//! seam, by design: `watch` takes hold of the table (`nft::Owner::adopt`) and deletes
//! an empty one as it stops, and `trace` installs and removes its own table
//! `ip loopgate_trace`.
//!
//! The bottom of loopgate's layers but for a few: this module names only `error`,
//! `failpoint`, `cidr`, `files`, `grant` and `ruleset`, which sit below it, never a
//! module that uses it (checked by the `layers` unit test).

pub mod conntrack;
pub mod dnat;
#[cfg(test)]
pub mod fake;
pub mod features;
pub mod firewall;
pub mod host;
pub mod legacy;
pub mod monitor;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod os;
pub mod process;
pub mod runtime;
pub mod seam;
pub mod sysctl;
pub mod trace;
pub mod yaml;
