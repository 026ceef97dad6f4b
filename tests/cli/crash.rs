//! Topic: loopgate SIGKILLed after each step: never open without the guard, audit
//! reports the interrupted transaction, and repeating the command converges.

use super::*;

/// After a crash, no device may be open (route_localnet != 0) without loopgate's
/// whole guard.
fn assert_never_open_without_guard(lab: &Lab, point: &str) {
    let seen = GuardSampler::check(&lab.host);
    assert!(
        seen.is_empty(),
        "crash {point}: open without its guard: {seen:?}\n{}",
        stdout(&lab.host.exec(&["nft", "list", "ruleset"]))
    );
}

#[test]
fn after_a_crash_at_any_step_audit_reports_it_and_the_repeat_converges() {
    let (lab, _services) = lab_with_services();
    let policy = lab.policy(
        "p.yaml",
        "grants:\n  - interface: br0\n    allow: [192.0.2.0/25]\n    port: 3306\n",
    );
    let expose = EXPOSE_DEFAULT;
    let revoke = ["revoke", "br0", "--port", "3306"];
    let apply = ["apply", policy.as_str()];
    // The policy's grant is the policy's: it goes with a policy that drops it.
    let empty = lab.policy("empty.yaml", "grants: []\n");
    let unapply = ["apply", empty.as_str(), "--allow-empty"];
    let mut crashes = 0;
    for step in &STEPS[..STEPS.len() - 1] {
        let point = format!("after-{step}");
        for (args, reachable) in [
            (&expose[..], true),
            (&revoke[..], false),
            (&apply[..], true),
            (&unapply[..], false),
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

/// A crash in a change of a long allow list (kept in a file of its own, state format
/// 3) at any step leaves a state that reads: audit reports the interrupted change, the
/// repeat converges, and the lists nothing refers to any more are gone after it.
#[test]
fn a_crash_changing_a_long_allow_list_leaves_a_state_that_reads() {
    let (lab, _services) = lab_with_services();
    let policies = [
        lab.long_list_policy("a.yaml", 0),
        lab.long_list_policy("b.yaml", 1),
    ];
    lab.ok(&["apply", &policies[0]]);
    for (i, step) in STEPS[..STEPS.len() - 1].iter().enumerate() {
        let point = format!("after-{step}");
        let args = ["apply", policies[(i + 1) % 2].as_str()];
        let out = lab.loopgate_env(&args, &[("LOOPGATE_CRASH", point.as_str())]);
        assert_eq!(out.status.code(), None, "{point}: {}", stderr(&out));
        assert_never_open_without_guard(&lab, &point);
        let audit = lab.loopgate(&["audit"]);
        assert_eq!(audit.status.code(), Some(1), "{point}: {}", stdout(&audit));
        assert!(
            stdout(&audit).contains("[interrupted]"),
            "{}",
            stdout(&audit)
        );
        lab.ok(&args);
        assert_eq!(
            lab.allow_list_files().len(),
            1,
            "{point}: {:?}",
            lab.allow_list_files()
        );
        lab.assert_audit(0, &[]);
        assert_eq!(
            tcp_request(&lab.container, sa(HOST_ADDR, 3306)).as_deref(),
            Some("tcp:3306"),
            "{point}"
        );
    }
}
