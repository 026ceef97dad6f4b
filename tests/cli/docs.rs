//! Topic: the documentation agrees with the code. The tables in README.md and docs/ are
//! rendered from `loopgate::reference` (which its own unit tests hold to the code), and
//! every finding code, policy key and exit code must appear in the man page and in its
//! docs page. `UPDATE_DOCS=1` rewrites the generated tables after a deliberate change.

use loopgate::reference;
use std::path::Path;

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The man page as `loopgate man` prints it.
fn man() -> String {
    let out = std::process::Command::new(super::support::BIN)
        .arg("man")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    String::from_utf8(out.stdout).unwrap()
}

/// The generated blocks: (file, block name, what the block must hold).
fn blocks() -> Vec<(&'static str, &'static str, String)> {
    vec![
        (
            "docs/findings.md",
            "findings",
            reference::findings_markdown(),
        ),
        (
            "docs/policy.md",
            "policy-keys",
            reference::policy_keys_markdown(),
        ),
        (
            "docs/exit-codes.md",
            "exit-codes",
            reference::exit_codes_markdown(),
        ),
        ("README.md", "exit-codes", reference::exit_codes_markdown()),
        ("docs/behaviour.md", "files", reference::files_markdown()),
        (
            "docs/behaviour.md",
            "environment",
            reference::env_markdown(),
        ),
    ]
}

/// Splits `text` around the block `name`: (before and start marker, body, end marker
/// and after).
fn split<'a>(text: &'a str, name: &str, file: &str) -> (&'a str, &'a str, &'a str) {
    let start = format!("<!-- generated from src/reference.rs: {name};");
    let end = format!("<!-- end {name} -->");
    let s = text
        .find(&start)
        .unwrap_or_else(|| panic!("{file} lacks the generated block {name}"));
    let body = s + text[s..].find('\n').unwrap() + 1;
    let e = text[body..]
        .find(&end)
        .unwrap_or_else(|| panic!("{file}: block {name} is not closed"))
        + body;
    (&text[..body], &text[body..e], &text[e..])
}

#[test]
fn the_generated_tables_match_the_reference() {
    let update = std::env::var_os("UPDATE_DOCS").is_some();
    for (file, name, want) in blocks() {
        let text = read(file);
        let (head, body, tail) = split(&text, name, file);
        if update {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            std::fs::write(path, format!("{head}{want}{tail}")).unwrap();
            continue;
        }
        if body != want {
            // The first line that differs, not two whole tables.
            let line = body
                .lines()
                .zip(want.lines().chain(std::iter::repeat("(nothing)")))
                .find(|(have, want)| have != want)
                .map_or_else(
                    || format!("missing line {:?}", want.lines().nth(body.lines().count())),
                    |(have, want)| format!("has {have:?}, the reference says {want:?}"),
                );
            panic!("{file}: table {name} differs from src/reference.rs: {line}; set UPDATE_DOCS=1 to rewrite it");
        }
    }
}

