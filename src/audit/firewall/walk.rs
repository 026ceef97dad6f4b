//! One base chain and the chains it jumps to, walked for one packet: every way the
//! chain can end (accept, return, a stop, an unmodelled action), folded into the
//! chain's [`Verdict`].

use super::packet::{Packet, Tri};
use super::rule::{run_rule, Action};
use super::{Stop, Verdict};
use crate::kernel::firewall::{Chain, Foreign};
use std::collections::HashMap;

/// Where a stop was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Hit {
    pub(super) stop: Stop,
    pub(super) rule: Option<String>,
}

/// Every way a chain can end for the packet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Possible {
    pub(super) accept: bool,
    /// Falls off the end or returns.
    pub(super) ret: bool,
    /// A stop some path reaches (the first one in rule order).
    pub(super) hit: Option<Hit>,
    /// An unmodelled action some path reaches.
    pub(super) opaque: Option<String>,
    /// The first unmodelled match that splits the paths.
    pub(super) maybe: Option<String>,
}

impl Possible {
    pub(super) fn union(mut self, other: Possible) -> Possible {
        self.accept |= other.accept;
        self.ret |= other.ret;
        self.hit = self.hit.or(other.hit);
        self.opaque = self.opaque.or(other.opaque);
        self.maybe = self.maybe.or(other.maybe);
        self
    }
}

/// Jumps deeper than this are not followed (the kernel's own limit is 16).
pub(super) const MAX_DEPTH: usize = 16;

pub(super) struct Walker<'a> {
    pub(super) chains: HashMap<(&'a str, &'a str), &'a Chain>,
    pub(super) pkt: &'a Packet,
    pub(super) before_conntrack: bool,
    pub(super) memo: HashMap<(&'a str, &'a str), Possible>,
}

impl<'a> Walker<'a> {
    pub(super) fn chain(&mut self, chain: &'a Chain, depth: usize) -> Possible {
        let key = (chain.table.as_str(), chain.name.as_str());
        if let Some(p) = self.memo.get(&key) {
            return p.clone();
        }
        let mut acc = Possible {
            ret: true,
            ..Default::default()
        };
        for rule in chain.rules.iter().rev() {
            let (matched, action, _) = run_rule(rule, self.pkt, self.before_conntrack, false);
            if matched == Tri::No {
                continue;
            }
            // Words only for a rule that decides something or splits the paths.
            let (matched, action, text) = match (&matched, &action) {
                (Tri::Yes, Action::Continue | Action::Accept | Action::Return) => {
                    (matched, action, String::new())
                }
                _ => run_rule(rule, self.pkt, self.before_conntrack, true),
            };
            let then = self.outcome(chain, action, &text, &acc, depth);
            acc = match matched {
                Tri::Yes => then,
                Tri::Maybe(why) => {
                    let mut p = then.union(acc);
                    p.maybe = Some(format!("{text}: {why}"));
                    p
                }
                Tri::No => unreachable!(),
            };
        }
        self.memo.insert(key, acc.clone());
        acc
    }

    /// How the chain ends when a rule takes `action`, `acc` being how it ends when the
    /// rule does not decide (the rules after it).
    fn outcome(
        &mut self,
        chain: &'a Chain,
        action: Action,
        text: &str,
        acc: &Possible,
        depth: usize,
    ) -> Possible {
        match action {
            Action::Continue => acc.clone(),
            Action::Accept => Possible {
                accept: true,
                ..Default::default()
            },
            Action::Stop(stop) => Possible {
                hit: Some(Hit {
                    stop,
                    rule: Some(format!("{text} (in chain {})", chain.name)),
                }),
                ..Default::default()
            },
            Action::Return => Possible {
                ret: true,
                ..Default::default()
            },
            Action::Jump(ref to) | Action::Goto(ref to) => {
                let target = self
                    .chains
                    .get(&(chain.table.as_str(), to.as_str()))
                    .copied();
                let sub = match target {
                    Some(t) if depth < MAX_DEPTH => self.chain(t, depth + 1),
                    _ => Possible {
                        opaque: Some(format!("{text}: chain {to} not followed")),
                        ..Default::default()
                    },
                };
                if matches!(action, Action::Jump(_)) && sub.ret {
                    Possible { ret: false, ..sub }.union(acc.clone())
                } else {
                    sub
                }
            }
            // A verdict map whose key is not known for the flow: every element it may
            // hit (the rule's match is a "maybe", so not hitting any is there too).
            Action::Either(actions) => actions
                .into_iter()
                .map(|a| self.outcome(chain, a, text, acc, depth))
                .reduce(Possible::union)
                .unwrap_or_else(|| acc.clone()),
            Action::Opaque(why) => Possible {
                opaque: Some(format!("{text}: {why}")),
                ..Default::default()
            },
        }
    }
}

/// What one base chain does with `pkt`.
pub(super) fn base_verdict(
    ruleset: &Foreign,
    chain: &Chain,
    pkt: &Packet,
    before_conntrack: bool,
) -> Verdict {
    let mut walker = Walker {
        chains: ruleset
            .chains
            .iter()
            .map(|c| ((c.table.as_str(), c.name.as_str()), c))
            .collect(),
        pkt,
        before_conntrack,
        memo: HashMap::new(),
    };
    let mut p = walker.chain(chain, 0);
    let base = chain.base.as_ref();
    if p.ret {
        p.ret = false;
        if base.is_some_and(|b| b.policy_drop) {
            p = p.union(Possible {
                hit: Some(Hit {
                    stop: Stop::Policy,
                    rule: None,
                }),
                ..Default::default()
            });
        } else {
            p.accept = true;
        }
    }
    let table = chain.table.clone();
    let name = chain.name.clone();
    match (&p.hit, &p.opaque) {
        (Some(hit), None) if !p.accept => Verdict::Drops {
            table,
            chain: name,
            rule: hit.rule.clone(),
            stop: hit.stop,
        },
        (None, None) => Verdict::Passes,
        (hit, opaque) => Verdict::MayDrop {
            table,
            chain: name,
            why: match (hit, opaque, &p.maybe) {
                (Some(h), _, Some(m)) => format!(
                    "{} unless {m}",
                    h.rule.clone().unwrap_or_else(|| "its policy drop".into())
                ),
                (Some(h), _, None) => h.rule.clone().unwrap_or_else(|| "its policy drop".into()),
                (None, Some(o), _) => o.clone(),
                (None, None, _) => unreachable!(),
            },
            stop: hit.as_ref().map(|h| h.stop),
        },
    }
}
