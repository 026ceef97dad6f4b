//! Policy files changed the way the user asked: specs rendered as entries that read back
//! to the same specs (a runtime network as `docker_network:`, a pattern as a pattern, a
//! listen address only when one was given), and an admin's file changed entry by entry,
//! the rest of its text (comments, order, style) kept as it was.
//!
//! An edit of someone else's file is checked before it is used: the new text must parse
//! and read back to exactly the specs asked for. A file written in a style this line
//! editor does not follow (flow style, anchors) is refused rather than rewritten.

use crate::bad_input;
use crate::kernel::runtime::Runtime;
use crate::policy::{self, Policy};
use crate::spec::Spec;
use anyhow::{Context, Result};
use serde::Serialize;

/// What happens to one spec of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// It stays as it is.
    Keep,
    /// It is taken out.
    Drop,
    /// It becomes this spec (same key).
    Replace(Spec),
}

/// One entry as loopgate writes it.
#[derive(Serialize)]
struct OutEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interface: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    docker_network: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    podman_network: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allow: Vec<String>,
    port: u16,
    proto: &'static str,
    to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
}

/// The entries that read back to `specs`, in order: one per spec, except that the TCP
/// and UDP specs of one port next to each other become one `proto: both` entry.
fn entries(specs: &[Spec]) -> Vec<OutEntry> {
    let mut out: Vec<OutEntry> = Vec::new();
    let mut i = 0;
    while i < specs.len() {
        let s = &specs[i];
        let both = specs.get(i + 1).is_some_and(|n| {
            n.proto != s.proto
                && Spec {
                    proto: s.proto,
                    origin: s.origin.clone(),
                    source: s.source,
                    ..n.clone()
                } == *s
        });
        let (network, runtime) = match &s.network {
            Some(n) => (Some(n.name.clone()), Some(n.runtime)),
            None => (None, None),
        };
        out.push(OutEntry {
            name: s.name.clone(),
            interface: s.network.is_none().then(|| s.interface.clone()),
            docker_network: network.clone().filter(|_| runtime == Some(Runtime::Docker)),
            podman_network: network.filter(|_| runtime == Some(Runtime::Podman)),
            allow: s.allow.iter().map(crate::grant::network_text).collect(),
            port: s.port,
            proto: if both { "both" } else { s.proto.name() },
            to: if s.to.port() == s.port {
                s.to.ip().to_string()
            } else {
                s.to.to_string()
            },
            listen: match (s.listen, s.host_gateway) {
                (Some(a), _) => Some(a.to_string()),
                (None, true) => Some(crate::input::HOST_GATEWAY.to_string()),
                (None, false) => None,
            },
        });
        i += if both { 2 } else { 1 };
    }
    out
}

/// The YAML of `specs` as a block sequence (`- name: ...`), each line indented by
/// `indent` spaces; empty for no specs.
fn render_sequence(specs: &[Spec], indent: usize) -> Result<String> {
    if specs.is_empty() {
        return Ok(String::new());
    }
    let text = serde_yaml::to_string(&entries(specs)).context("rendering the policy")?;
    let pad = " ".repeat(indent);
    Ok(text.lines().map(|l| format!("{pad}{l}\n")).collect())
}

/// Renders `specs` as the whole of loopgate's own policy file.
pub fn render_own(specs: &[Spec]) -> Result<String> {
    let body = match specs.is_empty() {
        true => "grants: []\n".to_string(),
        false => format!("grants:\n{}", render_sequence(specs, 0)?),
    };
    Ok(format!(
        "# Written by `loopgate expose/revoke --persist`; applied at boot by loopgate.service.\n# Grants in other files of this directory are yours: --persist changes them there.\n{body}"
    ))
}

/// Where the entries of `grants:` are in a file's lines.
struct Spans {
    /// The line of the `grants:` key.
    key: usize,
    /// The indentation of the sequence's `- ` items.
    indent: usize,
    /// Per entry: its first line and one past its last line of content.
    entries: Vec<(usize, usize)>,
}

