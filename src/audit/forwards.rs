//! Other tools' forwards to loopback on the interfaces loopgate guards
//! (`foreign-forward`).
//!
//! A tool that publishes a loopback service itself turns `route_localnet` on and DNATs
//! an address to 127/8: the Amazon ECS agent sends `169.254.170.2:80` to
//! `127.0.0.1:51679` so that tasks fetch their IAM credentials, an operator keeps a
//! hand-made `dnat to 127.0.0.1:PORT`. loopgate's guard lets such flows through (see
//! `plan::guards`), so that guarding the interface does not break the tool; each is
//! then an exposure loopgate did not decide, and audit lists it with who may use it:
//! - critical when the rule does not restrict the source (every neighbour on the link
//!   reaches that loopback service), or excludes only some sources (`! -s`);
//! - warning when the rule has conditions audit cannot read (a set lookup, an xt match,
//!   a mark) that may or may not restrict the source;
//! - info when it names the sources (`ip saddr`/`-s` networks): an exposure as narrow
//!   as a grant, the operator's decision;
//! - warning, whatever the source, when the forward's target is also a grant's
//!   target on that interface: the grant's chain takes only the grant's own flows, so
//!   loopgate's guard drops the forward, and the tool is broken.
//!
//! Only forwards audit can read are listed: a DNAT to a constant address in a chain
//! reached from a `nat` base chain at prerouting, with the conditions of the rule and
//! of the rules that jumped to it. A `redirect` is not one: it sends to the interface's
//! own address, never to 127/8. Only interfaces loopgate guards that are open are
//! judged: on an unguarded open one `unguarded` already says everything is reachable,
//! and on a closed one the kernel drops a flow DNATed to 127/8 as martian.

use super::{Code, Finding, InterfaceReport, Severity};
use crate::grant::Proto;
use crate::kernel::dnat::DnatTo;
use crate::kernel::firewall::{Chain, Expr, Foreign, Hook, Jump};
use ipnetwork::Ipv4Network;
use std::net::Ipv4Addr;

/// `NFT_META_IIFNAME`.
const META_IIFNAME: u32 = 6;
/// `NFT_META_L4PROTO`.
const META_L4PROTO: u32 = 16;
/// `NFT_CMP_EQ`, `NFT_CMP_NEQ`.
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;

/// One rule of another table that DNATs to 127/8, with what it matches.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Forward {
    /// `ip nat`, `iptables-legacy nat`.
    pub table: String,
    /// The chain holding the DNAT rule.
    pub chain: String,
    /// The rule's handle (its position for iptables-legacy).
    pub handle: u64,
    /// Where it sends the flow.
    pub to: DnatTo,
    /// What the rule (and the rules that jumped to it) match.
    pub when: Conditions,
}

/// The conditions of a rule and of the rules on the path to it, as far as they decide
/// where a forward applies and who can use it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Conditions {
    /// `iifname` tests: (name or prefix, exact, negated).
    iif: Vec<(String, bool, bool)>,
    /// `ip saddr` tests: (network, negated).
    saddr: Vec<(Ipv4Network, bool)>,
    /// `ip daddr` tests: (network, negated): the published address.
    daddr: Vec<(Ipv4Network, bool)>,
    /// The transport protocol number.
    proto: Option<u8>,
    /// The destination port range.
    dport: Option<(u16, u16)>,
    /// Conditions not read here, by name: they may narrow who the forward serves.
    other: Vec<String>,
}

impl Conditions {
    fn and(&self, more: &Conditions) -> Conditions {
        let mut c = self.clone();
        c.iif.extend(more.iif.iter().cloned());
        c.saddr.extend(more.saddr.iter().cloned());
        c.daddr.extend(more.daddr.iter().cloned());
        c.proto = more.proto.or(c.proto);
        c.dport = more.dport.or(c.dport);
        c.other.extend(more.other.iter().cloned());
        c
    }

