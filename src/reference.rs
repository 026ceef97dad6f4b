//! The reference tables: audit finding codes, policy keys, exit codes, environment
//! variables and files, each with what it means.
//!
//! These facts used to be written out by hand in the README, the man page and `--help`,
//! and drifted apart. They live here once: `loopgate man` renders its POLICY FILE, EXIT
//! STATUS, ENVIRONMENT, FILES and AUDIT FINDINGS sections from them, the tables in
//! `docs/` and the README are rendered from them (`tests/cli/docs.rs` checks the copies
//! and rewrites them with `UPDATE_DOCS=1`), and the unit tests below hold the tables to
//! the code: every [`Code`] has an entry (an exhaustive match), every key the policy
//! parser accepts is listed and nothing else, every `EXIT_*` constant is listed.

use crate::audit::Code;
use crate::error::{EXIT_BAD_INPUT, EXIT_FINDINGS, EXIT_NOT_PERSISTED, EXIT_OK, EXIT_SYSTEM};

/// One audit finding code, documented.
#[derive(Debug, Clone, Copy)]
pub struct FindingDoc {
    /// The code.
    pub code: Code,
    /// Its severity in words; `warning` and `critical` make `audit` exit 1.
    pub severity: &'static str,
    /// What it means.
    pub meaning: &'static str,
    /// What to do about it.
    pub remedy: &'static str,
}