/// The entries of `grants:` in `lines`; `None` when the file is not written in the
/// plain block style this editor follows.
fn entry_spans(lines: &[&str]) -> Option<Spans> {
    let is_filler = |l: &str| l.trim().is_empty() || l.trim_start().starts_with('#');
    let key = lines.iter().position(|l| {
        l.strip_prefix("grants")
            .is_some_and(|r| r.trim_start().starts_with(':'))
    })?;
    let after = lines[key].split_once(':')?.1.trim();
    if !(after.is_empty() || after.starts_with('#')) {
        return None;
    }
    let first = (key + 1..lines.len()).find(|&i| !is_filler(lines[i]))?;
    let indent = lines[first].len() - lines[first].trim_start().len();
    let item = |l: &str| {
        l.len() > indent
            && l[..indent].trim().is_empty()
            && (l[indent..].starts_with("- ") || l[indent..].trim_end() == "-")
    };
    if !item(lines[first]) {
        return None;
    }
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut end = lines.len();
    for (i, l) in lines.iter().enumerate().skip(first) {
        let l = *l;
        if is_filler(l) {
            continue;
        }
        let own_indent = l.len() - l.trim_start().len();
        if item(l) {
            spans.push((i, i + 1));
        } else if own_indent > indent {
            spans.last_mut()?.1 = i + 1;
        } else {
            end = i;
            break;
        }
    }
    // Spans end at their last line of content, or at the last comment line right after
    // it that is indented under the item (`    # allow: [...]`, the entry's own):
    // blank lines and comments at the list's indentation after it stay.
    for span in &mut spans {
        span.1 = span.1.min(end);
        while span.1 < end
            && lines[span.1].trim_start().starts_with('#')
            && lines[span.1].len() - lines[span.1].trim_start().len() > indent
        {
            span.1 += 1;
        }
    }
    Some(Spans {
        key,
        indent,
        entries: spans,
    })
}

/// The keys of one entry as loopgate writes it, each with its value on one line
/// (flow style); absent keys are left out.
fn entry_keys(e: &OutEntry) -> Option<Vec<(String, String)>> {
    let serde_yaml::Value::Mapping(m) = serde_yaml::to_value(e).ok()? else {
        return None;
    };
    let flow = |v: &serde_yaml::Value| -> Option<String> {
        Some(serde_yaml::to_string(v).ok()?.trim_end().to_string())
    };
    let mut out = Vec::new();
    for (k, v) in m {
        let key = k.as_str()?.to_string();
        let text = match &v {
            serde_yaml::Value::Sequence(items) if items.len() == 1 => flow(&items[0])?,
            serde_yaml::Value::Sequence(items) => format!(
                "[{}]",
                items
                    .iter()
                    .map(flow)
                    .collect::<Option<Vec<_>>>()?
                    .join(", ")
            ),
            other => flow(other)?,
        };
        if text.contains('\n') {
            return None;
        }
        out.push((key, text));
    }
    Some(out)
}

/// Where an inline comment starts in `line` (the whitespace before its `#`), outside
/// quotes; `None` without one.
fn inline_comment(line: &str) -> Option<usize> {
    let (mut single, mut double) = (false, false);
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\'' if !double => single = !single,
            b'"' if !single => double = !double,
            b'#' if !single && !double && i > 0 && bytes[i - 1].is_ascii_whitespace() => {
                let mut at = i;
                while at > 0 && bytes[at - 1].is_ascii_whitespace() {
                    at -= 1;
                }
                return Some(at);
            }
            _ => {}
        }
    }
    None
}

