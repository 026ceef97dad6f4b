//! What watch says of pending grants: one line when a grant becomes pending (with why)
//! and one warning when it has been pending longer than the grace period
//! (`LOOPGATE_PENDING_GRACE`) without rightly waiting, never the same line on every
//! pass. Without it a typo in a followed policy (`docker_network: myproj_defualt`)
//! logged only "policy changed; applying it" and stayed silent for ever.
//!
//! Rightly waiting, as `audit` judges it: a pattern with no match yet, a runtime
//! network whose bridge is being re-created, and a network this watch saw served
//! (a project that is down). A network never seen may be a typo or a project that is
//! down; the warning says both.

use crate::spec::{Pending, PendingKind, Spec};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// One grant pending, as last logged.
#[derive(Debug)]
struct Entry {
    since: Instant,
    pending: Pending,
    /// Never warned of: it waits for something that comes and goes by itself.
    rightly: bool,
    /// The runtime's CLI, for a runtime network's grant.
    cli: &'static str,
    warned: bool,
}

/// The pending grants watch has logged, by [`Pending::subject`].
#[derive(Debug)]
pub struct PendingLog {
    grace: Duration,
    entries: BTreeMap<String, Entry>,
    /// Labels of the specs this watch saw served.
    served: BTreeSet<String>,
}

impl Default for PendingLog {
    fn default() -> Self {
        PendingLog::new(Duration::from_secs(
            crate::audit::pending_since::DEFAULT_GRACE,
        ))
    }
}

impl PendingLog {
    /// A log warning after `grace`.
    pub fn new(grace: Duration) -> PendingLog {
        PendingLog {
            grace,
            entries: BTreeMap::new(),
            served: BTreeSet::new(),
        }
    }

    /// Notes what one pass resolved: `specs` asked for, `pending` of them, at `now`.
    /// Appends a line for each grant that became pending.
    pub fn note(
        &mut self,
        specs: &[Spec],
        pending: &[Pending],
        now: Instant,
        out: &mut Vec<String>,
    ) {
        let pending_specs: BTreeSet<&str> = pending.iter().map(|p| p.spec.as_str()).collect();
        let labels: BTreeSet<String> = specs.iter().map(Spec::label).collect();
        self.served.retain(|l| labels.contains(l));
        for l in &labels {
            if !pending_specs.contains(l.as_str()) {
                self.served.insert(l.clone());
            }
        }
        let subjects: BTreeSet<String> = pending.iter().map(Pending::subject).collect();
        self.entries.retain(|k, _| subjects.contains(k));
        for p in pending {
            if self.entries.contains_key(&p.subject()) {
                continue;
            }
            let spec = specs.iter().find(|s| s.label() == p.spec);
            let rightly = match p.kind {
                PendingKind::Missing => spec.is_some_and(|s| s.is_pattern() || s.network.is_some()),
                PendingKind::NoNetwork => self.served.contains(&p.spec),
                // In force; said once, when the runtime stops answering.
                PendingKind::Unconfirmed => true,
                _ => false,
            };
            out.push(match p.kind {
                PendingKind::Unconfirmed => p.what(),
                _ => format!("{}; it is served as soon as that changes", p.what()),
            });
            self.entries.insert(
                p.subject(),
                Entry {
                    since: now,
                    pending: p.clone(),
                    rightly,
                    cli: spec
                        .and_then(|s| s.network.as_ref())
                        .map_or("docker", |n| n.runtime.cli()),
                    warned: false,
                },
            );
        }
    }

    /// Appends one warning for each grant that has been pending for the grace period
    /// at `now` and does not rightly wait; once per grant.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<String>) {
        for (subject, e) in &mut self.entries {
            if e.warned || e.rightly || now.duration_since(e.since) < self.grace {
                continue;
            }
            e.warned = true;
            let secs = now.duration_since(e.since).as_secs();
            out.push(match e.pending.kind {
                PendingKind::NoNetwork => format!(
                    "warning: {subject} has been pending for {secs} s: {} (a typo, or the project is down); correct the name in the policy (`{} network ls`) or bring the project up",
                    e.pending.reason,
                    e.cli
                ),
                _ => format!(
                    "warning: {subject} has been pending for {secs} s: {}; this grant cannot work as asked: correct it",
                    e.pending.reason
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::{NetworkSelector, Runtime};
    use crate::spec::Source;

    fn spec(network: &str) -> Spec {
        Spec {
            source: Source::Policy,
            name: None,
            interface: String::new(),
            network: Some(NetworkSelector {
                runtime: Runtime::Docker,
                name: network.into(),
            }),
            proto: crate::grant::Proto::Tcp,
            port: 5432,
            to: "127.0.0.1:5432".parse().unwrap(),
            listen: None,
            host_gateway: false,
            allow: vec![],
            origin: None,
        }
    }

    fn gone(s: &Spec) -> Pending {
        Pending {
            spec: s.label(),
            interface: s.on(),
            reason: "`docker network ls` does not list it now".into(),
            kind: PendingKind::NoNetwork,
            network: s.network.clone(),
        }
    }

    #[test]
    fn a_pending_grant_is_logged_once_and_warned_of_once_after_the_grace() {
        let mut log = PendingLog::new(Duration::from_secs(60));
        let typo = spec("myproj_defualt");
        let t0 = Instant::now();
        let mut out = Vec::new();
        for pass in 0..3 {
            log.note(
                std::slice::from_ref(&typo),
                &[gone(&typo)],
                t0 + Duration::from_secs(pass),
                &mut out,
            );
            log.tick(t0 + Duration::from_secs(pass), &mut out);
        }
        assert_eq!(
            out,
            ["docker network myproj_defualt tcp/5432 is pending: `docker network ls` does not list it now; it is served as soon as that changes"]
        );
        out.clear();
        for later in [61, 62, 600] {
            log.tick(t0 + Duration::from_secs(later), &mut out);
        }
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].starts_with(
                "warning: docker network myproj_defualt tcp/5432 has been pending for 61 s"
            ) && out[0].contains("(a typo, or the project is down)")
                && out[0].contains("`docker network ls`"),
            "{out:?}"
        );
    }

    #[test]
    fn a_network_seen_served_is_a_project_that_is_down_not_a_warning() {
        let mut log = PendingLog::new(Duration::from_secs(60));
        let s = spec("myproj_default");
        let t0 = Instant::now();
        let mut out = Vec::new();
        log.note(std::slice::from_ref(&s), &[], t0, &mut out);
        log.note(std::slice::from_ref(&s), &[gone(&s)], t0, &mut out);
        assert_eq!(out.len(), 1, "the line that it became pending: {out:?}");
        log.tick(t0 + Duration::from_secs(3600), &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        // Served again, then pending again: logged again, once.
        log.note(std::slice::from_ref(&s), &[], t0, &mut out);
        log.note(std::slice::from_ref(&s), &[gone(&s)], t0, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
    }
}
