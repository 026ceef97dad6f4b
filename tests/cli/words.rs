//! Topic: words that are true. A device that is gone is reported as gone (not as
//! renamed to an empty name), an empty loopgate table is present and empty (not
//! absent), and no report has a blank name, a doubled line or a doubled
//! `loopgate: loopgate:`.

use super::*;

/// The checks every output of these tests must pass.
#[track_caller]
fn plain(text: &str) {
    assert!(!text.contains("loopgate: loopgate:"), "{text}");
    assert!(!text.contains("\"\""), "a blank quoted name: {text}");
    assert!(!text.contains(" on  "), "a blank name: {text}");
    assert!(!text.contains("called  "), "a blank name: {text}");
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let unique: std::collections::BTreeSet<&&str> = lines.iter().collect();
    assert_eq!(unique.len(), lines.len(), "a line twice: {text}");
}

#[test]
fn a_deleted_managed_bridge_is_gone_not_renamed_to_an_empty_name() {
    let lab = Lab::new();
    lab.expose_default();
    lab.host.ip("link del br0");
    let out = lab.loopgate(&["audit"]);
    let text = stdout(&out);
    plain(&text);
    plain(&stderr(&out));
    assert!(!text.contains("interface-renamed"), "{text}");
    let json = lab.loopgate(&["audit", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    for f in report["findings"].as_array().unwrap() {
        assert_ne!(f["interface"], "", "{f}");
        assert_ne!(f["code"], "interface-renamed", "{f}");
    }
    // It is reported as missing, under its own name.
    assert!(
        text.contains("br0 tcp/3306 is pending: the interface does not exist now"),
        "{text}"
    );
}

#[test]
fn an_empty_loopgate_table_is_present_and_empty() {
    let lab = Lab::new();
    lab.host.exec(&["nft", "add", "table", "ip", "loopgate"]);
    let out = lab.loopgate(&["audit"]);
    let text = stdout(&out);
    plain(&text);
    assert!(
        text.to_lowercase()
            .contains("table ip loopgate: present, empty"),
        "{text}"
    );
    assert!(text.contains("WARNING [table-empty]"), "{text}");
    assert!(!text.contains("table-unexpected"), "{text}");
    assert!(!text.contains("absent"), "{text}");
    let json = lab.loopgate(&["audit", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["table"]["present"], true, "{}", report["table"]);
    assert_eq!(report["table"]["empty"], true, "{}", report["table"]);
    // With grants, a table replaced by an empty one is tampering, in those words.
    lab.host.exec(&["nft", "delete", "table", "ip", "loopgate"]);
    lab.expose_default();
    lab.host
        .exec(&["nft", "delete table ip loopgate; add table ip loopgate"]);
    let text = lab.assert_audit(1, &["CRITICAL [table-tampered]", "is empty (flushed)"]);
    plain(&text);
    assert!(text.to_lowercase().contains("present, empty"), "{text}");
    // Control: revoked, no table at all is absent.
    lab.ok(&["revoke", "--all"]);
    let (_, text) = lab.audit();
    assert!(text.contains("table ip loopgate: absent"), "{text}");
}
