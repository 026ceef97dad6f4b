//! The one sysctl loopgate writes, `net.ipv4.conf.<iface>.route_localnet`, and the reads
//! audit needs. Paths go through /proc/sys of the caller's network namespace (after
//! `--netns`, the target's). loopgate never writes `all` or `default`.

use anyhow::{Context, Result};
use std::fs;

fn path(iface: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{iface}/route_localnet")
}

/// Reads route_localnet of `iface` (or of `all` / `default`).
pub fn read(iface: &str) -> Result<u8> {
    let text = fs::read_to_string(path(iface))
        .with_context(|| format!("reading route_localnet of {iface}"))?;
    text.trim()
        .parse::<u8>()
        .with_context(|| format!("route_localnet of {iface} reads {:?}", text.trim()))
}

/// Writes route_localnet of one real interface.
pub fn write(iface: &str, value: u8) -> Result<()> {
    debug_assert!(iface != "all" && iface != "default");
    if crate::failpoint::armed(&format!("sysctl-write-{iface}-{value}")) {
        anyhow::bail!("injected failure writing route_localnet={value} on {iface}");
    }
    fs::write(path(iface), format!("{value}\n"))
        .with_context(|| format!("writing route_localnet={value} on {iface}"))
}

/// Every interface that has an IPv4 conf directory, with its route_localnet, sorted.
/// Includes `all` and `default`.
pub fn read_all() -> Result<Vec<(String, u8)>> {
    let mut out = Vec::new();
    for entry in
        fs::read_dir("/proc/sys/net/ipv4/conf").context("listing /proc/sys/net/ipv4/conf")?
    {
        let name = entry?.file_name().to_string_lossy().into_owned();
        // An interface can vanish between listing and reading; skip it then.
        if let Ok(v) = read(&name) {
            out.push((name, v));
        }
    }
    out.sort();
    Ok(out)
}