/// The documentation of `code`. An exhaustive match on purpose: a new code does not
/// compile until it is documented here, and from here in the man page and the docs.
pub fn finding(code: Code) -> FindingDoc {
    let (severity, meaning, remedy) = match code {
        Code::Unguarded => (
            "critical",
            "route_localnet is effectively non-zero on an interface without loopgate's guard, whoever set it: anything on that link reaches every loopback service",
            "`loopgate guard IFACE` (keeps the other tool's route_localnet), or set it to 0",
        ),
        Code::AllOpen => (
            "critical; warning once `guard --all-interfaces` guards every interface, info while a watch holding the table also guards each new one",
            "`conf.all.route_localnet` is non-zero: every interface routes 127/8",
            "find who set it (kube-proxy does); `loopgate guard --all-interfaces` and keep `loopgate watch` running",
        ),
        Code::DefaultOpen => (
            "warning",
            "`conf.default.route_localnet` is non-zero: new interfaces start open",
            "reset it; `loopgate watch` with `guard` patterns covers new interfaces",
        ),
        Code::TableTampered => (
            "critical",
            "loopgate's table is not what its grants require: deleted, flushed, switched dormant or otherwise flagged, owned by another process, or edited (table flags, chains with hooks, priorities and policies, rules, sets and elements are compared)",
            "`loopgate watch --once` puts it back; keep `loopgate watch` running, which repairs it as it happens and holds the table on Linux 6.9+",
        ),
        Code::TableUnexpected => (
            "warning",
            "a table named `ip loopgate` exists but loopgate has no grants here",
            "remove it, or find what made it",
        ),
        Code::TableEmpty => (
            "warning",
            "an empty `table ip loopgate` nobody holds (a watch that was killed left it): it guards nothing, and nft 1.0.6 prints its flags so that `nft list ruleset` output does not load",
            "`nft delete table ip loopgate`",
        ),
        Code::NftablesConfNamesTable => (
            "critical while watch holds the table, else warning",
            "the nftables configuration (/etc/nftables.conf, or LOOPGATE_NFTABLES_CONF) names `table ip loopgate`, as `nft list ruleset >` saves it: while watch holds the table, loading the file fails as a whole and an nftables restart leaves the host without its own firewall",
            "take the table out of the file: `sed -i '/^table ip loopgate /,/^}/d' /etc/nftables.conf`; install the loopgate drop-in for nftables.service",
        ),
        Code::SysctlUnreadable => (
            "critical (warning for `default`)",
            "a route_localnet value cannot be read; it is counted as open",
            "check /proc/sys/net/ipv4/conf",
        ),
        Code::InterfaceRenamed => (
            "critical while open, else warning",
            "a device loopgate manages now carries another name (or another device has its index); the guard matches the old name",
            "`loopgate watch --once` (or a running `loopgate watch`) closes it if loopgate had opened it",
        ),
        Code::GrantInactive => (
            "warning",
            "an interface with grants has route_localnet 0 (it was re-created)",
            "`loopgate watch --once` repairs it; a running `loopgate watch` repairs it as it happens",
        ),
        Code::Interrupted => (
            "warning",
            "a loopgate transaction was killed between its steps",
            "repeat the command, or `loopgate watch --once` rolls it back (a running watch does by itself)",
        ),
        Code::NotListening => (
            "warning",
            "nothing listens on the grant's target: clients are refused",
            "start the service, or correct `--to`",
        ),
        Code::ListenerBoundToDevice => (
            "warning",
            "the target socket is bound to another device (`SO_BINDTODEVICE`, systemd-resolved's `127.0.0.53%lo`) and ignores DNATed packets",
            "point `--to` at an unbound socket: for systemd-resolved `127.0.0.54`, or a `DNSStubListenerExtra=` address",
        ),
        Code::ReplyRoute => (
            "warning",
            "replies to an allowed network leave through another interface than the grant's, where its clients come in (the network is on the grant's link, or reached only through a default route): asymmetric routing, no answer",
            "route that network back through the grant's interface (the message prints `ip route add NETWORK via ROUTER dev IFACE` for each network, ROUTER being the router the clients come through), or remove the route that takes it elsewhere",
        ),
        Code::AllowRoute => (
            "warning",
            "an allowed network has a route of its own through another interface, and no part of it is routed through the grant's: its packets never arrive on the grant's",
            "publish on that interface, or correct `--allow`",
        ),
        Code::ListenAddressGone => (
            "warning",
            "no interface of the host has the grant's listen address any more (a re-created bridge with another address)",
            "`loopgate watch --once`, or keep `loopgate watch` running (a defaulted address follows); a pinned `--listen` must be revoked and exposed anew",
        ),
        Code::FirewallDrops => (
            "warning",
            "another table's chain, rule or `policy drop` (nft or iptables-legacy) drops or rejects the grant's flow",
            "add the accept line the message suggests, for the firewall that owns the chain (nft, iptables, ufw, firewalld, kube-proxy, an Incus network ACL)",
        ),
        Code::FirewallMayDrop => (
            "warning",
            "a chain may drop the flow, depending on something audit does not model (a mark, a rate limit, a set updated from the packet path, an xt match it does not decode)",
            "check that chain, or add the suggested accept before it",
        ),
        Code::Notrack => (
            "warning",
            "a `notrack` rule before conntrack matches the flow, so loopgate's DNAT never happens",
            "add the accept line the message suggests before it (it matches the client's packet as the chain sees it), or exclude the grant's interface and port from it",
        ),
        Code::NotrackReplies => (
            "warning",
            "a `notrack` rule before conntrack at output matches the grant's replies: their source is never translated back, so the client drops them",
            "add the accept line the message suggests before it, or exclude the replies from it",
        ),
        Code::ForeignForward => (
            "critical without a source restriction, info when the rule names its sources, warning when that cannot be read, the target is a grant's, or loopgate opened the interface",
            "another table's DNAT rule sends a published address to 127/8 on an interface loopgate guards (the Amazon ECS agent's `169.254.170.2:80` to `127.0.0.1:51679`, a hand-made `dnat to 127.0.0.1`): where the interface was open before loopgate, the guard lets its flows through, so whoever the rule lets in reaches that loopback service; one to a grant's own target, or on an interface loopgate opened (where it never worked), is dropped instead",
            "name the sources that need it in the rule (`ip saddr CIDR`, `-s CIDR`), or delete the rule; for a grant's target, point the forward elsewhere",
        ),
        Code::IptablesLegacy => (
            "info",
            "legacy iptables tables are loaded (nft does not list them); their INPUT policy is shown and their chains are judged",
            "none, or migrate to nft",
        ),
        Code::Pending => (
            "info; warning once pending longer than LOOPGATE_PENDING_GRACE (60 s) when it cannot work as asked",
            "asked for, but its interface (or runtime network, or host-gateway) is missing or lacks the address now; a missing named interface keeps its guard. A pattern without a match, a runtime's bridge not created yet and a network that was served and is gone stay info; a pinned address that is gone, a missing interface, a network not seen since the last reboot (a typo, or a project that is down) and a runtime that does not answer become a warning after the grace period; a network that does not exist is shown with the runtime's networks that do, closest first",
            "none while it rightly waits: it is served when the interface appears (watch, or the next command); a warning: correct the grant (the network's name, `--listen`): a policy's in its file, a command line's or revoke it; or bring the project up",
        ),
        Code::RuntimeUnanswered => (
            "warning",
            "a runtime network's grant stays in force on the bridge it last resolved to, but the runtime (`docker`, `podman`) does not answer now (dockerd stopped, `DOCKER_HOST` unreachable): loopgate cannot follow the network if it moves meanwhile; not pending, and not counted in `loopgate_pending_grants`",
            "bring the runtime back (`systemctl status docker`, `DOCKER_HOST`); nothing to change in loopgate",
        ),
        Code::Blocked => (
            "info",
            "what each guard dropped since loopgate last wrote its table, by kind",
            "alert on it rising: someone on that link is trying",
        ),
        Code::Guarded => (
            "info",
            "the interface is open only through published ports, or guarded for another tool (`opened by another tool`)",
            "none",
        ),
    };
    FindingDoc {
        code,
        severity,
        meaning,
        remedy,
    }
}

