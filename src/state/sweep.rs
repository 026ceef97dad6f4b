//! The sweep of stale state directories: which `netns-<cookie>` directories belong to
//! network namespaces that are gone, judged from a scan of `/proc` (processes,
//! threads, mounts, open files) that keeps a directory whenever anything is unknown.

use super::{base_dir, LOCK_FILE, NAMESPACE_FILE};
use anyhow::{Context, Result};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;

/// At most this many directories are removed by one [`sweep_stale`] call.
pub const SWEEP_MAX: usize = 64;

/// The nsfs identity of the initial pid namespace (`PROC_PID_INIT_INO`, fixed by the
/// kernel): only a process in it sees every process on the machine.
pub(super) const INIT_PID_NS: &str = "pid:[4026531836]";

/// Removes the state directories of network namespaces that no longer exist, at most
/// [`SWEEP_MAX`] per call and at most once a minute per process; returns how many it
/// removed. Called by every command when it opens its own state
/// ([`Store::open`](super::Store::open) and the other openers), and so by `watch` too.
///
/// A directory is removed only when all of these hold (anything unknown keeps it: a
/// false "gone" would lose the originals and the journal of a live namespace, which
/// is worse than any amount of litter):
/// - it is a `netns-<cookie>` directory, not the caller's own, and it holds the
///   [`NAMESPACE_FILE`] this version writes (older directories are left alone);
/// - this process is in the initial pid namespace (it sees every process) and could
///   read the network namespace of every process and thread (by `ns/net`, or by
///   `net/dev` where a security module hides `ns/net`): one it cannot read stops the
///   sweep;
/// - no process or thread is in that namespace, no nsfs mount of it exists in this
///   mount namespace (`ip netns` names, runtimes' bind mounts), nor, as far as they can
///   be read, in the mount namespace of any process or among any process's open files
///   (`/proc/PID/mountinfo`, `/proc/PID/fd`). This process's mounts are read before
///   and after the processes, so a reference that moves between a mount and a process
///   during the scan is seen;
/// - its lock can be taken exclusively without waiting (no loopgate is using it), and
///   is held while it is removed.
///
/// What this cannot see: a namespace kept alive only by a socket of a process in
/// another namespace (no process in it, no nsfs file or mount left), or only by the
/// open file or a private mount of a process a security module hides from root. No
/// loopgate can be started in it by name or by a path this process can open.
pub fn sweep_stale() -> Result<usize> {
    let own = format!("netns-{}", crate::kernel::netns::cookie()?);
    sweep_in(&base_dir(), &own, live_namespaces, SWEEP_MAX)
}

/// [`sweep_stale`]'s rule over `base`: `live` lists the namespaces that exist (as
/// `net:[INODE]`), or fails when that cannot be known. It is called only when some
/// directory could be removed.
pub(super) fn sweep_in(
    base: &std::path::Path,
    own: &str,
    live: impl FnOnce() -> Result<std::collections::HashSet<String>>,
    limit: usize,
) -> Result<usize> {
    let entries = match fs::read_dir(base) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("reading {}", base.display())),
    };
    let mut candidates = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("netns-") || name == own {
            continue;
        }
        // Not a directory, or one without a readable record: left alone.
        let Ok(text) = fs::read_to_string(entry.path().join(NAMESPACE_FILE)) else {
            continue;
        };
        let ids: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
        if ids
            .first()
            .is_some_and(|id| id.starts_with("net:[") && id.ends_with(']'))
        {
            candidates.push((entry.path(), ids));
        }
    }
    if candidates.is_empty() {
        return Ok(0);
    }
    let live = live()?;
    let mut removed = 0;
    for (dir, ids) in candidates {
        if removed >= limit {
            break;
        }
        if ids.iter().any(|id| live.contains(id)) {
            continue;
        }
        if remove_unused(&dir) {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes `dir` under its own lock, taken without waiting; false when another process
/// holds the lock, there is no lock file, or anything fails.
pub(super) fn remove_unused(dir: &std::path::Path) -> bool {
    let Ok(lock) = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(LOCK_FILE))
    else {
        return false;
    };
    if lock.try_lock().is_err() {
        return false;
    }
    let gone = fs::remove_dir_all(dir).is_ok();
    drop(lock);
    gone
}

/// The namespaces that nsfs mounts in a `mountinfo` text keep alive: the root field
/// (`net:[INODE]`) of each mount of type nsfs.
pub(super) fn nsfs_mounts(mountinfo: &str, into: &mut std::collections::HashSet<String>) {
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some("nsfs") {
            if let Some(root) = left.split_whitespace().nth(3) {
                into.insert(root.to_string());
            }
        }
    }
}

