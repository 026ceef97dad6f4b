//! iptables-legacy tables, which nft does not list: which are loaded
//! (`/proc/net/ip_tables_names`) and their chains, read with the legacy
//! `IPT_SO_GET_INFO` / `IPT_SO_GET_ENTRIES` getsockopt as `iptables-legacy-save` does,
//! translated into the plain model of [`super::firewall`]: the ipt_ip part of each
//! entry (addresses, interfaces, protocol), the standard targets, and the matches and
//! other targets through the one xt decoder ([`super::xt`]) iptables-nft's rules share.

use super::firewall::{BaseHook, Chain, Expr, Hook, Jump, Rule};
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};

const IPT_SO_GET_INFO: libc::c_int = 64;
const IPT_SO_GET_ENTRIES: libc::c_int = 65;
const TABLE_NAME_LEN: usize = 32;
/// `sizeof(struct ipt_getinfo)`.
const INFO_LEN: usize = 84;
/// `sizeof(struct ipt_get_entries)`: the name, the size, padding to the entries'
/// 8-byte alignment.
const ENTRIES_HEADER: usize = 40;
/// `sizeof(struct ipt_entry)`: ipt_ip (84), nfcache, offsets, comefrom, counters.
const ENTRY_LEN: usize = 112;
/// `sizeof(struct xt_entry_match)` / `xt_entry_target` header.
const XT_HEADER: usize = 32;

