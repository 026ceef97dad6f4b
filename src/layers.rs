//! The layers of `src/`, checked: which top-level module may name which. Read from
//! the source text (`crate::` paths, macros by the module that defines them), so a
//! change that reaches up fails here, naming the file and line.
//!
//! What is checked is the product: code under `#[cfg(test)]` (test modules, the
//! kernel's fake, the property tests) may use any layer, as a test double of the whole
//! host has to. Doc comments may name any module.
//!
//! Run alone: `cargo test --lib layers`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What `kernel/` may name besides itself: the layers below it. Lowest first:
/// - `error`, `failpoint`, `cidr`, `files`: helpers that name no other module;
/// - `grant`: the value of one published service;
/// - `ruleset`: the table as a value (from grants);
/// - `kernel`: observes and applies, and is the only module that mutates the host.
///
/// Above the kernel (free to name it and what is below): `input`, `spec`, `runtime`,
/// `policy`, `state`, `plan`, `persist`, `rpc`, `txn`, `audit`, `verbs`, `cli`,
/// `output`, `reference`.
const BELOW_KERNEL: &[&str] = &["error", "failpoint", "cidr", "files", "grant", "ruleset"];

/// One reference from a file to another top-level module.
#[derive(Debug, Clone)]
struct Reference {
    from: String,
    to: String,
    at: String,
}