/// Every network namespace that exists as far as `/proc` can tell, as `net:[INODE]`
/// (nsfs) or, for a process whose `ns/net` this process may not read (an LSM can deny
/// even root), `procnet:INODE` (see [`NAMESPACE_FILE`]).
///
/// Errors: this process is not in the initial pid namespace, or the namespace of some
/// process or thread could be read neither way (not merely gone): the answer would be
/// incomplete. Open files and mounts of processes it may not read are skipped.
pub(super) fn live_namespaces() -> Result<std::collections::HashSet<String>> {
    use std::collections::HashSet;
    use std::io::ErrorKind;
    use std::path::Path;
    // The process or thread exited, or the fd was closed, meanwhile.
    fn vanished(e: &std::io::Error) -> bool {
        e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
    }
    fn link(path: &Path) -> std::io::Result<Option<String>> {
        match fs::read_link(path) {
            Ok(l) => Ok(Some(l.to_string_lossy().into_owned())),
            Err(e) if vanished(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
    // The network namespace of the process or thread at `dir` (/proc/PID or
    // /proc/PID/task/TID).
    fn net_of(dir: &Path) -> Result<Option<String>> {
        match link(&dir.join("ns/net")) {
            Ok(id) => Ok(id),
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                match fs::metadata(dir.join("net/dev")) {
                    Ok(m) => Ok(Some(format!("procnet:{}", m.ino()))),
                    Err(e) if vanished(&e) => Ok(None),
                    Err(e) => Err(e).with_context(|| format!("reading {}/net", dir.display())),
                }
            }
            Err(e) => Err(e).with_context(|| format!("reading {}/ns/net", dir.display())),
        }
    }
    // Best effort: entries of a directory that may be unreadable.
    fn list(path: &Path) -> Vec<fs::DirEntry> {
        fs::read_dir(path)
            .map(|d| d.flatten().collect())
            .unwrap_or_default()
    }
    fn read_mounts(path: &Path, into: &mut HashSet<String>) -> Result<()> {
        match fs::read_to_string(path) {
            Ok(text) => {
                nsfs_mounts(&text, into);
                Ok(())
            }
            Err(e) if vanished(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    use std::os::unix::fs::MetadataExt;

    let pid_ns = link(Path::new("/proc/self/ns/pid")).context("reading /proc/self/ns/pid")?;
    if pid_ns.as_deref() != Some(INIT_PID_NS) {
        anyhow::bail!("not in the initial pid namespace: other processes are not all visible");
    }
    let own_mounts = Path::new("/proc/self/mountinfo");
    let mut live = HashSet::new();
    read_mounts(own_mounts, &mut live)?;
    let mut mount_namespaces: HashSet<String> = link(Path::new("/proc/self/ns/mnt"))
        .ok()
        .flatten()
        .into_iter()
        .collect();
    for entry in fs::read_dir("/proc").context("reading /proc")?.flatten() {
        if !entry
            .file_name()
            .as_encoded_bytes()
            .iter()
            .all(u8::is_ascii_digit)
        {
            continue;
        }
        let proc = entry.path();
        live.extend(net_of(&proc)?);
        // Every thread: a thread may have entered another namespace than its leader.
        for task in list(&proc.join("task")) {
            live.extend(net_of(&task.path())?);
        }
        for fd in list(&proc.join("fd")) {
            if let Ok(Some(target)) = link(&fd.path()) {
                if target.starts_with("net:[") || target.starts_with("mnt:[") {
                    live.insert(target);
                }
            }
        }
        // The mounts of each other mount namespace, once.
        if let Ok(Some(mnt)) = link(&proc.join("ns/mnt")) {
            if mount_namespaces.insert(mnt) {
                let _ = read_mounts(&proc.join("mountinfo"), &mut live);
            }
        }
    }
    read_mounts(own_mounts, &mut live)?;
    // A mount namespace kept alive only by a bind mount or an open file, with no process
    // in it, may hold nsfs mounts of network namespaces that no mountinfo shows: the
    // answer would be incomplete, and unknown means keep.
    if let Some(unread) = live
        .iter()
        .find(|l| l.starts_with("mnt:[") && !mount_namespaces.contains(*l))
    {
        anyhow::bail!("the mount namespace {unread} has no process whose mounts can be read");
    }
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::path::PathBuf;

    /// A state directory as this version leaves it: lock file and namespace record.
    fn state_dir(base: &std::path::Path, name: &str, id: Option<&str>) -> PathBuf {
        let dir = base.join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("lock"), "").unwrap();
        fs::write(dir.join("state.json"), "{}").unwrap();
        if let Some(id) = id {
            fs::write(dir.join(NAMESPACE_FILE), format!("{id}\n")).unwrap();
        }
        dir
    }

    fn live(ids: &[&str]) -> Result<std::collections::HashSet<String>> {
        Ok(ids.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn only_directories_of_namespaces_that_are_gone_are_swept() {
        let base = tempfile::tempdir().unwrap();
        let b = base.path();
        let gone = state_dir(b, "netns-1", Some("net:[100]"));
        let alive = state_dir(b, "netns-2", Some("net:[200]"));
        let own = state_dir(b, "netns-3", Some("net:[300]"));
        let unrecorded = state_dir(b, "netns-4", None);
        let in_use = state_dir(b, "netns-5", Some("net:[500]"));
        let garbled = state_dir(b, "netns-6", Some("4026532250"));
        // Seen only through /proc/PID/net of a process whose ns/net is hidden.
        let hidden = state_dir(b, "netns-7", Some("net:[800]\nprocnet:4026533297"));
        let other = state_dir(b, "elsewhere", Some("net:[700]"));
        fs::write(b.join("kernel-features"), "boot\n").unwrap();
        // Another loopgate holds netns-5's lock.
        let holder = File::open(in_use.join("lock")).unwrap();
        holder.lock().unwrap();

        let living = || live(&["net:[200]", "procnet:4026533297"]);
        let removed = sweep_in(b, "netns-3", living, SWEEP_MAX).unwrap();
        assert_eq!(removed, 1);
        assert!(!gone.exists());
        for kept in [
            &alive,
            &own,
            &unrecorded,
            &in_use,
            &garbled,
            &hidden,
            &other,
        ] {
            assert!(kept.join("state.json").exists(), "{}", kept.display());
        }
        assert!(b.join("kernel-features").exists());

        // Once its user is done, the next sweep takes it.
        drop(holder);
        assert_eq!(sweep_in(b, "netns-3", living, SWEEP_MAX).unwrap(), 1);
        assert!(!in_use.exists());
        assert!(hidden.exists());
    }

    #[test]
    fn the_sweep_is_bounded_and_keeps_everything_when_the_living_cannot_be_listed() {
        let base = tempfile::tempdir().unwrap();
        let b = base.path();
        for i in 0..5 {
            state_dir(b, &format!("netns-{i}"), Some(&format!("net:[{i}]")));
        }
        let failing = || anyhow::bail!("EACCES on /proc/1/ns/net");
        assert!(sweep_in(b, "netns-x", failing, SWEEP_MAX).is_err());
        assert_eq!(fs::read_dir(b).unwrap().count(), 5);
        assert_eq!(sweep_in(b, "netns-x", || live(&[]), 2).unwrap(), 2);
        assert_eq!(fs::read_dir(b).unwrap().count(), 3);
        assert_eq!(sweep_in(b, "netns-x", || live(&[]), 2).unwrap(), 2);
        assert_eq!(sweep_in(b, "netns-x", || live(&[]), 2).unwrap(), 1);
        // Nothing left to sweep: the living are not even asked for.
        let never = || -> Result<std::collections::HashSet<String>> { panic!("scanned /proc") };
        assert_eq!(sweep_in(b, "netns-x", never, 2).unwrap(), 0);
        assert_eq!(
            sweep_in(&b.join("missing"), "netns-x", never, 2).unwrap(),
            0
        );
    }

    #[test]
    fn nsfs_mounts_are_read_from_mountinfo() {
        let text = "\
43 42 0:4 net:[4026532177] /run/netns/a rw shared:2 - nsfs nsfs rw
44 42 0:4 mnt:[4026532300] /run/mnt rw - nsfs nsfs rw
45 30 0:22 / /run rw,nosuid - tmpfs tmpfs rw,size=1g
46 42 0:4 net:[4026532178] /var/run/docker/netns/x rw shared:2 master:1 - nsfs nsfs rw
";
        let mut found = std::collections::HashSet::new();
        nsfs_mounts(text, &mut found);
        let want: std::collections::HashSet<String> =
            ["net:[4026532177]", "mnt:[4026532300]", "net:[4026532178]"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        assert_eq!(found, want);
    }

    #[test]
    fn this_process_namespace_is_among_the_living() {
        // Root in the initial pid namespace (as the tests run): the scan sees this
        // process's own namespace. Elsewhere it must refuse rather than guess.
        let own = fs::read_link("/proc/thread-self/ns/net").unwrap();
        match live_namespaces() {
            Ok(live) => assert!(live.contains(own.to_str().unwrap())),
            Err(e) => {
                let pid = fs::read_link("/proc/self/ns/pid").unwrap();
                let root = nix::unistd::geteuid().is_root();
                assert!(
                    pid.to_str() != Some(INIT_PID_NS) || !root,
                    "root in the initial pid namespace, yet: {e:#}"
                );
            }
        }
    }
}
