//! `loopgate expose`: add or update grants, keeping every other grant as it is.

use super::open_store;
use crate::bad_input;
use crate::cli::ExposeArgs;
use crate::input::{self, GrantRequest};
use crate::kernel::host::HostInterfaces;
use anyhow::Result;

/// Runs `expose`: validates the request into grants, merges them into the committed
/// ones (same key: the new allow list and name replace the old) and converges.
///
/// Errors: invalid arguments, a missing interface, a port already published to another
/// target (exit 2, nothing changed); a kernel failure, after rolling back (exit 3); with
/// `--persist`, a policy that could not be written after the change (exit 4).
pub fn run(args: &ExposeArgs) -> Result<()> {
    let req = GrantRequest {
        name: args.name.clone(),
        iface: args.iface.clone(),
        allow: args.allow.clone(),
        ports: args.port.clone(),
        proto: Some(args.proto.as_str().to_string()),
        to: args.to.clone(),
        listen: args.listen.clone(),
    };
    // Validate syntax before privileges, so bad input gets its own message.
    input::parse_iface(&req.iface)?;
    let (store, old) = open_store(true)?;
    let requested = input::validate(&req, &HostInterfaces::read()?)?;
    input::check_conflicts(&requested)?;

    let mut grants = old.grants.clone();
    for new in requested {
        match grants.iter_mut().find(|g| g.key() == new.key()) {
            Some(existing) if existing.to != new.to => bad_input!(
                "{}:{}/{} is already published to {} (grant {}); revoke it before publishing it to {}",
                new.listen,
                new.port,
                new.proto,
                existing.to,
                existing.name,
                new.to
            ),
            Some(existing) => *existing = new,
            None => grants.push(new),
        }
    }
    input::check_conflicts(&grants)?;
    super::change(store, old, grants, args.dry_run, args.persist)
}
