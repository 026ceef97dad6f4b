//! `loopgate trace`: follow packets through every table and chain, and say in plain
//! words where each was accepted, DNATed or dropped.
//!
//! A rule in a table of trace's own (`ip loopgate_trace`, see
//! [`crate::kernel::nft::trace`]) sets the `nftrace` bit on packets arriving on the
//! interface; the kernel then reports each step of those packets on the trace
//! multicast group ([`crate::kernel::trace`]). Steps are grouped into packets by their
//! trace id: a packet starts with the step of trace's own rule and is complete when
//! its steps stop coming (they arrive within microseconds of each other). The table is
//! removed however trace ends: count reached, timeout, SIGINT/SIGTERM (a flag the
//! event loop polls), or an error (the table's guard deletes it on drop). Nothing else
//! is changed.

use crate::cli::TraceArgs;
use crate::error::{EXIT_NO_PACKET, EXIT_OK};
use crate::kernel::netlink::NlSocket;
use crate::kernel::nft::trace::{
    lookup_rule, RuleInfo, TraceFilter, TraceTable, TRACE_CHAIN, TRACE_TABLE,
};
use crate::kernel::trace::{StepKind, TraceEvent, TraceListener};
use crate::{bad_input, errln, outln};
use anyhow::Result;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// How long the event loop waits at most before it looks at the clock and the flag.
const POLL: Duration = Duration::from_millis(100);
/// A packet whose steps stopped coming this long ago is complete.
const QUIET: Duration = Duration::from_millis(150);

/// The steps of one packet, in the order the kernel reported them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The steps; the first is trace's own rule.
    pub events: Vec<TraceEvent>,
}

/// Groups trace events into packets. Steps of one packet carry one trace id within a
/// hook, but the kernel derives the id from the packet's hash, which may change on the
/// way (Linux 6.18 gives the input hook another id than prerouting): a new id whose
/// first step shows a packet already being followed (same IP id, protocol, length and
/// source or destination address) joins that packet. Only packets marked by trace's
/// own rule are followed: another tool's traced packets are ignored.
#[derive(Debug, Default)]
pub struct Assembler {
    open: Vec<Open>,
}

#[derive(Debug)]
struct Open {
    ids: Vec<u32>,
    last: Instant,
    header: Option<Vec<u8>>,
    events: Vec<TraceEvent>,
}

/// The step of trace's own rule: the first of every packet it follows.
fn starts_packet(ev: &TraceEvent) -> bool {
    ev.family == libc::NFPROTO_IPV4 as u8
        && ev.table == TRACE_TABLE
        && ev.chain == TRACE_CHAIN
        && ev.kind == StepKind::Rule
        && ev.rule_handle.is_some()
}

/// Whether two IPv4 headers are of one packet, before and after NAT.
fn same_packet(a: &[u8], b: &[u8]) -> bool {
    a.len() >= 20
        && b.len() >= 20
        && a[2..6] == b[2..6] // total length, identification
        && a[9] == b[9] // protocol
        && (a[12..16] == b[12..16] || a[16..20] == b[16..20])
}

impl Assembler {
    /// Adds one event; returns the packet it completes, if any (a new packet whose id
    /// an earlier one had: the kernel reuses ids).
    pub fn push(&mut self, ev: TraceEvent, now: Instant) -> Option<Packet> {
        let at = self.open.iter().position(|o| o.ids.contains(&ev.id));
        if starts_packet(&ev) {
            let done = at.map(|i| Packet {
                events: self.open.remove(i).events,
            });
            self.open.push(Open {
                ids: vec![ev.id],
                last: now,
                header: ev.network_header.clone(),
                events: vec![ev],
            });
            return done;
        }
        let at = at.or_else(|| {
            let net = ev.network_header.as_deref()?;
            self.open
                .iter()
                .rposition(|o| o.header.as_deref().is_some_and(|h| same_packet(h, net)))
        })?;
        let open = &mut self.open[at];
        if !open.ids.contains(&ev.id) {
            open.ids.push(ev.id);
        }
        open.last = now;
        open.events.push(ev);
        None
    }

