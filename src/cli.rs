//! The command line, as clap definitions. Help texts are the user's first manual.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// The version `--version` prints; a build with the failure-injection test hook says
/// so, which is how scripts/test.sh checks that a release build has none.
#[cfg(feature = "failpoints")]
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (with the failpoints test hook)"
);
/// The version `--version` prints.
#[cfg(not(feature = "failpoints"))]
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Expose a loopback-only service to one subnet behind one interface, safely.
///
/// loopgate turns on net.ipv4.conf.IFACE.route_localnet for exactly one interface and,
/// in the same transaction, installs nftables rules (table `ip loopgate`) that let only
/// the allowed source networks reach only the published ports, and block every other
/// way into 127.0.0.0/8 through that interface. If any step fails, both go back to what
/// they were.
///
/// Exit codes: 0 success; 1 audit found problems, trace saw no packet, or revoke/unguard
/// matched nothing; 2 bad input or usage (nothing was changed); 3 the system refused or failed (what was done was rolled back); 4 the
/// change is in force but --persist could not record it.
#[derive(Debug, Parser)]
#[command(name = "loopgate", version = VERSION, max_term_width = 100)]
pub struct Cli {
    /// Act inside this network namespace: a name from `ip netns list`, or a path such as
    /// /proc/PID/ns/net. Default: the namespace loopgate runs in.
    #[arg(long, global = true, value_name = "NAME|PATH")]
    pub netns: Option<String>,

    /// The verb to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs. Each variant's doc comment is its `--help` text.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish a loopback service on an interface for the allowed source networks.
    ///
    /// Example: `loopgate expose docker0 --allow 172.17.0.0/16 --port 3306` lets
    /// containers reach 127.0.0.1:3306 at 172.17.0.1:3306, and nothing else.
    /// Running the same command twice changes nothing; a new --allow list replaces the
    /// old one of that grant.
    Expose(ExposeArgs),
    /// Withdraw published ports; open connections of revoked grants are cut too.
    ///
    /// When an interface loses its last grant, its route_localnet goes back to the
    /// value it had before loopgate first changed it. Exit 1, changing nothing, when
    /// no grant matches.
    Revoke(RevokeArgs),
    /// Report what is open on this host and whether it is guarded.
    ///
    /// Reads the kernel, not only loopgate's records: route_localnet of every interface
    /// (and `all`/`default`), loopgate's table compared with what it should be, and the
    /// loopback sockets each open interface exposes. Exit 0 when nothing is a warning or
    /// worse, 1 otherwise; with `--format prometheus`, exit 0 whenever the document was
    /// written (the findings, and a failed observation, are in its metrics).
    Audit(AuditArgs),
    /// Make the host match a policy (grants the policy no longer lists are revoked;
    /// grants made with `expose` stay; a grant whose interface is missing is pending).
    Apply(ApplyArgs),
    /// Show what `apply FILE` would change, without changing anything.
    Plan(PlanArgs),
    /// Keep what was asked for in force while interfaces come and go (runs until
    /// SIGTERM).
    ///
    /// Serves pending grants and interface patterns (`br-*`) as matching interfaces
    /// appear, guard first; follows a changed policy directory (`--policy`); closes
    /// managed interfaces the moment another process touches loopgate's table, restores
    /// the table and reopens them; sets route_localnet again on a re-created interface
    /// only after its guard is verified in the kernel. One log line per repair.
    Watch(WatchArgs),
    /// Guard interfaces another tool opened (route_localnet=1 by Docker, netavark,
    /// kube-proxy, a CNI plugin): add loopgate's guard chains without publishing
    /// anything and without touching their route_localnet. IFACE may be a pattern.
    Guard(GuardArgs),
    /// Remove a guard added with `loopgate guard` (same IFACE or --all-interfaces).
    ///
    /// Exit 1, changing nothing, when no such guard was added.
    Unguard(GuardArgs),
    /// Follow packets through the firewall: every table and chain they pass, and where
    /// they are accepted, DNATed or dropped.
    ///
    /// Example: `loopgate trace docker0 --port 3306 --count 1`, then connect from a
    /// container; prints, for each packet, each step, and ends with a line such as
    /// "dropped by table inet filter, chain input: policy drop". While it runs, packets
    /// arriving on IFACE (to PORT) carry nftables' trace flag, set by a rule in a table
    /// of its own, `ip loopgate_trace`, which is removed when trace ends (after --count
    /// packets, after --timeout, on Ctrl-C, or on failure). Nothing else is changed.
    /// Exit 0 when at least one packet was traced, 1 when none was seen.
    Trace(TraceArgs),
    /// Print a shell completion script, e.g. `loopgate completions bash > /etc/bash_completion.d/loopgate`.
    Completions(CompletionsArgs),
    /// Print the manual page in roff format, e.g. `loopgate man > loopgate.1`.
    Man,
}

