//! Files loopgate reads or writes as root: who may have written them, and opening them
//! so that nobody else can redirect the access.
//!
//! loopgate runs as root and acts on what its policy files say and what its state
//! directory holds. A policy file another user can write is a way for that user to
//! publish loopback services; a state directory another user can write is a way to
//! forge state, occupy `watch.sock`, or plant a symbolic link that root then writes
//! through. So, as sshd (`StrictModes`) and sudo do with their files: what loopgate
//! trusts must be owned by root (or by the user running loopgate) and not writable by
//! group or others, and so must every directory above it, except that a sticky
//! directory owned by root (such as /tmp) may be writable by all, since nobody can
//! rename or remove what another user owns there. State files are opened relative to
//! a checked directory's descriptor with `O_NOFOLLOW`, so neither a swapped directory
//! nor a planted link is followed.

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::ffi::CString;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Owners whose files loopgate trusts: root, and the user running loopgate (who could
/// write the same content anyway; in a user namespace that is the mapped root).
pub fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Why `meta` (of `path`, called `what` in the message) is not to be trusted, as one
/// line naming the path, its owner and its mode; `None` when it is fine. `sticky_ok`:
/// a root-owned sticky directory may be writable by all (an ancestor such as /tmp).
pub fn untrusted(what: &str, path: &Path, meta: &Metadata, sticky_ok: bool) -> Option<String> {
    let mode = meta.mode() & 0o7777;
    let shown = path.display();
    if !trusted_owner(meta.uid()) {
        return Some(format!(
            "{what} {shown:?} is owned by uid {} (mode {mode:04o}); loopgate trusts only files and directories owned by root: chown root it",
            meta.uid()
        ));
    }
    let sticky = meta.is_dir() && mode & 0o1000 != 0 && meta.uid() == 0;
    if mode & 0o022 != 0 && !(sticky_ok && sticky) {
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "group- and world-writable",
            (true, false) => "group-writable",
            _ => "world-writable",
        };
        return Some(format!(
            "{what} {shown:?} has mode {mode:04o} ({who}); loopgate trusts only files and directories that only root can write: chmod go-w it"
        ));
    }
    None
}

/// Checks every directory above `path` (which must be absolute and free of symbolic
/// links, as the kernel reports an open file's path) up to `/`.
///
/// Errors: one line naming the first directory that another user could change.
pub fn check_ancestors(what: &str, path: &Path) -> Result<(), String> {
    for dir in path.ancestors().skip(1) {
        let meta = std::fs::symlink_metadata(dir)
            .map_err(|e| format!("cannot check {:?} above {what}: {e}", dir.display()))?;
        if let Some(why) = untrusted(&format!("directory above {what}"), dir, &meta, true) {
            return Err(why);
        }
    }
    Ok(())
}

/// The path the kernel has for an open file (`/proc/self/fd/N`): absolute and without
/// symbolic links for a file in a directory; `None` for a pipe, a socket or another
/// object that lives in no directory (`pipe:[1234]`).
pub fn path_of(file: &impl AsRawFd) -> Option<PathBuf> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    // A deleted file reads as "/path (deleted)"; anything not absolute is no path.
    (link.is_absolute() && !link.as_os_str().as_bytes().ends_with(b" (deleted)")).then_some(link)
}

fn cstr(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// A directory loopgate keeps private: created 0700 whatever the umask when missing,
/// refused when it is a symbolic link, not owned by root, or writable by others, and
/// held open so that files in it are reached through this descriptor.
#[derive(Debug)]
pub struct PrivateDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl PrivateDir {
    /// Creates (mode 0700) or opens `path`, then checks it and, with `ancestors`, the
    /// directories above it.
    ///
    /// Errors: one line naming the directory and what is wrong (owner, mode, a link),
    /// or the system's error creating or opening it.
    pub fn ensure(path: &Path, ancestors: bool) -> anyhow::Result<PrivateDir> {
        let what = "state directory";
        let shown = path.display();
        match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => {
                // The umask may have taken bits off 0700; never added any. Exactly 0700.
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| anyhow::anyhow!("setting the mode of {what} {shown}: {e}"))?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && ancestors => {
                // The parents are missing: made as the base of the tree, 0700 too.
                if let Some(parent) = path.parent() {
                    PrivateDir::ensure(parent, true)?;
                }
                return PrivateDir::ensure(path, ancestors);
            }
            Err(e) => anyhow::bail!("creating {what} {shown}: {e}"),
        }
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| anyhow::anyhow!("{what} {shown:?} contains a NUL byte"))?;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::open(c.as_c_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(errno) => {
                let e = io::Error::from(errno);
                if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) {
                    anyhow::bail!("{what} {shown:?} is a symbolic link or not a directory; loopgate never follows one there: remove it");
                }
                anyhow::bail!("opening {what} {shown}: {e}");
            }
        };
        let meta = File::from(fd.try_clone()?).metadata()?;
        if let Some(why) = untrusted(what, path, &meta, false) {
            anyhow::bail!("{why}");
        }
        if ancestors {
            let real = path_of(&fd).unwrap_or_else(|| path.to_path_buf());
            check_ancestors(what, &real).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(PrivateDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The directory's path, for messages and for what still goes by path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `name` in this directory with `flags` (plus `O_NOFOLLOW | O_CLOEXEC`),
    /// creating it with `mode` where `flags` say so.
    ///
    /// Errors: the system's; a symbolic link at `name` is `ELOOP`, see [`is_link_error`].
    pub fn open(&self, name: &str, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
        let c = cstr(name)?;
        let flags = OFlag::from_bits_retain(flags) | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(&self.fd, c.as_c_str(), flags, Mode::from_bits_retain(mode))?;
        Ok(File::from(fd))
    }

    /// Renames `from` to `to`, both in this directory (atomic; a link at `to` is
    /// replaced, never followed).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (f, t) = (cstr(from)?, cstr(to)?);
        nix::fcntl::renameat(&self.fd, f.as_c_str(), &self.fd, t.as_c_str())?;
        Ok(())
    }

    /// Removes the file `name` of this directory (a link is removed, not its target).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        let c = cstr(name)?;
        nix::unistd::unlinkat(
            &self.fd,
            c.as_c_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )?;
        Ok(())
    }

    /// fsync of the directory itself, so that a rename in it is durable.
    pub fn sync(&self) -> io::Result<()> {
        File::from(self.fd.try_clone()?).sync_all()
    }

    /// Writes `bytes` to a new file in this directory and renames it over `name`:
    /// the temporary file is created exclusively (`O_EXCL`, no link followed), synced,
    /// and removed again if anything fails before the rename.
    pub fn replace(&self, name: &str, bytes: &[u8], mode: libc::mode_t) -> io::Result<()> {
        use std::io::Write;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tmp = format!("{name}.{}.{nanos}.tmp", std::process::id());
        let mut file = self.open(&tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, mode)?;
        let written = file
            .write_all(bytes)
            .and_then(|_| file.sync_all())
            .and_then(|_| self.rename(&tmp, name));
        if written.is_err() {
            let _ = self.remove(&tmp);
        }
        written
    }
}

