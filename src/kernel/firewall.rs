//! Every other firewall of the network namespace as a plain model ([`Foreign`]): the
//! chains of the other `ip` and `inet` tables and of iptables-legacy, their rules as
//! the kernel holds them (register loads, compares, bitwise masks, verdicts). Read here
//! (the reading is in `kernel::nft::foreign` and [`super::legacy`]); audit judges what
//! they do with a grant's flow ([`crate::audit::firewall`]).

/// The netfilter hooks of IPv4 a base chain can be attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    /// NF_INET_PRE_ROUTING (0).
    Prerouting,
    /// NF_INET_LOCAL_IN (1).
    Input,
    /// NF_INET_FORWARD (2).
    Forward,
    /// NF_INET_LOCAL_OUT (3).
    Output,
    /// NF_INET_POST_ROUTING (4).
    Postrouting,
}

impl Hook {
    /// The hook with netfilter's number `n`.
    pub fn from_number(n: u32) -> Option<Hook> {
        Some(match n {
            0 => Hook::Prerouting,
            1 => Hook::Input,
            2 => Hook::Forward,
            3 => Hook::Output,
            4 => Hook::Postrouting,
            _ => return None,
        })
    }
}

/// Where a base chain is attached and what it does with what falls off its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseHook {
    /// The hook.
    pub hook: Hook,
    /// Order among the chains on the hook, lower first.
    pub priority: i32,
    /// True for `policy drop`.
    pub policy_drop: bool,
    /// True for `type nat`: it sees only the first packet of a flow.
    pub nat: bool,
}

/// A chain of another table (or of iptables-legacy), as the evaluator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// How the table is named in messages: `inet filter`, `ip nat`,
    /// `iptables-legacy filter`.
    pub table: String,
    /// The chain's name.
    pub name: String,
    /// Set for a base chain; `None` for a chain only reached by jump or goto.
    pub base: Option<BaseHook>,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

/// One rule: its expressions in order, and how a person finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The kernel's handle (`nft -a list ...` shows it), or the position for
    /// iptables-legacy.
    pub handle: u64,
    /// The expressions, as the kernel evaluates them.
    pub exprs: Vec<Expr>,
}

/// A verdict of an `immediate` expression (or a standard iptables target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Jump {
    /// `accept`: leaves this base chain; later base chains still judge the packet.
    Accept,
    /// `drop`.
    Drop,
    /// `continue`: the next rule.
    Continue,
    /// `return`: back to the chain that jumped here (the policy, in a base chain).
    Return,
    /// `jump CHAIN`.
    Jump(String),
    /// `goto CHAIN`.
    Goto(String),
}

