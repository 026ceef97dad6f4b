//! The declarative policy file read by `apply` and `plan`.
//!
//! The format is deliberately small and strict: unknown keys and wrong types are
//! errors, because a typo in a hardening policy must not silently widen or drop a rule.
//! Entries are validated with the same code as `expose` arguments.

use crate::bad_input;
use crate::error::plain_io;
use crate::input::GrantRequest;
#[cfg(test)]
use crate::input::Interfaces;
use anyhow::Result;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Policy input larger than this is refused: 8 times the largest policy loopgate is
/// measured with (1,000 grants and 100,000 networks, about 2 MB), small enough that
/// reading it as root costs well under a second now that parsing is linear.
pub const MAX_POLICY_BYTES: u64 = 16 << 20;

/// One policy file as parsed (YAML, `grants:` at the top, no other key), not yet
/// validated: [`specs_of`] and [`guards_of`] turn it into what is asked for, which
/// [`crate::spec::resolve`] turns into [`Grant`](crate::grant::Grant)s on the host of each moment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The entries in file order; a missing key is an empty list (which
    /// `apply` takes as "revoke everything").
    #[serde(default)]
    pub grants: Vec<Entry>,
    /// `guard: [IFACE|PATTERN, ...]`: interfaces another tool opened, to guard without
    /// publishing anything (as `loopgate guard`).
    #[serde(default)]
    pub guard: Vec<String>,
}

/// One entry of `grants:`, as the user wrote it; the keys mirror `expose`'s options and
/// are validated by the same code ([`crate::input::validate`]). Unknown keys are errors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Grant name (`--name`); absent for the default name.
    pub name: Option<String>,
    /// The interface the clients are behind (the `IFACE` of `expose`), or a pattern;
    /// empty when a runtime network is named instead.
    #[serde(default)]
    pub interface: String,
    /// A Docker network by name instead of an interface (`--docker-network`).
    #[serde(default)]
    pub docker_network: Option<String>,
    /// A Podman network by name instead of an interface (`--podman-network`).
    #[serde(default)]
    pub podman_network: Option<String>,
    /// Allowed source networks (`--allow`): IPv4 CIDRs or addresses; with a runtime
    /// network, absent means the network's own subnets.
    #[serde(default)]
    pub allow: OneOrMany<String>,
    /// Ports to publish (`--port`). Read as `u64` so that a number above 65535 gets
    /// the "1 to 65535" message of validation instead of a YAML type error.
    pub port: OneOrMany<u64>,
    /// `tcp` (when absent), `udp` or `both` (`--proto`).
    pub proto: Option<String>,
    /// Loopback target `ADDR[:PORT]` (`--to`).
    pub to: Option<String>,
    /// Address clients connect to (`--listen`).
    pub listen: Option<String>,
}

/// A scalar or a list of scalars, as YAML users write both.
#[derive(Debug, Clone)]
pub enum OneOrMany<T> {
    /// `key: value`.
    One(T),
    /// `key: [a, b]` or a block list.
    Many(Vec<T>),
}

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany::Many(Vec::new())
    }
}

/// By hand rather than `#[serde(untagged)]`: untagged buffers the whole value and then
/// tries each variant, which for a 100,000-network allow list was a third of parsing.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, IntoDeserializer};
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> de::Visitor<'de> for Visit<T> {
            type Value = OneOrMany<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a value or a list of values")
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut all = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(v) = seq.next_element()? {
                    all.push(v);
                }
                Ok(OneOrMany::Many(all))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
        }
        d.deserialize_any(Visit(std::marker::PhantomData))
    }
}

