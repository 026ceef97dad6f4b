//! scripts/nftables-dropin-ok.sh, which install.sh asks before it installs the
//! nftables.service drop-in: the drop-in replaces ExecStart and ExecReload, so it must
//! never go where an administrator (or another package) already decides how
//! nftables.service starts. Runs the real script against a staged root (no root
//! needed, the machine's own units are not read). Each "refused" case has its control.

use std::path::Path;
use std::process::Command;

fn check(root: &Path) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/nftables-dropin-ok.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(root)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

fn put(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn fresh(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("loopgate-dropin-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_drop_in_goes_only_where_nftables_service_is_as_debian_ships_it() {
    // Control: Debian's unit alone, plus our own earlier drop-in and a drop-in that
    // only adds an ExecStartPre, leave nftables.service's command as shipped.
    let root = fresh("stock");
    put(
        &root,
        "lib/systemd/system/nftables.service",
        "[Service]\nExecStart=/usr/sbin/nft -f /etc/nftables.conf\nExecReload=/usr/sbin/nft -f /etc/nftables.conf\n",
    );
    put(
        &root,
        "lib/systemd/system/nftables.service.d/loopgate.conf",
        "[Service]\nExecStart=\nExecStart=/bin/true\n",
    );
    put(
        &root,
        "etc/systemd/system/nftables.service.d/pre.conf",
        "[Service]\nExecStartPre=/bin/true\n",
    );
    assert_eq!(check(&root), (true, String::new()));

    // `systemctl edit nftables` with a command of its own.
    let custom = root.join("etc/systemd/system/nftables.service.d/override.conf");
    put(
        &root,
        "etc/systemd/system/nftables.service.d/override.conf",
        "[Service]\nExecStart=\nExecStart=/usr/sbin/nft -f /etc/nftables.d/main.nft\n",
    );
    let (ok, why) = check(&root);
    assert!(!ok && why.contains(&custom.display().to_string()), "{why}");
    std::fs::remove_file(&custom).unwrap();

    // `systemctl edit --full nftables`: a whole unit in /etc (drop-ins still apply to it).
    put(
        &root,
        "etc/systemd/system/nftables.service",
        "[Service]\nExecStart=/usr/sbin/nft -f /srv/firewall.nft\n",
    );
    let (ok, why) = check(&root);
    assert!(
        !ok && why.contains("etc/systemd/system/nftables.service "),
        "{why}"
    );

    // Another package's reload command only.
    std::fs::remove_file(root.join("etc/systemd/system/nftables.service")).unwrap();
    put(
        &root,
        "usr/lib/systemd/system/nftables.service.d/other.conf",
        "[Service]\n  ExecReload = /usr/local/sbin/reload-fw\n",
    );
    assert!(!check(&root).0);
    std::fs::remove_dir_all(&root).unwrap();
}
