//! The one sysctl loopgate writes, `net.ipv4.conf.<iface>.route_localnet`, and the reads
//! audit needs. Paths go through /proc/sys of the caller's network namespace (after
//! `--netns`, the target's). loopgate never writes `all` or `default`.
//!
//! The kernel stores route_localnet as a plain `int` and tests it as a boolean
//! (`IN_DEV_ORCONF(in_dev, ROUTE_LOCALNET)`): `2`, `-1` or `256` open an interface just
//! as `1` does. Values are therefore read as `i32` and every non-zero value is open.
//!
//! A value belongs to one device *instance*: runtimes delete and re-create bridges under
//! the same name, and the new copy starts from `conf.default`. [`Device`] pairs the
//! value with the ifindex it was read from, so an original recorded on one copy is never
//! restored onto another.

use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;

fn path(iface: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{iface}/route_localnet")
}

/// True when a route_localnet value lets the interface route 127.0.0.0/8: any non-zero.
pub fn is_open(value: i32) -> bool {
    value != 0
}

/// Parses the text of a route_localnet file: a signed decimal `int`.
pub fn parse(text: &str) -> Option<i32> {
    text.trim().parse::<i32>().ok()
}

/// Reads route_localnet of `iface` (or of `all` / `default`).
///
/// Errors: the file is missing (no such interface) or does not hold an integer.
pub fn read(iface: &str) -> Result<i32> {
    let text = fs::read_to_string(path(iface))
        .with_context(|| format!("reading route_localnet of {iface}"))?;
    parse(&text).with_context(|| format!("route_localnet of {iface} reads {:?}", text.trim()))
}

/// Writes route_localnet of one real interface by name. Prefer [`write_device`], which
/// checks that the name still denotes the device the change was computed for.
pub(in crate::kernel) fn write(iface: &str, value: i32) -> Result<()> {
    assert!(
        iface != "all" && iface != "default",
        "loopgate never writes conf.{iface}"
    );
    fs::write(path(iface), format!("{value}\n"))
        .with_context(|| format!("writing route_localnet={value} on {iface}"))
}

/// Writes route_localnet of the device `ifindex`, known as `iface`; refuses when the
/// name now denotes another device (deleted and re-created, or renamed), whose value
/// loopgate has not read and must not change.
pub(in crate::kernel) fn write_device(iface: &str, ifindex: u32, value: i32) -> Result<()> {
    if ifindex_of(iface) != Some(ifindex) {
        anyhow::bail!(
            "{iface} is no longer the device (ifindex {ifindex}) whose route_localnet loopgate read; not writing {value}"
        );
    }
    write(iface, value)
}

/// The ifindex of the interface called `iface` in the current network namespace.
pub fn ifindex_of(iface: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(iface).ok()
}

/// The name of interface `ifindex` in the current network namespace.
pub fn name_of(ifindex: u32) -> Option<String> {
    // For an index no device has, nix's if_indextoname answers an empty name rather
    // than an error: a device that is gone has no name.
    nix::net::if_::if_indextoname(ifindex)
        .ok()?
        .into_string()
        .ok()
        .filter(|n| !n.is_empty())
}

/// One network device as loopgate saw it: its ifindex, current name and route_localnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The kernel's interface index (if_nametoindex); what tells one instance of a name
    /// from the next after a delete and re-create.
    pub ifindex: u32,
    /// The name the device had when it was read (at most 15 bytes).
    pub name: String,
    /// Its route_localnet as the kernel stores it (any non-zero value is open).
    pub route_localnet: i32,
    /// Whether the engine may open it for the first time now: it has an IPv4 address
    /// (read by [`devices`]) and, in `watch`, is not a runtime's bridge re-created since
    /// the runtime last described it. Until then a device loopgate has not opened
    /// before is guarded but left as it is: the runtime sets up a new bridge (netavark
    /// sets its own route_localnet=1) while loopgate may already see it, and the value
    /// loopgate records to restore on revoke must be the runtime's, not the moment
    /// before.
    pub ready: bool,
}

