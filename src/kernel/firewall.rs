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
    /// A set lookup: membership (or a map's value) is not modelled.
    Lookup {
        /// The set's name (`__set0` for an anonymous one).
        set: String,
        /// True when the lookup yields a verdict (`vmap`).
        verdict_map: bool,
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