/// One entry (`lines`, its span) changed from `old` to `new` line by line: a key whose
/// value is the same stays as written, a changed value is rewritten on its own line
/// with its inline comment, a key the new entry lacks is taken out, a new key is added
/// at its end; comment lines stay where they are. The name, the comments and the
/// admin's style stay. `None` when that is not possible (the specs are not one entry
/// now, the first line's key goes, an odd indentation): the caller writes the entry
/// anew.
fn edit_in_place(lines: &[&str], old: &[Spec], new: &[Spec], indent: usize) -> Option<String> {
    let (old_e, new_e) = (entries(&bare(old)), entries(&bare(new)));
    if old_e.len() != 1 || new_e.len() != 1 {
        return None;
    }
    let (was, now) = (entry_keys(&old_e[0])?, entry_keys(&new_e[0])?);
    let value = |keys: &[(String, String)], k: &str| {
        keys.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let key_indent = indent + 2;
    let mut out: Vec<String> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    // Inside a key being taken out or rewritten: its deeper lines (a block list) go.
    let mut skipping = false;
    for (i, line) in lines.iter().enumerate() {
        let body = match i {
            0 => line.get(indent..)?.strip_prefix("- ")?,
            _ => line,
        };
        let own_indent = body.len() - body.trim_start().len();
        if body.trim_start().starts_with('#') || body.trim().is_empty() {
            out.push(line.to_string());
            continue;
        }
        if i > 0 && own_indent != key_indent {
            if own_indent < key_indent {
                return None;
            }
            if !skipping {
                out.push(line.to_string());
            }
            continue;
        }
        let (key, _) = body.trim_start().split_once(':')?;
        let key = key.trim().to_string();
        seen.push(key.clone());
        skipping = false;
        let (before, after) = (value(&was, &key), value(&now, &key));
        if before == after {
            out.push(line.to_string());
            continue;
        }
        skipping = true;
        match after {
            None if i == 0 => return None,
            None => {}
            Some(v) => {
                let prefix = &line[..line.len() - body.trim_start().len()];
                let comment = inline_comment(body).map_or("", |at| &body[at..]);
                out.push(format!("{prefix}{key}: {v}{comment}"));
            }
        }
    }
    // Keys the entry did not have: after its last line of content.
    let last = out
        .iter()
        .rposition(|l| !(l.trim_start().starts_with('#') || l.trim().is_empty()))?;
    let mut added = Vec::new();
    for (key, v) in &now {
        if !seen.contains(key) && value(&was, key).as_deref() != Some(v.as_str()) {
            added.push(format!("{}{key}: {v}", " ".repeat(key_indent)));
        }
    }
    out.splice(last + 1..last + 1, added);
    Some(out.iter().map(|l| format!("{l}\n")).collect())
}

/// The specs of `policy`'s entries, each entry's apart, without origins.
fn specs_per_entry(policy: &Policy) -> Result<Vec<Vec<Spec>>> {
    policy.grants.iter().map(policy::entry_specs).collect()
}

/// Without the origin, which an edit's text does not carry.
fn bare(specs: &[Spec]) -> Vec<Spec> {
    specs
        .iter()
        .map(|s| Spec {
            origin: None,
            ..s.clone()
        })
        .collect()
}

/// Changes the entries of `text` (the file `shown`, parsed as `policy`) whose specs
/// `fate` does not keep, leaving every other line as it is; `None` when nothing
/// changes. An entry that loses all its specs is removed; one that keeps some, or whose
/// specs are replaced, is written anew in its place.
///
/// Errors (bad input, naming the file): the file is not in the block style this editor
/// follows, or the new text would not read back to the specs asked for.
pub fn edit_text(
    text: &str,
    policy: &Policy,
    shown: &str,
    fate: &dyn Fn(&Spec) -> Fate,
) -> Result<Option<String>> {
    let per_entry = specs_per_entry(policy)?;
    let mut wanted: Vec<Vec<Spec>> = Vec::new();
    let mut changed = false;
    for specs in &per_entry {
        let mut now = Vec::new();
        for s in specs {
            match fate(s) {
                Fate::Keep => now.push(s.clone()),
                Fate::Drop => changed = true,
                Fate::Replace(r) => {
                    changed |= bare(std::slice::from_ref(&r)) != bare(std::slice::from_ref(s));
                    now.push(r);
                }
            }
        }
        wanted.push(now);
    }
    if !changed {
        return Ok(None);
    }
    let refuse = || {
        anyhow::Error::new(crate::error::BadInput(format!(
            "--persist: cannot change {shown} safely (only block-style `grants:` lists are edited); change it by hand"
        )))
    };
    let lines: Vec<&str> = text.lines().collect();
    let Spans {
        key,
        indent,
        entries: spans,
    } = entry_spans(&lines).ok_or_else(refuse)?;
    if spans.len() != per_entry.len() {
        return Err(refuse());
    }
    let mut out = String::new();
    let mut at = 0;
    for ((start, end), (old, new)) in spans.iter().zip(per_entry.iter().zip(&wanted)) {
        for l in &lines[at..*start] {
            out.push_str(l);
            out.push('\n');
        }
        if bare(old) == bare(new) {
            for l in &lines[*start..*end] {
                out.push_str(l);
                out.push('\n');
            }
        } else if new.is_empty() {
            // The entry goes with its own comments (those indented under its `- `);
            // the comment lines above it, at the list's indentation, stay.
        } else {
            match edit_in_place(&lines[*start..*end], old, new, indent) {
                Some(kept) => out.push_str(&kept),
                None => {
                    // Written anew: its own comment lines stay, above it.
                    for l in &lines[*start..*end] {
                        if l.trim_start().starts_with('#') {
                            out.push_str(l);
                            out.push('\n');
                        }
                    }
                    out.push_str(&render_sequence(&bare(new), indent)?);
                }
            }
        }
        at = *end;
    }
    for l in &lines[at..] {
        out.push_str(l);
        out.push('\n');
    }
    if wanted.iter().all(Vec::is_empty) {
        // `grants:` with nothing under it reads as null: say the empty list.
        let mut fixed: Vec<String> = out.lines().map(str::to_string).collect();
        fixed[key] = "grants: []".to_string();
        out = fixed.join("\n") + "\n";
    }
    // The edit must read back to exactly what was asked for.
    let reread = policy::parse(&out, shown).map_err(|_| refuse())?;
    let got: Vec<Spec> = specs_per_entry(&reread).map_err(|_| refuse())?.concat();
    if bare(&got) != bare(&wanted.concat()) || reread.guard != policy.guard {
        return Err(refuse());
    }
    Ok(Some(out))
}

/// Checks that `specs` render as loopgate's own file and read back to themselves.
///
/// Errors: the rendered file does not read back the same (a bug, refused as bad input
/// before anything changes).
pub fn check_round_trip(specs: &[Spec], text: &str, shown: &str) -> Result<()> {
    let reread = policy::parse(text, shown)?;
    let got: Vec<Spec> = specs_per_entry(&reread)?.concat();
    if bare(&got) != bare(specs) {
        bad_input!(
            "--persist: {shown} would not read back to the grants asked for; nothing was changed"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV4;

    fn specs(text: &str) -> Vec<Spec> {
        let p = policy::parse(text, "t.yaml").unwrap();
        specs_per_entry(&p).unwrap().concat()
    }

    #[test]
    fn what_was_asked_renders_as_it_was_asked() {
        let all = specs(
            "grants:
  - docker_network: myproj_default
    port: 5432
  - name: web
    interface: 'br-*'
    allow: [192.0.2.0/25, 198.51.100.7]
    port: 80
    proto: both
    to: 127.0.0.2:8080
  - interface: br0
    allow: 192.0.2.0/24
    port: 53
    proto: udp
    listen: 192.0.2.1
  - podman_network: podman
    port: 6379
    listen: host-gateway
",
        );
        let text = render_own(&all).unwrap();
        assert!(text.contains("docker_network: myproj_default"), "{text}");
        assert!(text.contains("interface: br-*"), "{text}");
        assert!(text.contains("listen: host-gateway"), "{text}");
        // Only the explicit listen address is written.
        assert_eq!(text.matches("listen:").count(), 2, "{text}");
        check_round_trip(&all, &text, "own").unwrap();
        assert_eq!(bare(&specs(&text)), bare(&all));
        assert!(render_own(&[]).unwrap().ends_with("grants: []\n"));
    }

    const ADMIN: &str = "# my services
grants:
  # the database
  - name: db
    interface: br0
    allow: 192.0.2.0/24   # the app subnet
    port: [5432, 5433]

  # dns, for everyone
  - name: dns
    interface: br0
    allow: 192.0.2.0/24
    port: 53
    proto: udp
guard: ['veth*']
";

    fn edit(fate: &dyn Fn(&Spec) -> Fate) -> Result<Option<String>> {
        edit_text(ADMIN, &policy::parse(ADMIN, "a").unwrap(), "a.yaml", fate)
    }

    #[test]
    fn a_removed_entry_takes_only_its_own_lines() {
        let out = edit(&|s| match s.port {
            53 => Fate::Drop,
            _ => Fate::Keep,
        })
        .unwrap()
        .unwrap();
        assert!(!out.contains("name: dns"), "{out}");
        assert!(out.contains("# dns, for everyone") && out.contains("# the app subnet"));
        assert!(out.contains("guard: ['veth*']"), "{out}");
        let out = edit(&|_| Fate::Drop).unwrap().unwrap();
        assert!(out.contains("grants: []"), "{out}");
        assert!(policy::parse(&out, "x").unwrap().grants.is_empty());
        assert_eq!(edit(&|_| Fate::Keep).unwrap(), None);
    }

    #[test]
    fn a_partly_revoked_entry_is_written_anew_in_its_place() {
        let out = edit(&|s| match s.port {
            5433 => Fate::Drop,
            _ => Fate::Keep,
        })
        .unwrap()
        .unwrap();
        let got = specs(&out);
        assert_eq!(
            got.iter().map(|s| s.port).collect::<Vec<_>>(),
            vec![5432, 53]
        );
        assert!(out.find("5432").unwrap() < out.find("name: dns").unwrap());
        assert!(out.starts_with("# my services\n"), "{out}");
    }

    /// README's `/etc/loopgate/myproj.yaml`, as a new user keeps it.
    const MYPROJ: &str = "grants:
  - name: myproj-postgres
    docker_network: myproj_default   # instead of interface:
    port: 5432
    listen: host-gateway
    # allow: [...]                   # default: the network's subnets

# the end
";

    #[test]
    fn a_changed_entry_keeps_its_name_its_comments_and_its_style() {
        let out = edit(&|s| match s.port {
            53 => {
                let mut n = s.clone();
                n.allow = vec!["192.0.2.0/26".parse().unwrap()];
                n.to = SocketAddrV4::new(std::net::Ipv4Addr::new(127, 0, 0, 2), 53);
                Fate::Replace(n)
            }
            _ => Fate::Keep,
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            out,
            ADMIN.replace(
                "  - name: dns\n    interface: br0\n    allow: 192.0.2.0/24\n    port: 53\n    proto: udp\n",
                "  - name: dns\n    interface: br0\n    allow: 192.0.2.0/26\n    port: 53\n    proto: udp\n    to: 127.0.0.2\n"
            )
        );
        // An inline comment stays on its changed line; a key that goes takes its line.
        let p = policy::parse(MYPROJ, "m").unwrap();
        let out = edit_text(MYPROJ, &p, "m.yaml", &|s| {
            let mut n = s.clone();
            n.host_gateway = false;
            n.network.as_mut().unwrap().name = "other_default".into();
            Fate::Replace(n)
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            out,
            MYPROJ
                .replace("myproj_default   #", "other_default   #")
                .replace("    listen: host-gateway\n", "")
        );
    }

    #[test]
    fn a_dropped_entry_takes_its_own_comment_lines_with_it() {
        let p = policy::parse(MYPROJ, "m").unwrap();
        let out = edit_text(MYPROJ, &p, "m.yaml", &|_| Fate::Drop)
            .unwrap()
            .unwrap();
        assert_eq!(out, "grants: []\n\n# the end\n");
    }

    #[test]
    fn a_file_in_another_style_is_refused_not_rewritten() {
        let flow = "grants: [{interface: br0, allow: 192.0.2.0/24, port: 1}]\n";
        let e = edit_text(flow, &policy::parse(flow, "f").unwrap(), "f.yaml", &|_| {
            Fate::Drop
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("f.yaml"), "{e:#}");
        assert!(e.is::<crate::error::BadInput>());
    }
}
