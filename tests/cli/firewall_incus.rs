//! Topic: an Incus network ACL that stops a grant (issue 20, section 3). Incus owns
//! table `inet incus` and rewrites chain `acl.<network>` from the network's ACLs on
//! every change, so audit prints the Incus command, not an nft line. The command is run
//! as printed against a stand-in for the incus CLI that does what Incus does with it:
//! it keeps the ACLs and rewrites the chain with the rules Incus generates (v6.0.0,
//! internal/server/network/acl/acl_firewall.go `FirewallACLRules` for the order and
//! the default reject; internal/server/firewall/drivers/drivers_nftables.go
//! `aclRuleCriteriaToRules` for each rule; drivers_nftables_templates.go
//! `nftablesNetACLRules` for the chain). The real CLI cannot run here: it needs a
//! running Incus daemon.

use super::*;

const PORT: u16 = 3306;

fn works(lab: &Lab) -> bool {
    tcp_request(&lab.container, sa(HOST_ADDR, PORT)).as_deref() == Some("tcp:3306")
}

/// The stand-in `incus`, for network br0: `network set br0 security.acls=A,B`,
/// `network get br0 security.acls`, `network acl rule add ACL DIRECTION key=value...`
/// (literal IPv4 subjects, tcp/udp ports; anything else fails loudly). The chain it
/// writes: `ct state established,related accept`, the drop, reject and allow rules of
/// the network's ACLs, then the defaults (`security.acls.default.{egress,ingress}.action`
/// unset: reject). Egress (from the network into the host) matches `iifname`, ingress
/// `oifname`.
fn fake_incus(lab: &Lab) -> String {
    let dir = lab.state_dir.join("incus");
    std::fs::create_dir_all(&dir).unwrap();
    lab.fake_cli_script(
        "incus",
        &format!(
            r#"d={dir}
apply() {{
  [ -f $d/security.acls ] || return 0
  {{
    echo "flush chain inet incus acl.br0"
    echo "table inet incus {{"
    echo "chain acl.br0 {{"
    echo "ct state established,related accept"
    for action in drop reject accept; do
      for a in $(tr , ' ' < $d/security.acls); do
        [ -f $d/acl-$a ] && grep "^$action " $d/acl-$a | cut -d' ' -f2-
      done
    done
    echo "iifname br0 reject"
    echo "oifname br0 reject"
    echo "}}"
    echo "}}"
  }} | nft -f -
}}
case "$1 $2" in
"network set")
  [ "$3" = br0 ] && [ "${{4%%=*}}" = security.acls ] || {{ echo "fake incus: $*" >&2; exit 1; }}
  echo "${{4#security.acls=}}" > $d/security.acls
  apply ;;
"network get")
  [ "$3 $4" = "br0 security.acls" ] || {{ echo "fake incus: $*" >&2; exit 1; }}
  cat $d/security.acls ;;
"network acl")
  [ "$3 $4" = "rule add" ] || {{ echo "fake incus: $*" >&2; exit 1; }}
  acl=$5
  case $6 in
    ingress) rule="oifname br0" ;;
    egress) rule="iifname br0" ;;
    *) echo "fake incus: direction $6" >&2; exit 1 ;;
  esac
  shift 6
  action= proto= src= dst= sport= dport=
  for kv; do
    case $kv in
      action=allow) action=accept ;;
      action=drop|action=reject) action=${{kv#*=}} ;;
      protocol=tcp|protocol=udp) proto=${{kv#*=}} ;;
      source=*.*) src=${{kv#*=}} ;;
      destination=*.*) dst=${{kv#*=}} ;;
      source_port=*) sport=${{kv#*=}} ;;
      destination_port=*) dport=${{kv#*=}} ;;
      *) echo "fake incus: $kv is not modelled" >&2; exit 1 ;;
    esac
  done
  [ -n "$action" ] || {{ echo "fake incus: no action" >&2; exit 1; }}
  [ -n "$src" ] && rule="$rule ip saddr {{$src}}"
  [ -n "$dst" ] && rule="$rule ip daddr {{$dst}}"
  if [ -n "$proto" ]; then
    rule="$rule meta l4proto $proto"
    [ -n "$sport" ] && rule="$rule th sport {{$sport}}"
    [ -n "$dport" ] && rule="$rule th dport {{$dport}}"
  fi
  echo "$action $rule $action" >> $d/acl-$acl
  apply ;;
*) echo "fake incus: $* is not modelled" >&2; exit 1 ;;
esac
"#,
            dir = dir.display()
        ),
    )
}

/// Runs `command` in the host with the stand-in incus first in PATH.
#[track_caller]
fn incus(lab: &Lab, path: &str, command: &str) {
    let out = lab
        .host
        .exec_status(&["sh", "-c", &format!("export PATH='{path}'; {command}")]);
    assert!(out.status.success(), "{command}: {}", stderr(&out));
}

#[test]
fn an_incus_acl_is_named_and_its_printed_incus_rule_lets_the_grant_through() {
    let (lab, _services) = lab_with_services();
    lab.expose_default();
    assert!(works(&lab), "control: the grant works before Incus");
    let path = fake_incus(&lab);
    // A web ACL as the Incus documentation's examples have it: the instances may reach
    // web ports (egress), anything may reach them (ingress).
    let setup = std::env::temp_dir().join(format!("loopgate-incus-{}.nft", lab.host.name));
    std::fs::write(&setup, include_str!("fixtures/incus-6.0-acl-setup.nft")).unwrap();
    lab.host.exec(&["nft", "-f", setup.to_str().unwrap()]);
    let _ = std::fs::remove_file(&setup);
    for command in [
        "incus network acl rule add web egress action=allow protocol=tcp destination_port=80,443",
        "incus network acl rule add web ingress action=allow",
        "incus network set br0 security.acls=web",
    ] {
        incus(&lab, &path, command);
    }
    let chain = stdout(
        &lab.host
            .exec(&["nft", "list", "chain", "inet", "incus", "acl.br0"]),
    );
    assert!(
        chain.contains("iifname \"br0\" reject"),
        "the stand-in wrote Incus's chain: {chain}"
    );
    assert!(
        !works(&lab),
        "control: the ACL's default reject stops the grant"
    );
    let report = lab.assert_audit(
        1,
        &[
            "[firewall-drops]",
            "table inet incus chain aclin.br0",
            "(reject)",
            "with Incus",
        ],
    );
    let commands: Vec<&str> = report
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|c| c.starts_with("incus ") || c.starts_with("nft "))
        .collect();
    assert_eq!(
        commands,
        ["incus network acl rule add \"$(incus network get br0 security.acls | cut -d, -f1)\" egress action=allow protocol=tcp destination=127.0.0.1 destination_port=3306"],
        "the Incus command and no nft line (Incus would overwrite it): {report}"
    );
    incus(&lab, &path, commands[0]);
    assert!(
        works(&lab),
        "the printed Incus rule lets the client through"
    );
    lab.assert_audit(0, &[]);
    // Incus keeps it: the chain rewritten on the next change still holds it.
    incus(&lab, &path, "incus network set br0 security.acls=web");
    assert!(works(&lab));
}
