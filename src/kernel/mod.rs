//! Everything that talks to the kernel, behind narrow functions: nf_tables (netlink),
//! conntrack (netlink), sysctls and socket tables (/proc), interfaces, and namespaces.
//! The rest of loopgate decides; this layer only observes and applies.

pub mod conntrack;
#[cfg(test)]
pub mod fake;
pub mod host;
pub mod legacy;
pub mod monitor;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod os;
pub mod runtime;
pub mod seam;
pub mod sysctl;
pub mod trace;
pub mod yaml;
