//! Standard output that a closed pipe cannot turn into a panic.
//!
//! `println!` panics when stdout is a pipe whose reader has gone (`loopgate audit | head
//! -1`), which would exit with 101 and, worse, skip whatever the verb still had to do
//! after printing (recording a change that is already in force). Every line loopgate
//! prints on stdout goes through [`outln!`](crate::outln) / [`out!`](crate::out)
//! instead: the first failed write (EPIPE or any other) silences the rest of the
//! output, and the verb finishes and returns its true exit code.
//!
//! Warnings go to stderr through [`errln!`](crate::errln). While `loopgate watch` runs a
//! command on behalf of a client (see [`crate::rpc`]), both are captured ([`capture`])
//! and sent back, so the client prints exactly what a direct run would.

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// (stdout, stderr) of the command being run for a client, when one is.
    static CAPTURE: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's output captured; returns its result and (stdout,
/// stderr).
pub fn capture<T>(f: impl FnOnce() -> T) -> (T, String, String) {
    CAPTURE.with(|c| *c.borrow_mut() = Some((String::new(), String::new())));
    let result = f();
    let (out, err) = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    (result, out, err)
}

/// Appends to the capture, if one is active; false when none is.
fn captured(stderr: bool, args: std::fmt::Arguments<'_>) -> bool {
    CAPTURE.with(|c| match c.borrow_mut().as_mut() {
        Some((out, err)) => {
            use std::fmt::Write as _;
            let _ = if stderr {
                err.write_fmt(args)
            } else {
                out.write_fmt(args)
            };
            true
        }
        None => false,
    })
}

/// Writes `args` to stderr (or the capture); never panics.
pub fn write_err(args: std::fmt::Arguments<'_>) {
    if !captured(true, args) {
        let _ = std::io::stderr().lock().write_fmt(args);
    }
}

/// Writes `args` to stdout unless an earlier write failed; never panics.
pub fn write(args: std::fmt::Arguments<'_>) {
    if captured(false, args) {
        return;
    }
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if out.write_fmt(args).and_then(|_| out.flush()).is_err() {
        CLOSED.store(true, Ordering::Relaxed);
    }
}

/// True once a write to stdout failed (the reader closed the pipe).
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
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

/// `eprintln!` that goes to the capture while watch runs a command for a client, and
/// never panics.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => { $crate::output::write_err(format_args!("{}\n", format_args!($($arg)*))) };
}