/// Every finding code with its documentation, in [`Code::ALL`] order.
pub fn findings() -> Vec<FindingDoc> {
    Code::ALL.iter().map(|c| finding(*c)).collect()
}

/// Where a policy key is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLevel {
    /// At the top of a policy file.
    File,
    /// In one entry of `grants:`.
    Grant,
}

/// One key of the policy file, documented.
#[derive(Debug, Clone, Copy)]
pub struct PolicyKey {
    /// The key as written in YAML.
    pub key: &'static str,
    /// Where it is written.
    pub level: KeyLevel,
    /// What it takes.
    pub value: &'static str,
    /// What it means, and its default.
    pub meaning: &'static str,
}

/// Every key the policy parser ([`crate::policy::Policy`], [`crate::policy::Entry`])
/// accepts; any other key is an error (exit 2).
pub const POLICY_KEYS: &[PolicyKey] = &[
    PolicyKey {
        key: "grants",
        level: KeyLevel::File,
        value: "list of grant entries",
        meaning: "the grants this file manages; absent or `[]`: none (apply then revokes every grant the policy made before)",
    },
    PolicyKey {
        key: "guard",
        level: KeyLevel::File,
        value: "list of IFACE or PATTERN",
        meaning: "interfaces another tool opened, guarded without publishing anything and without touching their route_localnet, as `loopgate guard`",
    },
    PolicyKey {
        key: "name",
        level: KeyLevel::Grant,
        value: "text",
        meaning: "the grant's label (`--name`); default IFACE-PROTO-PORT, or IFACE-LISTEN-PROTO-PORT when listen is not the interface's primary address; NETWORK-PROTO-PORT for `docker_network`/`podman_network`, whatever listen is",
    },
    PolicyKey {
        key: "interface",
        level: KeyLevel::Grant,
        value: "IFACE or PATTERN",
        meaning: "the interface the clients are behind, or a glob such as `br-*`; exactly one of interface, docker_network and podman_network",
    },
    PolicyKey {
        key: "docker_network",
        level: KeyLevel::Grant,
        value: "network name",
        meaning: "a Docker network (`--docker-network`), e.g. a compose project's `myproj_default`: its bridge, subnets and gateway are asked of `docker network inspect` each time it resolves",
    },
    PolicyKey {
        key: "podman_network",
        level: KeyLevel::Grant,
        value: "network name",
        meaning: "a Podman network (`--podman-network`), as docker_network with `podman network inspect`",
    },
    PolicyKey {
        key: "allow",
        level: KeyLevel::Grant,
        value: "CIDR or address, or a list",
        meaning: "source networks let in (`--allow`), IPv4 only, not /0, not in 127/8; required with interface, default with a runtime network: the network's subnets",
    },
    PolicyKey {
        key: "port",
        level: KeyLevel::Grant,
        value: "1-65535, or a list",
        meaning: "the published ports (`--port`); required",
    },
    PolicyKey {
        key: "proto",
        level: KeyLevel::Grant,
        value: "tcp, udp or both",
        meaning: "transport protocol (`--proto`); default tcp; both makes one grant per protocol",
    },
    PolicyKey {
        key: "to",
        level: KeyLevel::Grant,
        value: "ADDR or ADDR:PORT",
        meaning: "the loopback target in 127.0.0.0/8 (`--to`); default 127.0.0.1 and the published port",
    },
    PolicyKey {
        key: "listen",
        level: KeyLevel::Grant,
        value: "ADDR or host-gateway",
        meaning: "the address clients connect to (`--listen`): an IPv4 address of this host, or `host-gateway` (what Docker gives host.docker.internal); default the interface's primary address, or the runtime network's gateway",
    },
];