impl<T: Clone> OneOrMany<T> {
    /// The values, one or many.
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// Deepest nesting a policy may use (block and flow collections together); a real
/// one needs four.
const MAX_DEPTH: usize = 32;

/// Refuses absurdly nested documents before the YAML parser builds them: libyaml's
/// scanner does work proportional to the flow nesting depth for every token (its
/// simple-key stack), so a deep `[[[[...` makes parsing quadratic (120 KB took 19 s).
///
/// The depth is counted on the tokens of libyaml's own scanner, the one serde_yaml
/// parses with, so quotes, escapes (`"\""`), comments and plain scalars with quotes
/// in them (`it's`) are read exactly as the parser reads them: an earlier character-
/// level count could be fooled into believing the rest of a file was quoted. The scan
/// stops at the first token deeper than [`MAX_DEPTH`], so its own work per token is
/// bounded and the whole check is linear in the input. A document the scanner
/// rejects is left to the parser, which then reports the same error (having seen
/// nothing deeper than the limit before it).
fn check_nesting(text: &str, origin: &str) -> Result<()> {
    use crate::kernel::yaml::{Nesting, Scanner};
    let Some(scanner) = Scanner::new(text) else {
        anyhow::bail!("out of memory reading {origin}");
    };
    let mut depth = 0usize;
    // A token that does not scan ends the tokens: the parser reports it, with its
    // position.
    for token in scanner {
        match token.nesting {
            Nesting::End => return Ok(()),
            Nesting::Open => {
                depth += 1;
                if depth > MAX_DEPTH {
                    bad_input!(
                        "{origin}: nests deeper than {MAX_DEPTH} levels (line {}); a loopgate policy needs four",
                        token.line + 1
                    );
                }
            }
            Nesting::Close => depth = depth.saturating_sub(1),
            Nesting::Other => {}
        }
    }
    Ok(())
}

/// Parses policy text; errors name the file position serde_yaml reports.
pub fn parse(text: &str, origin: &str) -> Result<Policy> {
    check_nesting(text, origin)?;
    let (text, mut lists) = lift_long_lists(text);
    let mut policy = match serde_yaml::from_str::<Option<Policy>>(&text) {
        Ok(Some(p)) => p,
        Ok(None) => Policy {
            grants: vec![],
            guard: vec![],
        },
        Err(e) => bad_input!("{origin}: {}", e.to_string().replace('\n', " ")),
    };
    if !lists.is_empty() {
        for entry in &mut policy.grants {
            if let OneOrMany::One(token) = &entry.allow {
                if let Some(list) = token
                    .strip_prefix(LIFTED)
                    .and_then(|i| i.parse::<usize>().ok())
                    .and_then(|i| lists.get_mut(i))
                {
                    entry.allow = OneOrMany::Many(std::mem::take(list));
                }
            }
        }
    }
    Ok(policy)
}

/// Placeholder for a lifted list; `lift_long_lists` only lifts when the text does not
/// contain it already.
const LIFTED: &str = "loopgate-lifted-list-";
/// Lists shorter than this go through the YAML parser like everything else. Low, so
/// that generated policies with many short lists parse at near serde_json speed too
/// (examples/policy_parse.rs: 10 MB of 20-network lists, 8x serde_json at 4, 20x at
/// 256, where serde_yaml itself is the rest).
const LIFT_FROM: usize = 4;

/// Takes long `allow: [a.b.c.d/n, ...]` flow sequences out of the text before the YAML
/// parser sees it: at 100,000 networks the parser was a third of `apply`. Only a
/// sequence whose every item is a plain dotted-quad address or CIDR (three dots, so YAML
/// would read each as a string too) is lifted; anything else, or anything unusual around
/// it, is left to the YAML parser. The sequence is replaced by a placeholder scalar and
/// as many newlines as it spanned, so later parse errors keep their line numbers.
fn lift_long_lists(text: &str) -> (std::borrow::Cow<'_, str>, Vec<Vec<String>>) {
    let mut lists = Vec::new();
    if text.contains(LIFTED) || text.len() < LIFT_FROM * 8 {
        return (text.into(), lists);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("allow:") {
        let (before, after) = rest.split_at(at + "allow:".len());
        out.push_str(before);
        rest = after;
        let body = rest.trim_start_matches([' ', '\t']);
        let Some(inner) = body.strip_prefix('[') else {
            continue;
        };
        // One pass that stops at the first byte a plain list cannot hold (at the
        // latest the `a` of a later `allow:`), so no byte is looked at by more than
        // two lists: linear however the file is made.
        let Some(end) = inner
            .bytes()
            .position(|b| !(b.is_ascii_digit() || b".,/ \t\r\n".contains(&b)))
        else {
            break; // no `]` anywhere after: nothing later can be lifted either
        };
        if inner.as_bytes()[end] != b']' {
            continue;
        }
        let items: Vec<&str> = inner[..end]
            .split(',')
            .map(|i| i.trim_matches([' ', '\t', '\n', '\r']))
            .collect();
        let plain = |i: &&str| {
            i.bytes().filter(|b| *b == b'.').count() == 3
                && i.bytes()
                    .all(|b| b.is_ascii_digit() || b == b'.' || b == b'/')
        };
        if items.len() < LIFT_FROM || !items.iter().all(plain) {
            continue;
        }
        let newlines = inner[..end].matches('\n').count();
        out.push_str(&format!(" {LIFTED}{}", lists.len()));
        out.extend(std::iter::repeat_n('\n', newlines));
        lists.push(items.into_iter().map(str::to_string).collect());
        rest = &inner[end + 1..];
    }
    out.push_str(rest);
    (out.into(), lists)
}

/// Reads and parses a policy file (see [`read_trusted`] for what is refused).
pub fn load(path: &Path) -> Result<Policy> {
    let (origin, text) = read_trusted(path)?;
    parse(&text, &origin)
}

/// Reads a policy file as root may: at most [`MAX_POLICY_BYTES`], UTF-8, and only what
/// nobody but root could have written. Returns the name to report it by and the text.
///
/// The file is opened (following links, as sshd and sudo do) and checked through the
/// open descriptor: a regular file or a named pipe, wherever it is reached from (a
/// link, `/dev/stdin` redirected from a file, `/proc/self/fd/N`), must be owned by
/// root and not group- or world-writable, and so must every directory above its real
/// path, except a root-owned sticky one such as /tmp (see [`crate::files`]). A pipe or
/// socket that is in no directory (`generate | loopgate apply /dev/stdin`) or a
/// character device is the caller's own input and is read as it is.
///
/// Errors (bad input, one line naming the file): it cannot be opened or read, another
/// user could have written it (owner and mode named), it is too large, not UTF-8.
pub fn read_trusted(path: &Path) -> Result<(String, String)> {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    let origin = path.display().to_string();
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => bad_input!("cannot read policy file {origin:?}: {}", plain_io(&e)),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => bad_input!("cannot read policy file {origin:?}: {}", plain_io(&e)),
    };
    let kind = meta.file_type();
    if kind.is_dir() {
        bad_input!("policy file {origin:?} is a directory");
    }
    if kind.is_file() || kind.is_fifo() || kind.is_block_device() {
        match crate::files::path_of(&file) {
            Some(real) => {
                let shown = if real == path {
                    "policy file".to_string()
                } else {
                    format!("policy file {origin:?}, that is")
                };
                if let Some(why) = crate::files::untrusted(&shown, &real, &meta, false) {
                    bad_input!("{why}");
                }
                if let Err(why) =
                    crate::files::check_ancestors(&format!("policy file {origin:?}"), &real)
                {
                    bad_input!("{why}");
                }
            }
            // A deleted or unnamed file: nobody can say who else holds it open.
            None if kind.is_file() => {
                bad_input!(
                    "policy file {origin:?} has no path in any directory (deleted?); refusing it"
                )
            }
            None => {}
        }
    }
    let mut bytes = Vec::new();
    if let Err(e) = file.take(MAX_POLICY_BYTES + 1).read_to_end(&mut bytes) {
        bad_input!("cannot read policy file {origin:?}: {}", plain_io(&e));
    }
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        bad_input!(
            "policy file {origin:?} is larger than {} MiB",
            MAX_POLICY_BYTES >> 20
        );
    }
    let Ok(text) = String::from_utf8(bytes) else {
        bad_input!("policy file {origin:?} is not UTF-8");
    };
    Ok((origin, text))
}