    /// True when the forward can apply to packets arriving on `iface`.
    fn applies_on(&self, iface: &str) -> bool {
        self.iif.iter().all(|(name, exact, negated)| {
            let hit = match exact {
                true => iface == name,
                false => iface.starts_with(name.as_str()),
            };
            hit != *negated
        })
    }

    /// The sources the rule names, when it narrows them to networks (`None`: every
    /// source, or all but some).
    fn sources(&self) -> Option<Vec<Ipv4Network>> {
        let named: Vec<Ipv4Network> = self
            .saddr
            .iter()
            .filter(|(n, negated)| !negated && n.prefix() > 0)
            .map(|(n, _)| *n)
            .collect();
        (!named.is_empty()).then_some(named)
    }

    /// `ip daddr 198.51.100.2 tcp dport 80`, for a message.
    fn describe(&self) -> String {
        let mut words = Vec::new();
        for (n, negated) in &self.daddr {
            let not = if *negated { "!= " } else { "" };
            match n.prefix() {
                32 => words.push(format!("ip daddr {not}{}", n.ip())),
                _ => words.push(format!("ip daddr {not}{n}")),
            }
        }
        if self.daddr.is_empty() {
            words.push("any destination".to_string());
        }
        let proto = match self.proto {
            Some(6) => "tcp".to_string(),
            Some(17) => "udp".to_string(),
            Some(p) => format!("protocol {p}"),
            None => "th".to_string(),
        };
        match self.dport {
            Some((a, b)) if a == b => words.push(format!("{proto} dport {a}")),
            Some((a, b)) => words.push(format!("{proto} dport {a}-{b}")),
            None if self.proto.is_some() => words.push(proto),
            None => {}
        }
        words.join(" ")
    }
}

impl Forward {
    /// The loopback listener this forward sends clients on `iface` to, if `l` is it:
    /// the target's address (or a listener on 0.0.0.0), port and protocol, where the
    /// rule says them.
    pub(super) fn reaches(&self, iface: &str, l: &crate::kernel::host::Listener) -> bool {
        let single = self.when.dport.filter(|(a, b)| a == b).map(|(a, _)| a);
        let proto = match self.when.proto {
            Some(6) => Some(Proto::Tcp),
            Some(17) => Some(Proto::Udp),
            _ => None,
        };
        self.when.applies_on(iface)
            && self
                .to
                .addr
                .is_some_and(|a| a == l.addr || l.addr.is_unspecified())
            && self.to.port.or(single).is_none_or(|p| p == l.port)
            && proto.is_none_or(|p| p == l.proto)
    }
}

/// Every rule of the other tables that DNATs to 127/8 in a chain reached from a `nat`
/// base chain at prerouting, with its path's conditions.
pub(super) fn forwards(foreign: &Foreign) -> Vec<Forward> {
    let mut out = Vec::new();
    for base in foreign.chains.iter().filter(|c| {
        c.base
            .as_ref()
            .is_some_and(|b| b.nat && b.hook == Hook::Prerouting)
    }) {
        walk(foreign, base, &Conditions::default(), 0, &mut out);
    }
    out.sort_by(|a, b| (&a.table, &a.chain, a.handle).cmp(&(&b.table, &b.chain, b.handle)));
    out.dedup();
    out
}

/// Follows `chain` and the chains it jumps to (at most 16 deep: rulesets loop only by
/// mistake, and the kernel refuses loops anyway).
fn walk(foreign: &Foreign, chain: &Chain, path: &Conditions, depth: usize, out: &mut Vec<Forward>) {
    if depth > 16 {
        return;
    }
    for rule in &chain.rules {
        let (when, end) = read_rule(&rule.exprs);
        let when = path.and(&when);
        match end {
            End::Dnat(to) if to.addr.is_some_and(|a| a.is_loopback()) => out.push(Forward {
                table: chain.table.clone(),
                chain: chain.name.clone(),
                handle: rule.handle,
                to,
                when,
            }),
            End::Jump(next) => {
                if let Some(next) = foreign
                    .chains
                    .iter()
                    .find(|c| c.table == chain.table && c.name == next)
                {
                    walk(foreign, next, &when, depth + 1, out);
                }
            }
            _ => {}
        }
    }
}

