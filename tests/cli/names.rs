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