impl Command {
    /// True for `expose --persist` and `revoke --persist`.
    pub fn persists(&self) -> bool {
        match self {
            Command::Expose(a) => a.persist,
            Command::Revoke(a) => a.persist,
            _ => false,
        }
    }
}

/// Arguments of `loopgate completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `--proto` as typed: one protocol, or `both` for one grant per protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtoArg {
    // The variants' docs are written as `#[doc = concat!(..)]`, which clap does not read:
    // a `///` line here would become a per-value help text and change `--help`.
    #[doc = concat!("TCP only.")]
    Tcp,
    #[doc = concat!("UDP only.")]
    Udp,
    #[doc = concat!("TCP and UDP (`expose`: one grant per protocol and port).")]
    Both,
}

impl ProtoArg {
    /// The spelling [`crate::input::parse_proto`] takes: `tcp`, `udp` or `both`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtoArg::Tcp => "tcp",
            ProtoArg::Udp => "udp",
            ProtoArg::Both => "both",
        }
    }
}

/// Arguments of `loopgate expose`; validated into grants by [`crate::input::validate`].
#[derive(Debug, Args)]
pub struct ExposeArgs {
    /// The interface the allowed clients are behind, e.g. docker0, cni0, br-1234, or a
    /// pattern such as 'br-*' (quoted).
    #[arg(value_name = "IFACE", required_unless_present_any = ["docker_network", "podman_network"], conflicts_with_all = ["docker_network", "podman_network"])]
    pub iface: Option<String>,

    /// A Docker network by name instead of IFACE (e.g. myproj_default): its bridge,
    /// subnets (the default --allow) and gateway (the default --listen) are asked of
    /// `docker network inspect` each time; `compose down/up` is followed by itself.
    #[arg(long, value_name = "NETWORK", conflicts_with = "podman_network")]
    pub docker_network: Option<String>,

    /// A Podman network by name instead of IFACE (as --docker-network, with `podman`).
    #[arg(long, value_name = "NETWORK")]
    pub podman_network: Option<String>,

    /// With --docker-network/--podman-network: accept a network that does not exist
    /// yet, as a pending grant served once it does. Without it such a name is refused
    /// (exit 2, naming the networks that exist): a typo must not wait for ever.
    #[arg(long)]
    pub pending_ok: bool,

    /// Source network allowed in (IPv4 CIDR or address). Repeat or comma-separate.
    /// Default with --docker-network/--podman-network: the network's subnets.
    #[arg(long, value_name = "CIDR", required_unless_present_any = ["docker_network", "podman_network"])]
    pub allow: Vec<String>,

    /// Port to publish (1-65535). Repeat or comma-separate for several.
    #[arg(long, value_name = "PORT", required = true)]
    pub port: Vec<String>,

    /// Transport protocol.
    #[arg(long, value_enum, default_value = "tcp")]
    pub proto: ProtoArg,

    /// Loopback target, ADDR or ADDR:PORT inside 127.0.0.0/8. Default: 127.0.0.1 and the
    /// published port.
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub to: Option<String>,

    /// Address clients connect to: an IPv4 address of this host (IFACE still decides
    /// who may use it), or `host-gateway` (what Docker gives host.docker.internal:
    /// docker0's address). Default: IFACE's primary IPv4 address, or the network's
    /// gateway with --docker-network/--podman-network.
    #[arg(long, value_name = "ADDR|host-gateway")]
    pub listen: Option<String>,

