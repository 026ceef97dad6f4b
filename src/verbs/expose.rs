//! `loopgate expose`: add or update published ports, keeping every other one as it is.
//!
//! What is asked for is recorded as specs (the interface may be a glob pattern); the
//! specs are resolved against the interfaces that exist now into the grants the engine
//! installs. An exact interface name must exist now (a typo is refused), as must a
//! runtime network unless `--pending-ok` asks for it as pending; a pattern that
//! matches nothing yet is recorded as pending and served when a match appears (while
//! `loopgate watch` runs, or at the next command).
//!
//! A published port a policy file keeps is that file's: changing it without
//! `--persist` is refused; with `--persist` the change is made in that file, and a new
//! grant is recorded in `loopgate.yaml` as it was asked for (a network by its name, a
//! pattern as a pattern, a listen address only when `--listen` gave one).

use super::open_store;
use crate::bad_input;
use crate::cli::ExposeArgs;
use crate::input::{self, GrantRequest};
use crate::kernel::host::HostInterfaces;
use crate::spec::{self, Source};
use anyhow::Result;

/// Runs `expose`. Errors: bad input (exit 2, nothing changed) or a failed, rolled-back
/// transaction (exit 3); see `loopgate --help`.
pub fn run(args: &ExposeArgs) -> Result<()> {
    use crate::kernel::runtime::Runtime;
    let network = match (&args.docker_network, &args.podman_network) {
        (Some(n), _) => Some((Runtime::Docker, n.clone())),
        (None, Some(n)) => Some((Runtime::Podman, n.clone())),
        (None, None) => None,
    };
    let req = GrantRequest {
        name: args.name.clone(),
        iface: args.iface.clone().unwrap_or_default(),
        allow: args.allow.clone(),
        ports: args.port.clone(),
        proto: Some(args.proto.as_str().to_string()),
        to: args.to.clone(),
        listen: args.listen.clone(),
        network: network.clone(),
    };
    // Validate syntax before privileges, so bad input gets its own message.
    let source = if args.persist {
        Source::Policy
    } else {
        Source::Cli
    };
    let requested = spec::from_request(&req, source)?;
    let (store, old) = open_store(true)?;
    let host = HostInterfaces::read()?;
    match &network {
        // The runtime must answer: a missing CLI, another driver or an IPv6-only
        // network is refused now; a network that does not exist yet is refused too
        // (a typo would wait for ever), unless asked for as pending.
        Some((runtime, name)) => match crate::runtime::inspect(*runtime, name) {
            Err(why) => bad_input!("{why}"),
            Ok(None) if !args.pending_ok => {
                let exist = match crate::runtime::list(*runtime) {
                    Ok(names) if names.is_empty() => "there are none".to_string(),
                    Ok(names) => format!(
                        "those that do, closest first: {}",
                        crate::runtime::closest_first(name, names).join(", ")
                    ),
                    Err(why) => format!("cannot list those that do: {why}"),
                };
                bad_input!(
                    "{} network {name:?} does not exist ({exist}); to publish it once it exists, add --pending-ok",
                    runtime.cli()
                );
            }
            Ok(_) => {}
        },
        // A name must exist now, with the listen address on it: typos are refused.
        None if !spec::is_pattern(&req.iface) => {
            input::validate(&req, &host)?;
        }
        None => {}
    }
    let mut specs = old.specs.clone();
    for new in &requested {
        if let Some(existing) = specs.iter().find(|s| s.key() == new.key()) {
            if existing.to != new.to {
                bad_input!(
                    "{} is already published to {}; revoke it before publishing it to {}",
                    existing.label(),
                    existing.to,
                    new.to
                );
            }
        }
    }
    // A spec that pins the address another one resolves to now (or the reverse) is
    // the same publication: the new one replaces it rather than doubling it.
    let now = |s: &spec::Spec| spec::resolve(std::slice::from_ref(s), &host).grants;
    let mut replaced: Vec<spec::Spec> = Vec::new();
    for new in &requested {
        let same: Vec<_> = now(new).iter().map(|g| g.key()).collect();
        specs.retain(|s| {
            let stays = s.key() == new.key()
                || s.interface != new.interface
                || s.to != new.to
                || now(s).iter().all(|g| !same.contains(&g.key()));
            if !stays {
                replaced.push(s.clone());
            }
            stays
        });
        replaced.extend(specs.iter().filter(|s| s.key() == new.key()).cloned());
    }
    // What a policy file keeps is changed there, or not at all. A command without
    // --name asks for no particular name: the policy's name is as good.
    let unchanged = |old: &spec::Spec| {
        requested.iter().any(|n| {
            spec::Spec {
                source: old.source,
                origin: old.origin.clone(),
                name: n.name.clone().or_else(|| old.name.clone()),
                ..n.clone()
            } == *old
        })
    };
    let same_again: Vec<spec::SpecKey> = replaced
        .iter()
        .filter(|o| unchanged(o))
        .map(|o| o.key())
        .collect();
    if !args.persist {
        super::owner::refuse_owned(replaced.iter().filter(|s| !unchanged(s)), "change")?;
    }
    // Asking again, without --persist, for exactly what a policy asks for changes
    // nothing: it stays the policy's.
    let requested: Vec<spec::Spec> = match args.persist {
        true => requested,
        false => requested
            .into_iter()
            .filter(|n| !same_again.contains(&n.key()))
            .collect(),
    };
    spec::merge(&mut specs, requested.clone());
    let target = match args.persist {
        true => {
            let dir = crate::policy::config_dir();
            super::owner::check_persist_dir(&dir)?;
            let edit = crate::persist::Edit {
                remove: replaced
                    .iter()
                    .filter(|s| s.source == Source::Policy)
                    .filter(|s| requested.iter().all(|n| n.key() != s.key()))
                    .cloned()
                    .collect(),
                put: requested.clone(),
            };
            let target = crate::persist::Target::prepare(&dir, &edit)?;
            specs = super::owner::with_policy(&specs, &target);
            Some(target)
        }
        false => None,
    };
    let resolved = spec::resolve_keeping(&specs, &host, &old.grants);
    if let Some(p) = resolved
        .pending
        .iter()
        .find(|p| p.kind == spec::PendingKind::Conflict)
    {
        bad_input!("{}: {}", p.spec, p.reason);
    }
    input::check_conflicts(&resolved.grants)?;
    for p in &resolved.pending {
        if requested.iter().any(|r| r.label() == p.spec) {
            crate::errln!(
                "loopgate: warning: {}; it is served as soon as that changes",
                p.what()
            );
        }
    }
    super::change(store, old, resolved.grants, specs, args.dry_run, target)
}
