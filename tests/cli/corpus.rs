//! Topic: input corpora. Every bad input (tests/corpus plus hostile inputs generated
//! here) is refused with one line and changes nothing; every example policy under
//! rules/ plans to valid nft.

use super::*;

/// One bad-input case: arguments (after `--netns <host>`) and text the error must contain.
struct BadCase {
    label: String,
    args: Vec<std::ffi::OsString>,
    expect: String,
}

/// The corpus under tests/corpus (CLI cases and policy files) plus hostile inputs too
/// large to keep in the repository, generated here.
fn bad_input_corpus(dir: &std::path::Path) -> Vec<BadCase> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut cases = Vec::new();
    let lines = std::fs::read_to_string(root.join("cli.jsonl")).unwrap();
    for (i, line) in lines
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("cli.jsonl:{}: {e}", i + 1));
        let args: Vec<std::ffi::OsString> = v["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().into())
            .collect();
        cases.push(BadCase {
            label: format!("cli.jsonl:{}", i + 1),
            args,
            expect: v["expect"].as_str().unwrap().to_string(),
        });
    }
    let mut files: Vec<_> = std::fs::read_dir(root.join("yaml"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .expect("first line: # expect: TEXT")
            .to_string();
        cases.push(BadCase {
            label: path.display().to_string(),
            args: vec!["apply".into(), path.clone().into()],
            expect,
        });
    }
    let mut generated = |name: &str, bytes: Vec<u8>, expect: &str| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        cases.push(BadCase {
            label: name.to_string(),
            args: vec!["apply".into(), path.into()],
            expect: expect.to_string(),
        });
    };
    // A file over the size limit is refused before parsing.
    let mut huge = b"grants: []\n".to_vec();
    huge.resize(17 << 20, b'#');
    generated("huge.yaml", huge, "larger than 16 MiB");
    // Deep nesting hits the parser's recursion limit, not the stack.
    generated(
        "deep.yaml",
        format!("grants: {}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        "deep.yaml",
    );
    // 100,000 allowed networks, the last one invalid: named among them.
    let mut cidrs: Vec<String> = (0..100_000u32)
        .map(|i| Ipv4Addr::from(0x0a00_0000 + i * 4).to_string() + "/30")
        .collect();
    cidrs.push("10.999.0.0/16".into());
    generated(
        "cidrs.yaml",
        format!(
            "grants:\n  - interface: br0\n    port: 1\n    allow: [{}]\n",
            cidrs.join(", ")
        )
        .into_bytes(),
        "10.999.0.0/16",
    );
    generated(
        "latin1.yaml",
        b"grants:\n  - interface: br\xe9\n    allow: 192.0.2.0/25\n    port: 1\n".to_vec(),
        "not UTF-8",
    );
    use std::os::unix::ffi::OsStringExt;
    cases.push(BadCase {
        label: "non-UTF-8 interface argument".into(),
        args: vec![
            "expose".into(),
            std::ffi::OsString::from_vec(b"br\xff0".to_vec()),
            "--allow".into(),
            ALLOWED.into(),
            "--port".into(),
            "1".into(),
        ],
        expect: "UTF-8".into(),
    });
    cases
}

#[test]
fn bad_input_is_refused_with_one_line_naming_the_value_and_changes_nothing() {
    let (lab, _services) = lab_with_services();
    lab.host.ip("link add bare0 type bridge");
    lab.expose_default();
    let cases = bad_input_corpus(&lab.state_dir);
    assert!(cases.len() >= 60, "the corpus has {} cases", cases.len());
    for case in &cases {
        let before = lab.fingerprint();
        let out = std::process::Command::new(BIN)
            .arg("--netns")
            .arg(&lab.host.name)
            .args(&case.args)
            .env("LOOPGATE_STATE_DIR", &lab.state_dir)
            .output()
            .unwrap();
        let err = stderr(&out);
        let label = &case.label;
        assert_eq!(out.status.code(), Some(2), "{label}: {err}");
        assert!(
            err.contains(&case.expect),
            "{label}: error does not name {:?}: {err}",
            case.expect
        );
        assert!(!err.contains("os error"), "{label}: leaks an errno: {err}");
        assert_eq!(err.lines().count(), 1, "{label}: not one line: {err}");
        assert!(err.len() < 2000, "{label}: error of {} bytes", err.len());
        assert!(out.stdout.is_empty(), "{label}: wrote to stdout");
        assert_eq!(lab.fingerprint(), before, "{label} changed the host");
    }
    println!("bad-input corpus: {} cases", cases.len());
    // A namespace that does not exist is bad input too.
    let out = std::process::Command::new(BIN)
        .args(["--netns", "no-such-ns-xyz", "audit"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no-such-ns-xyz"));
}

#[test]
fn every_example_policy_parses_plans_and_is_valid_nft() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let sources = loopgate::policy::load_all(&path)
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        let specs = loopgate::policy::specs_of(&sources)
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        let resolved = loopgate::spec::resolve(&specs, &ExampleHost);
        assert!(
            resolved.pending.is_empty(),
            "{}: {:?}",
            path.display(),
            resolved.pending
        );
        let grants = resolved.grants;
        assert!(!grants.is_empty(), "{}", path.display());
        let ruleset = loopgate::plan::ruleset(&grants).expect("a table");
        for g in &grants {
            assert!(ruleset
                .to_nft()
                .contains(&format!("comment \"grant {}\"", g.name)));
        }
        nft_accepts(&ruleset.to_nft());
        checked += 1;
    }
    assert!(
        checked >= 5,
        "expected the five example policies, found {checked}"
    );
}
