//! Topic: loopgate SIGKILLed after each step: never open without the guard, audit
//! reports the interrupted transaction, and repeating the command converges.

use super::*;

/// After a crash, no interface may have route_localnet=1 without loopgate's guard.
fn assert_never_open_without_guard(lab: &Lab, point: &str) {
    if lab.host.sysctl("net.ipv4.conf.br0.route_localnet") == "1" {
        let table = NftTable::read(&lab.host);
        let dispatch = |chain: &str, rule: &str| {
            table
                .chains
                .get(chain)
                .is_some_and(|rules| rules.iter().any(|r| r.starts_with(rule)))
        };
        let gated = |chain: &str, gate: &str, map: &str| dispatch(chain, &format!("{gate} {map}"));
        let guard = |map: &str, rule: &str| {
            table
                .via(map, "\"br0\"")
                .is_some_and(|rules| rules.iter().any(|r| r.starts_with(rule)))
        };
        for (ok, what) in [
            (
                gated(
                    "raw_prerouting",
                    "ip daddr 127.0.0.0/8",
                    "iifname vmap @raw_ifaces",
                ) && gated(
                    "raw_prerouting",
                    "ip saddr 127.0.0.0/8",
                    "iifname vmap @raw_ifaces",
                ) && guard("raw_ifaces", "ip daddr 127.0.0.0/8 counter")
                    && guard("raw_ifaces", "ip saddr 127.0.0.0/8 counter"),
                "the raw guard",
            ),
            (
                dispatch("input", "ip daddr 127.0.0.0/8 iifname vmap @input_ifaces")
                    && table
                        .via("input_ifaces", "\"br0\"")
                        .and_then(|rules| rules.last())
                        .is_some_and(|r| r.starts_with("counter packets") && r.contains(" drop ")),
                "the input guard",
            ),
            (
                gated(
                    "postrouting",
                    "ip saddr 127.0.0.0/8",
                    "oifname vmap @post_ifaces",
                ) && guard("post_ifaces", "ip saddr 127.0.0.0/8 counter"),
                "the postrouting guard",
            ),
        ] {
            assert!(
                ok,
                "crash {point}: route_localnet=1 without {what}:\n{}",
                stdout(&lab.host.exec(&["nft", "list", "ruleset"]))
            );
        }
    }
}

#[test]
fn after_a_crash_at_any_step_audit_reports_it_and_the_repeat_converges() {
    let (lab, _services) = lab_with_services();
    let policy = lab.policy(
        "p.yaml",
        "grants:\n  - interface: br0\n    allow: [192.0.2.0/25]\n    port: 3306\n",
    );
    let expose = ["expose", "br0", "--allow", ALLOWED, "--port", "3306"];
    let revoke = ["revoke", "br0", "--port", "3306"];
    let apply = ["apply", policy.as_str()];
    let mut crashes = 0;
    for step in &STEPS[..STEPS.len() - 1] {
        let point = format!("after-{step}");
        for (args, reachable) in [
            (&expose[..], true),
            (&revoke[..], false),
            (&apply[..], true),
            (&revoke[..], false),
        ] {
            let out = lab.loopgate_env(args, &[("LOOPGATE_CRASH", point.as_str())]);
            assert_eq!(
                out.status.code(),
                None,
                "{point} {args:?}: expected a SIGKILL, got {}",
                stderr(&out)
            );
            crashes += 1;
            assert_never_open_without_guard(&lab, &point);
            let audit = lab.loopgate(&["audit"]);
            assert_eq!(
                audit.status.code(),
                Some(1),
                "{point} {args:?}: audit must report it: {}",
                stdout(&audit)
            );
            assert!(
                stdout(&audit).contains("[interrupted]"),
                "{}",
                stdout(&audit)
            );
            lab.ok(args);
            assert_never_open_without_guard(&lab, &point);
            assert_eq!(
                lab.loopgate(&["audit"]).status.code(),
                Some(0),
                "{point} {args:?}: not repaired"
            );
            let got = tcp_request(&lab.container, sa(HOST_ADDR, 3306));
            assert_eq!(got.is_some(), reachable, "{point} {args:?}");
        }
    }
    println!("crash points exercised: {crashes}");
    assert_eq!(crashes, 4 * (STEPS.len() - 1));
}