/// One nf_tables expression as far as the evaluator models it. Registers are numbered
/// as the kernel reports them (`NFT_REG_1..4` for 16-byte registers, `NFT_REG32_xx`
/// from 8); register 0 is the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `meta load KEY => reg DREG`.
    Meta {
        /// `NFT_META_*`.
        key: u32,
        /// Destination register.
        dreg: u32,
    },
    /// `payload load LEN b @ BASE header + OFFSET => reg DREG`.
    Payload {
        /// `NFT_PAYLOAD_*_HEADER`: 0 link layer, 1 network, 2 transport.
        base: u32,
        /// Offset in that header.
        offset: u32,
        /// Bytes loaded.
        len: u32,
        /// Destination register.
        dreg: u32,
    },
    /// `ct load KEY => reg DREG [, dir DIR]`.
    Ct {
        /// `NFT_CT_*`.
        key: u32,
        /// 0 original, 1 reply, when given.
        dir: Option<u8>,
        /// Destination register.
        dreg: u32,
    },
    /// `immediate reg DREG DATA` (data, not a verdict).
    Load {
        /// Destination register.
        dreg: u32,
        /// The bytes.
        data: Vec<u8>,
    },
    /// `bitwise reg DREG = (reg SREG & MASK) ^ XOR`.
    Bitwise {
        /// Source register.
        sreg: u32,
        /// Destination register.
        dreg: u32,
        /// The mask.
        mask: Vec<u8>,
        /// The xor.
        xor: Vec<u8>,
    },
    /// `cmp OP reg SREG DATA`: OP 0 eq, 1 neq, 2 lt, 3 lte, 4 gt, 5 gte.
    Cmp {
        /// Source register.
        sreg: u32,
        /// `NFT_CMP_*`.
        op: u32,
        /// What the register is compared with (memcmp order).
        data: Vec<u8>,
    },
    /// `range OP reg SREG FROM TO`: OP 0 eq (inside), 1 neq (outside).
    Range {
        /// Source register.
        sreg: u32,
        /// `NFT_RANGE_*`.
        op: u32,
        /// Lower bound.
        from: Vec<u8>,
        /// Upper bound.
        to: Vec<u8>,
    },
    /// A set lookup: `reg SREG in @SET` (or `not in`, or a verdict map's `vmap`).
    Lookup {
        /// The set's name (`__set0` for an anonymous one; `multiport` for the xt match).
        set: String,
        /// The register holding the key.
        sreg: u32,
        /// `!= @set` (`NFT_LOOKUP_F_INV`).
        invert: bool,
        /// True when the lookup yields a verdict (`vmap`).
        verdict_map: bool,
        /// The set's members as read with the ruleset; `None` when they were not read
        /// (a set updated from the packet path, or too large): membership unknown.
        members: Option<Members>,
    },
    /// The xt `addrtype` match: the route type of the source or destination address
    /// is one of `types` (a bit per `RTN_*`: local 1<<2, broadcast 1<<3, multicast
    /// 1<<5...).
    AddrType {
        /// The destination address (else the source).
        daddr: bool,
        /// The `RTN_*` types, one bit each.
        types: u16,
        /// `! --dst-type`.
        invert: bool,
        /// `--limit-iface-in/out`: the lookup is limited to the packet's interface.
        limit_iface: bool,
    },
    /// `fib daddr type` / `fib saddr type` (no interface key): the address's `RTN_*`
    /// route type as a 32-bit host-order number in DREG.
    FibType {
        /// The destination address (else the source).
        daddr: bool,
        /// Destination register.
        dreg: u32,
    },
    /// `meta KEY set reg SREG`: the packet's mark (key 3) as the register holds it;
    /// what follows in this and later chains sees the new mark (the xt `MARK` target
    /// and `CONNMARK --restore-mark` become this too).
    MetaSet {
        /// `NFT_META_*`.
        key: u32,
        /// Source register.
        sreg: u32,
    },
    /// The xt `rpfilter` match: the route back to the packet's source leaves through
    /// the interface it came in on (strict), or exists at all (`--loose`).
    RpFilter {
        /// `--loose`.
        loose: bool,
        /// `--validmark`: the lookup uses the packet's mark (only policy routing
        /// rules can make it matter).
        mark: bool,
        /// `--accept-local`: a local source is valid too.
        accept_local: bool,
        /// `--invert`.
        invert: bool,
    },
    /// `fib saddr [. mark] [. iif] oif|oifname` (`... missing` / `exists`): the
    /// interface of the route back to the source (with `iif`, that interface only
    /// when it is the incoming one, else 0), into DREG.
    FibOif {
        /// `. iif` (`NFTA_FIB_F_IIF`): strict.
        iif: bool,
        /// `NFTA_FIB_F_PRESENT`: one byte, 1 when found, instead of the interface.
        present: bool,
        /// `oifname` (16 bytes) rather than `oif` (a 32-bit index).
        name: bool,
        /// Destination register.
        dreg: u32,
    },
    /// A verdict.
    Verdict(Jump),
    /// `reject`: drops the packet (and answers).
    Reject,
    /// Destination NAT (nft `dnat to`, xt `DNAT`), where it is a constant: read for
    /// `audit`'s `foreign-forward` (see [`super::dnat`]); the evaluator treats it as
    /// the NAT action it does not follow.
    Dnat(super::dnat::DnatTo),
    /// `notrack`: the packet is not tracked, if conntrack has not seen it yet.
    Notrack,
    /// A statement that changes neither the verdict nor what the rule matches
    /// (`counter`, `log`, setting a mark).
    Statement(String),
    /// Anything else: a match or an action not modelled, by its expression name.
    Unknown(String),
}

/// The members of a set as the kernel dumps them, in the form a lookup compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    /// Compare each 32-bit word of the key on its own: a concatenation (`ip daddr .
    /// th dport`), whose intervals the kernel matches field by field.
    pub by_word: bool,
    /// The members.
    pub items: Vec<Member>,
}

/// One member: keys from `from` to `to` inclusive (equal for a single key), and the
/// verdict of a verdict map's element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The lowest key (register bytes, memcmp order).
    pub from: Vec<u8>,
    /// The highest key, inclusive.
    pub to: Vec<u8>,
    /// A verdict map's verdict for it.
    pub verdict: Option<Jump>,
}