/// The devices of the current namespace a change depends on, keyed by ifindex: those
/// called one of `names` and those with one of `ifindexes` (under whatever name they
/// have now). A device that vanishes while being read is left out.
///
/// Each value is read between two lookups of the name's ifindex; if they differ (the
/// device was re-created meanwhile) the read is repeated, so a value is never paired
/// with the wrong instance. Errors: a route_localnet file that exists but does not hold
/// an integer, or a name that keeps changing its device.
pub fn devices(
    names: &BTreeSet<String>,
    ifindexes: &BTreeSet<u32>,
) -> Result<BTreeMap<u32, Device>> {
    let mut out = BTreeMap::new();
    let candidates = names
        .iter()
        .cloned()
        .chain(ifindexes.iter().filter_map(|i| name_of(*i)));
    for name in candidates {
        if let Some(d) = device(&name)? {
            out.insert(d.ifindex, d);
        }
    }
    if !out.is_empty() {
        let addressed = super::host::addressed_ifindexes()?;
        for d in out.values_mut() {
            d.ready = addressed.contains(&d.ifindex);
        }
    }
    Ok(out)
}

/// The device now called `name`, with its route_localnet; `None` when there is none.
/// (`ready` is left false; [`devices`] fills it in.)
fn device(name: &str) -> Result<Option<Device>> {
    for _ in 0..5 {
        let Some(before) = ifindex_of(name) else {
            return Ok(None);
        };
        let value = match fs::read_to_string(path(name)) {
            Ok(text) => parse(&text)
                .with_context(|| format!("route_localnet of {name} reads {:?}", text.trim()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading route_localnet of {name}")),
        };
        if ifindex_of(name) == Some(before) {
            return Ok(Some(Device {
                ifindex: before,
                name: name.to_string(),
                route_localnet: value,
                ready: false,
            }));
        }
    }
    // Either it is gone for good or it keeps being re-created: let the caller retry.
    match ifindex_of(name) {
        None => Ok(None),
        Some(_) => anyhow::bail!("{name} keeps being re-created; cannot read its route_localnet"),
    }
}

/// What reading one route_localnet file gave: the value, or why it could not be had.
pub type Reading = std::result::Result<i32, String>;

/// Every interface that has an IPv4 conf directory, with its route_localnet, sorted.
/// Includes `all` and `default`. An interface that vanishes between listing and reading
/// is left out; any other failure is kept as an `Err` reading, so audit can report the
/// interface instead of skipping it.
pub fn read_all() -> Result<Vec<(String, Reading)>> {
    let mut out = Vec::new();
    for entry in
        fs::read_dir("/proc/sys/net/ipv4/conf").context("listing /proc/sys/net/ipv4/conf")?
    {
        let name = entry?.file_name().to_string_lossy().into_owned();
        match fs::read_to_string(path(&name)) {
            Ok(text) => {
                let reading = parse(&text).ok_or_else(|| format!("reads {:?}", text.trim()));
                out.push((name, reading));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => out.push((name, Err(crate::error::plain_io(&e)))),
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_signed_integers_and_every_non_zero_one_is_open() {
        for (text, want) in [
            ("0\n", Some(0)),
            ("1\n", Some(1)),
            ("2\n", Some(2)),
            ("-1\n", Some(-1)),
            ("256\n", Some(256)),
            ("2147483647\n", Some(i32::MAX)),
            ("-2147483648\n", Some(i32::MIN)),
            ("x\n", None),
            ("", None),
        ] {
            assert_eq!(parse(text), want, "{text:?}");
        }
        assert!(!is_open(0));
        for v in [1, 2, 3, -1, 256, i32::MIN, i32::MAX] {
            assert!(is_open(v), "{v}");
        }
    }
}
