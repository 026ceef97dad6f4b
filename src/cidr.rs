//! Merging allowed networks into the disjoint ranges an nftables interval set needs.
//!
//! The kernel refuses overlapping or touching intervals in one set (EEXIST), while users
//! naturally write `10.0.0.0/8, 10.1.0.0/16`. Merging here keeps input forgiving and the
//! set minimal.

use ipnetwork::Ipv4Network;
use std::net::Ipv4Addr;

/// An inclusive range of IPv4 addresses, as host-order integers.
pub type Range = (u32, u32);

/// Merges networks into sorted, disjoint, non-adjacent inclusive ranges.
pub fn merge(nets: &[Ipv4Network]) -> Vec<Range> {
    merge_ranges(
        nets.iter()
            .map(|n| (u32::from(n.network()), u32::from(n.broadcast())))
            .collect(),
    )
}

/// Merges inclusive ranges into sorted, disjoint, non-adjacent ones.
pub fn merge_ranges(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort_unstable();
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

/// Renders a range the way nft prints it: `a.b.c.d/n` when it is one prefix, else `a-b`.
pub fn render(range: Range) -> String {
    let (start, end) = range;
    let size = u64::from(end) - u64::from(start) + 1;
    if size.is_power_of_two() && u64::from(start) % size == 0 {
        let prefix = 32 - size.trailing_zeros();
        if prefix == 32 {
            return Ipv4Addr::from(start).to_string();
        }
        return format!("{}/{}", Ipv4Addr::from(start), prefix);
    }
    format!("{}-{}", Ipv4Addr::from(start), Ipv4Addr::from(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<Ipv4Network> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// Brute-force model: the set of /24 blocks covered, compared over a small space.
    fn covered(ranges: &[Range], addr: u32) -> bool {
        ranges.iter().any(|&(s, e)| s <= addr && addr <= e)
    }

    #[test]
    fn overlapping_and_adjacent_networks_merge() {
        let r = merge(&nets(&[
            "10.1.0.0/16",
            "10.0.0.0/8",
            "192.0.2.0/25",
            "192.0.2.128/25",
        ]));
        assert_eq!(r.len(), 2);
        assert_eq!(render(r[0]), "10.0.0.0/8");
        assert_eq!(render(r[1]), "192.0.2.0/24");
    }

    #[test]
    fn disjoint_networks_stay_apart_and_render_as_ranges_when_needed() {
        let r = merge(&nets(&[
            "198.51.100.0/24",
            "198.51.101.0/24",
            "198.51.102.0/24",
        ]));
        assert_eq!(r.len(), 1);
        assert_eq!(render(r[0]), "198.51.100.0-198.51.102.255");
        assert_eq!(render(merge(&nets(&["203.0.113.9/32"]))[0]), "203.0.113.9");
        assert_eq!(render(merge(&nets(&["128.0.0.0/1"]))[0]), "128.0.0.0/1");
    }

    #[test]
    fn merge_equals_membership_of_the_inputs() {
        let input = nets(&[
            "192.0.2.0/28",
            "192.0.2.8/29",
            "192.0.2.64/26",
            "192.0.2.16/30",
            "192.0.2.20/32",
            "192.0.2.200/31",
        ]);
        let merged = merge(&input);
        for w in merged.windows(2) {
            assert!(w[0].1 + 1 < w[1].0, "ranges must be disjoint and not touch");
        }
        for host in 0..=255u32 {
            let addr = u32::from(Ipv4Addr::new(192, 0, 2, 0)) + host;
            let expected = input.iter().any(|n| n.contains(Ipv4Addr::from(addr)));
            assert_eq!(covered(&merged, addr), expected, "host .{host}");
        }
    }

    #[test]
    fn top_of_address_space_does_not_overflow() {
        let r = merge(&nets(&["255.255.255.0/24", "255.255.255.255/32"]));
        assert_eq!(r, vec![(0xffff_ff00, 0xffff_ffff)]);
    }
}
