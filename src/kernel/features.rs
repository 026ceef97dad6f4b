//! Kernel features loopgate has already seen the kernel accept on this boot, so the
//! feature probe (a validate-only batch that also makes the next real batch wait for an
//! RCU grace period) runs once per boot and feature, not on every command. The record
//! is a small file: its first line is the boot id, then one feature a line. Where it
//! lives is passed in ([`KnownFeatures::in_dir`]); the kernel does not know loopgate's
//! directories.

use std::path::PathBuf;

/// The record of the features probed on this boot: a file in one directory (the
/// state base directory, given by [`crate::state::known_features`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownFeatures {
    dir: PathBuf,
}

impl KnownFeatures {
    const FILE: &'static str = "kernel-features";

    /// The record in `dir`, which is created (0700, checked) when first written.
    pub fn in_dir(dir: PathBuf) -> KnownFeatures {
        KnownFeatures { dir }
    }

    fn read(&self) -> Option<String> {
        let dir = crate::files::PrivateDir::ensure(&self.dir, true).ok()?;
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut dir.open(Self::FILE, libc::O_RDONLY, 0).ok()?,
            &mut text,
        )
        .ok()?;
        Some(text)
    }

    fn boot_id() -> Option<String> {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// True when every one of `needs` was probed successfully since this boot.
    pub fn cover(&self, needs: &std::collections::BTreeSet<String>) -> bool {
        let (Some(boot), Some(text)) = (Self::boot_id(), self.read()) else {
            return false;
        };
        let mut lines = text.lines();
        lines.next() == Some(boot.as_str()) && {
            let known: std::collections::BTreeSet<&str> = lines.collect();
            needs.iter().all(|n| known.contains(n.as_str()))
        }
    }

    /// Records `needs` as probed; best effort (a failure only means probing again).
    pub fn remember(&self, needs: &std::collections::BTreeSet<String>) {
        let Some(boot) = Self::boot_id() else { return };
        let mut all: std::collections::BTreeSet<String> = match self.read() {
            Some(text) if text.lines().next() == Some(boot.as_str()) => {
                text.lines().skip(1).map(str::to_string).collect()
            }
            _ => Default::default(),
        };
        all.extend(needs.iter().cloned());
        let body: String = std::iter::once(boot).chain(all).map(|l| l + "\n").collect();
        if let Ok(dir) = crate::files::PrivateDir::ensure(&self.dir, true) {
            let _ = dir.replace(Self::FILE, body.as_bytes(), 0o600);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn remembered_features_cover_what_was_probed_and_nothing_more() {
        let tmp = tempfile::tempdir().unwrap();
        let known = KnownFeatures::in_dir(tmp.path().join("state"));
        assert!(!known.cover(&set(&["vmap"])), "nothing probed yet");
        known.remember(&set(&["vmap", "concat"]));
        assert!(known.cover(&set(&["vmap"])));
        assert!(known.cover(&set(&["vmap", "concat"])));
        assert!(!known.cover(&set(&["vmap", "interval"])));
        known.remember(&set(&["interval"]));
        assert!(known.cover(&set(&["vmap", "concat", "interval"])));
    }

    #[test]
    fn a_record_of_another_boot_covers_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let known = KnownFeatures::in_dir(dir.clone());
        known.remember(&set(&["vmap"]));
        let text = std::fs::read_to_string(dir.join(KnownFeatures::FILE)).unwrap();
        let rest: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
        std::fs::write(
            dir.join(KnownFeatures::FILE),
            format!("another-boot\n{rest}"),
        )
        .unwrap();
        assert!(!known.cover(&set(&["vmap"])));
        // Remembering again starts the record over for this boot.
        known.remember(&set(&["concat"]));
        assert!(known.cover(&set(&["concat"])) && !known.cover(&set(&["vmap"])));
    }
}
