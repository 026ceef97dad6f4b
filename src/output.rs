//! Standard output that a closed pipe cannot turn into a panic.
//!
//! `println!` panics when stdout is a pipe whose reader has gone (`loopgate audit | head
//! -1`), which would exit with 101 and, worse, skip whatever the verb still had to do
//! after printing (recording a change that is already in force). Every line loopgate
//! prints on stdout goes through [`outln!`](crate::outln) / [`out!`](crate::out)
//! instead: the first failed write (EPIPE or any other) silences the rest of the
//! output, and the verb finishes and returns its true exit code.
//!
//! Warnings go to stderr through [`errln!`](crate::errln).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a write to stdout failed. The one process-wide flag besides the signal
/// flags, and of the same kind: it is the SIGPIPE loopgate does not take, turned into a
/// flag. Standard output is itself process-wide, so whether its reader has gone is too;
/// passing it as a value would thread a "stdout is gone" argument through every verb
/// for no gain, since no two callers could ever disagree about it.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `args` to stderr; never panics.
pub fn write_err(args: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// Writes `args` to stdout unless an earlier write failed; never panics.
pub fn write(args: std::fmt::Arguments<'_>) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if out.write_fmt(args).and_then(|_| out.flush()).is_err() {
        CLOSED.store(true, Ordering::Relaxed);
    }
}

/// `print!` that stops quietly when stdout is closed (see [`write`](fn@crate::output::write)).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*)) };
}

/// `println!` that stops quietly when stdout is closed (see [`write`](fn@crate::output::write)).
#[macro_export]
macro_rules! outln {
    () => { $crate::output::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::write(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `eprintln!` that never panics.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => { $crate::output::write_err(format_args!("{}\n", format_args!($($arg)*))) };
}
