//! loopgate: publish a loopback-only service on one interface, for chosen source
//! networks only, by pairing `route_localnet` with nftables guard rules in one
//! transaction.
//!
//! Layout: [`cli`] is the command line; [`input`] and [`policy`] parse what users
//! write into [`spec::Spec`]s; [`spec`] resolves specs against the interfaces (and
//! container networks, through [`runtime`]) of the moment into [`grant::Grant`]s;
//! [`plan`] turns grants into a [`ruleset::Ruleset`] value; [`kernel`] observes and
//! applies; [`state`] is what loopgate remembers per namespace; [`txn`] orders and
//! undoes the steps; [`audit`] judges; [`verbs`] are the thin commands; [`persist`]
//! records a change in the persistent policy; [`rpc`] borrows the table from the
//! running `watch`; [`reference`](mod@reference) documents codes, keys and exit statuses for the man
//! page and docs; [`output`] prints without panicking; [`files`] opens files as root
//! safely.
//!
//! Why each rule of the table exists is said where it is built: `raw_if_IF`,
//! `input_if_IF`, `post_if_IF` (an interface's guard) in `plan/guards.rs`;
//! `nat_IF_LISTEN_PROTO_PORT` (a grant's DNAT) in `plan/nat.rs`;
//! `input_to_IF_ADDR_PROTO_PORT` (the accept of a DNATed flow) in `plan/targets.rs`;
//! `allow_HASH`/`allow_HASH_hosts` (source sets) in `plan/allow.rs`; how each name
//! follows its object, in `plan/names.rs`; the base
//! chains, their hooks and priorities (why the DNAT runs at `dstnat`) in `plan/hooks.rs`;
//! `trace`'s own rule, in `table ip loopgate_trace`, in `kernel/nft/trace.rs`.
//!
//! Paths: `main` → [`run`] → [`run_verb`] → `verbs::<verb>`. `expose` and `revoke` end in
//! [`verbs::change`], `apply`/`plan` in `verbs::apply`, `guard`/`unguard` in
//! [`verbs::converge_guarding`]; all go through [`verbs::converge_over`] (a change borrows
//! watch's table by [`verbs::borrow_table`] while a watch holds it, served by
//! `verbs/watch/lend.rs` over [`rpc`]; `plan` and `--dry-run` only read) to
//! [`txn::observe_and_compute`] and [`txn::execute`], which changes the host only through
//! [`kernel::seam::Kernel`] (`System`: sysctl writes, the nf_tables batch of
//! `kernel/nft/generation.rs` and `batch.rs`, or the held table's
//! [`kernel::nft::Owner`], conntrack deletes). `watch`: `verbs::watch::run` → `repair` →
//! `repair_with` → the same two `txn` calls; a table deleted, flushed or edited by another
//! process is `txn::Change::guard_lost` (`txn/compute.rs`), on which `txn::execute`
//! closes first (step 0, even before the journal), then restores, reads back, cuts flows
//! and reopens; its fast path after another process's commit is `close_if_foreign`. `audit`: `verbs::audit::run` → [`audit::observe()`] →
//! [`audit::assess()`] → `audit::render`. `trace`: `verbs::trace::run` →
//! `kernel::nft::trace` and `kernel::trace`.
//!
//! Layers, lowest first: `error`, `failpoint`, `cidr`, `files`; `grant`; `ruleset`;
//! `kernel` (the only module that changes the host: the engine's changes go through
//! [`kernel::seam::Kernel`]; watch's hold of the table (`nft::Owner::adopt`, deleting an
//! empty table as it stops) and `trace`'s own table are the named exceptions); then
//! everything that decides. A module names only what is
//! below it, and no two modules name each other in a cycle: the `layers` unit test
//! checks both (`cargo test --lib layers`).

pub mod audit;
pub mod cidr;
pub mod cli;
pub mod error;
pub mod failpoint;
pub mod files;
pub mod grant;
pub mod input;
pub mod kernel;
#[cfg(test)]
mod layers;
pub mod output;
pub mod persist;
pub mod plan;
pub mod policy;
#[cfg(test)]
mod properties;
pub mod reference;
pub mod rpc;
pub mod ruleset;
pub mod runtime;
pub mod spec;
pub mod state;
pub mod txn;
pub mod verbs;