/// One exit status, documented.
#[derive(Debug, Clone, Copy)]
pub struct ExitDoc {
    /// The status.
    pub value: i32,
    /// The constants of [`crate::error`] with this value.
    pub constants: &'static [&'static str],
    /// What it means.
    pub meaning: &'static str,
}

/// Every exit status loopgate returns.
pub const EXIT_CODES: &[ExitDoc] = &[
    ExitDoc {
        value: EXIT_OK,
        constants: &["EXIT_OK"],
        meaning: "success (for `audit`: no warning or critical finding; for `trace`: a packet was traced)",
    },
    ExitDoc {
        value: EXIT_FINDINGS,
        constants: &["EXIT_FINDINGS", "EXIT_NO_PACKET", "EXIT_NOTHING_MATCHED"],
        meaning: "`audit` found a warning or critical problem (not with `--format prometheus`, which exits 0 once it wrote its document); `trace` saw no packet before it stopped; `revoke` or `unguard` matched nothing (a port not published, an unknown `--name`, an interface or network without grants) and changed nothing",
    },
    ExitDoc {
        value: EXIT_BAD_INPUT,
        constants: &["EXIT_BAD_INPUT"],
        meaning: "bad input or usage; nothing was changed",
    },
    ExitDoc {
        value: EXIT_SYSTEM,
        constants: &["EXIT_SYSTEM"],
        meaning: "the system refused or failed; what had been done was rolled back",
    },
    ExitDoc {
        value: EXIT_NOT_PERSISTED,
        constants: &["EXIT_NOT_PERSISTED"],
        meaning: "`--persist`: the change is in force, but writing the persistent policy failed after it",
    },
];

/// One environment variable loopgate reads, documented.
#[derive(Debug, Clone, Copy)]
pub struct EnvDoc {
    /// The variable.
    pub name: &'static str,
    /// What it does.
    pub meaning: &'static str,
}

/// Every environment variable loopgate reads.
pub const ENV_VARS: &[EnvDoc] = &[
    EnvDoc {
        name: "LOOPGATE_PENDING_GRACE",
        meaning: "seconds a grant may be pending before `audit` reports it as a warning, and `watch` logs one (default 60): a pinned address that is gone, a missing interface, a runtime network not seen since the last reboot (a typo, or a project that is down: what was served is remembered in /run only), a runtime that does not answer; a pattern without a match, a runtime's bridge not created yet and a network that was served and is gone stay info. Counted from the first audit (for watch: the first pass) that saw it pending",
    },
    EnvDoc {
        name: "LOOPGATE_NFTABLES_CONF",
        meaning: "the nftables configuration `audit` checks for `table ip loopgate` (default /etc/nftables.conf, what Debian's nftables.service loads)",
    },
    EnvDoc {
        name: "LOOPGATE_CONFIG_DIR",
        meaning: "the persistent policy directory `--persist` changes (default /etc/loopgate); refused while a watch follows another policy. The systemd units name /etc/loopgate themselves",
    },
    EnvDoc {
        name: "LOOPGATE_STATE_DIR",
        meaning: "the base of the state directory (default /run/loopgate), which holds `netns-<cookie>/` per network namespace and `kernel-features`",
    },
    EnvDoc {
        name: "DOCKER_HOST",
        meaning: "not read by loopgate itself: the `docker` CLI that `--docker-network` runs honours it (and its contexts), as `podman` honours `CONTAINER_HOST`",
    },
    EnvDoc {
        name: "LOOPGATE_FAILPOINT",
        meaning: "test-only: in builds with the `failpoints` feature (never release builds), makes a named transaction step fail",
    },
    EnvDoc {
        name: "LOOPGATE_CRASH",
        meaning: "test-only: in builds with the `failpoints` feature, kills loopgate with SIGKILL at a named point",
    },
];

