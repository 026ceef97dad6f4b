//! loopgate: publish a loopback-only service on one interface, for chosen source
//! networks only, by pairing `route_localnet` with nftables guard rules in one
//! transaction.
//!
//! Layout: [`input`] and [`policy`] validate what users write into [`grant::Grant`]s;
//! [`plan`] turns grants into a [`ruleset::Ruleset`] value; [`kernel`] observes and
//! applies; [`txn`] orders and undoes the steps; [`verbs`] are the thin commands;
//! [`persist`] records a change in the persistent policy; [`rpc`] runs a command line
//! in the running `watch`.

pub mod audit;
pub mod cidr;
pub mod cli;
pub mod error;
pub mod failpoint;
pub mod files;
pub mod grant;
pub mod input;
pub mod kernel;
pub mod output;
pub mod persist;
pub mod plan;
pub mod policy;
#[cfg(test)]
mod properties;
pub mod rpc;
pub mod ruleset;
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
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
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
    if let Some(code) = verbs::watch::forward(cli)? {
        return Ok(code);
    }
    run_verb(cli)
}

/// Runs the verb of `cli` in the current namespace, with no forwarding: what `run`
/// ends with, and what `loopgate watch` runs for a client.
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