/// The top-level module of a file under `src/` (`kernel` for `src/kernel/nft/x.rs`).
fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a component");
    let first = first.as_os_str().to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `text` with comments, string and char literals blanked (newlines kept, so line
/// numbers hold), and every `#[cfg(test)]` item (a `mod x { ... }` block, or a
/// `mod x;` whose file is then skipped) blanked too. Returns the `mod x;` names that
/// were test-only.
fn product_code(text: &str) -> (String, Vec<String>) {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, c: u8| out.push(if c == b'\n' { b'\n' } else { b' ' });
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if rest.starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if (rest.starts_with(b"r#") || rest.starts_with(b"r\"") || rest.starts_with(b"br"))
            && !(i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
            && {
                let s = if rest[0] == b'b' { 2 } else { 1 };
                let hashes = rest[s..].iter().take_while(|&&c| c == b'#').count();
                rest.get(s + hashes) == Some(&b'"')
            }
        {
            let s = if rest[0] == b'b' { 2 } else { 1 };
            let hashes = rest[s..].iter().take_while(|&&c| c == b'#').count();
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let start = s + hashes + 1;
            out.extend(std::iter::repeat_n(b' ', start));
            i += start;
            while i < b.len() && !b[i..].starts_with(&close) {
                blank(&mut out, b[i]);
                i += 1;
            }
            out.extend(std::iter::repeat_n(b' ', close.len().min(b.len() - i)));
            i += close.len();
        } else if b[i] == b'"' {
            out.push(b' ');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    out.push(b' ');
                    i += 1;
                }
                if i < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            out.push(b' ');
            i += 1;
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '\u{..}'), not a lifetime ('a).
            let end = if rest.get(1) == Some(&b'\\') {
                rest.iter().skip(3).position(|&c| c == b'\'').map(|p| p + 4)
            } else {
                let ch = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                (rest.get(1 + ch) == Some(&b'\'')).then_some(2 + ch)
            };
            match end {
                Some(n) => {
                    out.extend(std::iter::repeat_n(b' ', n));
                    i += n;
                }
                None => {
                    out.push(b'\'');
                    i += 1;
                }
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let mut code = String::from_utf8(out).expect("ASCII blanks keep UTF-8");
    // Test-only items: blank `#[cfg(test)]` through the end of the item.
    let mut skipped_files = Vec::new();
    while let Some(at) = code.find("#[cfg(test)]") {
        let after = at + "#[cfg(test)]".len();
        let (semi, brace) = (code[after..].find(';'), code[after..].find('{'));
        let end = match (semi, brace) {
            (Some(s), o) if o.is_none_or(|o| s < o) => {
                let item = &code[after..after + s];
                if let Some(name) = item.split_whitespace().skip_while(|w| *w != "mod").nth(1) {
                    skipped_files.push(name.to_string());
                }
                after + s + 1
            }
            (_, Some(o)) => {
                let mut depth = 0usize;
                let mut end = code.len();
                for (k, c) in code[after + o..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = after + o + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            _ => code.len(),
        };
        let blanked: String = code[at..end]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        code.replace_range(at..end, &blanked);
    }
    (code, skipped_files)
}

/// Every reference between top-level modules in the product code under `src/`.
fn references() -> Vec<Reference> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let texts: BTreeMap<PathBuf, String> = files
        .iter()
        .map(|f| (f.clone(), std::fs::read_to_string(f).expect("readable")))
        .collect();
    // `#[macro_export]` macros are named `crate::NAME`: they belong to their file.
    let mut macros: BTreeMap<String, String> = BTreeMap::new();
    for (file, text) in &texts {
        for part in text.split("macro_rules!").skip(1) {
            let name: String = part
                .trim_start()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            macros.insert(name, top_module(&src, file));
        }
    }
    let mut code: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut test_only: BTreeSet<PathBuf> = BTreeSet::new();
    for (file, text) in &texts {
        let (product, skipped) = product_code(text);
        let dir = match file.file_name().and_then(|n| n.to_str()) {
            Some("lib.rs" | "main.rs" | "mod.rs") => file.parent().expect("dir").to_path_buf(),
            _ => file.with_extension(""),
        };
        for name in skipped {
            test_only.insert(dir.join(format!("{name}.rs")));
            test_only.insert(dir.join(&name).join("mod.rs"));
        }
        code.insert(file.clone(), product);
    }
    let mut refs = Vec::new();
    for (file, text) in &code {
        let from = top_module(&src, file);
        // The crate root names every module; it is the top, not a layer.
        if from == "lib" || from == "main" || test_only.contains(file) {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            let mut names = Vec::new();
            for part in line.split("crate::").skip(1) {
                let part = part.trim_start();
                if let Some(group) = part.strip_prefix('{') {
                    // `use crate::{a, b::c}`: each first segment (one line only).
                    let group = group.split('}').next().unwrap_or("");
                    names.extend(group.split(',').filter_map(|g| {
                        let g = g.trim().split("::").next()?.trim();
                        (!g.is_empty()).then(|| g.to_string())
                    }));
                } else {
                    let name: String = part
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    names.push(name);
                }
            }
            for name in names {
                let to = macros.get(&name).cloned().unwrap_or(name);
                if to != from && !to.is_empty() && to != "self" {
                    refs.push(Reference {
                        from: from.clone(),
                        to,
                        at: format!("{}:{}", file.strip_prefix(&src).unwrap().display(), n + 1),
                    });
                }
            }
        }
    }
    refs
}

/// A cycle in `graph`, as the modules along it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_kernel_names_nothing_above_it() {
    let above: Vec<String> = references()
        .into_iter()
        .filter(|r| r.from == "kernel" && !BELOW_KERNEL.contains(&r.to.as_str()))
        .map(|r| format!("{} names crate::{}", r.at, r.to))
        .collect();
    assert!(
        above.is_empty(),
        "kernel/ reaches up:\n{}",
        above.join("\n")
    );
}

#[test]
fn no_two_top_level_modules_name_each_other_in_a_cycle() {
    let refs = references();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &refs {
        graph
            .entry(r.from.clone())
            .or_default()
            .insert(r.to.clone());
    }
    if let Some(cycle) = find_cycle(&graph) {
        let edges: Vec<String> = cycle
            .windows(2)
            .map(|w| {
                let at: Vec<&str> = refs
                    .iter()
                    .filter(|r| r.from == w[0] && r.to == w[1])
                    .map(|r| r.at.as_str())
                    .take(3)
                    .collect();
                format!("{} -> {} ({})", w[0], w[1], at.join(", "))
            })
            .collect();
        panic!("a cycle between modules:\n{}", edges.join("\n"));
    }
}

#[test]
fn the_reader_sees_through_comments_literals_and_test_code() {
    let text = "use crate::a; // crate::b\nlet s = \"crate::c\"; let c = '{'; let q = '\'';\n#[cfg(test)]\nmod tests { fn f() { crate::d::x(); } }\nfn g<'a>() { crate::{e, f::g}; }\n#[cfg(test)]\nmod fake;\n";
    let (code, skipped) = product_code(text);
    assert!(
        code.contains("crate::a") && code.contains("crate::{e, f::g}"),
        "{code}"
    );
    assert!(
        !code.contains("crate::b") && !code.contains("crate::c"),
        "{code}"
    );
    assert!(!code.contains("crate::d"), "{code}");
    assert_eq!(code.lines().count(), text.lines().count());
    assert_eq!(skipped, vec!["fake".to_string()]);
}

/// "Equal inputs give equal results": product code keeps no process-wide mutable state
/// but the two flags that stand for signals (`kernel::os::STOP`, set by SIGTERM/SIGINT,
/// and `output::CLOSED`, the SIGPIPE loopgate does not take). A `static` holding an
/// atomic, lock or cell, a `static mut` or a `thread_local!` anywhere else fails here.
#[test]
fn no_process_wide_mutable_state_but_the_signal_flags() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mutable = [
        "Atomic", "Mutex", "RwLock", "OnceLock", "OnceCell", "LazyLock", "Cell<", "RefCell",
    ];
    let mut found = Vec::new();
    for file in files.iter().filter(|f| !f.ends_with("layers.rs")) {
        let (code, _) = product_code(&std::fs::read_to_string(file).expect("readable"));
        for (n, line) in code.lines().enumerate() {
            let line = line.trim_start();
            let is_static = line.starts_with("static ") || line.starts_with("pub static ");
            let bad = line.contains("static mut ")
                || line.contains("thread_local!")
                || (is_static && mutable.iter().any(|m| line.contains(m)));
            if bad {
                found.push(format!(
                    "{}:{}: {line}",
                    file.strip_prefix(&src).expect("under src").display(),
                    n + 1
                ));
            }
        }
    }
    let allowed = [
        "kernel/os.rs: static STOP: AtomicBool",
        "output.rs: static CLOSED: AtomicBool",
        // A counter that only makes the fake's temporary state directories' names
        // unique; no result depends on its value.
        "kernel/fake.rs: static N: std::sync::atomic::AtomicUsize",
    ];
    found.retain(|f| {
        !allowed.iter().any(|a| {
            let (file, decl) = a.split_once(": ").expect("file: decl");
            f.starts_with(file) && f.contains(decl)
        })
    });
    assert!(
        found.is_empty(),
        "process-wide mutable state:\n{}",
        found.join("\n")
    );
}

/// `unsafe` stays in `kernel/`, the layer that talks to C and the kernel, and its count
/// does not grow unnoticed: a new block outside `kernel/`, or more than [`UNSAFE_MAX`]
/// blocks in all, fails here (wrap the new FFI call in an existing safe helper, or raise
/// the bound in the same commit with the reason).
#[test]
fn unsafe_blocks_live_in_the_kernel_layer_and_stay_few() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let (mut total, mut outside) = (0, Vec::new());
    for file in files.iter().filter(|f| !f.ends_with("layers.rs")) {
        let (code, _) = product_code(&std::fs::read_to_string(file).expect("readable"));
        let n = code.matches("unsafe {").count();
        total += n;
        let rel = file.strip_prefix(&src).expect("under src");
        if n > 0 && !rel.starts_with("kernel") {
            outside.push(rel.display().to_string());
        }
    }
    assert!(outside.is_empty(), "unsafe outside kernel/: {outside:?}");
    assert!(
        total <= UNSAFE_MAX,
        "{total} unsafe blocks (at most {UNSAFE_MAX})"
    );
}

/// The most `unsafe` blocks product code may hold.
const UNSAFE_MAX: usize = 75;