/// One file or directory loopgate uses, documented.
#[derive(Debug, Clone, Copy)]
pub struct FileDoc {
    /// The path.
    pub path: &'static str,
    /// What it is.
    pub meaning: &'static str,
}

/// The files and directories loopgate reads and writes.
pub const FILES: &[FileDoc] = &[
    FileDoc {
        path: "/etc/loopgate/",
        meaning: "the persistent policy: every *.yaml file, merged, applied at boot by loopgate.service and followed by loopgate-watch.service",
    },
    FileDoc {
        path: "/etc/loopgate/loopgate.yaml",
        meaning: "the file `expose --persist` writes new grants into, as asked (atomically, under .loopgate.lock); `--persist` changes a grant another file of the directory keeps in that file, entry by entry",
    },
    FileDoc {
        path: "/run/loopgate/netns-<cookie>/state.json",
        meaning: "what loopgate did in one network namespace: specs, grants, originals per device, the journal of a running transaction",
    },
    FileDoc {
        path: "/run/loopgate/netns-<cookie>/allow-<sha256>.json",
        meaning: "an allow list of 64 networks or more that state.json refers to (`\"allow\": \"sha256:<hex>\"`), written once, named by the SHA-256 of its content and checked against it when read; removed once no committed state refers to it",
    },
    FileDoc {
        path: "/run/loopgate/netns-<cookie>/blocked-totals.json",
        meaning: "running totals of what the guards dropped, kept across table rewrites (folded in by every transaction that writes the table and by `audit`): `blocked_total` and `loopgate_blocked_packets_total`",
    },
    FileDoc {
        path: "/run/loopgate/netns-<cookie>/pending-since.json",
        meaning: "since when each grant is pending, and which were served before, as `audit` saw them (for LOOPGATE_PENDING_GRACE)",
    },
    FileDoc {
        path: "/run/loopgate/netns-<cookie>/watch.sock",
        meaning: "a running watch's root-only socket: while watch holds the table, expose, revoke, apply, guard and unguard borrow the socket that owns it for their transaction (callers need CAP_NET_ADMIN in watch's network and user namespace)",
    },
    FileDoc {
        path: "/run/loopgate/netns-<cookie>/watch.lock",
        meaning: "locked by the one watch of a network namespace for its whole life; holds its pid (a second watch exits 2 naming it)",
    },
    FileDoc {
        path: "/run/loopgate/kernel-features",
        meaning: "the kernel features checked once per boot",
    },
    FileDoc {
        path: "/lib/systemd/system/loopgate.service",
        meaning: "applies /etc/loopgate at boot and when nftables.service restarts or reloads",
    },
    FileDoc {
        path: "/lib/systemd/system/loopgate-watch.service",
        meaning: "runs `loopgate watch --policy /etc/loopgate`",
    },
    FileDoc {
        path: "/lib/systemd/system/nftables.service.d/loopgate.conf",
        meaning: "makes nftables.service load /etc/nftables.conf without any `table ip loopgate` block in it, so a saved ruleset cannot fail as a whole against the table watch holds",
    },
    FileDoc {
        path: "/etc/nftables.conf",
        meaning: "read by `audit` (or LOOPGATE_NFTABLES_CONF), which reports it when it names `table ip loopgate`",
    },
    FileDoc {
        path: "/etc/docker/daemon.json",
        meaning: "read for `host-gateway-ip`, the address `--listen host-gateway` stands for when set",
    },
];

/// Examples for the man page: what it does, and the command.
pub const EXAMPLES: &[(&str, &str)] = &[
    (
        "Let one compose project's containers reach PostgreSQL on 127.0.0.1:5432 as host.docker.internal:5432:",
        "loopgate expose --docker-network myproj_default --port 5432 --listen host-gateway",
    ),
    (
        "Publish MySQL on docker0 to the default bridge's subnet only:",
        "loopgate expose docker0 --allow 172.17.0.0/16 --port 3306",
    ),
    (
        "Show what would change and the resulting table, changing nothing:",
        "loopgate expose docker0 --allow 172.17.0.0/16 --port 3306 --dry-run",
    ),
    (
        "Take the compose project's access away again:",
        "loopgate revoke --docker-network myproj_default --port 5432",
    ),
    (
        "Make the host match the policy directory, and keep it so:",
        "loopgate apply /etc/loopgate && systemctl enable --now loopgate.service loopgate-watch.service",
    ),
    (
        "What is open, and is it guarded? As JSON, or for node_exporter:",
        "loopgate audit; loopgate audit --json; loopgate audit --format prometheus",
    ),
    (
        "Follow one connection's packets through every table:",
        "loopgate trace docker0 --port 3306 --count 1 --timeout 30",
    ),
    (
        "Guard a bridge another tool opened (route_localnet=1 without a guard):",
        "loopgate guard docker0",
    ),
];