/// How a rule ends, for the walk.
enum End {
    Dnat(DnatTo),
    Jump(String),
    Other,
}

/// What a register holds, for reading the compares that follow.
#[derive(Clone, Copy, PartialEq)]
enum Field {
    Iif,
    Saddr,
    Daddr,
    Proto,
    Dport,
    Other,
}

/// The conditions of one rule and how it ends.
fn read_rule(exprs: &[Expr]) -> (Conditions, End) {
    let mut c = Conditions::default();
    // Register -> (field, mask).
    let mut regs: std::collections::BTreeMap<u32, (Field, Option<Vec<u8>>)> = Default::default();
    for x in exprs {
        match x {
            Expr::Meta { key, dreg } => {
                let field = match *key {
                    META_IIFNAME => Field::Iif,
                    META_L4PROTO => Field::Proto,
                    _ => Field::Other,
                };
                regs.insert(*dreg, (field, None));
            }
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                let field = match (base, offset, len) {
                    (1, 12, 1..=4) => Field::Saddr,
                    (1, 16, 1..=4) => Field::Daddr,
                    (1, 9, 1) => Field::Proto,
                    (2, 2, 2) => Field::Dport,
                    _ => Field::Other,
                };
                regs.insert(*dreg, (field, None));
            }
            Expr::Ct { dreg, .. } | Expr::Load { dreg, .. } => {
                regs.insert(*dreg, (Field::Other, None));
            }
            Expr::Bitwise {
                sreg, dreg, mask, ..
            } => {
                let field = regs.get(sreg).map_or(Field::Other, |(f, _)| *f);
                regs.insert(*dreg, (field, Some(mask.clone())));
            }
            Expr::Cmp { sreg, op, data } => {
                let (field, mask) = regs.get(sreg).cloned().unwrap_or((Field::Other, None));
                if !matches!(*op, CMP_EQ | CMP_NEQ) {
                    c.other.push("a comparison".into());
                    continue;
                }
                let negated = *op == CMP_NEQ;
                match field {
                    Field::Iif => {
                        // Exact when the compared bytes reach a NUL (nft pads the name,
                        // iptables-nft adds one NUL); a prefix (`br*`, `-i br+`) stops
                        // before it. iptables-legacy masks the bytes compared.
                        let len = mask
                            .as_ref()
                            .map_or(data.len(), |m| m.iter().take_while(|b| **b != 0).count())
                            .min(data.len());
                        let bytes = &data[..len];
                        let name_len = bytes.iter().position(|b| *b == 0).unwrap_or(len);
                        let exact = name_len < len;
                        let name = String::from_utf8_lossy(&bytes[..name_len]).into_owned();
                        c.iif.push((name, exact, negated));
                    }
                    Field::Saddr | Field::Daddr => {
                        let net = network(data, mask.as_deref());
                        match (net, field) {
                            (Some(n), Field::Saddr) => c.saddr.push((n, negated)),
                            (Some(n), _) => c.daddr.push((n, negated)),
                            (None, _) => c.other.push("an address comparison".into()),
                        }
                    }
                    Field::Proto if !negated && data.len() == 1 => c.proto = Some(data[0]),
                    Field::Dport if !negated && data.len() == 2 => {
                        let p = u16::from_be_bytes([data[0], data[1]]);
                        c.dport = Some((p, p));
                    }
                    _ => c.other.push("a comparison not read".into()),
                }
            }
            Expr::Range {
                sreg, op, from, to, ..
            } => {
                let field = regs.get(sreg).map_or(Field::Other, |(f, _)| *f);
                match field {
                    Field::Dport if *op == 0 && from.len() == 2 && to.len() == 2 => {
                        c.dport = Some((
                            u16::from_be_bytes([from[0], from[1]]),
                            u16::from_be_bytes([to[0], to[1]]),
                        ));
                    }
                    _ => c.other.push("a range".into()),
                }
            }
            Expr::Lookup { set, .. } => c.other.push(format!("a lookup in @{set}")),
            Expr::AddrType { .. } => c.other.push("an address type".into()),
            Expr::FibType { dreg, .. } | Expr::FibOif { dreg, .. } => {
                regs.insert(*dreg, (Field::Other, None));
            }
            Expr::RpFilter { .. } => c.other.push("a reverse path check".into()),
            Expr::Unknown(name) => {
                c.other.push(format!("`{name}`"));
                regs.clear();
            }
            Expr::Statement(_) | Expr::Notrack | Expr::MetaSet { .. } => {}
            Expr::Dnat(to) => return (c, End::Dnat(*to)),
            Expr::Verdict(Jump::Jump(next) | Jump::Goto(next)) => {
                return (c, End::Jump(next.clone()))
            }
            Expr::Verdict(_) | Expr::Reject => return (c, End::Other),
        }
    }
    (c, End::Other)
}