/// The iptables-legacy tables loaded in this network namespace (empty when the legacy
/// modules are not in use).
pub fn loaded_tables() -> Vec<String> {
    std::fs::read_to_string("/proc/net/ip_tables_names")
        .map(|s| {
            s.lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The chains of legacy table `table` (`filter`, `raw`, `mangle`, `nat`, `security`).
pub fn read_table(table: &str) -> Result<Vec<Chain>> {
    if table.len() >= TABLE_NAME_LEN {
        bail!("table name {table:?} is too long");
    }
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::empty(),
        SockProtocol::Raw,
    )
    .map_err(std::io::Error::from)?;
    let mut info = [0u8; INFO_LEN];
    info[..table.len()].copy_from_slice(table.as_bytes());
    get(&sock, IPT_SO_GET_INFO, &mut info)?;
    let u32_at = |b: &[u8], o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let valid_hooks = u32_at(&info, 32);
    let hook_entry: Vec<u32> = (0..5).map(|h| u32_at(&info, 36 + 4 * h)).collect();
    let underflow: Vec<u32> = (0..5).map(|h| u32_at(&info, 56 + 4 * h)).collect();
    let size = u32_at(&info, 80) as usize;
    let mut entries = vec![0u8; ENTRIES_HEADER + size];
    entries[..table.len()].copy_from_slice(table.as_bytes());
    entries[32..36].copy_from_slice(&(size as u32).to_ne_bytes());
    get(&sock, IPT_SO_GET_ENTRIES, &mut entries)?;
    Ok(parse(
        table,
        valid_hooks,
        &hook_entry,
        &underflow,
        &entries[ENTRIES_HEADER..],
    ))
}

fn get(sock: &OwnedFd, opt: libc::c_int, buf: &mut [u8]) -> Result<()> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` is valid for `len` bytes; the kernel writes at most that many.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_IP,
            opt,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// The priority of `table`'s chain on `hook`, as iptables registers them.
fn priority(table: &str, hook: Hook) -> i32 {
    match (table, hook) {
        ("raw", _) => -300,
        ("mangle", _) => -150,
        ("nat", Hook::Prerouting | Hook::Output) => -100,
        ("nat", _) => 100,
        ("security", _) => 50,
        _ => 0,
    }
}

const HOOK_NAMES: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// One entry of the table blob.
struct Entry<'a> {
    offset: usize,
    bytes: &'a [u8],
    target_offset: usize,
    next_offset: usize,
}

impl Entry<'_> {
    fn target(&self) -> (String, &[u8]) {
        let t = &self.bytes[self.target_offset.min(self.bytes.len())..];
        (
            name_of(t.get(2..31).unwrap_or_default()),
            t.get(XT_HEADER..).unwrap_or_default(),
        )
    }
}

fn name_of(b: &[u8]) -> String {
    String::from_utf8_lossy(b.split(|c| *c == 0).next().unwrap_or_default()).into_owned()
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    b.get(o..o + 2)
        .map_or(0, |s| u16::from_ne_bytes([s[0], s[1]]))
}

fn i32_at(b: &[u8], o: usize) -> i32 {
    b.get(o..o + 4)
        .map_or(0, |s| i32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

/// The chains of a legacy table blob (`struct ipt_entry` after `struct ipt_entry`).
fn parse(
    table: &str,
    valid: u32,
    hook_entry: &[u32],
    underflow: &[u32],
    blob: &[u8],
) -> Vec<Chain> {
    let mut entries = Vec::new();
    let mut o = 0;
    while o + ENTRY_LEN <= blob.len() {
        let target_offset = usize::from(u16_at(blob, o + 88));
        let next_offset = usize::from(u16_at(blob, o + 90));
        if next_offset < ENTRY_LEN || o + next_offset > blob.len() {
            break;
        }
        entries.push(Entry {
            offset: o,
            bytes: &blob[o..o + next_offset],
            target_offset,
            next_offset,
        });
        o += next_offset;
    }
    // Chain starts, by offset: the hooks' entries and what follows each ERROR head.
    let mut starts: BTreeMap<usize, (String, Option<BaseHook>)> = BTreeMap::new();
    for (h, name) in HOOK_NAMES.iter().enumerate() {
        if valid & (1 << h) == 0 {
            continue;
        }
        let hook = Hook::from_number(h as u32).expect("five hooks");
        let policy = entries
            .iter()
            .find(|e| e.offset == underflow[h] as usize)
            .map(|e| i32_at(e.target().1, 0));
        starts.insert(
            hook_entry[h] as usize,
            (
                name.to_string(),
                Some(BaseHook {
                    hook,
                    priority: priority(table, hook),
                    policy_drop: policy == Some(-1),
                    nat: table == "nat",
                }),
            ),
        );
    }
    for e in &entries {
        let (name, data) = e.target();
        if name == "ERROR" && name_of(data) != "ERROR" {
            starts.insert(e.offset + e.next_offset, (name_of(data), None));
        }
    }
    let policies: Vec<usize> = (0..5)
        .filter(|h| valid & (1 << h) != 0)
        .map(|h| underflow[h] as usize)
        .collect();
    let chain_at = |offset: usize| starts.get(&offset).map(|(n, _)| n.clone());
    let mut chains: Vec<Chain> = starts
        .values()
        .map(|(name, base)| Chain {
            table: format!("iptables-legacy {table}"),
            name: name.clone(),
            base: base.clone(),
            rules: Vec::new(),
        })
        .collect();
    let offsets: Vec<usize> = starts.keys().copied().collect();
    for e in &entries {
        let (name, _) = e.target();
        if name == "ERROR" || policies.contains(&e.offset) {
            continue;
        }
        let Some(i) = offsets.iter().rposition(|s| *s <= e.offset) else {
            continue;
        };
        let position = chains[i].rules.len() as u64 + 1;
        chains[i].rules.push(Rule {
            handle: position,
            exprs: exprs(e, &chain_at),
        });
    }
    chains
}

/// One entry's matches and target as expressions.
fn exprs(e: &Entry, chain_at: &dyn Fn(usize) -> Option<String>) -> Vec<Expr> {
    let b = e.bytes;
    let mut out = Vec::new();
    let invflags = b[83];
    let addr = |out: &mut Vec<Expr>, at: usize, mask_at: usize, offset: u32, inv: bool| {
        let mask = &b[mask_at..mask_at + 4];
        if mask.iter().any(|m| *m != 0) {
            out.push(Expr::Payload {
                base: 1,
                offset,
                len: 4,
                dreg: 1,
            });
            out.push(Expr::Bitwise {
                sreg: 1,
                dreg: 1,
                mask: mask.to_vec(),
                xor: vec![0; 4],
            });
            let value: Vec<u8> = b[at..at + 4].iter().zip(mask).map(|(v, m)| v & m).collect();
            out.push(Expr::Cmp {
                sreg: 1,
                op: u32::from(inv),
                data: value,
            });
        }
    };
    addr(&mut out, 0, 8, 12, invflags & 0x08 != 0);
    addr(&mut out, 4, 12, 16, invflags & 0x10 != 0);
    for (name_at, mask_at, key, inv) in [
        (16, 48, 6, invflags & 0x01 != 0),
        (32, 64, 7, invflags & 0x02 != 0),
    ] {
        let mask = &b[mask_at..mask_at + 16];
        if mask.iter().any(|m| *m != 0) {
            out.push(Expr::Meta { key, dreg: 1 });
            out.push(Expr::Bitwise {
                sreg: 1,
                dreg: 1,
                mask: mask.to_vec(),
                xor: vec![0; 16],
            });
            let value: Vec<u8> = b[name_at..name_at + 16]
                .iter()
                .zip(mask)
                .map(|(v, m)| v & m)
                .collect();
            out.push(Expr::Cmp {
                sreg: 1,
                op: u32::from(inv),
                data: value,
            });
        }
    }
    let proto = u16_at(b, 80);
    if proto != 0 {
        out.push(Expr::Meta { key: 16, dreg: 1 });
        out.push(Expr::Cmp {
            sreg: 1,
            op: u32::from(invflags & 0x40 != 0),
            data: vec![proto as u8],
        });
    }
    if b[82] & 0x01 != 0 {
        out.push(Expr::Unknown("fragment".into()));
    }
    // The matches, between the entry header and the target.
    let mut m = ENTRY_LEN;
    while m + XT_HEADER <= e.target_offset.min(b.len()) {
        let size = usize::from(u16_at(b, m));
        if size < XT_HEADER || m + size > b.len() {
            break;
        }
        let name = name_of(&b[m + 2..m + 31]);
        let revision = b[m + 31];
        out.extend(super::xt::match_exprs(
            &name,
            revision,
            &b[m + XT_HEADER..m + size],
        ));
        m += size;
    }
    let (target, data) = e.target();
    if !target.is_empty() {
        out.extend(super::xt::target_exprs(
            &target,
            b.get(e.target_offset + XT_HEADER - 1).copied().unwrap_or(0),
            data,
        ));
        return out;
    }
    out.push(match target.as_str() {
        "" => {
            let v = i32_at(data, 0);
            match v {
                -1 => Expr::Verdict(Jump::Drop),
                -2 => Expr::Verdict(Jump::Accept),
                -5 => Expr::Verdict(Jump::Return),
                v if v >= 0 && v as usize == e.offset + e.next_offset => {
                    Expr::Verdict(Jump::Continue)
                }
                // IPT_F_GOTO (0x02 of the entry's flags): `-g`, no return here.
                v if v >= 0 => match chain_at(v as usize) {
                    Some(c) if b[82] & 0x02 != 0 => Expr::Verdict(Jump::Goto(c)),
                    Some(c) => Expr::Verdict(Jump::Jump(c)),
                    None => Expr::Unknown(format!("jump to offset {v}")),
                },
                v => Expr::Unknown(format!("verdict {v}")),
            }
        }
        t => Expr::Unknown(format!("target {t}")),
    });
    out
}