/// Escapes text for roff: backslashes, dashes that must stay ASCII, and a leading
/// dot or quote that roff would take for a request.
fn roff(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with(['.', '\'']) {
        format!("\\&{t}")
    } else {
        t
    }
}

/// Markdown's inline code marks read oddly in a man page; roff shows the plain text.
fn plain(text: &str) -> String {
    roff(&text.replace('`', ""))
}

fn tagged(out: &mut String, tag: &str, body: &str) {
    out.push_str(&format!(".TP\n\\fB{}\\fR\n{}\n", roff(tag), plain(body)));
}

/// The man page's own sections after the command reference: POLICY FILE, AUDIT
/// FINDINGS, EXIT STATUS, ENVIRONMENT, FILES, EXAMPLES, SEE ALSO, as roff.
pub fn man_sections() -> String {
    let mut out = String::new();
    out.push_str(".SH \"POLICY FILE\"\n");
    out.push_str(&plain(
        "`apply`, `plan` and `watch --policy` read a YAML file, or every *.yaml and *.yml file of a directory in name order (merged). Unknown keys and wrong types are errors (exit 2): a typo in a hardening policy must not silently widen or drop a rule. Entries are validated like the options of `expose` they mirror.",
    ));
    out.push_str("\n.PP\n.nf\n");
    for line in [
        "grants:",
        "  - name: postgres",
        "    docker_network: myproj_default",
        "    port: 5432",
        "    listen: host-gateway",
        "  - interface: docker0",
        "    allow: [172.17.0.0/16]",
        "    port: [53]",
        "    proto: both",
        "    to: 127.0.0.54",
        "guard: [podman0, 'cali*']",
    ] {
        out.push_str(&roff(line));
        out.push('\n');
    }
    out.push_str(".fi\n.PP\nKeys at the top of a file:\n");
    for k in POLICY_KEYS.iter().filter(|k| k.level == KeyLevel::File) {
        tagged(&mut out, &format!("{}: {}", k.key, k.value), k.meaning);
    }
    out.push_str(".PP\nKeys of each entry of grants:\n");
    for k in POLICY_KEYS.iter().filter(|k| k.level == KeyLevel::Grant) {
        tagged(&mut out, &format!("{}: {}", k.key, k.value), k.meaning);
    }
    out.push_str(".SH \"AUDIT FINDINGS\"\n");
    out.push_str(&plain(
        "Each finding of `audit` has a code (JSON `code`, `[code]` in the text report) and a severity; a warning or critical finding makes `audit` exit 1.",
    ));
    out.push('\n');
    for f in findings() {
        tagged(
            &mut out,
            &format!("{} ({})", f.code, f.severity),
            &format!("{}. What to do: {}.", f.meaning, f.remedy),
        );
    }
    out.push_str(".SH \"EXIT STATUS\"\n");
    for e in EXIT_CODES {
        tagged(&mut out, &e.value.to_string(), e.meaning);
    }
    out.push_str(".SH ENVIRONMENT\n");
    for v in ENV_VARS {
        tagged(&mut out, v.name, v.meaning);
    }
    out.push_str(".SH FILES\n");
    for f in FILES {
        tagged(&mut out, f.path, f.meaning);
    }
    out.push_str(".SH EXAMPLES\n");
    for (what, cmd) in EXAMPLES {
        out.push_str(&format!(
            ".PP\n{}\n.PP\n.RS 4\n.nf\n{}\n.fi\n.RE\n",
            plain(what),
            roff(cmd)
        ));
    }
    out.push_str(".SH \"SEE ALSO\"\n");
    out.push_str(&plain(
        "nft(8), ip-netns(8), systemd.service(5). The README and docs/ in the source tree, installed under /usr/share/doc/loopgate/.",
    ));
    out.push('\n');
    out
}