/// Every chain of the other tables audit could read, and what it could not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Foreign {
    /// Chains of other `ip` and `inet` tables (and of iptables-legacy tables).
    pub chains: Vec<Chain>,
    /// iptables-legacy tables loaded in the kernel (`/proc/net/ip_tables_names`).
    pub legacy_tables: Vec<String>,
    /// Why something could not be read (a legacy table unreadable): reported as
    /// "may drop".
    pub unreadable: Vec<String>,
    /// Base chains that can drop but are not evaluated (ingress, netdev, bridge):
    /// `(table, chain, why)`, reported as "may drop".
    pub unjudged: Vec<(String, String, String)>,
    /// `Some(true)` when the only IPv4 policy routing rules are the kernel's three
    /// defaults (`lookup local`, `main`, `default`, no selector): a route lookup then
    /// does not depend on the packet's mark, source or interface, and `rpfilter` can be
    /// judged from the routes. `None` when not read.
    pub plain_routing: Option<bool>,
}

/// Not a kernel key: what the xt `conntrack` match tests with `--ctstate`, the
/// ct state bits plus the pseudo-states SNAT (0x40) and DNAT (0x80) of the entry's
/// status (iptables-legacy's translation uses it).
pub const CT_XT_STATE: u32 = 0x8000_0000;

/// Reads every other firewall of the current network namespace: the `ip` and `inet`
/// tables but loopgate's, and the iptables-legacy tables that are loaded. What cannot
/// be read is noted in [`Foreign::unreadable`] (and judged "may drop"), so audit still
/// reports everything else.
pub fn read() -> Foreign {
    let mut foreign = Foreign::default();
    match super::nft::foreign_chains() {
        Ok((chains, unjudged)) => {
            foreign.chains = chains;
            foreign.unjudged = unjudged;
        }
        Err(e) => foreign.unreadable.push(format!(
            "the other nftables tables could not be read: {}",
            crate::error::one_line(&e)
        )),
    }
    foreign.plain_routing = plain_routing().ok();
    foreign.legacy_tables = super::legacy::loaded_tables();
    for table in &foreign.legacy_tables {
        match super::legacy::read_table(table) {
            Ok(chains) => foreign.chains.extend(chains),
            Err(e) => foreign.unreadable.push(format!(
                "iptables-legacy table {table} is loaded but could not be read: {}",
                crate::error::one_line(&e)
            )),
        }
    }
    foreign
}

/// Whether the IPv4 policy routing rules are only the kernel's defaults: each one
/// without a selector (source, destination, tos, fwmark, interface, uid range, l3mdev,
/// protocol or ports) and looking up table local (255), main (254) or default (253).
///
/// Errors: the socket could not be opened, or the dump failed.
fn plain_routing() -> anyhow::Result<bool> {
    const RTM_GETRULE: u16 = 34;
    const HEAD: usize = 12;
    // FRA_TABLE 15 (the table when over 255), FRA_PRIORITY 6 and FRA_PROTOCOL 21 are
    // not selectors; FRA_SUPPRESS_* (14, 16) only reject results, never redirect.
    const NOT_SELECTORS: [u16; 6] = [6, 14, 15, 16, 21, 0];
    let mut sock = super::netlink::NlSocket::open(mnl::Bus::Route)?;
    let mut req = vec![0u8; 16 + HEAD];
    req[4..6].copy_from_slice(&RTM_GETRULE.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP | libc::NLM_F_ACK) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[16] = libc::AF_INET as u8;
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    let mut plain = true;
    for msg in sock.dump(&req)? {
        // struct fib_rule_hdr { family, dst_len, src_len, tos, table, res1, res2,
        // action, flags (u32) }.
        let Some(head) = msg.get(16..16 + HEAD) else {
            continue;
        };
        if head[0] != libc::AF_INET as u8 {
            continue;
        }
        let mut table = u32::from(head[4]);
        let mut selector = head[1] != 0 || head[2] != 0 || head[3] != 0;
        for (ty, v) in super::netlink::attrs(&msg[16 + HEAD..]) {
            match ty & 0x3fff {
                15 if v.len() == 4 => table = u32::from_ne_bytes([v[0], v[1], v[2], v[3]]),
                t if NOT_SELECTORS.contains(&t) => {}
                _ => selector = true,
            }
        }
        // FR_ACT_TO_TBL (1): a lookup; anything else (goto, blackhole...) is not a
        // default rule.
        if selector || head[7] != 1 || !matches!(table, 253..=255) {
            plain = false;
        }
    }
    Ok(plain)
}