use anyhow::Result;
use cli::{Cli, Command};

/// Runs a parsed command line and returns the exit code.
pub fn run(cli: &Cli) -> Result<i32> {
    match &cli.command {
        Command::Completions(a) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(a.shell, &mut cmd, "loopgate", &mut std::io::stdout());
            return Ok(error::EXIT_OK);
        }
        Command::Man => {
            man_page(&mut std::io::stdout().lock())?;
            return Ok(error::EXIT_OK);
        }
        _ => {}
    }
    if let (Some(ns), true) = (&cli.netns, cli.command.persists()) {
        // The persistent policy is applied at boot in the namespace loopgate.service
        // runs in; another namespace's grants written there would replace the host's
        // own and be applied to the wrong namespace.
        bad_input!(
            "--persist cannot be combined with --netns {ns:?}: {} is the policy of loopgate's own namespace; persist from inside {ns:?} with its own LOOPGATE_CONFIG_DIR",
            policy::config_dir().display()
        );
    }
    // Every other verb reads the firewall; say so plainly before any netlink errno can.
    kernel::host::require_net_admin()?;
    if let Some(ns) = &cli.netns {
        kernel::netns::enter(ns)?;
    }
    run_verb(cli)
}

/// Writes the manual page (roff): clap_mangen's sections from the command line, each
/// verb's full `--help`, then the reference sections of [`reference::man_sections`].
pub fn man_page(w: &mut dyn std::io::Write) -> std::io::Result<()> {
    // Narrower than a terminal: the man page indents the help text by 7 columns.
    let mut cmd = <Cli as clap::CommandFactory>::command().term_width(72);
    // Built once so each verb's usage line says `loopgate VERB`, as a user types it.
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    // Not clap_mangen's SUBCOMMANDS section: it points at one page per verb
    // (loopgate-expose(1)), which is not shipped. Each verb's help is written here, in
    // one page.
    writeln!(w, ".SH COMMANDS")?;
    for sub in cmd.get_subcommands_mut() {
        if sub.get_name() == "help" {
            continue;
        }
        writeln!(w, ".SS \"loopgate {}\"\n.nf", sub.get_name())?;
        for line in sub.render_long_help().to_string().lines() {
            let line = line.replace('\\', "\\e").replace('-', "\\-");
            if line.starts_with(['.', '\'']) {
                writeln!(w, "\\&{line}")?;
            } else {
                writeln!(w, "{line}")?;
            }
        }
        writeln!(w, ".fi")?;
    }
    w.write_all(reference::man_sections().as_bytes())?;
    man.render_version_section(w)
}

/// Runs the verb of `cli` in the current namespace. A verb that changes loopgate's
/// table while a `watch` holds it borrows watch's socket for its transaction (see
/// [`rpc`]); it runs here, in this process, either way.
pub fn run_verb(cli: &Cli) -> Result<i32> {
    match &cli.command {
        Command::Expose(a) => verbs::expose::run(a).map(|_| error::EXIT_OK),
        Command::Revoke(a) => verbs::revoke::run(a).map(|_| error::EXIT_OK),
        Command::Audit(a) => verbs::audit::run(a),
        Command::Apply(a) => verbs::apply::run_apply(a).map(|_| error::EXIT_OK),
        Command::Plan(a) => verbs::apply::run_plan(a).map(|_| error::EXIT_OK),
        Command::Watch(a) => verbs::watch::run(a).map(|_| error::EXIT_OK),
        Command::Guard(a) => verbs::guard::run_guard(a).map(|_| error::EXIT_OK),
        Command::Unguard(a) => verbs::guard::run_unguard(a).map(|_| error::EXIT_OK),
        Command::Trace(a) => verbs::trace::run(a),
        Command::Completions(_) | Command::Man => Ok(error::EXIT_OK),
    }
}
