//! The command that lets a grant's flow through the firewall that stops it, written for
//! that firewall (nft, iptables-nft, iptables-legacy, ufw, firewalld, kube-proxy, Incus
//! network ACLs) and for the packet the stopping chain sees: before loopgate's DNAT
//! (raw, mangle, kube-proxy's filter chains at dstnat-10) the client's own tuple, after
//! it the translated one marked `ct status dnat`, at output and postrouting the replies
//! before or after their source is translated back. Each one is run as
//! printed in the integration tests, which check that the client gets through and the
//! finding goes.
//!
//! A Docker or Podman network's bridge (`br-<id>`) is named anew when the network is
//! recreated, so its name is left out of the rule: the DNAT mark and the target
//! address keep it as narrow (only flows loopgate translated to the target).

use super::flow::{PRIORITY_CONNTRACK, PRIORITY_DSTNAT, PRIORITY_SRCNAT};
use crate::grant::Grant;
use crate::kernel::firewall::{BaseHook, Foreign, Hook};

/// Which packet of the flow the stopping chain sees, and so what a rule must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    /// The client's packet as sent (to the listen address), before loopgate's DNAT.
    Original,
    /// Both may be seen (a chain at dstnat's own priority).
    Either,
    /// The client's packet after loopgate's DNAT (to the target).
    Translated,
    /// The replies, from the target, before conntrack has seen them (raw output).
    ReplyUntracked,
    /// The replies, from the target, before their source is translated back.
    Reply,
    /// Both reply views (a chain at srcnat's own priority, where the translation back
    /// happens).
    ReplyEither,
    /// The replies after it (from the listen address).
    ReplyTranslated,
}

fn view(base: Option<&BaseHook>) -> View {
    match base.map(|b| (b.hook, b.priority)) {
        Some((Hook::Prerouting, p)) if p < PRIORITY_DSTNAT => View::Original,
        Some((Hook::Prerouting, p)) if p == PRIORITY_DSTNAT => View::Either,
        Some((Hook::Output, p)) if p <= PRIORITY_CONNTRACK => View::ReplyUntracked,
        Some((Hook::Output, _)) => View::Reply,
        Some((Hook::Postrouting, p)) if p < PRIORITY_SRCNAT => View::Reply,
        Some((Hook::Postrouting, p)) if p == PRIORITY_SRCNAT => View::ReplyEither,
        Some((Hook::Postrouting, _)) => View::ReplyTranslated,
        _ => View::Translated,
    }
}