/// True for the error of opening a symbolic link with `O_NOFOLLOW`.
pub fn is_link_error(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn owner_and_mode_are_named_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.yaml");
        std::fs::write(&f, "").unwrap();
        let meta = |p: &Path| std::fs::symlink_metadata(p).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(untrusted("policy file", &f, &meta(&f), false), None);
        for (mode, says) in [
            (0o664, "mode 0664 (group-writable)"),
            (0o646, "mode 0646 (world-writable)"),
            (0o666, "group- and world-writable"),
        ] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let why = untrusted("policy file", &f, &meta(&f), false).unwrap();
            assert!(why.contains(says) && why.contains("p.yaml"), "{why}");
            assert!(!why.contains('\n'));
        }
        if trusted_owner(0) && !trusted_owner(65534) {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::os::unix::fs::chown(&f, Some(65534), None).unwrap();
            let why = untrusted("policy file", &f, &meta(&f), false).unwrap();
            assert!(why.contains("owned by uid 65534 (mode 0644)"), "{why}");
        }
        // A sticky root directory writable by all is fine above a file, not as the
        // directory itself.
        let tmp = Path::new("/tmp");
        if meta(tmp).uid() == 0 && meta(tmp).mode() & 0o1777 == 0o1777 {
            assert_eq!(untrusted("d", tmp, &meta(tmp), true), None);
            assert!(untrusted("d", tmp, &meta(tmp), false).is_some());
        }
    }

    /// Helper of the test below, run as a child process: umask is process-wide, and
    /// this test binary's other tests create directories meanwhile.
    #[test]
    fn ensure_under_umask_zero() {
        if let Some(dir) = std::env::var_os("LOOPGATE_FILES_TEST_DIR") {
            // This child process runs this test only: umask is process-wide.
            nix::sys::stat::umask(nix::sys::stat::Mode::empty());
            PrivateDir::ensure(std::path::Path::new(&dir), true).unwrap();
        }
    }

    #[test]
    fn a_private_dir_is_0700_whatever_the_umask_and_never_a_link() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/b");
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "files::tests::ensure_under_umask_zero"])
            .env("LOOPGATE_FILES_TEST_DIR", &dir)
            .output()
            .unwrap();
        assert!(child.status.success(), "{child:?}");
        for d in [base.path().join("a"), dir.clone()] {
            assert_eq!(
                std::fs::metadata(&d).unwrap().mode() & 0o7777,
                0o700,
                "{}",
                d.display()
            );
        }
        let link = base.path().join("link");
        symlink(&dir, &link).unwrap();
        let e = PrivateDir::ensure(&link, true).unwrap_err().to_string();
        assert!(e.contains("symbolic link") && e.contains("link"), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = PrivateDir::ensure(&dir, true).unwrap_err().to_string();
        assert!(e.contains("mode 0777"), "{e}");
    }

    #[test]
    fn files_in_a_private_dir_are_never_reached_through_a_link() {
        let base = tempfile::tempdir().unwrap();
        let dir = PrivateDir::ensure(&base.path().join("s"), true).unwrap();
        let victim = base.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        symlink(&victim, dir.path().join("lock")).unwrap();
        let e = dir
            .open("lock", libc::O_RDWR | libc::O_CREAT, 0o600)
            .unwrap_err();
        assert!(is_link_error(&e), "{e}");
        symlink(&victim, dir.path().join("state.json")).unwrap();
        dir.replace("state.json", b"{}", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("state.json")).unwrap(),
            "{}"
        );
    }
}
