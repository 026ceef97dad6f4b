//! Topic: named the way the user named it (issue 19, section 3), against a real dockerd
//! (tests/support/runtimes.rs). A grant asked for with `--docker-network
//! myproj_default` is called `myproj_default-tcp-3306`, not after its bridge
//! (`br-<id>`, new on every `docker compose down/up`); audit's text, JSON and Prometheus
//! output show the network beside the bridge; `revoke --docker-network NET` withdraws
//! it; and `--persist` records the network by name, with nothing pinned.

use super::*;
use std::process::Output;
use std::time::{Duration, Instant};
use support::runtimes::{Dockerd, DockerdOpts, RootSnapshot};

const NET: &str = "myproj_default";
const NAME: &str = "myproj_default-tcp-3306";

fn docker_env(d: &Dockerd) -> Vec<(String, String)> {
    let mut env = d.client_env();
    env.push((
        "DOCKER_CONFIG".into(),
        d.dir.join("cli").display().to_string(),
    ));
    env
}

fn lg(lab: &Lab, d: &Dockerd, args: &[&str]) -> Output {
    let env = docker_env(d);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    lab.loopgate_env(args, &env)
}

#[track_caller]
fn lg_ok(lab: &Lab, d: &Dockerd, args: &[&str]) -> String {
    let out = lg(lab, d, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "loopgate {args:?}: stdout {} stderr {}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// The reply `container` gets from `lab-req tcp HOST PORT` (None: no answer).
fn req(d: &Dockerd, container: &str, host: &str, port: u16) -> Option<String> {
    let out = d.exec(container, &["lab-req", "tcp", host, &port.to_string()]);
    out.status
        .success()
        .then(|| stdout(&out).trim().to_string())
}

/// (grant name, bridge, network name) of every grant `audit --json` reports.
fn grants(lab: &Lab, d: &Dockerd) -> Vec<(String, String, String)> {
    let out = lg(lab, d, &["audit", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| {
            let iface = i["name"].as_str().unwrap().to_string();
            i["grants"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |g| {
                    (
                        g["name"].as_str().unwrap().to_string(),
                        iface.clone(),
                        g["network"]["name"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn a_network_grant_is_named_after_the_network_through_down_and_up() {
    let before = RootSnapshot::take();
    let (lab, _services) = lab_with_services();
    let docker = Dockerd::start(&lab.host, DockerdOpts::default());
    docker.docker_ok(&["network", "create", NET]);
    let bridge = docker.bridge_of(NET);
    let (_, gw) = docker.network_ipam(NET)[0].clone();
    docker.run_with("app", &["--network", NET], &["sleep", "3600"]);
    assert_eq!(req(&docker, "app", &gw, 3306), None, "control");

    lg_ok(
        &lab,
        &docker,
        &["expose", "--docker-network", NET, "--port", "3306"],
    );
    assert_eq!(req(&docker, "app", &gw, 3306).as_deref(), Some("tcp:3306"));
    assert_eq!(
        grants(&lab, &docker),
        [(NAME.to_string(), bridge.clone(), NET.to_string())]
    );
    let text = lg_ok(&lab, &docker, &["audit"]);
    assert!(
        text.contains(&format!("grant {NAME} on {bridge} (docker network {NET})")),
        "{text}"
    );
    let prom = lg_ok(&lab, &docker, &["audit", "--format", "prometheus"]);
    assert!(
        prom.contains(&format!(
            "loopgate_grants{{interface=\"{bridge}\",network=\"{NET}\"}} 1"
        )),
        "{prom}"
    );

    // docker compose down / up: the network is removed and made anew, on a new bridge.
    let watch = Watch::start_env(&lab, &["--no-hold"], &docker_env(&docker));
    docker.docker_ok(&["rm", "-f", "app"]);
    docker.docker_ok(&["network", "rm", NET]);
    docker.docker_ok(&["network", "create", NET]);
    let bridge2 = docker.bridge_of(NET);
    assert_ne!(bridge2, bridge, "a new network, a new bridge");
    let (_, gw2) = docker.network_ipam(NET)[0].clone();
    docker.run_with("app2", &["--network", NET], &["sleep", "3600"]);
    let start = Instant::now();
    while req(&docker, "app2", &gw2, 3306).as_deref() != Some("tcp:3306") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "access did not return: {}",
            watch.log()
        );
    }
    let now = grants(&lab, &docker);
    assert_eq!(
        now,
        [(NAME.to_string(), bridge2.clone(), NET.to_string())],
        "the same name on the new bridge"
    );
    drop(watch);

    // Revoked by the network's name, without --port.
    let out = lg_ok(&lab, &docker, &["revoke", "--docker-network", NET]);
    assert!(out.contains(NAME), "{out}");
    assert!(grants(&lab, &docker).is_empty());
    assert_eq!(req(&docker, "app2", &gw2, 3306), None);

    // --persist records the network by name: no bridge, no address.
    let config = lab.state_dir.join("etc-loopgate");
    let mut env = docker_env(&docker);
    env.push(("LOOPGATE_CONFIG_DIR".into(), config.display().to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let out = lab.loopgate_inside(
        &[
            "expose",
            "--docker-network",
            NET,
            "--port",
            "3306",
            "--persist",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = std::fs::read_to_string(config.join("loopgate.yaml")).unwrap();
    assert!(
        text.contains(&format!("docker_network: {NET}"))
            && !text.contains("br-")
            && !text.contains("listen")
            && !text.contains("allow"),
        "{text}"
    );
    let plan = lab.loopgate_inside(&["plan", config.to_str().unwrap()], &env);
    assert!(stdout(&plan).contains("nothing to do"), "{}", stdout(&plan));
    assert_eq!(
        req(&docker, "app2", &gw2, 3306).as_deref(),
        Some("tcp:3306")
    );

    drop(docker);
    drop(lab);
    before.assert_unchanged();
}

/// loopgate run inside the lab's host, as an admin would (`--persist` needs it), with
/// the policy directory `dir`.
fn inside(lab: &Lab, d: &Dockerd, dir: &std::path::Path, args: &[&str]) -> Output {
    let mut env = docker_env(d);
    env.push(("LOOPGATE_CONFIG_DIR".into(), dir.display().to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    lab.loopgate_inside(args, &env)
}

#[track_caller]
fn inside_ok(lab: &Lab, d: &Dockerd, dir: &std::path::Path, args: &[&str]) -> String {
    let out = inside(lab, d, dir, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "loopgate {args:?}: stdout {} stderr {}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// README's compose workflow as a new user tried it: `--listen host-gateway`, then the
/// README's `myproj.yaml`, then `--persist`. One default name everywhere
/// (`NETWORK-PROTO-PORT`, no address); asking again for what the policy asks is
/// accepted; `--persist` keeps the entry's name and comments; a publication in two
/// files names both files; `revoke --persist` takes the entry's own comment with it
/// and touches no other file.
#[test]
fn the_compose_workflow_keeps_one_name_and_the_admins_file() {
    let before = RootSnapshot::take();
    let (lab, _services) = lab_with_services();
    let docker = Dockerd::start(&lab.host, DockerdOpts::default());
    docker.docker_ok(&["network", "create", NET]);
    docker.run_with(
        "app",
        &[
            "--network",
            NET,
            "--add-host",
            "host.docker.internal:host-gateway",
        ],
        &["sleep", "3600"],
    );
    let hgw = "host.docker.internal";
    assert_eq!(req(&docker, "app", hgw, 3306), None, "control");
    let dir = lab.state_dir.join("etc-loopgate");
    std::fs::create_dir_all(&dir).unwrap();
    let installed =
        "# Grants applied at boot by loopgate.service; see `man loopgate`.\ngrants: []\n";
    std::fs::write(dir.join("loopgate.yaml"), installed).unwrap();
    let step1 = [
        "expose",
        "--docker-network",
        NET,
        "--port",
        "3306",
        "--listen",
        "host-gateway",
    ];

    // 1. One default name, without the listen address, in every output.
    let out = inside_ok(&lab, &docker, &dir, &step1);
    assert!(out.contains(NAME), "{out}");
    assert!(!out.contains("198.51.100.1-tcp"), "{out}");
    assert_eq!(req(&docker, "app", hgw, 3306).as_deref(), Some("tcp:3306"));
    let named: Vec<String> = grants(&lab, &docker).into_iter().map(|g| g.0).collect();
    assert_eq!(named, [NAME]);
    let prom = lg_ok(&lab, &docker, &["audit", "--format", "prometheus"]);
    assert!(
        prom.contains(NAME) && !prom.contains("198.51.100.1-tcp"),
        "{prom}"
    );
    // 13. The rule counters of the network's grant and guard carry the network too.
    for rule in [
        format!("grant {NAME}"),
        format!("{} guard: ", docker.bridge_of(NET)),
    ] {
        assert!(
            prom.lines()
                .any(|l| l.starts_with("loopgate_rule_packets_total")
                    && l.contains(&rule)
                    && l.contains(&format!("network=\"{NET}\""))),
            "{rule}: {prom}"
        );
    }

    // 12. The bridge's line names the network, as its grant lines do.
    let bridge = docker.bridge_of(NET);
    let text = lg_ok(&lab, &docker, &["audit"]);
    assert!(
        text.contains(&format!("{bridge} (docker network {NET}): route_localnet=")),
        "{text}"
    );

    // 15. dockerd does not answer: the grant is in force as last resolved, a warning,
    // not pending.
    let gone = [("DOCKER_HOST", "unix:///nonexistent/docker.sock")];
    let out = lab.loopgate_env(&["audit"], &gone);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("WARNING [runtime-unanswered]")
            && text.contains(&format!(
                "in force on {bridge} as last resolved; docker does not answer"
            ))
            && !text.contains("[pending]"),
        "{text}"
    );
    let prom = stdout(&lab.loopgate_env(&["audit", "--format", "prometheus"], &gone));
    assert!(
        prom.contains("loopgate_pending_grants 0")
            && prom.contains(&format!(
                "loopgate_grants{{interface=\"{bridge}\",network=\"{NET}\"}} 1"
            )),
        "{prom}"
    );
    assert_eq!(req(&docker, "app", hgw, 3306).as_deref(), Some("tcp:3306"));

    // 3. README step 3's file; the step-1 command again is what the policy asks.
    let admin = format!(
        "grants:\n  - name: myproj-postgres\n    docker_network: {NET}   # instead of interface:\n    port: 3306\n    listen: host-gateway\n    # allow: [...]                   # default: the network's subnets\n"
    );
    std::fs::write(dir.join("myproj.yaml"), &admin).unwrap();
    inside_ok(&lab, &docker, &dir, &["apply", dir.to_str().unwrap()]);
    inside_ok(&lab, &docker, &dir, &step1);
    let plan = inside_ok(&lab, &docker, &dir, &["plan", dir.to_str().unwrap()]);
    assert!(plan.contains("nothing to do"), "{plan}");

    // 2. --persist of a change keeps the entry's name and comments.
    let subnet = docker.network_ipam(NET)[0].0.clone();
    let mut narrowed = step1.to_vec();
    narrowed.extend(["--allow", subnet.as_str(), "--persist"]);
    let out = inside_ok(&lab, &docker, &dir, &narrowed);
    assert!(out.contains("myproj.yaml"), "{out}");
    let text = std::fs::read_to_string(dir.join("myproj.yaml")).unwrap();
    assert_eq!(
        text,
        admin.replace(
            "    listen: host-gateway\n",
            &format!("    listen: host-gateway\n    allow: {subnet}\n")
        )
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("loopgate.yaml")).unwrap(),
        installed
    );
    let named: Vec<String> = grants(&lab, &docker).into_iter().map(|g| g.0).collect();
    assert_eq!(named, ["myproj-postgres"]);

    // 4. The same publication in two files: both named, with their grants.
    let own = format!(
        "grants:\n  - docker_network: {NET}\n    port: 3306\n    allow: {subnet}\n    listen: host-gateway\n"
    );
    std::fs::write(dir.join("loopgate.yaml"), &own).unwrap();
    let out = inside(&lab, &docker, &dir, &["plan", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let real = std::fs::canonicalize(&dir).unwrap();
    let err = stderr(&out);
    for needle in [
        format!("docker network {NET} tcp/3306"),
        format!("{NAME} in {}", real.join("loopgate.yaml").display()),
        format!("myproj-postgres in {}", real.join("myproj.yaml").display()),
    ] {
        assert!(err.contains(&needle), "{needle:?} not in {err}");
    }
    assert!(!err.contains("  "), "{err}");
    std::fs::write(dir.join("loopgate.yaml"), installed).unwrap();

    // 5. revoke --persist: the entry goes with its own comment; only its file changes.
    let out = inside_ok(
        &lab,
        &docker,
        &dir,
        &["revoke", "--docker-network", NET, "--persist"],
    );
    assert!(
        out.contains("myproj.yaml") && !out.contains("loopgate.yaml"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("myproj.yaml")).unwrap(),
        "grants: []\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("loopgate.yaml")).unwrap(),
        installed
    );
    assert_eq!(req(&docker, "app", hgw, 3306), None);

    drop(docker);
    drop(lab);
    before.assert_unchanged();
}