/// A Markdown table row; `|` in a cell would end it early.
fn row(cells: &[&str]) -> String {
    let cells: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
    format!("| {} |\n", cells.join(" | "))
}

/// The findings table of docs/findings.md.
pub fn findings_markdown() -> String {
    let mut out =
        String::from("| code | severity | what it means | what to do |\n|---|---|---|---|\n");
    for f in findings() {
        out.push_str(&row(&[
            &format!("`{}`", f.code),
            f.severity,
            f.meaning,
            f.remedy,
        ]));
    }
    out
}

/// The keys table of docs/policy.md.
pub fn policy_keys_markdown() -> String {
    let mut out = String::from("| key | where | value | meaning |\n|---|---|---|---|\n");
    for k in POLICY_KEYS {
        let level = match k.level {
            KeyLevel::File => "top level",
            KeyLevel::Grant => "grant entry",
        };
        out.push_str(&row(&[&format!("`{}`", k.key), level, k.value, k.meaning]));
    }
    out
}

/// The exit status table of docs/exit-codes.md and the README.
pub fn exit_codes_markdown() -> String {
    let mut out = String::from("| code | meaning |\n|---|---|\n");
    for e in EXIT_CODES {
        out.push_str(&row(&[&e.value.to_string(), e.meaning]));
    }
    out
}

/// The environment table of docs/behaviour.md.
pub fn env_markdown() -> String {
    let mut out = String::from("| variable | meaning |\n|---|---|\n");
    for v in ENV_VARS {
        out.push_str(&row(&[&format!("`{}`", v.name), v.meaning]));
    }
    out
}