/// The network a masked compare of an address names (an unmasked compare of fewer than
/// four bytes is a whole-byte prefix, as nft writes `127.0.0.0/8`).
fn network(data: &[u8], mask: Option<&[u8]>) -> Option<Ipv4Network> {
    let mut addr = [0u8; 4];
    let n = data.len().min(4);
    addr[..n].copy_from_slice(&data[..n]);
    let prefix = match mask {
        Some(m) if m.len() == 4 => u32::from_be_bytes(m.try_into().ok()?).leading_ones() as u8,
        Some(_) => return None,
        None => (n * 8) as u8,
    };
    Ipv4Network::new(Ipv4Addr::from(addr), prefix).ok()
}

/// The `foreign-forward` findings: for each interface loopgate guards that is open,
/// each forward to loopback that applies on it. `admitted` (the committed
/// `State::guarded`) names the interfaces whose guard lets such forwards through: those
/// loopgate did not open itself; on the others the guard drops them.
pub(super) fn findings(
    foreign: &Foreign,
    interfaces: &[InterfaceReport],
    admitted: &[String],
) -> Vec<Finding> {
    let all = forwards(foreign);
    let mut out = Vec::new();
    for i in interfaces.iter().filter(|i| i.guarded && i.effective != 0) {
        let admits = admitted.iter().any(|a| a == &i.name);
        for f in all.iter().filter(|f| f.when.applies_on(&i.name)) {
            out.push(match admits {
                true => finding(f, i),
                false => dropped(f, i),
            });
        }
    }
    out
}

/// A forward on an interface loopgate opened for its grants: it never worked there
/// (route_localnet was 0, so the kernel dropped it as a martian), and the guard keeps
/// it so rather than widen access beyond the grants. Said, so that a tool that relied
/// on `conf.all` (or set the interface's value after loopgate) sees why.
fn dropped(f: &Forward, i: &InterfaceReport) -> Finding {
    let rule = format!(
        "table {} chain {} rule handle {}",
        f.table, f.chain, f.handle
    );
    Finding {
        severity: Severity::Warning,
        code: Code::ForeignForward,
        interface: Some(i.name.clone()),
        message: format!(
            "{rule} DNATs {} on {} to loopback, but loopgate opened {} for its grants (its route_localnet was 0 before), where that forward did not work: loopgate's guard drops it rather than open it to the link; if it is needed, serve its clients with a grant (loopgate expose {} ...) and delete the rule, or delete the rule if nothing uses it",
            f.when.describe(),
            i.name,
            i.name,
            i.name
        ),
    }
}