    /// The packets whose last step is at least `quiet` old, oldest first.
    pub fn quiet(&mut self, now: Instant, quiet: Duration) -> Vec<Packet> {
        let (done, open): (Vec<_>, Vec<_>) = std::mem::take(&mut self.open)
            .into_iter()
            .partition(|o| now.duration_since(o.last) >= quiet);
        self.open = open;
        done.into_iter()
            .map(|o| Packet { events: o.events })
            .collect()
    }

    /// Every packet still open, oldest first.
    pub fn finish(&mut self) -> Vec<Packet> {
        std::mem::take(&mut self.open)
            .into_iter()
            .map(|o| Packet { events: o.events })
            .collect()
    }
}

/// A rule by (family, table, chain, handle).
pub type RuleKey = (u8, String, String, u64);

/// What formatting looks up: interface names by index, rules by handle.
#[derive(Debug, Default)]
pub struct Names {
    /// Interface names by ifindex.
    pub ifaces: HashMap<u32, String>,
    /// Rules by key; a missing one is printed by handle only.
    pub rules: HashMap<RuleKey, RuleInfo>,
}

/// nft's name of a table family.
pub fn family_name(family: u8) -> String {
    match i32::from(family) {
        libc::NFPROTO_INET => "inet".into(),
        libc::NFPROTO_IPV4 => "ip".into(),
        libc::NFPROTO_ARP => "arp".into(),
        libc::NFPROTO_NETDEV => "netdev".into(),
        libc::NFPROTO_BRIDGE => "bridge".into(),
        libc::NFPROTO_IPV6 => "ip6".into(),
        n => format!("family {n}"),
    }
}

/// A verdict in nft's words.
pub fn verdict_name(code: i32, chain: Option<&str>) -> String {
    let target = chain.unwrap_or("?");
    match code {
        -1 => "continue".into(),
        -2 => "break".into(),
        -3 => format!("jump {target}"),
        -4 => format!("goto {target}"),
        -5 => "return".into(),
        c if c >= 0 => match c & libc::NF_VERDICT_MASK {
            0 => "drop".into(),
            1 => "accept".into(),
            2 => "stolen".into(),
            3 => "queue".into(),
            4 => "repeat".into(),
            5 => "stop".into(),
            n => format!("verdict {n}"),
        },
        c => format!("verdict {c}"),
    }
}

/// What the headers say of a packet: `SRC[:PORT] -> DST[:PORT]`, the protocol, and
/// the TCP flags.
fn endpoints(net: &[u8], transport: Option<&[u8]>) -> Option<(String, String, String)> {
    if net.len() < 20 || net[0] >> 4 != 4 {
        return None;
    }
    let src = Ipv4Addr::new(net[12], net[13], net[14], net[15]);
    let dst = Ipv4Addr::new(net[16], net[17], net[18], net[19]);
    let proto = net[9];
    let name = match proto {
        1 => "icmp".to_string(),
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        132 => "sctp".to_string(),
        n => format!("protocol {n}"),
    };
    let ports = matches!(proto, 6 | 17 | 132)
        .then_some(transport)
        .flatten()
        .filter(|t| t.len() >= 4)
        .map(|t| {
            (
                u16::from_be_bytes([t[0], t[1]]),
                u16::from_be_bytes([t[2], t[3]]),
            )
        });
    let ends = match ports {
        Some((s, d)) => format!("{src}:{s} -> {dst}:{d}"),
        None => format!("{src} -> {dst}"),
    };
    let flags = match (proto, transport) {
        (6, Some(t)) if t.len() >= 14 => {
            let names = ["FIN", "SYN", "RST", "PSH", "ACK", "URG"];
            let set: Vec<&str> = (0..6)
                .filter(|b| t[13] & (1 << b) != 0)
                .map(|b| names[b])
                .collect();
            if set.is_empty() {
                String::new()
            } else {
                format!(" [{}]", set.join(","))
            }
        }
        _ => String::new(),
    };
    Some((ends, name, flags))
}

