//! Topic: the names of loopgate's table objects follow the objects. An interface whose
//! name holds characters nft syntax does not take bare (`a@b.c+d`) gets a guard that
//! works, under a name no other interface's can collide with; a new interface that
//! sorts before it leaves its guard (and its counters) alone; and a table written by an
//! earlier loopgate under positional names (`raw_if0`, `nat_g0`) is its grants'
//! rightful table: audit passes, and the next change rewrites it without closing the
//! interface.

use super::*;
use loopgate::kernel::seam::{Kernel, System};

const ODD: &str = "a@b.c+d";
/// Sanitised to `[A-Za-z0-9_]` the two names would both be `a_b_c_d`.
const ODD_TWIN: &str = "a#b.c+d";

/// A SYN from the container straight to 127.0.0.1:3307 through the host: accepted by
/// the host's loopback listener?
fn loopback_reachable(lab: &Lab) -> bool {
    let before = passive_opens(&lab.host);
    fire_tcp(&lab.container, sa(LO, 3307));
    passive_opens(&lab.host) > before
}

/// Writes route_localnet of `iface` through /proc (`sysctl -w` reads dots in the name
/// as separators).
fn set_route_localnet(lab: &Lab, iface: &str, value: &str) {
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/route_localnet");
    lab.host
        .exec(&["sh", "-c", &format!("echo {value} > \"$0\""), &path]);
}

/// The lab's br0 renamed to `name` (its address, ports and routes stay).
fn rename_br0(lab: &Lab, name: &str) {
    lab.host.ip("link set br0 down");
    lab.host.ip(&format!("link set br0 name {name}"));
    lab.host.ip(&format!("link set {name} up"));
}

#[test]
fn odd_interface_names_get_distinct_working_guards_that_a_new_interface_leaves_alone() {
    let (lab, _services) = lab_with_services();
    rename_br0(&lab, ODD);
    Lab::route_loopback_via_host(&lab.container);
    // Control: open without a guard, 127.0.0.1 is reachable from the link.
    set_route_localnet(&lab, ODD, "1");
    assert!(loopback_reachable(&lab), "control: open and unguarded");
    set_route_localnet(&lab, ODD, "0");

    lab.host.ip(&format!("link add {ODD_TWIN} type bridge"));
    lab.host
        .ip(&format!("addr add 198.51.100.1/24 dev {ODD_TWIN}"));
    lab.host.ip(&format!("link set {ODD_TWIN} up"));
    // What the plan prints loads in nft as it is.
    let out = lab.ok(&[
        "expose",
        ODD,
        "--allow",
        ALLOWED,
        "--port",
        "3306",
        "--dry-run",
    ]);
    nft_accepts(&out[out.find("\ntable ip loopgate {").expect("the table")..]);
    lab.ok(&["expose", ODD, "--allow", ALLOWED, "--port", "3306"]);
    lab.ok(&[
        "expose",
        ODD_TWIN,
        "--allow",
        "198.51.100.0/24",
        "--port",
        "3307",
    ]);

    let table = NftTable::read(&lab.host);
    for (iface, token) in [(ODD, "a/40b.c/2bd"), (ODD_TWIN, "a/23b.c/2bd")] {
        assert_eq!(table.guard_of(iface), Ok(()), "{iface}");
        for chain in ["raw_if", "input_if", "post_if"] {
            let name = format!("{chain}_{token}");
            assert!(
                table.chains.contains_key(&name),
                "{name}: {:?}",
                table.chains.keys()
            );
        }
    }
    assert!(GuardSampler::check(&lab.host).is_empty());
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    assert!(!loopback_reachable(&lab), "guarded");
    lab.assert_audit(0, &[&format!("{ODD} is open to loopback only through")]);

    // A new interface that sorts before both: their guards keep their names, rules and
    // counters (the change adds the new interface's objects and map elements only).
    let drops = format!("{ODD} guard: no direct route to loopback");
    let counted_before = counted(&lab, &drops);
    assert!(counted_before > 0, "the blocked SYN was counted");
    let before = NftTable::read(&lab.host);
    lab.host.ip("link add 0first type bridge");
    lab.host.ip("addr add 203.0.113.1/24 dev 0first");
    lab.host.ip("link set 0first up");
    lab.ok(&[
        "expose",
        "0first",
        "--allow",
        "203.0.113.0/24",
        "--port",
        "3306",
    ]);
    let after = NftTable::read(&lab.host);
    for (name, rules) in &before.chains {
        // Rule texts include the counters: the same text is the same rule, not reset.
        assert_eq!(after.chains.get(name), Some(rules), "{name}");
    }
    assert!(after.chains.keys().any(|c| c == "raw_if_0first"));
    assert_eq!(counted(&lab, &drops), counted_before);
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
}

/// The state file's record (grants, guarded and admitted interfaces) in the lab.
fn recorded_state(lab: &Lab) -> loopgate::state::State {
    let dirs = std::fs::read_dir(&lab.state_dir).unwrap();
    let text = dirs
        .flatten()
        .find_map(|d| std::fs::read_to_string(d.path().join("state.json")).ok())
        .expect("a state file");
    serde_json::from_str(&text).expect("the state file parses")
}

#[test]
fn a_table_written_under_positional_names_passes_audit_and_is_rewritten_without_closing() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    let want = table_image(&lab.host).expect("table");
    let state = recorded_state(&lab);
    let legacy =
        loopgate::plan::legacy_ruleset_admitting(&state.grants, &state.guarded, &state.admitted)
            .expect("a table");
    let other = loopgate::plan::legacy_ruleset_admitting(
        &[loopgate::grant::Grant {
            port: 3307,
            ..state.grants[0].clone()
        }],
        &[],
        &[],
    )
    .unwrap();
    let write = |r: &loopgate::ruleset::Ruleset| {
        let r = r.clone();
        lab.host
            .enter(move || System::default().apply_table(Some(&r)).map(|_| ()).unwrap());
    };
    // What an earlier loopgate left: the same table under its names.
    write(&legacy);
    let text = stdout(&lab.host.exec(&["nft", "list", "table", "ip", "loopgate"]));
    assert!(
        text.contains("chain raw_if0 {") && text.contains("chain nat_g0 {"),
        "{text}"
    );
    assert_ne!(table_image(&lab.host).as_ref(), Some(&want));
    lab.assert_audit(0, &["br0 is open to loopback only through"]);
    // Control: a positional table of other grants is still tampered.
    write(&other);
    lab.assert_audit(1, &["[table-tampered]"]);
    write(&legacy);

    // The next change (here: watch's one pass) rewrites it, closing nothing.
    let run = lab.loopgate(&["watch", "--once"]);
    let out = format!("{}{}", stdout(&run), stderr(&run));
    assert_eq!(run.status.code(), Some(0), "{out}");
    assert!(!out.contains("closed route_localnet"), "{out}");
    assert_eq!(table_image(&lab.host).as_ref(), Some(&want), "{out}");
    assert_eq!(lab.host.sysctl("net.ipv4.conf.br0.route_localnet"), "1");
    assert_eq!(
        tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
        Some("tcp:3306")
    );
    lab.assert_audit(0, &[]);
}