/// One forward on one guarded interface, with its severity (see the module
/// documentation).
fn finding(f: &Forward, i: &InterfaceReport) -> Finding {
    let to_addr = f.to.addr.unwrap_or(Ipv4Addr::LOCALHOST);
    let single_port = f.when.dport.filter(|(a, b)| a == b).map(|(a, _)| a);
    let to_port = f.to.port.or(single_port);
    let to = match to_port {
        Some(p) => format!("{to_addr}:{p}"),
        None => format!("{to_addr} (same port)"),
    };
    let proto = match f.when.proto {
        Some(6) => Some(Proto::Tcp),
        Some(17) => Some(Proto::Udp),
        _ => None,
    };
    let rule = format!(
        "table {} chain {} rule handle {}",
        f.table, f.chain, f.handle
    );
    let what = format!("{rule} DNATs {} on {} to {to}", f.when.describe(), i.name);
    // The target a grant on this interface owns: its chain takes only the grant's flows.
    let owner = i
        .grants
        .iter()
        .find(|g| Some(g.proto) == proto && *g.to.ip() == to_addr && Some(g.to.port()) == to_port);
    let (severity, message) = if let Some(g) = owner {
        (
            Severity::Warning,
            format!(
                "{what}, but that is the target of grant {}: loopgate's guard takes only the grant's own flows there and drops this forward; point the forward at another loopback port, or serve its clients with the grant (loopgate expose {} --port {} ... ) and delete the rule",
                g.name, i.name, g.port
            ),
        )
    } else if let Some(sources) = f.when.sources() {
        let sources: Vec<String> = sources.iter().map(|n| n.to_string()).collect();
        (
            Severity::Info,
            format!(
                "{what} for {} only (another tool's forward, which loopgate's guard lets through): those sources reach that loopback service",
                sources.join(", ")
            ),
        )
    } else if !f.when.other.is_empty() {
        (
            Severity::Warning,
            format!(
                "{what}, which loopgate's guard lets through, and whether it narrows the sources cannot be read ({}); if it does not, every neighbour on {} reaches that loopback service: name the sources that need it in the rule (nft: ip saddr CIDR; iptables: -s CIDR)",
                f.when.other.join(", "),
                i.name
            ),
        )
    } else {
        let negated = f.when.saddr.iter().any(|(_, n)| *n);
        (
            Severity::Critical,
            format!(
                "{what} from {} source, and loopgate's guard lets another table's DNAT to loopback through: every neighbour on {} reaches that loopback service; name the sources that need it in the rule (nft: ip saddr CIDR; iptables: -s CIDR), or delete the rule if nothing uses it",
                if negated { "almost any" } else { "any" },
                i.name
            ),
        )
    };
    Finding {
        severity,
        code: Code::ForeignForward,
        interface: Some(i.name.clone()),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The findings where every interface's guard admits forwards (loopgate did not
    /// open them).
    fn admitted_findings(fw: &Foreign, ifaces: &[InterfaceReport]) -> Vec<Finding> {
        let names: Vec<String> = ifaces.iter().map(|i| i.name.clone()).collect();
        findings(fw, ifaces, &names)
    }

    #[test]
    fn a_forward_on_an_interface_loopgate_opened_is_dropped_and_said() {
        let fw = foreign(vec![nat_chain(
            "ip nat",
            "PREROUTING",
            true,
            vec![ecs(None)],
        )]);
        let f = findings(&fw, &[iface("docker0", vec![])], &[]);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Warning);
        assert!(f[0].message.contains("drops it"), "{}", f[0].message);
    }
    use crate::grant::Grant;
    use crate::kernel::firewall::{BaseHook, Rule};

    fn nat_chain(table: &str, name: &str, base: bool, rules: Vec<Vec<Expr>>) -> Chain {
        Chain {
            table: table.into(),
            name: name.into(),
            base: base.then_some(BaseHook {
                hook: Hook::Prerouting,
                priority: -100,
                policy_drop: false,
                nat: true,
            }),
            rules: rules
                .into_iter()
                .enumerate()
                .map(|(i, exprs)| Rule {
                    handle: i as u64 + 1,
                    exprs,
                })
                .collect(),
        }
    }

    fn cmp(sreg: u32, op: u32, data: &[u8]) -> Expr {
        Expr::Cmp {
            sreg,
            op,
            data: data.to_vec(),
        }
    }

    fn payload(base: u32, offset: u32, len: u32) -> Expr {
        Expr::Payload {
            base,
            offset,
            len,
            dreg: 1,
        }
    }

    /// The Amazon ECS agent's rule as iptables-nft stores it (`nft --debug=netlink`):
    /// `-p tcp -d 169.254.170.2 --dport 80 -j DNAT --to-destination 127.0.0.1:51679`
    /// (ecs-init/exec/iptables/iptables.go, getPreroutingChainArgs; 192.0.2.2 stands for
    /// 169.254.170.2 here).
    fn ecs(saddr: Option<Vec<Expr>>) -> Vec<Expr> {
        let mut x = vec![
            Expr::Meta {
                key: META_L4PROTO,
                dreg: 1,
            },
            cmp(1, CMP_EQ, &[6]),
        ];
        x.extend(saddr.unwrap_or_default());
        x.extend([
            payload(1, 16, 4),
            cmp(1, CMP_EQ, &[192, 0, 2, 2]),
            payload(2, 2, 2),
            cmp(1, CMP_EQ, &80u16.to_be_bytes()),
            Expr::Statement("counter".into()),
            Expr::Dnat(DnatTo {
                addr: Some(Ipv4Addr::LOCALHOST),
                port: Some(51679),
            }),
        ]);
        x
    }

    fn iface(name: &str, grants: Vec<Grant>) -> InterfaceReport {
        InterfaceReport {
            name: name.into(),
            route_localnet: Some(1),
            effective: 1,
            error: None,
            managed: !grants.is_empty(),
            set_by_loopgate: false,
            original: None,
            guarded: true,
            grants,
            exposed_sockets: vec![],
        }
    }

    fn foreign(chains: Vec<Chain>) -> Foreign {
        Foreign {
            chains,
            ..Default::default()
        }
    }

    #[test]
    fn an_unrestricted_forward_to_loopback_is_critical_on_every_guarded_interface() {
        let fw = foreign(vec![nat_chain(
            "ip nat",
            "PREROUTING",
            true,
            vec![ecs(None)],
        )]);
        let f = admitted_findings(&fw, &[iface("docker0", vec![]), iface("br0", vec![])]);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f
            .iter()
            .all(|f| f.severity == Severity::Critical && f.code == Code::ForeignForward));
        assert!(
            f[0].message.contains(
                "table ip nat chain PREROUTING rule handle 1 DNATs ip daddr 192.0.2.2 tcp dport 80 on docker0 to 127.0.0.1:51679 from any source"
            ),
            "{}",
            f[0].message
        );
        // Not on an interface loopgate does not guard, nor on a closed one.
        let mut closed = iface("br1", vec![]);
        closed.effective = 0;
        let mut unguarded = iface("br2", vec![]);
        unguarded.guarded = false;
        assert!(admitted_findings(&fw, &[closed, unguarded]).is_empty());
    }

    #[test]
    fn naming_the_sources_makes_it_info_and_unread_conditions_a_warning() {
        let restricted = ecs(Some(vec![
            payload(1, 12, 4),
            Expr::Bitwise {
                sreg: 1,
                dreg: 1,
                mask: vec![255, 255, 255, 128],
                xor: vec![0; 4],
            },
            cmp(1, CMP_EQ, &[192, 0, 2, 0]),
        ]));
        let negated = ecs(Some(vec![
            payload(1, 12, 4),
            cmp(1, CMP_NEQ, &[192, 0, 2, 9]),
        ]));
        let unread = ecs(Some(vec![
            payload(1, 12, 4),
            Expr::Lookup {
                set: "clients".into(),
                sreg: 1,
                invert: false,
                verdict_map: false,
                members: None,
            },
        ]));
        let fw = foreign(vec![nat_chain(
            "ip nat",
            "PREROUTING",
            true,
            vec![restricted, negated, unread],
        )]);
        let f = admitted_findings(&fw, &[iface("docker0", vec![])]);
        let sev: Vec<Severity> = f.iter().map(|f| f.severity).collect();
        assert_eq!(
            sev,
            [Severity::Info, Severity::Critical, Severity::Warning],
            "{f:?}"
        );
        assert!(
            f[0].message.contains("for 192.0.2.0/25 only"),
            "{}",
            f[0].message
        );
        assert!(f[1].message.contains("from almost any source"));
        assert!(f[2].message.contains("a lookup in @clients"));
    }

    /// `iifname "br0"` (padded), `-i docker+` (a prefix without NUL), `! -i lo`; and a
    /// rule reached by a jump carries the jumping rule's conditions.
    #[test]
    fn interface_conditions_and_jumps_decide_where_it_applies() {
        let mut padded = [0u8; 16];
        padded[..3].copy_from_slice(b"br0");
        let iif = |data: &[u8], op| {
            vec![
                Expr::Meta {
                    key: META_IIFNAME,
                    dreg: 1,
                },
                cmp(1, op, data),
            ]
        };
        let mut jump = iif(b"docker", CMP_EQ);
        jump.push(Expr::Verdict(Jump::Jump("ECS".into())));
        let mut exact = iif(&padded, CMP_EQ);
        exact.extend(ecs(None));
        let mut not_lo = iif(b"lo\0", CMP_NEQ);
        not_lo.extend(ecs(None));
        let fw = foreign(vec![
            nat_chain("ip nat", "PREROUTING", true, vec![jump, exact]),
            nat_chain("ip nat", "ECS", false, vec![ecs(None)]),
            nat_chain("ip hand", "pre", true, vec![not_lo]),
        ]);
        let on = |name: &str| {
            admitted_findings(&fw, &[iface(name, vec![])])
                .into_iter()
                .map(|f| f.message.split(" DNATs").next().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            on("docker0"),
            [
                "table ip hand chain pre rule handle 1",
                "table ip nat chain ECS rule handle 1"
            ]
        );
        assert_eq!(
            on("br0"),
            [
                "table ip hand chain pre rule handle 1",
                "table ip nat chain PREROUTING rule handle 2"
            ]
        );
        assert_eq!(on("br00"), ["table ip hand chain pre rule handle 1"]);
    }

    /// A DNAT elsewhere (a container's address), a chain that is not nat at
    /// prerouting, and a DNAT whose address is not a constant are not forwards to
    /// loopback.
    #[test]
    fn only_constant_dnats_to_loopback_at_prerouting_count() {
        let mut elsewhere = ecs(None);
        *elsewhere.last_mut().unwrap() = Expr::Dnat(DnatTo {
            addr: Some(Ipv4Addr::new(192, 0, 2, 10)),
            port: None,
        });
        let mut unknown = ecs(None);
        *unknown.last_mut().unwrap() = Expr::Dnat(DnatTo {
            addr: None,
            port: None,
        });
        let mut output = nat_chain("ip nat", "OUTPUT", true, vec![ecs(None)]);
        output.base.as_mut().unwrap().hook = Hook::Output;
        let fw = foreign(vec![
            nat_chain("ip nat", "PREROUTING", true, vec![elsewhere, unknown]),
            output,
        ]);
        assert!(forwards(&fw).is_empty());
    }

    /// A forward to a grant's own target is dropped by the guard (the grant's chain
    /// takes only its flows): a warning that names the grant.
    #[test]
    fn a_forward_to_a_grant_target_is_a_warning_naming_the_grant() {
        let g = Grant {
            name: "creds".into(),
            iface: "docker0".into(),
            proto: Proto::Tcp,
            listen: "192.0.2.1".parse().unwrap(),
            port: 8080,
            to: "127.0.0.1:51679".parse().unwrap(),
            allow: vec!["192.0.2.0/25".parse().unwrap()],
            network: None,
        };
        let fw = foreign(vec![nat_chain(
            "ip nat",
            "PREROUTING",
            true,
            vec![ecs(None)],
        )]);
        let f = admitted_findings(&fw, &[iface("docker0", vec![g])]);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Warning);
        assert!(
            f[0].message.contains("target of grant creds"),
            "{}",
            f[0].message
        );
    }
}
