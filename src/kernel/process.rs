//! Running another program with a bound on how long it may take: its process group is
//! killed after the bound, and a child it leaves holding its pipes cannot hold up the
//! caller either (pidfd, process groups). For asking a container runtime's CLI (see
//! [`crate::runtime`]); the one place loopgate starts another program.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Why [`run_bounded`] has no output.
pub enum Bounded {
    /// The program could not be started.
    Spawn(std::io::Error),
    /// It did not exit in time; its process group was killed.
    TimedOut,
}

/// Runs `cmd` (stdin from /dev/null, stdout and stderr read in full) in a process group
/// of its own, and kills that group when it has not exited within `limit`: a CLI that
/// hangs, or leaves a child holding its pipes, cannot hold up the caller longer.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Result<std::process::Output, Bounded> {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(Bounded::Spawn)?;
    let pgid = child.id() as i32;
    let deadline = std::time::Instant::now() + limit;
    // Each pipe is read to its end on a thread that hands the bytes over a channel: a
    // child the CLI left in a session of its own (out of reach of the group kill) may
    // hold a pipe open for ever, and the wait for its end must be bounded too.
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            let _ = tx.send(buf);
        });
        rx
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    // The child is not reaped before the wait below, so the pid is still its own.
    let exited = if let Ok(pidfd) = super::os::pidfd_open(pgid) {
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&pidfd),
            nix::poll::PollFlags::POLLIN,
        )];
        let millis = limit.as_millis().min(i32::MAX as u128) as i32;
        let timeout =
            nix::poll::PollTimeout::try_from(millis).unwrap_or(nix::poll::PollTimeout::MAX);
        loop {
            match nix::poll::poll(&mut fds, timeout) {
                Err(nix::errno::Errno::EINTR) => continue,
                Ok(n) => break n > 0,
                Err(_) => break false,
            }
        }
    } else {
        // No pidfd (Linux < 5.3): wait without a bound, as before.
        true
    };
    if !exited {
        // The process group this function created.
        let _ =
            nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::SIGKILL);
        let _ = child.wait();
        return Err(Bounded::TimedOut);
    }
    let status = child.wait().map_err(Bounded::Spawn)?;
    // The CLI exited; a child it left behind may still hold the pipes.
    // The process group this function created; ESRCH when empty.
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::SIGKILL);
    // Its output ends when every holder of the pipes is gone, within the same bound
    // (a moment more, for a CLI that exited right at it).
    let ended = |rx: mpsc::Receiver<Vec<u8>>| {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        rx.recv_timeout(left.max(Duration::from_millis(100)))
    };
    match (ended(out), ended(err)) {
        (Ok(stdout), Ok(stderr)) => Ok(std::process::Output {
            status,
            stdout,
            stderr,
        }),
        _ => Err(Bounded::TimedOut),
    }
}

/// A new pipe, both ends close-on-exec and non-blocking: (read end, write end). For
/// waking a poll loop from another thread.
///
/// Errors: pipe2(2) failed (no descriptors left).
pub fn wake_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
        .map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn a_hung_cli_is_killed_at_the_bound_and_its_output_read_otherwise() {
        let start = std::time::Instant::now();
        let hung = run_bounded(sh("sleep 30"), Duration::from_millis(300));
        assert!(matches!(hung, Err(Bounded::TimedOut)));
        // A CLI that exits but leaves a child holding its pipes returns too.
        let out = run_bounded(sh("sleep 30 & echo answered"), Duration::from_secs(10))
            .ok()
            .expect("exited");
        assert_eq!(out.stdout, b"answered\n");
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "{:?}",
            start.elapsed()
        );
        // More than a pipe holds is read in full.
        let big = run_bounded(sh("head -c 300000 /dev/zero"), Duration::from_secs(10))
            .ok()
            .expect("exited");
        assert_eq!(big.stdout.len(), 300_000);
        assert!(matches!(
            run_bounded(Command::new("/nonexistent/docker"), Duration::from_secs(1)),
            Err(Bounded::Spawn(_))
        ));
    }
}
