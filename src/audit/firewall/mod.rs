//! Whether another firewall on the host stops a grant's flow: another table's base
//! chain that drops or rejects it (a `policy drop` input chain of `/etc/nftables.conf`,
//! ufw or firewalld), a `notrack` rule that keeps loopgate's DNAT from ever happening,
//! or iptables-legacy tables that nft cannot see.
//!
//! loopgate's accept cannot override another table's drop: every base chain on a hook
//! runs, and a drop is final. So audit follows the grant's packets through every other
//! table's base chains, in the kernel's hook and priority order, on a plain model of
//! their rules ([`Foreign`](crate::kernel::firewall::Foreign)): the expressions as the
//! kernel holds them (register loads, compares, bitwise masks, verdicts), evaluated
//! over what is known of the packet.
//! What a rule compares against a field loopgate cannot know (a mark, a set's
//! members, an expression not modelled here) splits the path: if one side drops, the
//! answer is "may drop", naming the chain and why. [`evaluate`] is pure and unit
//! tested; the model and its reading are the kernel's ([`crate::kernel::firewall`]).
//!
//! The packets followed, for each allowed network of a grant:
//! - the first packet (ct state new) at prerouting (before loopgate's DNAT at priority
//!   -100 addressed to the listen address, after it to the target) and at input; nat
//!   chains see it only before a translation (netfilter runs the nat chains of a hook
//!   from one hook at dstnat until one translates), so a nat chain never sees the
//!   translated packet;
//! - later packets of the flow (ct state established) on the same path;
//! - the replies (ct state established, direction reply) at output and postrouting,
//!   leaving through the grant's interface; before conntrack at output (-200) they are
//!   untracked, where a `notrack` keeps their source from being translated back.
//!
//! Lookups are evaluated with the members of their sets and maps as read
//! ([`Members`](crate::kernel::firewall::Members)); a verdict map becomes one rule per
//! element (`walk`). The remedy printed for a stop is written for the firewall owning
//! the chain and the packet it sees (`remedy`).
//!
//! The parts, one concern each: `packet` (what is known of a packet at a stage),
//! `rule` (what one rule does to it), `walk` (a base chain and the chains it jumps
//! to), `flow` (the stages of a grant's flow, and [`evaluate`] over them),
//! `findings` (the verdicts as audit findings and `expose` warnings), `remedy` (the
//! line that lets the flow through, per firewall).

mod findings;
mod flow;
mod packet;
mod remedy;
mod rule;
mod walk;

/// The addresses whose routes [`Routes::lookups`] needs for `grants`.
pub use super::reachability::probes;
pub use findings::{findings, warnings};
pub use flow::{evaluate, flows, route_back, Flow, Routes};
pub use packet::RouteBack;

/// What a foreign firewall does with a grant's flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing seen stops it.
    Passes,
    /// Every path through this chain stops it.
    Drops {
        /// The table (`inet filter`).
        table: String,
        /// The base chain.
        chain: String,
        /// The rule that decides (`rule handle 4 in chain input: reject`), or `None`
        /// for the chain's policy.
        rule: Option<String>,
        /// How it is stopped.
        stop: Stop,
    },
    /// Some path through this chain stops it, depending on what is not modelled.
    MayDrop {
        /// The table.
        table: String,
        /// The base chain.
        chain: String,
        /// What it depends on.
        why: String,
        /// How it would be stopped, when a modelled drop, reject, notrack or policy is
        /// what may be reached.
        stop: Option<Stop>,
    },
}

/// How a flow is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The base chain's `policy drop`.
    Policy,
    /// A `drop` verdict.
    Drop,
    /// A `reject`.
    Reject,
    /// A `notrack` before conntrack: loopgate's DNAT never happens.
    Notrack,
}

impl Stop {
    fn words(self) -> &'static str {
        match self {
            Stop::Policy => "policy drop",
            Stop::Drop => "drop",
            Stop::Reject => "reject",
            Stop::Notrack => "notrack",
        }
    }
}

#[cfg(test)]
mod tests;
