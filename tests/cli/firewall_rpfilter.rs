//! Topic: reverse path checks of other firewalls (issue 20): Calico's raw PREROUTING
//! drops a packet from a workload whose route back does not leave through the veth it
//! came in on (`-m mark --mark 0x40000/0x40000 -m rpfilter --validmark --invert -j
//! DROP`, after `-j MARK` rules set that bit for `cali+`). Audit follows the mark set
//! in the same walk and judges rpfilter from the routes: the kernel decides, and each
//! drop is shown by the rule's own counter.

use super::differential::{routed_pod, POD_ADDR};
use super::*;
use std::path::Path;

const PORT: u16 = 3306;
const POD_IF: &str = "cali1a2b3c4d5e6";
const OTHER_IF: &str = "cali9f8e7d6c5b4";

/// Packets Calico's rpfilter rule (the DROP of raw cali-PREROUTING) has dropped.
fn rpfilter_drops(lab: &Lab) -> u64 {
    let out = lab.host.exec(&[
        "iptables-nft",
        "-t",
        "raw",
        "-L",
        "cali-PREROUTING",
        "-v",
        "-x",
        "-n",
    ]);
    stdout(&out)
        .lines()
        .find(|l| l.contains("rpfilter") && l.contains("DROP"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no rpfilter rule in:\n{}", stdout(&out)))
}

fn works(pod: &Netns) -> bool {
    tcp_request(pod, sa(HOST_ADDR, PORT)).as_deref() == Some("tcp:3306")
}

#[test]
fn calicos_rpfilter_is_judged_from_the_mark_set_before_it_and_the_route_back() {
    let lab = Lab::new();
    let _services = start_services(&lab.host, &[sa(LO, PORT)], &[]);
    let pod = routed_pod(&lab, POD_IF);
    lab.host.exec(&[
        "sh",
        "-c",
        &format!(
            "ip link add {OTHER_IF} type veth peer name lab9f8e7d6c5b4 && ip link set lab9f8e7d6c5b4 up && ip link set {OTHER_IF} up"
        ),
    ]);
    // Calico's rules as felix v3.28 writes them (the corpus file says where from).
    let rules = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/firewalls/calico-felix-iptables.iptables-nft");
    lab.host
        .exec(&["iptables-nft-restore", rules.to_str().unwrap()]);
    let host = HOST_ADDR.to_string();
    lab.ok(&[
        "expose",
        POD_IF,
        "--allow",
        "198.51.100.0/24",
        "--port",
        "3306",
        "--listen",
        &host,
    ]);

    // The route back leaves through the pod's veth: rpfilter lets it through.
    assert!(works(&pod), "the grant works beside Calico's rules");
    assert_eq!(rpfilter_drops(&lab), 0);
    lab.assert_audit(0, &[]);

    // Control: the pod's /32 routed out through another veth. rpfilter drops its
    // packets (its counter shows it), and audit says so for certain.
    lab.host
        .ip(&format!("route replace {POD_ADDR}/32 dev {OTHER_IF}"));
    assert!(!works(&pod), "control: the route back leaves elsewhere");
    assert!(rpfilter_drops(&lab) > 0, "control: rpfilter is what drops");
    let report = lab.assert_audit(
        1,
        &[
            "[firewall-drops]",
            "table ip raw chain PREROUTING",
            "rpfilter --validmark --invert",
        ],
    );
    assert!(!report.contains("may not work"), "{report}");
    lab.host
        .ip(&format!("route replace {POD_ADDR}/32 dev {POD_IF}"));
    assert!(works(&pod), "the route back again");
    lab.assert_audit(0, &[]);

    // Policy routing on the mark (--validmark): rpfilter's lookup, which carries the
    // mark felix set, leaves elsewhere, while the replies (mark 0) still route back.
    // Audit cannot tell what the rules do to the lookup: it must not say "works".
    lab.host.ip("rule add fwmark 0x40000/0x40000 lookup 100");
    lab.host.ip(&format!(
        "route add 198.51.100.0/24 dev {OTHER_IF} table 100"
    ));
    let before = rpfilter_drops(&lab);
    assert!(!works(&pod), "control: the marked lookup leaves elsewhere");
    assert!(rpfilter_drops(&lab) > before, "control: rpfilter drops it");
    let report = lab.assert_audit(
        1,
        &[
            "[firewall-may-drop]",
            "table ip raw chain PREROUTING",
            "rpfilter --validmark --invert",
        ],
    );
    // The printed line goes before Calico's chain, on the tuple raw PREROUTING sees
    // (before loopgate's DNAT: the listen address, no `--ctstate DNAT`).
    let lines: Vec<&str> = report
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|c| c.starts_with("iptables-nft "))
        .collect();
    assert_eq!(
        lines,
        [format!(
            "iptables-nft -t raw -I PREROUTING -i {POD_IF} -d {HOST_ADDR} -p tcp --dport 3306 -j ACCEPT"
        )],
        "{report}"
    );
    lab.host.exec(&["sh", "-c", lines[0]]);
    assert!(works(&pod), "the printed line lets it through");
    lab.assert_audit(0, &[]);
}