/// Checks a policy directory itself, as [`read_trusted`] checks a file: owned by root,
/// not group- or world-writable (sticky or not: anyone could add a file there), and
/// nobody else able to change a directory above it.
///
/// Errors (bad input, one line naming it): as said.
pub fn check_trusted_dir(path: &Path) -> Result<()> {
    let origin = path.display().to_string();
    let dir = match std::fs::File::open(path) {
        Ok(d) => d,
        Err(e) => bad_input!("cannot read policy directory {origin:?}: {}", plain_io(&e)),
    };
    let meta = match dir.metadata() {
        Ok(m) => m,
        Err(e) => bad_input!("cannot read policy directory {origin:?}: {}", plain_io(&e)),
    };
    let real = crate::files::path_of(&dir).unwrap_or_else(|| path.to_path_buf());
    if let Some(why) = crate::files::untrusted("policy directory", &real, &meta, false) {
        bad_input!("{why}");
    }
    if let Err(why) = crate::files::check_ancestors(&format!("policy directory {origin:?}"), &real)
    {
        bad_input!("{why}");
    }
    Ok(())
}

/// The file `--persist` writes in the policy directory; the other files are the admin's.
pub const PERSIST_FILE: &str = "loopgate.yaml";

/// The persistent policy directory: `LOOPGATE_CONFIG_DIR`, or /etc/loopgate.
pub fn config_dir() -> PathBuf {
    std::env::var_os("LOOPGATE_CONFIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/loopgate"))
}