/// Each finding code, policy key and exit code by name, in the man page, its docs page
/// and (exit codes) the README, where a person looks for it.
#[test]
fn every_code_key_and_exit_status_is_in_the_man_page_and_the_docs() {
    let man = man();
    let findings = read("docs/findings.md");
    let policy = read("docs/policy.md");
    let exits = read("docs/exit-codes.md");
    let readme = read("README.md");
    // A definition in the man page is `.TP` then the bold term.
    let term = |t: &str| format!(".TP\n\\fB{}", t.replace('-', "\\-"));
    for code in loopgate::audit::Code::ALL {
        let c = code.as_str();
        assert!(man.contains(&term(c)), "man page lacks finding {c}");
        assert!(
            findings.contains(&format!("| `{c}` |")),
            "docs/findings.md lacks finding {c}"
        );
    }
    for k in reference::POLICY_KEYS {
        assert!(
            man.contains(&term(&format!("{}:", k.key))),
            "man page lacks policy key {}",
            k.key
        );
        assert!(
            policy.contains(&format!("| `{}` |", k.key)),
            "docs/policy.md lacks policy key {}",
            k.key
        );
    }
    for e in reference::EXIT_CODES {
        let row = format!("| {} | {} |", e.value, e.meaning);
        assert!(
            man.contains(&term(&e.value.to_string())),
            "man page lacks exit {}",
            e.value
        );
        assert!(
            exits.contains(&row),
            "docs/exit-codes.md lacks exit {}",
            e.value
        );
        assert!(readme.contains(&row), "README.md lacks exit {}", e.value);
    }
    for v in reference::ENV_VARS {
        assert!(man.contains(&term(v.name)), "man page lacks {}", v.name);
    }
    for section in [
        "POLICY FILE",
        "EXIT STATUS",
        "ENVIRONMENT",
        "FILES",
        "EXAMPLES",
        "COMMANDS",
    ] {
        assert!(
            man.contains(&format!(".SH \"{section}\""))
                || man.contains(&format!(".SH {section}\n")),
            "man page lacks {section}"
        );
    }
}

/// The README is read first: short, leading with the compose recipe, linking every
/// docs page, and with no example that publishes a service to more than one meant.
#[test]
fn the_readme_is_short_leads_with_compose_and_links_the_docs() {
    let readme = read("README.md");
    assert!(
        readme.len() <= 16_000,
        "README.md is {} bytes",
        readme.len()
    );
    let compose = readme.find("--docker-network myproj_default").unwrap();
    let first_section = readme.find("\n## ").unwrap();
    let second_section = readme[first_section + 1..].find("\n## ").unwrap() + first_section;
    assert!(
        compose < second_section,
        "the compose recipe is not the first section"
    );
    for needle in [
        "host.docker.internal:host-gateway",
        "docker_network:",
        "systemctl enable --now loopgate.service loopgate-watch.service",
        "loopgate audit",
        "loopgate trace",
        "loopgate revoke",
        "apt install ./loopgate_",
    ] {
        assert!(readme.contains(needle), "README.md lacks {needle}");
    }
    assert!(
        !readme.contains("--allow 172.16.0.0/12"),
        "an example opens every compose project"
    );
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    for e in std::fs::read_dir(&docs).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") {
            assert!(
                readme.contains(&format!("(docs/{name})")),
                "README.md does not link docs/{name}"
            );
        }
    }
}

/// Every relative link of README.md and docs/ leads to a file that exists, and nothing
/// points outside the project.
#[test]
fn relative_links_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![
        root.join("README.md"),
        root.join("deploy/systemd/README.md"),
    ];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p);
        }
    }
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            !text.contains("/shared"),
            "{} refers to a shared folder",
            f.display()
        );
        for (at, _) in text.match_indices("](") {
            let target: String = text[at + 2..].chars().take_while(|c| *c != ')').collect();
            let target = target.split('#').next().unwrap();
            if target.is_empty() || target.contains("://") {
                continue;
            }
            let path = f.parent().unwrap().join(target);
            assert!(
                path.exists(),
                "{}: link {target} leads nowhere",
                f.display()
            );
        }
    }
}

/// `loopgate --help` lists the exit statuses too (in prose): every one of the
/// reference's values is there, and no other.
#[test]
fn the_top_level_help_names_every_exit_status() {
    let out = std::process::Command::new(super::support::BIN)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap().replace('\n', " ");
    let codes = help
        .split("Exit codes:")
        .nth(1)
        .expect("--help has an 'Exit codes:' paragraph");
    let codes = codes.split("Commands:").next().unwrap();
    let listed: Vec<i32> = codes
        .split(';')
        .filter_map(|part| part.split_whitespace().next()?.parse().ok())
        .collect();
    let documented: Vec<i32> = reference::EXIT_CODES.iter().map(|e| e.value).collect();
    assert_eq!(listed, documented, "--help: {codes}");
}
