//! Topic: the "keep the previous grant" logic of runtime networks and unaddressed
//! interfaces; review 4 attacks.
//!
//! Each test's comment describes the hole the review found (in the present tense of
//! the code it was found in); the test asserts the hole is closed.

use super::*;

/// A fake `docker` CLI that says every network does not exist (as dockerd does);
/// returns a PATH with it first.
fn docker_without_networks(lab: &Lab) -> String {
    lab.fake_cli_script(
        "docker",
        "echo \"Error response from daemon: network $4 not found\" >&2\nexit 1\n",
    )
}

/// `revoke br9 --port 3306` while br9 is gone leaves br9's grant (and its allow list)
/// in the table and the state: `keep_network_guard` lets any runtime-network spec that
/// does not resolve now (network gone, daemon down) keep *every* committed grant with
/// the same port and target on a missing interface, whichever spec made it. When a
/// device named br9 comes back open (netavark, conf.all.route_localnet=1), the revoked
/// clients reach 127.0.0.1:3306 again.
#[test]
fn revoking_a_grant_on_a_missing_interface_is_not_undone_by_an_unresolved_network() {
    let (lab, _services) = lab_with_services();
    let path = docker_without_networks(&lab);
    let env = [("PATH", path.as_str())];
    let br9 = Ipv4Addr::new(198, 51, 100, 1);
    let client = lab.add_bridge_with_client("br9", br9, Ipv4Addr::new(198, 51, 100, 10));
    let ok = |args: &[&str]| {
        let out = lab.loopgate_env(args, &env);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    ok(&[
        "expose",
        "br9",
        "--allow",
        "198.51.100.0/24",
        "--port",
        "3306",
    ]);
    assert_eq!(
        tcp_request(&client, sa(br9, 3306)).as_deref(),
        Some("tcp:3306"),
        "control: the grant works"
    );
    // An unrelated compose project's network, down for now (pending).
    ok(&[
        "expose",
        "--docker-network",
        "myproj_default",
        "--pending-ok",
        "--port",
        "3306",
    ]);
    // br9 goes away; the admin revokes its grant.
    lab.host.ip("link del br9");
    let said = ok(&["revoke", "br9", "--port", "3306"]);
    // br9 comes back, opened by its runtime.
    lab.host.ip("link add br9 type bridge");
    lab.host.set_sysctl("net.ipv4.conf.br9.rp_filter", "0");
    lab.host.set_sysctl("net.ipv4.conf.br9.route_localnet", "1");
    lab.host.ip(&format!("addr add {br9}/24 dev br9"));
    lab.host.ip("link set vbr9 master br9 up");
    lab.host.ip("link set br9 up");
    let table = stdout(
        &lab.host
            .exec_status(&["nft", "list", "table", "ip", "loopgate"]),
    );
    let reached = tcp_request(&client, sa(br9, 3306));
    let status = stdout(&lab.loopgate_env(&["status"], &env));
    assert!(
        !table.contains("\"br9\"") && reached.is_none(),
        "revoke said {said:?}, yet after br9 came back the revoked client reaches \
         127.0.0.1:3306: {reached:?}\nstatus:\n{status}\n{table}"
    );
}
