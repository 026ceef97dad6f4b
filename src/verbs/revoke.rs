//! `loopgate revoke`: withdraw published ports by port, by name (`--name N` alone:
//! wherever it is), or all of them.
//!
//! Works on what was asked for (specs): `revoke br-* --port 5432` withdraws a pattern
//! from every interface it serves; an interface that is gone can still be revoked, and
//! `revoke --docker-network NET` withdraws what was asked for by that network's name,
//! whatever bridge it has now.
//!
//! A grant a policy file keeps is that file's: without `--persist` revoking it is
//! refused (watch, the next `apply` or the next boot would put it back); with
//! `--persist` its entry is taken out of that file (see [`super::owner`]).

use super::open_store;
use crate::bad_input;
use crate::cli::RevokeArgs;
use crate::input;
use crate::kernel::host::HostInterfaces;
use crate::spec::{self, Spec};
use anyhow::Result;

/// Runs `revoke`. Errors: bad input (exit 2), nothing matched (exit 1, nothing
/// changed) or a failed, rolled-back transaction (exit 3).
pub fn run(args: &RevokeArgs) -> Result<()> {
    // The interface may already be gone (dockerd re-created it): only its name is checked.
    let iface = args
        .iface
        .as_deref()
        .map(spec::parse_interface)
        .transpose()?;
    if iface.is_none()
        && !args.all
        && args.name.is_none()
        && args.docker_network.is_none()
        && args.podman_network.is_none()
    {
        bad_input!("revoke without an interface or network revokes by --name NAME (wherever it is), or everything with --all (everything loopgate did in this namespace)");
    }
    if args.port.is_empty()
        && args.name.is_none()
        && !args.all
        && args.docker_network.is_none()
        && args.podman_network.is_none()
    {
        bad_input!("revoke needs --port, --name or --all (a --docker-network or --podman-network alone revokes all of that network's grants)");
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
    let host = HostInterfaces::read()?;
    // The names a spec's grants have now (default names depend on the interface).
    let names_of = |s: &Spec| -> Vec<String> {
        let mut names: Vec<String> = spec::resolve(std::slice::from_ref(s), &host)
            .grants
            .into_iter()
            .map(|g| g.name)
            .collect();
        names.push(s.shown_name());
        names
    };
    use crate::kernel::runtime::Runtime;
    let network = match (&args.docker_network, &args.podman_network) {
        (Some(n), _) => Some((Runtime::Docker, n.clone())),
        (None, Some(n)) => Some((Runtime::Podman, n.clone())),
        (None, None) => None,
    };
    let revoked = |s: &Spec| {
        let on = match (&network, &s.network) {
            (Some((r, n)), Some(sel)) => sel.runtime == *r && &sel.name == n,
            (Some(_), None) => false,
            (None, _) => iface.as_ref().is_none_or(|i| &s.interface == i),
        };
        // A network is named exactly: without --port or --name, all of its grants.
        let whole_network = network.is_some() && ports.is_empty() && name.is_none();
        on && (args.all
            || whole_network
            || (!ports.is_empty() && ports.contains(&s.port) && protos.contains(&s.proto))
            || name.as_ref().is_some_and(|n| names_of(s).contains(n)))
    };
    let keep: Vec<Spec> = old.specs.iter().filter(|s| !revoked(s)).cloned().collect();
    // `revoke --all` alone takes back whatever there is, nothing included; anything
    // narrower that matches nothing is refused, so that a script learns it.
    let everything = args.all && iface.is_none() && network.is_none();
    if keep.len() == old.specs.len() && !everything {
        let asked = match (&network, &iface) {
            (Some((r, n)), _) => format!("{} network {n}", r.cli()),
            (None, Some(i)) => i.clone(),
            (None, None) => "any interface".to_string(),
        };
        let what = match (&name, ports.is_empty()) {
            (Some(n), _) => format!("named {n:?}"),
            (None, false) => format!(
                "for port {}{}",
                ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                match args.proto {
                    Some(p) if p != crate::cli::ProtoArg::Both => format!("/{}", p.as_str()),
                    _ => String::new(),
                }
            ),
            (None, true) => "at all".to_string(),
        };
        let served_by = iface
            .as_ref()
            .and_then(|i| old.specs.iter().find(|s| s.is_pattern() && s.matches(i)));
        let hint = match served_by {
            Some(p) => format!(
                " ({} is served by the pattern {:?}: revoke that)",
                iface.as_deref().unwrap_or_default(),
                p.interface
            ),
            None => match old.specs.len() {
                0 => " (there are no grants)".to_string(),
                _ => format!(
                    " (grants: {})",
                    old.specs
                        .iter()
                        .map(Spec::label)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        };
        return Err(anyhow::Error::new(crate::error::NothingMatched(format!(
            "nothing matched: no grant on {asked} {what}; nothing was revoked{hint}"
        ))));
    }
    let gone: Vec<&Spec> = old.specs.iter().filter(|s| revoked(s)).collect();
    let policy_gone = gone
        .iter()
        .filter(|s| s.source == spec::Source::Policy)
        .count();
    // `revoke --all` alone is the off switch for everything loopgate did here.
    if !args.persist && policy_gone > 0 {
        match (everything, super::owner::followed()) {
            (true, Some((pid, path))) => bad_input!(
                "loopgate watch (pid {pid}) follows {} and would put its {policy_gone} grant(s) back at once; stop it first (systemctl stop loopgate-watch.service), or remove them from the policy with --persist",
                path.display()
            ),
            (true, None) => crate::errln!(
                "loopgate: warning: {policy_gone} of these grant(s) are a policy's; they return with the next `loopgate apply` of it (at boot); --persist removes them from the policy"
            ),
            (false, _) => super::owner::refuse_owned(gone.iter().copied(), "remove")?,
        }
    }
    let target = match args.persist {
        true => {
            let dir = crate::policy::config_dir();
            super::owner::check_persist_dir(&dir)?;
            let edit = crate::persist::Edit {
                remove: gone
                    .iter()
                    .filter(|s| s.source == spec::Source::Policy)
                    .map(|s| (*s).clone())
                    .collect(),
                put: vec![],
            };
            Some(crate::persist::Target::prepare(&dir, &edit)?)
        }
        false => None,
    };
    let keep = match &target {
        Some(t) => super::owner::with_policy(&keep, t),
        None => keep,
    };
    let grants = spec::resolve_keeping(&keep, &host, &old.grants).grants;
    super::change(store, old, grants, keep, args.dry_run, target)
}