fn rule_label(ev: &TraceEvent, info: Option<&RuleInfo>) -> String {
    let mut s = match ev.rule_handle {
        Some(h) => format!("rule {h}"),
        None => "rule".to_string(),
    };
    if let Some(c) = info.map(|i| &i.comment).filter(|c| !c.is_empty()) {
        s.push_str(&format!(" \"{c}\""));
    }
    s
}

/// How a packet's trip ended, as far as the trace shows.
enum End {
    /// Dropped (or rejected, queued, stolen): the word and where.
    Stopped(&'static str, String),
}

/// The lines printed for one packet: a header, one line per step, and the outcome.
pub fn format_packet(packet: &Packet, names: &Names) -> Vec<String> {
    let events = &packet.events;
    let mut lines = Vec::new();
    let iface = |i: u32| {
        names
            .ifaces
            .get(&i)
            .cloned()
            .unwrap_or_else(|| format!("ifindex {i}"))
    };
    let mut current = None;
    match events.iter().find_map(|e| {
        let (ends, proto, flags) =
            endpoints(e.network_header.as_deref()?, e.transport_header.as_deref())?;
        Some((ends, proto, flags, e.iif))
    }) {
        Some((ends, proto, flags, iif)) => {
            let on = iif.map(|i| format!(" on {}", iface(i))).unwrap_or_default();
            lines.push(format!("packet {ends} {proto}{on}{flags}"));
            current = Some(ends);
        }
        None => lines.push(format!(
            "packet (trace id {:08x})",
            events.first().map_or(0, |e| e.id)
        )),
    }
    let mut end: Option<End> = None;
    let mut dnat: Option<String> = None;
    let mut dnat_to: Option<String> = None;
    let mut last_accept: Option<String> = None;
    for (i, ev) in events.iter().enumerate() {
        if let Some(net) = ev.network_header.as_deref() {
            if let Some((ends, ..)) = endpoints(net, ev.transport_header.as_deref()) {
                if current.as_ref().is_some_and(|c| *c != ends) {
                    lines.push(format!("  now {ends}"));
                    if dnat.is_some() && dnat_to.is_none() {
                        dnat_to = ends.split(" -> ").nth(1).map(str::to_string);
                    }
                }
                current = Some(ends);
            }
        }
        let same_chain =
            |o: &TraceEvent| o.family == ev.family && o.table == ev.table && o.chain == ev.chain;
        // The kernel reports the end of a chain as a step without a rule (of kind rule
        // or return); at the end of a base chain the policy step follows: say it once.
        let end_of_chain =
            ev.kind == StepKind::Return || (ev.kind == StepKind::Rule && ev.rule_handle.is_none());
        if end_of_chain
            && events
                .get(i + 1)
                .is_some_and(|n| n.kind == StepKind::Policy && same_chain(n))
        {
            continue;
        }
        let family = family_name(ev.family);
        let place = format!("table {family} {}, chain {}", ev.table, ev.chain);
        let code = ev.verdict.as_ref().map(|v| v.code);
        let target = ev.verdict.as_ref().and_then(|v| v.chain.as_deref());
        let what = match ev.kind {
            _ if end_of_chain => "end of chain, back to the calling chain".to_string(),
            StepKind::Rule => {
                let key = (
                    ev.family,
                    ev.table.clone(),
                    ev.chain.clone(),
                    ev.rule_handle.unwrap_or(0),
                );
                let info = names.rules.get(&key);
                let label = rule_label(ev, info);
                let action = info.and_then(|i| i.action);
                let verdict = code.map_or("matched".to_string(), |c| verdict_name(c, target));
                let verdict = match (code, action) {
                    (Some(1), Some(a)) => format!("accept ({a})"),
                    (Some(0), Some("reject")) => "reject".to_string(),
                    (_, Some(a)) if code != Some(0) => format!("{verdict} ({a})"),
                    _ => verdict,
                };
                if code == Some(1) {
                    if action == Some("DNAT") {
                        dnat.get_or_insert_with(|| place.clone());
                    }
                    last_accept = Some(format!("{place}: {label}"));
                }
                if let Some(c) = code.filter(|c| *c >= 0) {
                    let word = match (c & libc::NF_VERDICT_MASK, action) {
                        (0, Some("reject")) => Some("rejected"),
                        (0, _) => Some("dropped"),
                        (2, _) => Some("taken over (stolen)"),
                        (3, _) => Some("queued to a userspace program"),
                        _ => None,
                    };
                    if let (Some(word), None) = (word, &end) {
                        end = Some(End::Stopped(word, format!("{place}: {label}")));
                    }
                }
                format!("{label}: {verdict}")
            }
            StepKind::Return => "return".to_string(), // an end of chain, handled above
            StepKind::Policy => {
                let policy = ev
                    .policy
                    .map_or("?".to_string(), |p| verdict_name(p as i32, None));
                match ev.policy {
                    Some(0) if end.is_none() => {
                        end = Some(End::Stopped("dropped", format!("{place}: policy drop")))
                    }
                    Some(1) => last_accept = Some(format!("{place}: policy accept")),
                    _ => {}
                }
                format!("policy {policy}")
            }
            StepKind::Other(n) => format!("step of kind {n}"),
        };
        lines.push(format!(
            "  table {family} {} chain {}: {what}",
            ev.table, ev.chain
        ));
    }
    lines.push(match end {
        Some(End::Stopped(word, at)) => format!("{word} by {at}"),
        None => {
            let mut s = "accepted".to_string();
            if let Some(d) = dnat {
                s.push_str(&format!(": DNATed by {d}"));
                if let Some(to) = dnat_to {
                    s.push_str(&format!(" to {to}"));
                }
            }
            if let Some(a) = last_accept {
                s.push_str(&format!("; last verdict: {a}"));
            }
            s
        }
    });
    lines
}

/// Checks IFACE and --port.
fn parse_filter(args: &TraceArgs) -> Result<TraceFilter> {
    let iface = crate::input::parse_iface(&args.iface)?;
    if let Some(at) = iface.find('*') {
        if at + 1 != iface.len() || at == 0 {
            bad_input!(
                "interface {iface:?}: `*` may only end a prefix, as in br-* (every interface whose name starts with br-)"
            );
        }
    }
    let port = args
        .port
        .as_deref()
        .map(crate::input::parse_port)
        .transpose()?;
    Ok(TraceFilter { iface, port })
}

/// Looks up what formatting `packet` needs and is not known yet.
fn resolve(packet: &Packet, names: &mut Names, sock: &mut Option<NlSocket>) {
    for ev in &packet.events {
        for i in [ev.iif, ev.oif].into_iter().flatten() {
            if let std::collections::hash_map::Entry::Vacant(v) = names.ifaces.entry(i) {
                if let Ok(n) = nix::net::if_::if_indextoname(i) {
                    v.insert(n.to_string_lossy().into_owned());
                }
            }
        }
        let (StepKind::Rule, Some(handle)) = (ev.kind, ev.rule_handle) else {
            continue;
        };
        let key = (ev.family, ev.table.clone(), ev.chain.clone(), handle);
        if names.rules.contains_key(&key) {
            continue;
        }
        if sock.is_none() {
            *sock = NlSocket::netfilter().ok();
        }
        if let Some(s) = sock.as_mut() {
            if let Ok(Some(info)) = lookup_rule(s, ev.family, &ev.table, &ev.chain, handle) {
                names.rules.insert(key, info);
            }
        }
    }
}

/// Runs `loopgate trace`; returns 0 when a packet was traced, 1 when none was seen.
///
/// Errors: bad input (exit 2); the trace table cannot be created or removed, or the
/// events cannot be read (exit 3; the table is removed all the same).
pub fn run(args: &TraceArgs) -> Result<i32> {
    let filter = parse_filter(args)?;
    if !filter.iface.ends_with('*') && nix::net::if_::if_nametoindex(filter.iface.as_str()).is_err()
    {
        errln!(
            "loopgate trace: warning: there is no interface {:?} now; tracing the packets that arrive on it once it exists",
            filter.iface
        );
    }
    crate::kernel::os::stop_on_term_and_int();
    // Subscribed first, so the first packet's steps are not missed.
    let mut listener = TraceListener::subscribe()?;
    let table = TraceTable::install(&filter)?;
    let mut until = Vec::new();
    if let Some(n) = args.count {
        until.push(format!("{n} packet(s)"));
    }
    if let Some(s) = args.timeout {
        until.push(format!("{s} s"));
    }
    until.push("Ctrl-C".to_string());
    errln!(
        "loopgate trace: tracing packets matching `{}` (table ip {TRACE_TABLE}) until {}",
        filter.describe(),
        until.join(" or ")
    );
    let traced = follow(&mut listener, args);
    // Removed before any error is reported; the guard would do it on drop too.
    let removed = table.remove();
    let seen = traced?;
    removed?;
    if seen == 0 {
        outln!("no packet seen");
        return Ok(EXIT_NO_PACKET);
    }
    errln!("loopgate trace: traced {seen} packet(s); tracing is switched off");
    Ok(EXIT_OK)
}

/// The event loop: prints each packet as it completes; returns how many it printed.
fn follow(listener: &mut TraceListener, args: &TraceArgs) -> Result<u64> {
    let deadline = args
        .timeout
        .map(|s| Instant::now() + Duration::from_secs(s));
    let want = args.count.unwrap_or(u64::MAX);
    let mut seen = 0u64;
    let mut asm = Assembler::default();
    let mut names = Names::default();
    let mut sock = None;
    let mut warned = false;
    let mut print = |p: Packet, seen: &mut u64| {
        if *seen >= want {
            return;
        }
        resolve(&p, &mut names, &mut sock);
        if *seen > 0 {
            outln!("");
        }
        for line in format_packet(&p, &names) {
            outln!("{line}");
        }
        *seen += 1;
    };
    loop {
        let now = Instant::now();
        let over = deadline.is_some_and(|d| now >= d);
        if over || crate::kernel::os::stop_requested() {
            for p in asm.finish() {
                print(p, &mut seen);
            }
            return Ok(seen);
        }
        let wait = deadline.map_or(POLL, |d| POLL.min(d - now));
        let got = listener.wait(wait)?;
        if got.lost && !warned {
            warned = true;
            errln!("loopgate trace: warning: the kernel dropped trace events (too many packets at once); narrow the trace with --port");
        }
        let now = Instant::now();
        for ev in got.events {
            if let Some(p) = asm.push(ev, now) {
                print(p, &mut seen);
            }
        }
        for p in asm.quiet(now, QUIET) {
            print(p, &mut seen);
        }
        if seen >= want {
            return Ok(seen);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::trace::parse_message;
    use crate::kernel::trace::tests::{message, Step};

    const RETURN: u32 = 2;
    const POLICY: u32 = 1;
    const INET: u8 = libc::NFPROTO_INET as u8;

    fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8) -> Vec<u8> {
        let mut h = vec![0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&60u16.to_be_bytes());
        h[4..6].copy_from_slice(&0xcf66u16.to_be_bytes());
        h[9] = proto;
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        h
    }

    fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[13] = flags;
        t
    }

    fn ev(s: Step) -> TraceEvent {
        parse_message(&message(&s)).expect("a trace message")
    }

    /// A SYN from a container to a published port, as Linux 6.18 reports it: marked,
    /// DNATed by loopgate, then dropped by another table's input policy; the input
    /// hook's steps carry another trace id. The end of a chain is a rule step without
    /// a handle.
    fn dropped_syn() -> Packet {
        let client = [192, 0, 2, 10];
        let syn = || Some(tcp(40000, 3306, 0x02));
        let end = |table, chain, net: Option<Vec<u8>>| Step {
            table,
            chain,
            verdict: Some((-1, None)),
            iif: net.as_ref().map(|_| 4),
            transport: net.as_ref().and_then(|_| syn()),
            network: net,
            ..Step::default()
        };
        let policy = |id, family, table, chain, policy| Step {
            id,
            family,
            table,
            chain,
            kind: POLICY,
            policy: Some(policy),
            ..Step::default()
        };
        let before = || Some(ipv4(client, [192, 0, 2, 1], 6));
        let events = vec![
            ev(Step {
                handle: Some(2),
                verdict: Some((-1, None)),
                iif: Some(4),
                network: before(),
                transport: syn(),
                ..Step::default()
            }),
            ev(end("loopgate_trace", "prerouting", None)),
            ev(policy(0xabcd, 2, "loopgate_trace", "prerouting", 1)),
            ev(end("loopgate", "raw_prerouting", before())),
            ev(policy(0xabcd, 2, "loopgate", "raw_prerouting", 1)),
            ev(Step {
                table: "loopgate",
                chain: "nat_prerouting",
                handle: Some(9),
                verdict: Some((-3, Some("nat_br0_192.0.2.1_tcp_3306"))),
                iif: Some(4),
                network: before(),
                transport: syn(),
                ..Step::default()
            }),
            ev(Step {
                table: "loopgate",
                chain: "nat_br0_192.0.2.1_tcp_3306",
                handle: Some(11),
                verdict: Some((1, None)),
                ..Step::default()
            }),
            ev(Step {
                id: 0x1234,
                family: INET,
                ..end("filter", "input", Some(ipv4(client, [127, 0, 0, 1], 6)))
            }),
            ev(policy(0x1234, INET, "filter", "input", 0)),
        ];
        Packet { events }
    }

    fn names() -> Names {
        let mut names = Names::default();
        names.ifaces.insert(4, "br0".into());
        names.rules.insert(
            (
                2,
                "loopgate".into(),
                "nat_br0_192.0.2.1_tcp_3306".into(),
                11,
            ),
            RuleInfo {
                comment: "grant br0-tcp-3306".into(),
                action: Some("DNAT"),
            },
        );
        names
    }

    #[test]
    fn a_dropped_packet_names_the_table_chain_and_policy_that_dropped_it() {
        let lines = format_packet(&dropped_syn(), &names());
        assert_eq!(
            lines,
            vec![
                "packet 192.0.2.10:40000 -> 192.0.2.1:3306 tcp on br0 [SYN]",
                "  table ip loopgate_trace chain prerouting: rule 2: continue",
                "  table ip loopgate_trace chain prerouting: policy accept",
                "  table ip loopgate chain raw_prerouting: policy accept",
                "  table ip loopgate chain nat_prerouting: rule 9: jump nat_br0_192.0.2.1_tcp_3306",
                "  table ip loopgate chain nat_br0_192.0.2.1_tcp_3306: rule 11 \"grant br0-tcp-3306\": accept (DNAT)",
                "  now 192.0.2.10:40000 -> 127.0.0.1:3306",
                "  table inet filter chain input: policy drop",
                "dropped by table inet filter, chain input: policy drop",
            ]
        );
    }

    #[test]
    fn an_accepted_packet_says_where_it_was_dnated_and_what_let_it_through() {
        let mut p = dropped_syn();
        p.events.last_mut().unwrap().policy = Some(1);
        let lines = format_packet(&p, &names());
        assert_eq!(
            lines.last().unwrap(),
            "accepted: DNATed by table ip loopgate, chain nat_br0_192.0.2.1_tcp_3306 to 127.0.0.1:3306; last verdict: table inet filter, chain input: policy accept"
        );
    }

    #[test]
    fn a_rule_drop_or_reject_is_named_by_its_rule() {
        let mut p = dropped_syn();
        p.events.truncate(5);
        p.events.push(ev(Step {
            table: "loopgate",
            chain: "guard_br0",
            handle: Some(5),
            verdict: Some((0, None)),
            ..Step::default()
        }));
        let lines = format_packet(&p, &Names::default());
        assert_eq!(
            lines.last().unwrap(),
            "dropped by table ip loopgate, chain guard_br0: rule 5"
        );
        // Unknown interface and rule: by number.
        assert!(lines[0].ends_with("on ifindex 4 [SYN]"), "{}", lines[0]);
        let mut names = Names::default();
        names.rules.insert(
            (2, "loopgate".into(), "guard_br0".into(), 5),
            RuleInfo {
                comment: String::new(),
                action: Some("reject"),
            },
        );
        let lines = format_packet(&p, &names);
        assert_eq!(
            lines[lines.len() - 2],
            "  table ip loopgate chain guard_br0: rule 5: reject"
        );
        assert_eq!(
            lines.last().unwrap(),
            "rejected by table ip loopgate, chain guard_br0: rule 5"
        );
    }

    #[test]
    fn steps_are_grouped_across_a_changed_id_and_a_reused_id_starts_a_new_packet() {
        let t0 = Instant::now();
        let mut asm = Assembler::default();
        let packet = dropped_syn();
        // Another tool's traced packet (not started by trace's rule) is ignored.
        assert!(asm
            .push(
                ev(Step {
                    id: 99,
                    table: "filter",
                    ..Step::default()
                }),
                t0
            )
            .is_none());
        for e in packet.events.clone() {
            assert!(asm.push(e, t0).is_none());
        }
        // A step of a new id that shows no packet being followed is not taken.
        let mut stray = packet.events[7].clone();
        stray.id = 77;
        stray.network_header.as_mut().unwrap()[5] ^= 1; // another IP id
        assert!(asm.push(stray, t0).is_none());
        assert!(asm.quiet(t0 + Duration::from_millis(10), QUIET).is_empty());
        // The same id marked again: the first packet is complete.
        let again = packet.events[0].clone();
        assert_eq!(asm.push(again, t0), Some(packet.clone()));
        let rest = asm.quiet(t0 + QUIET, QUIET);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].events.len(), 1);
        assert!(asm.finish().is_empty());
    }

    #[test]
    fn a_regular_chain_that_ends_returns_to_its_caller() {
        let mut p = dropped_syn();
        p.events.truncate(6); // up to the jump to nat_br0_192.0.2.1_tcp_3306
        p.events.push(ev(Step {
            table: "loopgate",
            chain: "nat_br0_192.0.2.1_tcp_3306",
            kind: RETURN,
            verdict: Some((-1, None)),
            ..Step::default()
        }));
        let lines = format_packet(&p, &names());
        assert_eq!(
            lines[lines.len() - 2],
            "  table ip loopgate chain nat_br0_192.0.2.1_tcp_3306: end of chain, back to the calling chain"
        );
        assert_eq!(
            lines.last().unwrap(),
            "accepted; last verdict: table ip loopgate, chain raw_prerouting: policy accept"
        );
    }

    #[test]
    fn verdicts_and_families_read_as_nft_writes_them() {
        assert_eq!(verdict_name(-3, Some("x")), "jump x");
        assert_eq!(verdict_name(-4, Some("x")), "goto x");
        assert_eq!(verdict_name(0x0001_0003, None), "queue");
        assert_eq!(verdict_name(-5, None), "return");
        assert_eq!(family_name(1), "inet");
        assert_eq!(family_name(10), "ip6");
        assert_eq!(family_name(99), "family 99");
    }

    #[test]
    fn bad_trace_arguments_are_refused_as_bad_input() {
        let args = |iface: &str, port: Option<&str>| TraceArgs {
            iface: iface.into(),
            port: port.map(str::to_string),
            count: None,
            timeout: None,
        };
        for (iface, port) in [
            ("*", None),
            ("br*0", None),
            ("br0", Some("0")),
            ("a/b", None),
        ] {
            let err = parse_filter(&args(iface, port)).unwrap_err();
            assert_eq!(crate::error::exit_code_for(&err), 2, "{iface} {port:?}");
        }
        assert_eq!(
            parse_filter(&args("br-*", Some("53"))).unwrap(),
            TraceFilter {
                iface: "br-*".into(),
                port: Some(53)
            }
        );
    }
}