/// Loads a policy file, or every `*.yaml`/`*.yml` file of a directory in name order
/// (their grants are merged). Each policy comes with the file it was read from.
pub fn load_all(path: &Path) -> Result<Vec<(String, Policy)>> {
    if !path.is_dir() {
        return Ok(vec![(origin_of(path), load(path)?)]);
    }
    check_trusted_dir(path)?;
    let entries = match std::fs::read_dir(path) {
        Ok(e) => e,
        Err(e) => bad_input!(
            "cannot read policy directory {:?}: {}",
            path.display().to_string(),
            plain_io(&e)
        ),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    if files.is_empty() {
        // An empty policy would revoke everything: refuse a mistyped directory instead.
        bad_input!(
            "policy directory {:?} contains no *.yaml file (an empty policy is written as `grants: []`)",
            path.display().to_string()
        );
    }
    files.iter().map(|f| Ok((origin_of(f), load(f)?))).collect()
}

/// The name a policy file is known by as a spec's [`crate::spec::Spec::origin`]: its
/// real path for a regular file (so `apply .`, `apply /etc/loopgate/` and watch's
/// `--policy /etc/loopgate` name one file alike), else the path as given (`/dev/stdin`).
pub fn origin_of(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string(),
        _ => path.display().to_string(),
    }
}

/// The specs of every entry of `sources` (source [`crate::spec::Source::Policy`], their
/// file as [`crate::spec::Spec::origin`]), for `apply`, `plan`, `watch --policy` and
/// `--persist`. Only what the file says is checked here: what the host does not have
/// now (an interface, an address, a runtime network) is left to resolution, which
/// reports it as pending, so a host that changed since the policy was written (a
/// reboot gave br0 another address) never keeps the other grants from being applied.
///
/// Errors (bad input, naming the file and entry): an invalid entry.
pub fn specs_of(sources: &[(String, Policy)]) -> Result<Vec<crate::spec::Spec>> {
    let mut out = Vec::new();
    for (origin, policy) in sources {
        for (i, e) in policy.grants.iter().enumerate() {
            let label = e.name.clone().unwrap_or_else(|| format!("#{}", i + 1));
            let wrap = |err: anyhow::Error| {
                let text = format!("grant {label}: {err:#}");
                anyhow::Error::new(crate::error::BadInput(if sources.len() > 1 {
                    format!("{origin}: {text}")
                } else {
                    text
                }))
            };
            let specs = entry_specs(e).map_err(wrap)?;
            out.extend(specs.into_iter().map(|s| crate::spec::Spec {
                origin: Some(origin.clone()),
                ..s
            }));
        }
    }
    crate::spec::check_conflicts(&out)?;
    Ok(out)
}

