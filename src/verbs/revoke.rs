//! `loopgate revoke`: withdraw grants by port, by name, or all of them.

use super::open_store;
use crate::bad_input;
use crate::cli::RevokeArgs;
use crate::grant::Grant;
use crate::input;
use anyhow::Result;

/// Runs `revoke`: removes the grants matching the interface and `--port`/`--proto`,
/// `--name` or `--all`, and converges to the rest. Matching nothing is not an error: it
/// says so and still converges to the committed grants.
///
/// Errors: invalid arguments, or no interface without `--all` (exit 2); a kernel
/// failure, after rolling back (exit 3); with `--persist`, as for `expose`.
pub fn run(args: &RevokeArgs) -> Result<()> {
    // The interface may already be gone (dockerd re-created it): only its name is checked.
    let iface = args.iface.as_deref().map(input::parse_iface).transpose()?;
    if iface.is_none() && !args.all {
        bad_input!("revoke without an interface needs --all (revokes everything loopgate did in this namespace)");
    }
    let ports = args
        .port
        .iter()
        .flat_map(|p| p.split(','))
        .map(input::parse_port)
        .collect::<Result<Vec<_>>>()?;
    let protos = match args.proto {
        Some(p) => input::parse_proto(p.as_str())?,
        None => input::parse_proto("both")?,
    };
    let name = args.name.as_deref().map(input::parse_name).transpose()?;

    let (store, old) = open_store(true)?;
    let revoked = |g: &Grant| {
        iface.as_ref().is_none_or(|i| &g.iface == i)
            && (args.all
                || (!ports.is_empty() && ports.contains(&g.port) && protos.contains(&g.proto))
                || name.as_ref().is_some_and(|n| &g.name == n))
    };
    let keep: Vec<Grant> = old.grants.iter().filter(|g| !revoked(g)).cloned().collect();
    if keep.len() == old.grants.len() && old.pending.is_none() {
        crate::outln!("no grant matched; nothing revoked");
    }
    super::change(store, old, keep, args.dry_run, args.persist)
}
