//! Exit codes and the two kinds of failure loopgate distinguishes.
//!
//! Users and scripts need to tell "you asked for something wrong, nothing was touched"
//! (exit 2) from "the system refused, we rolled back" (exit 3). Everything that is the
//! caller's fault is raised as [`BadInput`]; every other error is a system failure.

use std::fmt;

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: `audit` found a warning or a critical problem.
pub const EXIT_FINDINGS: i32 = 1;
/// Exit code: bad input or usage; nothing was changed.
pub const EXIT_BAD_INPUT: i32 = 2;
/// Exit code: the system refused or failed; what had been done was rolled back.
pub const EXIT_SYSTEM: i32 = 3;

/// An error caused by the caller's input. Raised before the first mutation.
#[derive(Debug)]
pub struct BadInput(pub String);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// Returns early with a [`BadInput`] error built like `format!`.
#[macro_export]
macro_rules! bad_input {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::error::BadInput(format!($($arg)*))))
    };
}

/// Maps an error to the documented exit code.
pub fn exit_code_for(err: &anyhow::Error) -> i32 {
    if err.chain().any(|e| e.is::<BadInput>()) {
        EXIT_BAD_INPUT
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