/// True for an interface named after a runtime network's id (Docker's `br-<12 hex>`),
/// which a `compose down` / `up` replaces.
fn transient(iface: &str) -> bool {
    iface
        .strip_prefix("br-")
        .is_some_and(|id| id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The nft rule (without `nft insert rule TABLE CHAIN`) for `view`.
fn nft_rules(g: &Grant, v: View) -> Vec<String> {
    let p = g.proto;
    let (to, tport) = (g.to.ip(), g.to.port());
    let keep_name = !transient(&g.iface);
    let iif = |dir: &str| match keep_name {
        true => format!("{dir} \"{}\" ", g.iface),
        false => String::new(),
    };
    let original = format!(
        "{}ip daddr {} {p} dport {} accept",
        iif("iifname"),
        g.listen,
        g.port
    );
    let translated = format!(
        "{}ip daddr {to} {p} dport {tport} ct status dnat accept",
        iif("iifname")
    );
    let reply = format!(
        "{}ip saddr {to} {p} sport {tport} ct status dnat accept",
        iif("oifname")
    );
    let reply_translated = format!(
        "{}ip saddr {} {p} sport {} ct status dnat accept",
        iif("oifname"),
        g.listen,
        g.port
    );
    let untracked = format!("{}ip saddr {to} {p} sport {tport} accept", iif("oifname"));
    pick(
        v,
        [original, translated, reply, reply_translated, untracked],
    )
}

/// The rules `v` needs, out of the five forms of one syntax: the client's packet before
/// and after the DNAT, the reply before and after its source is translated back, and
/// the untracked reply.
fn pick(v: View, forms: [String; 5]) -> Vec<String> {
    let [original, translated, reply, reply_translated, untracked] = forms;
    match v {
        View::Original => vec![original],
        View::Either => vec![original, translated],
        View::Translated => vec![translated],
        View::ReplyUntracked => vec![untracked],
        View::Reply => vec![reply],
        View::ReplyEither => vec![reply, reply_translated],
        View::ReplyTranslated => vec![reply_translated],
    }
}

/// The same rules for iptables (`-t TABLE -I CHAIN ...`).
fn iptables_rules(g: &Grant, v: View) -> Vec<String> {
    let p = g.proto;
    let (to, tport) = (g.to.ip(), g.to.port());
    let keep_name = !transient(&g.iface);
    let iif = |flag: &str| match keep_name {
        true => format!("{flag} {} ", g.iface),
        false => String::new(),
    };
    let original = format!(
        "{}-d {} -p {p} --dport {} -j ACCEPT",
        iif("-i"),
        g.listen,
        g.port
    );
    let translated = format!(
        "{}-d {to} -p {p} --dport {tport} -m conntrack --ctstate DNAT -j ACCEPT",
        iif("-i")
    );
    let reply = format!(
        "{}-s {to} -p {p} --sport {tport} -m conntrack --ctstate DNAT -j ACCEPT",
        iif("-o")
    );
    let reply_translated = format!(
        "{}-s {} -p {p} --sport {} -m conntrack --ctstate DNAT -j ACCEPT",
        iif("-o"),
        g.listen,
        g.port
    );
    let untracked = format!("{}-s {to} -p {p} --sport {tport} -j ACCEPT", iif("-o"));
    pick(
        v,
        [original, translated, reply, reply_translated, untracked],
    )
}

fn quoted(lines: &[String], prefix: &str) -> String {
    lines
        .iter()
        .map(|l| format!("`{prefix}{l}`"))
        .collect::<Vec<_>>()
        .join(" and ")
}

/// The lines that let `g`'s flow through chain `chain` of table `table`, for the
/// firewall that owns it.
pub(super) fn remedies(foreign: &Foreign, g: &Grant, table: &str, chain: &str) -> String {
    let base = foreign
        .chains
        .iter()
        .find(|c| c.table == table && c.name == chain)
        .and_then(|c| c.base.as_ref());
    let v = view(base);
    let (p, tport) = (g.proto, g.to.port());
    let unnamed = match transient(&g.iface) {
        true => format!(
            " (no interface name: {} is renamed when its network is recreated; the DNAT mark keeps the rule to loopgate's flows)",
            g.iface
        ),
        false => String::new(),
    };
    // iptables tables: legacy, or iptables-nft's (`ip filter` and its kin, holding
    // iptables' upper-case chains).
    let iptables = if let Some(t) = table.strip_prefix("iptables-legacy ") {
        Some(("iptables-legacy", t))
    } else {
        table
            .strip_prefix("ip ")
            .filter(|t| matches!(*t, "filter" | "raw" | "mangle" | "nat" | "security"))
            .filter(|_| chain.chars().all(|c| c.is_ascii_uppercase()))
            .map(|t| ("iptables-nft", t))
    };
    let firewall_line = match iptables {
        Some((cmd, t)) => {
            let t = if t == "filter" {
                String::new()
            } else {
                format!("-t {t} ")
            };
            quoted(&iptables_rules(g, v), &format!("{cmd} {t}-I {chain} "))
        }
        None => quoted(
            &nft_rules(g, v),
            &format!("nft insert rule {table} {chain} "),
        ),
    };
    let ufw = foreign
        .chains
        .iter()
        .any(|c| c.table == table && c.name.starts_with("ufw-"));
    if ufw && v == View::Translated {
        let on = match transient(&g.iface) {
            true => String::new(),
            false => format!("in on {} ", g.iface),
        };
        return format!(
            "to let it through with ufw: `ufw allow {on}to {} port {tport} proto {p}` (an input rule, not `ufw route`), or directly: {firewall_line}{unnamed}",
            g.to.ip()
        );
    }
    // An Incus network ACL (`security.acls` of a bridge network): Incus's table, whose
    // chain `acl.<network>` it rewrites from the ACLs whenever one changes. The grant's
    // packets come from the network into the host, which Incus calls egress
    // (`aclRuleCriteriaToRules` in drivers_nftables.go: egress matches `iifname`).
    let incus_network = (table == "inet incus")
        .then(|| {
            ["acl.", "aclin."]
                .iter()
                .find_map(|p| chain.strip_prefix(p))
        })
        .flatten()
        .filter(|_| matches!(v, View::Original | View::Either | View::Translated));
    if let Some(net) = incus_network {
        return format!(
            "to let it through with Incus (it rewrites chain acl.{net} of its table from network {net}'s ACLs, so not an nft rule there): allow it as egress (from the network into the host) in an ACL of the network: `incus network acl rule add \"$(incus network get {net} security.acls | cut -d, -f1)\" egress action=allow protocol={p} destination={} destination_port={tport}` (the first ACL in security.acls; the rule applies to every network and instance using that ACL, and a drop or reject rule of the ACL that matches the flow still comes first)",
            g.to.ip()
        );
    }
    if table == "ip kube-proxy" {
        return format!(
            "kube-proxy rewrites its table, so the lasting fix is in Kubernetes (the Service whose address and port the grant shares: its loadBalancerSourceRanges, or another address for the grant); until kube-proxy's next full sync: {firewall_line}{unnamed}"
        );
    }
    // firewalld >= 2.3 with StrictForwardPorts=yes: `ct status dnat jump
    // filter_INPUT_dnat`, which rejects every DNATed flow firewalld did not forward
    // itself, before any zone (firewalld's nftables.py, `_build_default_rules_dnat`).
    let strict = foreign
        .chains
        .iter()
        .any(|c| c.table == table && c.name == "filter_INPUT_dnat");
    if table == "inet firewalld" && strict {
        return "firewalld's StrictForwardPorts=yes rejects every DNATed flow firewalld did not set up itself, before any zone, so no zone, port or rich rule helps: set `StrictForwardPorts=no` in /etc/firewalld/firewalld.conf, then `firewall-cmd --reload`".to_string();
    }
    if table == "inet firewalld" {
        return format!(
            "to let it through with firewalld: `firewall-cmd --zone=\"$(firewall-cmd --get-zone-of-interface={})\" --add-port={tport}/{p}` (add --permanent to keep it); firewalld replaces its table on reload, so not an nft rule there{unnamed}",
            g.iface
        );
    }
    format!("to let it through: {firewall_line}{unnamed}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_matches_the_packet_the_chain_sees() {
        let b = |hook, priority| BaseHook {
            hook,
            priority,
            policy_drop: false,
            nat: false,
        };
        assert_eq!(view(Some(&b(Hook::Prerouting, -300))), View::Original);
        assert_eq!(view(Some(&b(Hook::Prerouting, -110))), View::Original);
        assert_eq!(view(Some(&b(Hook::Prerouting, -100))), View::Either);
        assert_eq!(view(Some(&b(Hook::Prerouting, 0))), View::Translated);
        assert_eq!(view(Some(&b(Hook::Input, 0))), View::Translated);
        assert_eq!(view(Some(&b(Hook::Output, 0))), View::Reply);
        assert_eq!(view(Some(&b(Hook::Output, -300))), View::ReplyUntracked);
        assert_eq!(view(Some(&b(Hook::Postrouting, 0))), View::Reply);
        assert_eq!(view(Some(&b(Hook::Postrouting, 100))), View::ReplyEither);
        assert_eq!(
            view(Some(&b(Hook::Postrouting, 300))),
            View::ReplyTranslated
        );
        assert!(transient("br-0123456789ab") && !transient("br0") && !transient("br-lan"));
    }
}