    /// Label for the grant. Default: IFACE-PROTO-PORT, e.g. docker0-tcp-3306, or
    /// IFACE-ADDR-PROTO-PORT when --listen is not the interface's primary address;
    /// with --docker-network/--podman-network, NETWORK-PROTO-PORT (e.g.
    /// myproj_default-tcp-5432, whatever --listen is).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Print the sysctl changes and the complete resulting table in nft syntax; change
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Also record the change in the persistent policy (/etc/loopgate, or
    /// $LOOPGATE_CONFIG_DIR), which loopgate.service applies at boot: in the file that
    /// keeps the grant, or as asked in loopgate.yaml. Without it, changing a grant a
    /// policy file keeps is refused. Checked before anything changes; not with --netns.
    #[arg(long, conflicts_with = "dry_run")]
    pub persist: bool,
}

/// Arguments of `loopgate revoke`; at least one of `--port`, `--name`, `--all` is
/// required, except with `--docker-network`/`--podman-network` (the network's grants).
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").args(["port", "name", "all"])))]
pub struct RevokeArgs {
    /// Interface whose grants to revoke. Without it, `--name NAME` revokes the grants
    /// named NAME wherever they are, and `--all` everything loopgate did in this
    /// namespace.
    #[arg(value_name = "IFACE", conflicts_with_all = ["docker_network", "podman_network"])]
    pub iface: Option<String>,

    /// Revoke grants made with --docker-network NETWORK (all of them without --port or
    /// --name), whatever bridge the network has now.
    #[arg(long, value_name = "NETWORK", conflicts_with = "podman_network")]
    pub docker_network: Option<String>,

    /// Revoke grants made with --podman-network NETWORK (all of them without --port or
    /// --name).
    #[arg(long, value_name = "NETWORK")]
    pub podman_network: Option<String>,

    /// Revoke the grants publishing this port (repeat or comma-separate).
    #[arg(long, value_name = "PORT")]
    pub port: Vec<String>,

    /// With --port: only this protocol. Default: both.
    #[arg(long, value_enum, requires = "port")]
    pub proto: Option<ProtoArg>,

    /// Revoke the grants with this name (on IFACE or the network, or wherever they are
    /// without either).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Revoke every grant (on IFACE, or everywhere without IFACE).
    #[arg(long)]
    pub all: bool,

    /// Print what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Also remove the revoked grants from the persistent policy (/etc/loopgate, or
    /// $LOOPGATE_CONFIG_DIR): from the file that keeps each. Without it, revoking a grant
    /// a policy file keeps is refused. Not with --netns.
    #[arg(long, conflicts_with = "dry_run")]
    pub persist: bool,
}

/// Output formats of `loopgate audit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuditFormat {
    /// Readable text.
    Text,
    /// A JSON document with a schema version (described in docs/audit-json.md).
    Json,
    /// Prometheus text format, for node_exporter's textfile collector.
    Prometheus,
}

/// Arguments of `loopgate audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Same as `--format json`.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,

    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: AuditFormat,

    /// Read every set element back from the kernel, even when the nftables generation
    /// shows nothing changed since loopgate wrote them (slow for very large allow lists).
    #[arg(long)]
    pub deep: bool,
}

/// Arguments of `loopgate apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Policy file (YAML; see rules/ for examples), or a directory whose *.yaml files are
    /// merged, such as /etc/loopgate.
    #[arg(value_name = "FILE|DIR")]
    pub file: PathBuf,

    /// Print what would change and the resulting table; change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Apply a policy with no grants and no guards even though grants or guards of a
    /// policy are in force now, revoking them all. Without it such an apply is refused
    /// (exit 2), because an empty policy is more often a mistake (a truncated file, an
    /// emptied pipe) than a wish to close everything.
    #[arg(long)]
    pub allow_empty: bool,
}

/// Arguments of `loopgate guard` and `loopgate unguard`.
#[derive(Debug, Args)]
pub struct GuardArgs {
    /// The interface, or a glob pattern such as 'br-*' or 'cali*' (quote it).
    #[arg(value_name = "IFACE|PATTERN")]
    pub iface: Option<String>,

    /// Every interface (`lo` excepted): for hosts where net.ipv4.conf.all.route_localnet
    /// is 1 (kube-proxy sets it), which opens every interface at once.
    #[arg(long)]
    pub all_interfaces: bool,

    /// Print what would change and the resulting table; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Arguments of `loopgate watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Also follow this policy file or directory (such as /etc/loopgate): when its
    /// files change, watch applies them as `apply` would; grants made with `expose`
    /// stay. Without it, watch keeps what the last command asked for.
    #[arg(long, value_name = "FILE|DIR")]
    pub policy: Option<PathBuf>,

    /// Do not hold loopgate's table with the kernel's owner flag (Linux 6.9+). While
    /// watch holds it, no other process can flush, switch off or edit it, and an
    /// `nft -f` file that names `table ip loopgate` fails as a whole; with this flag,
    /// watch protects the table by repair only (it closes the interfaces the moment
    /// another process changes the table, restores it and reopens them).
    #[arg(long)]
    pub no_hold: bool,