/// The specs of one entry, without an origin.
///
/// Errors (bad input): an invalid entry, or one naming no interface or network, or two.
pub fn entry_specs(e: &Entry) -> Result<Vec<crate::spec::Spec>> {
    use crate::kernel::runtime::Runtime;
    let network = match (&e.docker_network, &e.podman_network) {
        (Some(n), None) => Some((Runtime::Docker, n.clone())),
        (None, Some(n)) => Some((Runtime::Podman, n.clone())),
        _ => None,
    };
    let named = usize::from(!e.interface.is_empty())
        + usize::from(e.docker_network.is_some())
        + usize::from(e.podman_network.is_some());
    if named != 1 {
        bad_input!("give exactly one of interface, docker_network and podman_network");
    }
    let req = GrantRequest {
        name: e.name.clone(),
        iface: e.interface.clone(),
        allow: e.allow.to_vec(),
        ports: e.port.to_vec().iter().map(u64::to_string).collect(),
        proto: e.proto.clone(),
        to: e.to.clone(),
        listen: e.listen.clone(),
        network,
    };
    crate::spec::from_request(&req, crate::spec::Source::Policy)
}

/// The `guard:` entries of every file of `sources` (source
/// [`crate::spec::Source::Policy`]), checked as interface names or patterns.
///
/// Errors (bad input, naming the file): an invalid name or pattern.
pub fn guards_of(sources: &[(String, Policy)]) -> Result<Vec<crate::spec::GuardSpec>> {
    let mut out = Vec::new();
    for (origin, policy) in sources {
        for g in &policy.guard {
            let interface = crate::spec::parse_interface(g).map_err(|e| {
                anyhow::Error::new(crate::error::BadInput(format!("{origin}: guard: {e:#}")))
            })?;
            out.push(crate::spec::GuardSpec {
                source: crate::spec::Source::Policy,
                interface,
            });
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publication_in_two_files_names_both_grants_and_files() {
        let own = parse(
            "grants:\n  - docker_network: myproj_default\n    port: 5432\n    listen: host-gateway\n",
            "own",
        )
        .unwrap();
        let admin = parse(
            "grants:\n  - name: myproj-postgres\n    docker_network: myproj_default\n    port: 5432\n    listen: host-gateway\n",
            "admin",
        )
        .unwrap();
        let e = specs_of(&[
            ("/etc/loopgate/loopgate.yaml".into(), own),
            ("/etc/loopgate/myproj.yaml".into(), admin),
        ])
        .unwrap_err();
        assert!(e.is::<crate::error::BadInput>());
        assert_eq!(
            format!("{e:#}"),
            "docker network myproj_default tcp/5432 on host-gateway is published twice: by grant myproj_default-tcp-5432 in /etc/loopgate/loopgate.yaml and by grant myproj-postgres in /etc/loopgate/myproj.yaml; keep one of them"
        );
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_errors() {
        let e = parse("grants:\n  - interface: docker0\n    allow: [10.0.0.0/8]\n    port: 1\n    prot: tcp\n", "p.yaml")
            .unwrap_err();
        assert!(format!("{e:#}").contains("prot"), "{e:#}");
        let e = parse(
            "grants:\n  - interface: docker0\n    allow: 10.0.0.0/8\n    port: [http]\n",
            "p.yaml",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("p.yaml"), "{e:#}");
        assert!(parse("grants: {", "p.yaml").is_err());
        let deep = format!("grants: {}{}", "[".repeat(40), "]".repeat(40));
        assert!(format!("{:#}", parse(&deep, "deep.yaml").unwrap_err()).contains("deeper than 32"));
        let quoted = "grants: []\n# [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\nx: '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[['\n";
        assert!(!format!("{:#}", parse(quoted, "q.yaml").unwrap_err()).contains("deeper"));
        assert!(parse("surprise: 1", "p.yaml").is_err());
    }

    /// The nesting check reads quotes as the parser does: an escaped quote, or a quote
    /// inside a plain scalar, once made the rest of the file look quoted to it, and a
    /// deep flow collection after it went to the parser (quadratic: 120 KB took 19 s).
    #[test]
    fn nesting_hidden_behind_quotes_is_refused() {
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        for prefix in [
            "a: \"\\\"\"\n",    // a: "\""
            "a: it's\n",        // a quote inside a plain scalar
            "a: 'it''s'\n",     // a doubled single quote
            "a: \"x#\" # \"\n", // a quote in a comment
        ] {
            let text = format!("{prefix}grants: {deep}\n");
            let e = format!("{:#}", parse(&text, "q.yaml").unwrap_err());
            assert!(
                e.contains("q.yaml: nests deeper than 32 levels (line 2)"),
                "{prefix:?}: {e}"
            );
            assert!(!e.contains('\n'), "{e}");
        }
        // Block nesting counts too.
        let block = format!("grants:\n  - {}x\n", "- ".repeat(40));
        assert!(format!("{:#}", parse(&block, "b.yaml").unwrap_err()).contains("deeper than 32"));
    }

    /// Parsing hostile input grows linearly: four times the input may take about four
    /// times as long, not sixteen. Compared with itself, not with a clock's absolute
    /// figure; the small allowance covers timer noise when both runs are instant.
    #[test]
    fn hostile_input_parses_in_linear_time() {
        let hostile = |bytes: usize| format!("a: \"\\\"\"\ngrants: {}", "[".repeat(bytes));
        let time = |text: &str| {
            (0..3)
                .map(|_| {
                    let start = std::time::Instant::now();
                    let _ = parse(text, "t.yaml");
                    start.elapsed()
                })
                .min()
                .unwrap()
        };
        // Refused by the pre-check at the 33rd level, whatever follows: the scanner is
        // never run over the rest (which libyaml scans in quadratic time).
        for bytes in [30_000, 120_000] {
            let err = format!("{:#}", parse(&hostile(bytes), "t.yaml").unwrap_err());
            assert!(err.contains("nests deeper than"), "{err}");
        }
        // The long-list fast path is linear too: many unterminated `allow: [` lists. An
        // 8-fold input takes about 8-fold time; quadratic work would take 64-fold, so
        // the bound below holds on a loaded machine and still catches it.
        let lists = |n: usize| format!("grants: []\n#{}", "allow: [1.2.3.4, ".repeat(n));
        let (t1, t8) = (time(&lists(5_000)), time(&lists(40_000)));
        assert!(
            t8 < t1 * 24 + std::time::Duration::from_millis(50),
            "5,000 lists: {t1:?}, 40,000: {t8:?}"
        );
    }

    /// The lifting fast path must read exactly what the YAML parser reads, and leave
    /// later errors on the same line.
    #[test]
    fn long_lists_read_the_same_with_and_without_the_fast_path() {
        let nets: Vec<String> = (0..300)
            .map(|i| format!("10.0.{}.{}/32", i / 256, i % 256))
            .collect();
        let one_line = nets.join(", ");
        let multi_line = nets
            .chunks(7)
            .map(|c| c.join(", "))
            .collect::<Vec<_>>()
            .join(",\n      ");
        let odd = format!("{one_line}, 1.2.3"); // not a dotted quad: left to YAML
        for list in [one_line.as_str(), multi_line.as_str(), odd.as_str()] {
            let text = format!(
                "grants:\n  - interface: br0 # comment\n    allow: [{list}]  # trailing\n    port: [1, 2]\n  - interface: br1\n    allow: [{one_line}]\n    port: 3\n"
            );
            let slow = serde_yaml::from_str::<Policy>(&text).unwrap();
            let fast = parse(&text, "p.yaml").unwrap();
            assert_eq!(format!("{:?}", fast.grants), format!("{:?}", slow.grants));
            let (_, lifted) = lift_long_lists(&text);
            assert_eq!(lifted.len(), if list == odd { 1 } else { 2 });
            // An error after the lists is reported on the same line either way.
            let bad = format!("{text}    prot: tcp\n");
            let slow = serde_yaml::from_str::<Policy>(&bad)
                .unwrap_err()
                .to_string();
            let fast = format!("{:#}", parse(&bad, "p.yaml").unwrap_err());
            let line = slow
                .split("line ")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap();
            assert!(fast.contains(&format!("line {line}")), "{fast} vs {slow}");
        }
    }

    /// The plan of a two-interface policy, read the way `apply` reads it (specs
    /// resolved against the host), against the golden file; no root needed. Set
    /// UPDATE_GOLDEN=1 to accept a deliberate change. `cli_surface` checks as root that
    /// nft loads the file.
    #[test]
    fn the_plan_matches_the_golden_file() {
        struct Host;
        impl Interfaces for Host {
            fn ipv4_addresses(&self, name: &str) -> Option<Vec<std::net::Ipv4Addr>> {
                match name {
                    "br0" => Some(vec![[192, 0, 2, 1].into()]),
                    "br1" => Some(vec![[198, 51, 100, 1].into()]),
                    _ => None,
                }
            }
        }
        impl crate::spec::Host for Host {
            fn interface_names(&self) -> Vec<String> {
                vec!["br0".into(), "br1".into()]
            }
        }
        let policy = parse(
            "grants:
  - name: mysql
    interface: br0
    allow: [192.0.2.0/26, 192.0.2.64/26, 203.0.113.7]
    port: 3306
  - name: dns
    interface: br1
    allow: 198.51.100.0/24
    port: 53
    proto: both
    to: 127.0.0.53
",
            "golden",
        )
        .unwrap();
        let specs = specs_of(&[("golden".into(), policy)]).unwrap();
        let resolved = crate::spec::resolve(&specs, &Host);
        assert!(resolved.pending.is_empty(), "{:?}", resolved.pending);
        let text = crate::plan::render(crate::plan::ruleset(&resolved.grants).as_ref());
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/two-interfaces.nft");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &text).unwrap();
        }
        assert_eq!(
            text,
            std::fs::read_to_string(&golden).unwrap(),
            "set UPDATE_GOLDEN=1 to accept a deliberate change"
        );
        // The previous versions' table of the same grants, as they printed it (never
        // updated): what `plan::legacy_ruleset_admitting` must reproduce to recognise
        // such a table after an upgrade.
        let legacy = crate::plan::legacy_ruleset_admitting(&resolved.grants, &[], &[]);
        let positional = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/two-interfaces-positional.nft");
        assert_eq!(
            crate::plan::render(legacy.as_ref()),
            std::fs::read_to_string(&positional).unwrap()
        );
    }

    #[test]
    fn scalars_and_lists_are_both_accepted() {
        let p = parse(
            "grants:\n  - interface: docker0\n    allow: 10.0.0.0/8\n    port: [53, 5353]\n    proto: both\n",
            "p.yaml",
        )
        .unwrap();
        assert_eq!(p.grants[0].port.to_vec(), vec![53, 5353]);
        assert!(parse("", "empty.yaml").unwrap().grants.is_empty());
    }
}