/// The files table of docs/behaviour.md.
pub fn files_markdown() -> String {
    let mut out = String::from("| path | what it is |\n|---|---|\n");
    for f in FILES {
        out.push_str(&row(&[&format!("`{}`", f.path), f.meaning]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Records the field names serde's derive passes to `deserialize_struct`: exactly
    /// the keys the parser accepts (with `deny_unknown_fields`, no others).
    struct FieldNames(std::cell::RefCell<Vec<&'static str>>);

    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("stop")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Stop
        }
    }

    impl<'de> serde::Deserializer<'de> for &FieldNames {
        type Error = Stop;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0.borrow_mut().extend_from_slice(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            enum identifier ignored_any
        }
    }

    fn fields<T: serde::de::DeserializeOwned>() -> BTreeSet<&'static str> {
        let names = FieldNames(Default::default());
        assert!(T::deserialize(&names).is_err());
        names.0.into_inner().into_iter().collect()
    }

    fn keys(level: KeyLevel) -> BTreeSet<&'static str> {
        POLICY_KEYS
            .iter()
            .filter(|k| k.level == level)
            .map(|k| k.key)
            .collect()
    }

    #[test]
    fn the_policy_keys_are_exactly_what_the_parser_accepts() {
        assert_eq!(
            keys(KeyLevel::File),
            fields::<crate::policy::Policy>(),
            "POLICY_KEYS (top level) against policy::Policy"
        );
        assert_eq!(
            keys(KeyLevel::Grant),
            fields::<crate::policy::Entry>(),
            "POLICY_KEYS (grant entry) against policy::Entry"
        );
        assert_eq!(
            POLICY_KEYS.len(),
            keys(KeyLevel::File).len() + keys(KeyLevel::Grant).len(),
            "a key listed twice"
        );
    }

    /// A document using every key parses; the same with one unknown key does not.
    #[test]
    fn a_policy_with_every_key_parses_and_an_unknown_key_is_refused() {
        let value = |key: &str| match key {
            "name" => "x",
            "interface" => "br0",
            "guard" => "[br0]",
            "docker_network" | "podman_network" => "n",
            "allow" => "[192.0.2.0/24]",
            "port" => "[5432]",
            "proto" => "tcp",
            "to" => "127.0.0.1",
            "listen" => "host-gateway",
            other => panic!("no example value for policy key {other}: add one here"),
        };
        let mut text = String::new();
        for k in POLICY_KEYS.iter().filter(|k| k.level == KeyLevel::File) {
            if k.key == "grants" {
                text.push_str("grants:\n  -");
                for g in POLICY_KEYS.iter().filter(|k| k.level == KeyLevel::Grant) {
                    text.push_str(&format!(" {}: {}\n   ", g.key, value(g.key)));
                }
                text.push('\n');
            } else {
                text.push_str(&format!("{}: {}\n", k.key, value(k.key)));
            }
        }
        let p = crate::policy::parse(&text, "every-key.yaml").unwrap();
        assert_eq!(p.grants.len(), 1);
        assert_eq!(p.guard, vec!["br0".to_string()]);
        let e = &p.grants[0];
        assert!(e.name.is_some() && e.docker_network.is_some() && e.podman_network.is_some());
        assert!(e.proto.is_some() && e.to.is_some() && e.listen.is_some());
        assert!(!e.interface.is_empty());
        let unknown = text.replacen("    port:", "    prot: tcp\n    port:", 1);
        assert_ne!(unknown, text);
        let err = crate::policy::parse(&unknown, "typo.yaml").unwrap_err();
        assert!(format!("{err:#}").contains("prot"), "{err:#}");
        assert!(crate::policy::parse(&format!("{text}extra: 1\n"), "top.yaml").is_err());
    }

    /// Every `pub const EXIT_*` of error.rs, read from its source so a new one cannot be
    /// forgotten, is in EXIT_CODES with its value; every status is listed once.
    #[test]
    fn every_exit_constant_is_documented_with_its_value() {
        let source = include_str!("error.rs");
        let mut seen = 0;
        for line in source.lines() {
            let Some(rest) = line.strip_prefix("pub const EXIT_") else {
                continue;
            };
            let (name, value) = rest
                .split_once(": i32 = ")
                .expect("pub const EXIT_X: i32 = N;");
            let name = format!("EXIT_{name}");
            let value: i32 = value.trim_end_matches(';').parse().unwrap();
            let doc = EXIT_CODES
                .iter()
                .find(|e| e.constants.contains(&name.as_str()))
                .unwrap_or_else(|| panic!("{name} is not in reference::EXIT_CODES"));
            assert_eq!(doc.value, value, "{name}");
            seen += 1;
        }
        assert!(seen >= 5, "read {seen} EXIT_ constants from error.rs");
        let listed: usize = EXIT_CODES.iter().map(|e| e.constants.len()).sum();
        assert_eq!(listed, seen, "EXIT_CODES names a constant error.rs lacks");
        let values: BTreeSet<i32> = EXIT_CODES.iter().map(|e| e.value).collect();
        assert_eq!(values.len(), EXIT_CODES.len(), "a status listed twice");
    }

    /// Every `LOOPGATE_*` variable named in the source is in ENV_VARS.
    #[test]
    fn every_environment_variable_read_is_documented() {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        let mut files = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut seen = BTreeSet::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            // Unit tests (a module's `#[cfg(test)] mod tests` closes the file) may pass
            // values to a child test process; the product never reads those.
            let text = match text.find("#[cfg(test)]\nmod tests") {
                Some(at) => &text[..at],
                None => &text[..],
            };
            for (at, _) in text
                .match_indices("var(\"")
                .chain(text.match_indices("var_os(\""))
            {
                let name: String = text[at..]
                    .chars()
                    .skip_while(|c| *c != '"')
                    .skip(1)
                    .take_while(|c| *c != '"')
                    .collect();
                assert!(
                    ENV_VARS.iter().any(|v| v.name == name),
                    "{name} is read in {} but not in reference::ENV_VARS",
                    f.display()
                );
                seen.insert(name);
            }
        }
        assert!(seen.contains("LOOPGATE_STATE_DIR"), "{seen:?}");
    }

    #[test]
    fn every_finding_code_is_documented_once() {
        let docs = findings();
        assert_eq!(docs.len(), Code::ALL.len());
        let names: BTreeSet<&str> = docs.iter().map(|d| d.code.as_str()).collect();
        assert_eq!(names.len(), Code::ALL.len(), "two codes share a name");
        for d in docs {
            assert!(!d.meaning.is_empty() && !d.remedy.is_empty(), "{}", d.code);
            assert!(
                ["info", "warning", "critical"]
                    .iter()
                    .any(|s| d.severity.starts_with(s)),
                "{}: {}",
                d.code,
                d.severity
            );
        }
    }

    #[test]
    fn roff_text_cannot_start_a_request() {
        assert_eq!(roff(".x"), "\\&.x");
        assert_eq!(roff("a-b\\c"), "a\\-b\\ec");
    }
}