    /// Repair once and exit: put back what loopgate keeps (its table, the
    /// route_localnet values it set, grants whose interface or address came back) as a
    /// running watch would, then stop (exit 0 when everything is in force). The
    /// remedy `audit` prints for a table edited by another process, a renamed
    /// interface or a moved address when no watch runs. Does not hold the table.
    #[arg(long, conflicts_with = "no_hold")]
    pub once: bool,
}

/// Arguments of `loopgate trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The interface the packets arrive on, e.g. docker0, or a prefix ending in `*`
    /// (`br-*`).
    #[arg(value_name = "IFACE")]
    pub iface: String,

    /// Only packets to this destination port (TCP, UDP): the published port of a grant.
    #[arg(long, value_name = "PORT")]
    pub port: Option<String>,

    /// Stop after this many packets. Default: run until --timeout or Ctrl-C.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Stop after this many seconds. Default: run until --count packets or Ctrl-C.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
}

/// Arguments of `loopgate plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Policy file (YAML; see rules/ for examples), or a directory of them.
    #[arg(value_name = "FILE|DIR")]
    pub file: PathBuf,
}

/// The verb of `cli` in a word, for log lines.
pub fn describe_command(cli: &Cli) -> &'static str {
    match cli.command {
        Command::Expose(_) => "expose",
        Command::Revoke(_) => "revoke",
        Command::Audit(_) => "audit",
        Command::Apply(_) => "apply",
        Command::Plan(_) => "plan",
        Command::Watch(_) => "watch",
        Command::Guard(_) => "guard",
        Command::Unguard(_) => "unguard",
        Command::Trace(_) => "trace",
        Command::Completions(_) => "completions",
        Command::Man => "man",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("loopgate").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn expose_needs_an_interface_or_a_network_and_a_port() {
        assert!(parse(&["expose", "--port", "5432"]).is_err());
        assert!(parse(&["expose", "br0", "--allow", "192.0.2.0/25"]).is_err());
        let cli = parse(&["expose", "br0", "--allow", "192.0.2.0/25", "--port", "5432"]).unwrap();
        let Command::Expose(a) = cli.command else {
            panic!("not expose")
        };
        assert_eq!(a.proto, ProtoArg::Tcp, "tcp by default");
        // A runtime network brings its own subnets: --allow is optional then.
        assert!(parse(&[
            "expose",
            "--docker-network",
            "app_default",
            "--port",
            "5432"
        ])
        .is_ok());
    }

    #[test]
    fn an_interface_and_a_network_or_two_runtimes_are_refused_together() {
        for args in [
            &["expose", "br0", "--docker-network", "n", "--port", "1"][..],
            &[
                "expose",
                "--docker-network",
                "n",
                "--podman-network",
                "m",
                "--port",
                "1",
            ],
            &["revoke", "br0", "--podman-network", "m"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn persist_and_dry_run_exclude_each_other() {
        let args = ["expose", "br0", "--allow", "192.0.2.0/25", "--port", "1"];
        let with = |extra: &[&'static str]| {
            parse(
                &args
                    .iter()
                    .copied()
                    .chain(extra.iter().copied())
                    .collect::<Vec<_>>(),
            )
        };
        assert!(with(&["--persist", "--dry-run"]).is_err());
        assert!(with(&["--persist"]).unwrap().command.persists());
        assert!(!with(&["--dry-run"]).unwrap().command.persists());
    }

    #[test]
    fn revoke_proto_needs_a_port() {
        assert!(parse(&["revoke", "br0", "--proto", "udp"]).is_err());
        assert!(parse(&["revoke", "br0", "--proto", "udp", "--port", "53"]).is_ok());
    }

    #[test]
    fn netns_is_global_and_apply_takes_allow_empty() {
        let cli = parse(&["apply", "/etc/loopgate", "--netns", "lab", "--allow-empty"]).unwrap();
        assert_eq!(cli.netns.as_deref(), Some("lab"));
        let Command::Apply(a) = cli.command else {
            panic!("not apply")
        };
        assert!(a.allow_empty && !a.dry_run);
        assert!(parse(&["apply", "/etc/loopgate", "--skip-missing"]).is_err());
    }

    #[test]
    fn the_version_says_whether_the_test_hook_is_built_in() {
        assert_eq!(
            VERSION.contains("failpoints"),
            cfg!(feature = "failpoints"),
            "{VERSION}"
        );
    }
}
