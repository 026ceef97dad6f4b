//! Fuzzes what loopgate reads from users: the policy parser and validator (the path
//! `apply` takes: specs, then resolution), and the argument validators. Whatever the input, loopgate must answer with a value or a
//! `BadInput` error, never panic, and every plan it accepts must carry the full guard.

#![no_main]

use libfuzzer_sys::fuzz_target;
use loopgate::input::{self, Interfaces};
use std::net::Ipv4Addr;

struct FuzzHost;

impl Interfaces for FuzzHost {
    fn ipv4_addresses(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        match name {
            "br0" => Some(vec![Ipv4Addr::new(192, 0, 2, 1)]),
            "br1" => Some(vec![Ipv4Addr::new(198, 51, 100, 1), Ipv4Addr::new(198, 51, 100, 2)]),
            "bare0" => Some(vec![]),
            _ => None,
        }
    }
}

impl loopgate::spec::Host for FuzzHost {
    fn interface_names(&self) -> Vec<String> {
        vec!["br0".into(), "br1".into(), "bare0".into()]
    }
}

fn is_bad_input(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<loopgate::error::BadInput>())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for word in text.split_whitespace().take(8) {
        for r in [
            input::parse_cidr(word).map(|_| ()),
            input::parse_port(word).map(|_| ()),
            input::parse_to(word).map(|_| ()),
            input::parse_iface(word).map(|_| ()),
            input::parse_name(word).map(|_| ()),
        ] {
            if let Err(e) = r {
                assert!(is_bad_input(&e), "validator error is not BadInput: {e:#}");
            }
        }
    }
    let policy = match loopgate::policy::parse(text, "fuzz") {
        Ok(p) => p,
        Err(e) => {
            assert!(is_bad_input(&e), "parse error is not BadInput: {e:#}");
            return;
        }
    };
    // The path `apply` takes: specs checked, then resolved against the host.
    let specs = match loopgate::policy::specs_of(&[("fuzz".into(), policy)]) {
        Ok(s) => s,
        Err(e) => {
            assert!(is_bad_input(&e), "validation error is not BadInput: {e:#}");
            return;
        }
    };
    let grants = loopgate::spec::resolve(&specs, &FuzzHost).grants;
    if let Err(e) = input::check_conflicts(&grants) {
        assert!(is_bad_input(&e), "conflict error is not BadInput: {e:#}");
        return;
    }
    let Some(ruleset) = loopgate::plan::ruleset(&grants) else {
        assert!(grants.is_empty());
        return;
    };
    if let Err(e) = loopgate::plan::verify(&ruleset, &grants) {
        panic!("accepted plan is incomplete: {e}");
    }
    for g in &grants {
        assert!(input::loopback().contains(*g.to.ip()));
        assert!(!g.allow.iter().any(|n| n.prefix() == 0 || n.overlaps(input::loopback())));
    }
});
