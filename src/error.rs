//! Exit codes and the kinds of failure loopgate distinguishes.
//!
//! Users and scripts need to tell "you asked for something wrong, nothing was touched"
//! (exit 2) from "the system refused, we rolled back" (exit 3), and both from "the
//! change is in force but `--persist` could not record it" (exit 4), the one failure
//! that can only happen after the host changed. Everything that is the caller's fault
//! is raised as [`BadInput`], the last case as [`NotPersisted`]; a `revoke` or
//! `unguard` that finds nothing to remove is [`NothingMatched`] (exit 1, as `grep`
//! without a match: a script that revokes what it thinks is there learns it was not);
//! every other error is a system failure.

use std::fmt;

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: `audit` found a warning or a critical problem.
pub const EXIT_FINDINGS: i32 = 1;
/// Exit code: `trace` stopped (timeout or Ctrl-C) without seeing a packet.
pub const EXIT_NO_PACKET: i32 = 1;
/// Exit code: `revoke` or `unguard` matched nothing (a port not published, an unknown
/// name, an interface or network without grants); nothing was changed.
pub const EXIT_NOTHING_MATCHED: i32 = 1;
/// Exit code: bad input or usage; nothing was changed.
pub const EXIT_BAD_INPUT: i32 = 2;
/// Exit code: the system refused or failed; what had been done was rolled back.
pub const EXIT_SYSTEM: i32 = 3;
/// Exit code: the change is in force, but `--persist` could not record it in the
/// persistent policy (the target was checked before the change; this is a failure of
/// the final write, such as a full disk).
pub const EXIT_NOT_PERSISTED: i32 = 4;

/// An error caused by the caller's input. Raised before the first mutation.
#[derive(Debug)]
pub struct BadInput(pub String);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// The host changed as asked, but recording the change in the persistent policy failed.
/// The message says so; nothing is rolled back, because the change itself succeeded.
#[derive(Debug)]
pub struct NotPersisted(pub String);

impl fmt::Display for NotPersisted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotPersisted {}

/// `revoke` or `unguard` found nothing to remove; raised before any change. The message
/// starts "nothing matched" and says what was asked for.
#[derive(Debug)]
pub struct NothingMatched(pub String);

impl fmt::Display for NothingMatched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NothingMatched {}

/// Returns early with a [`BadInput`] error built like `format!`.
#[macro_export]
macro_rules! bad_input {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::error::BadInput(format!($($arg)*))))
    };
}

/// Maps an error to the documented exit code.
pub fn exit_code_for(err: &anyhow::Error) -> i32 {
    if err.chain().any(|e| e.is::<NotPersisted>()) {
        EXIT_NOT_PERSISTED
    } else if err.chain().any(|e| e.is::<BadInput>()) {
        EXIT_BAD_INPUT
    } else if err.chain().any(|e| e.is::<NothingMatched>()) {
        EXIT_NOTHING_MATCHED
    } else {
        EXIT_SYSTEM
    }
}

/// Renders an error chain on one line, as every loopgate error must be.
pub fn one_line(err: &anyhow::Error) -> String {
    format!("{err:#}").replace('\n', " ")
}

/// An I/O error as a person reads it: "No such file or directory", without the errno.
pub fn plain_io(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_failure_has_its_code() {
        let bad = anyhow::Error::new(BadInput("x".into())).context("reading y");
        assert_eq!(exit_code_for(&bad), EXIT_BAD_INPUT);
        let late = anyhow::Error::new(NotPersisted("z".into()));
        assert_eq!(exit_code_for(&late), EXIT_NOT_PERSISTED);
        assert_eq!(exit_code_for(&anyhow::anyhow!("EPERM")), EXIT_SYSTEM);
        let none = anyhow::Error::new(NothingMatched("nothing matched".into()));
        assert_eq!(exit_code_for(&none), EXIT_NOTHING_MATCHED);
    }

    /// A change in force whose recording failed stays exit 4 under any context added
    /// on the way up (the host changed: never "nothing changed", never "rolled back").
    #[test]
    fn not_persisted_survives_context() {
        let late = anyhow::Error::new(NotPersisted("disk full".into()))
            .context("writing /etc/loopgate/loopgate.yaml")
            .context("expose");
        assert_eq!(exit_code_for(&late), EXIT_NOT_PERSISTED);
        assert!(
            one_line(&late).ends_with("disk full"),
            "{}",
            one_line(&late)
        );
    }

    #[test]
    fn errors_are_one_line_and_io_errors_lose_their_errno() {
        let e = anyhow::anyhow!("first\nsecond").context("outer");
        assert_eq!(one_line(&e), "outer: first second");
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(plain_io(&io), "No such file or directory");
    }
}
