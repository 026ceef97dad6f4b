//! One base chain and the chains it jumps to, walked for one packet: every way the
//! chain can end (accept, return, a stop, an unmodelled action), folded into the
//! chain's [`Verdict`].
//!
//! The walk goes forward, rule by rule, carrying what is known of the packet's mark
//! (a `MARK` / `meta mark set` the packet passes makes bits known, and a later mark
//! match on those bits is decided): where paths split on something not known, their
//! marks are joined (only what both know stays known).

use super::packet::{Mark, Packet, Tri};
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

/// Every way a chain (or, for `cont`, the rules after one) can end for the packet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Possible {
    pub(super) accept: bool,
    /// Falls off the end or returns, with the mark it may hold then.
    pub(super) ret: Option<Mark>,
    /// Goes on to the next rule of the chain (a rule that did not end it), with the
    /// mark it may hold then.
    pub(super) cont: Option<Mark>,
    /// A stop some path reaches (the first one in rule order).
    pub(super) hit: Option<Hit>,
    /// An unmodelled action some path reaches.
    pub(super) opaque: Option<String>,
    /// The first unmodelled match that splits the paths.
    pub(super) maybe: Option<String>,
}

fn join(a: Option<Mark>, b: Option<Mark>) -> Option<Mark> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.join(b)),
        (a, b) => a.or(b),
    }
}

impl Possible {
    pub(super) fn union(mut self, other: Possible) -> Possible {
        self.accept |= other.accept;
        self.ret = join(self.ret, other.ret);
        self.cont = join(self.cont, other.cont);
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
    pub(super) memo: HashMap<(&'a str, &'a str, Mark), Possible>,
}

impl<'a> Walker<'a> {
    /// How `chain` ends for the packet entering it with `mark` (`cont` is never set).
    pub(super) fn chain(&mut self, chain: &'a Chain, depth: usize, mark: Mark) -> Possible {
        let key = (chain.table.as_str(), chain.name.as_str(), mark);
        if let Some(p) = self.memo.get(&key) {
            return p.clone();
        }
        let mut acc = Possible::default();
        // The mark of the paths still going through the rules; `None`: none is.
        let mut live = Some(mark);
        for rule in &chain.rules {
            let Some(mark) = live else { break };
            let ran = run_rule(rule, self.pkt, self.before_conntrack, false, mark);
            if ran.matched == Tri::No {
                live = Some(ran.mark);
                continue;
            }
            // Words only for a rule that decides something or splits the paths.
            let ran = match (&ran.matched, &ran.action) {
                (Tri::Yes, Action::Continue | Action::Accept | Action::Return) => ran,
                _ => run_rule(rule, self.pkt, self.before_conntrack, true, mark),
            };
            let mut then = self.outcome(chain, ran.action, &ran.text, ran.mark, depth);
            match ran.matched {
                Tri::Yes => {}
                Tri::Maybe(why) => {
                    // Or the rule does not match, leaving any mark it held meanwhile.
                    then.cont = join(then.cont, Some(ran.seen));
                    then.maybe = Some(format!("{}: {why}", ran.text));
                }
                Tri::No => unreachable!(),
            }
            live = then.cont.take();
            acc = acc.union(then);
        }
        acc.ret = join(acc.ret, live);
        self.memo.insert(key, acc.clone());
        acc
    }

    /// How the chain goes on when a rule takes `action` with the packet holding
    /// `mark`: `cont` for the rules after it.
    fn outcome(
        &mut self,
        chain: &'a Chain,
        action: Action,
        text: &str,
        mark: Mark,
        depth: usize,
    ) -> Possible {
        match action {
            Action::Continue => Possible {
                cont: Some(mark),
                ..Default::default()
            },
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
                ret: Some(mark),
                ..Default::default()
            },
            Action::Jump(ref to) | Action::Goto(ref to) => {
                let target = self
                    .chains
                    .get(&(chain.table.as_str(), to.as_str()))
                    .copied();
                let mut sub = match target {
                    Some(t) if depth < MAX_DEPTH => self.chain(t, depth + 1, mark),
                    _ => Possible {
                        opaque: Some(format!("{text}: chain {to} not followed")),
                        ..Default::default()
                    },
                };
                // A jump's return goes on after the rule; a goto's returns from here.
                if matches!(action, Action::Jump(_)) {
                    sub.cont = sub.ret.take();
                }
                sub
            }
            // A verdict map whose key is not known for the flow: every element it may
            // hit (the rule's match is a "maybe", so not hitting any is there too).
            Action::Either(actions) => actions
                .into_iter()
                .map(|a| self.outcome(chain, a, text, mark, depth))
                .reduce(Possible::union)
                .unwrap_or(Possible {
                    cont: Some(mark),
                    ..Default::default()
                }),
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
    let mut p = walker.chain(chain, 0, Mark::default());
    let base = chain.base.as_ref();
    if p.ret.take().is_some() {
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
