//! Running a command line in another loopgate process: a root-only unix socket over
//! which a client sends its arguments and gets back what the command printed and its
//! exit code. `watch` serves it while it holds loopgate's table (see
//! [`kernel::nft::Owner`](crate::kernel::nft::Owner)), so `expose`, `revoke` and
//! `apply` run their transaction through the process that owns the table; with no
//! server listening the client runs the command itself.
//!
//! The protocol is one JSON line each way on one connection: the client sends
//! `{"version":1,"args":[...]}` and shuts its side down, the server answers
//! `{"stdout":"...","stderr":"...","code":N}` and closes. The socket file is mode
//! 0600, and the server also refuses any peer whose `SO_PEERCRED` uid is not 0, so a
//! file made reachable by mistake still serves root only; the client checks the
//! server's uid the same way before it sends anything.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The protocol version a client sends; a server of another version refuses the
/// request (exit code 3) instead of guessing.
pub const VERSION: u32 = 1;

/// The largest request or reply read, in bytes: a command line is far smaller, and
/// output of 100,000 allowed networks fits.
const MAX_MESSAGE: u64 = 64 << 20;

/// How long the server waits, in all, for a connected client to send its request: a
/// stuck or trickling client must not stall the loop that serves it (watch's repairs
/// run on that loop). A command line is one write.
const REQUEST_DEADLINE: Duration = Duration::from_millis(200);

/// How long the server may take to write a reply the client does not read.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// What a command run by the server printed, and its exit code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Everything the command wrote to standard output.
    pub stdout: String,
    /// Everything the command wrote to standard error.
    pub stderr: String,
    /// The exit code the command would have exited with (see [`crate::error`]).
    pub code: i32,
}

impl Reply {
    /// A reply of a command that failed before it ran: `message` on stderr.
    pub fn failure(code: i32, message: &str) -> Reply {
        Reply {
            stdout: String::new(),
            stderr: format!("loopgate: {message}\n"),
            code,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    version: u32,
    args: Vec<String>,
    /// Environment variables of the client the command depends on (name, value).
    #[serde(default)]
    env: Vec<(String, String)>,
}

/// The uid of the process at the other end of a connected unix socket.
fn peer_uid(stream: &UnixStream) -> Result<u32> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .context("reading the peer's credentials (SO_PEERCRED)")?;
    Ok(cred.uid())
}

/// The listening end: a unix socket at a path the caller chooses (such as
/// `<state dir>/watch.sock`), non-blocking, to be polled with the caller's other
/// descriptors ([`AsFd`]) and served one connection at a time with
/// [`Server::accept_one`]. The socket file is removed on drop, unless another server
/// has replaced it meanwhile.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file this server bound.
    file: (u64, u64),
}

impl Server {
    /// Listens at `path`, mode 0600. A socket file left by a server that is gone (a
    /// connect is refused) is replaced; a live server at `path` is an error. The
    /// socket is bound under a temporary name, restricted to 0600 and then renamed
    /// into place, so it is never reachable at `path` with wider permissions.
    pub fn bind(path: &Path) -> Result<Server> {
        match UnixStream::connect(path) {
            Ok(_) => bail!(
                "another loopgate already serves commands at {}",
                path.display()
            ),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ECONNREFUSED)) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("checking {} for a server", path.display()))
            }
        }
        let name = path
            .file_name()
            .with_context(|| format!("{} names no file", path.display()))?;
        let tmp = path.with_file_name(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp)
            .with_context(|| format!("binding a unix socket at {}", tmp.display()))?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("placing the socket at {}", path.display()));
        }
        listener
            .set_nonblocking(true)
            .context("making the socket non-blocking")?;
        let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
        Ok(Server {
            listener,
            path: path.to_path_buf(),
            file: (meta.dev(), meta.ino()),
        })
    }

    /// The path the server listens at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves one waiting connection, if any, without blocking when there is none
    /// (`Ok(false)`): reads the request (waiting at most a few seconds for it), runs
    /// `handler` on its arguments and sends the reply. A peer that is not root gets a
    /// refusal (exit code 2) and `handler` is not called; so does a request of another
    /// protocol version (exit code 3). An error concerns that one connection only; the
    /// server stays usable.
    pub fn accept_one(
        &self,
        handler: impl FnOnce(Vec<String>, Vec<(String, String)>) -> Reply,
    ) -> Result<bool> {
        let stream = match self.listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(false),
            Err(e) => return Err(e).context("accepting a connection"),
        };
        serve(stream, handler).map(|()| true)
    }
}

/// Answers one connection.
fn serve(
    stream: UnixStream,
    handler: impl FnOnce(Vec<String>, Vec<(String, String)>) -> Reply,
) -> Result<()> {
    // Accepted sockets do not inherit O_NONBLOCK on Linux; the timeouts bound the wait.
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
    let uid = peer_uid(&stream)?;
    // Read in full whoever sent it: closing a unix stream with unread data resets
    // it, and the peer would never see the reply.
    let line = read_line(&stream)?;
    let reply = match uid {
        0 => {
            let req: Request = serde_json::from_slice(&line).context("parsing the request")?;
            if req.version == VERSION {
                handler(req.args, req.env)
            } else {
                Reply::failure(
                    crate::error::EXIT_SYSTEM,
                    &format!(
                        "the running loopgate watch speaks protocol {VERSION}, this loopgate {}; restart watch after an upgrade",
                        req.version
                    ),
                )
            }
        }
        uid => Reply::failure(
            crate::error::EXIT_BAD_INPUT,
            &format!("loopgate watch takes commands from root only (not uid {uid})"),
        ),
    };
    let mut line = serde_json::to_vec(&reply)?;
    line.push(b'\n');
    (&stream)
        .write_all(&line)
        .context("sending the reply (the client may have given up waiting)")?;
    Ok(())
}

/// The request line, up to its newline (or the end), bounded in size and, in all, in
/// time ([`REQUEST_DEADLINE`]).
fn read_line(stream: &UnixStream) -> Result<Vec<u8>> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut line = Vec::new();
    let mut buf = [0u8; 64 << 10];
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .context("the client did not send its request in time")?;
        stream.set_read_timeout(Some(left))?;
        let n = match (&*stream).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading the request"),
        };
        line.extend_from_slice(&buf[..n]);
        if n == 0 || line.contains(&b'\n') {
            return Ok(line);
        }
        if line.len() as u64 > MAX_MESSAGE {
            bail!("the request is larger than {MAX_MESSAGE} bytes");
        }
    }
}

impl AsFd for Server {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

impl AsRawFd for Server {
    fn as_raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Only our own file: a server started since may have replaced it.
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.file {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Runs `args` in the server listening at `path` and returns its reply, waiting at
/// most `timeout` for all of it. `Ok(None)` when no server listens there (no socket
/// file, or a stale one whose server is gone): the caller then runs the command
/// itself. A server that is not root, or does not answer in time, is an error: the
/// command was not run, or may still be running there.
pub fn call(path: &Path, args: &[String], timeout: Duration) -> Result<Option<Reply>> {
    call_with_env(path, args, &[], timeout)
}

/// As [`call`], with environment variables (name, value) the command depends on.
pub fn call_with_env(
    path: &Path,
    args: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<Option<Reply>> {
    let deadline = Instant::now() + timeout;
    let stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ECONNREFUSED)) => {
            return Ok(None)
        }
        Err(e) => {
            return Err(e).with_context(|| format!("connecting to {}", path.display()));
        }
    };
    let uid = peer_uid(&stream)?;
    if uid != 0 {
        bail!(
            "{} is served by uid {uid}, not root; refusing to send it a command",
            path.display()
        );
    }
    let left = |what: &str| {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .with_context(|| {
                format!(
                    "no reply from {} within {timeout:?} ({what})",
                    path.display()
                )
            })
    };
    stream.set_write_timeout(Some(left("sending")?))?;
    let mut line = serde_json::to_vec(&Request {
        version: VERSION,
        args: args.to_vec(),
        env: env.to_vec(),
    })?;
    line.push(b'\n');
    (&stream).write_all(&line).context("sending the command")?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 64 << 10];
    loop {
        stream.set_read_timeout(Some(left("waiting")?))?;
        match (&stream).read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                left("waiting")?;
            }
            Err(e) => return Err(e).context("reading the reply"),
        }
        if reply.len() as u64 > MAX_MESSAGE {
            bail!("the reply from {} is too large", path.display());
        }
    }
    if reply.is_empty() {
        bail!(
            "{} closed the connection without a reply (the command may or may not have run)",
            path.display()
        );
    }
    serde_json::from_slice(&reply)
        .map(Some)
        .with_context(|| format!("parsing the reply from {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    /// Serves connections until `n` were handled, echoing the arguments.
    fn serve_n(server: &Server, n: usize) -> Vec<Vec<String>> {
        let mut seen = Vec::new();
        let mut handled = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while handled < n {
            assert!(Instant::now() < deadline, "no client came");
            let mut fds = [nix::poll::PollFd::new(
                server.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            nix::poll::poll(&mut fds, 100u16).unwrap();
            let served = server.accept_one(|a, _| {
                seen.push(a.clone());
                Reply {
                    stdout: format!("ran {}\n", a.join(" ")),
                    stderr: "warning\n".into(),
                    code: 4,
                }
            });
            match served {
                Ok(true) => handled += 1,
                Ok(false) => {}
                Err(e) => {
                    handled += 1;
                    seen.push(vec![format!("error: {e:#}")]);
                }
            }
        }
        seen
    }

    #[test]
    fn a_command_line_goes_over_and_its_output_and_code_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watch.sock");
        let server = Server::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        // Nothing waiting: returns at once.
        assert!(!server.accept_one(|_, _| unreachable!()).unwrap());

        let client = std::thread::spawn({
            let path = path.clone();
            move || {
                call(
                    &path,
                    &args(&["expose", "br0", "--port", "3306"]),
                    Duration::from_secs(5),
                )
            }
        });
        let seen = serve_n(&server, 1);
        assert_eq!(seen, vec![args(&["expose", "br0", "--port", "3306"])]);
        let reply = client.join().unwrap().unwrap().expect("a server listens");
        assert_eq!(
            reply,
            Reply {
                stdout: "ran expose br0 --port 3306\n".into(),
                stderr: "warning\n".into(),
                code: 4
            }
        );
        drop(server);
        assert!(!path.exists(), "the socket file goes with the server");
    }

    #[test]
    fn no_server_or_a_stale_socket_file_means_run_it_directly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watch.sock");
        assert_eq!(
            call(&path, &args(&["audit"]), Duration::from_secs(1)).unwrap(),
            None
        );
        // A server that died without removing its file.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        assert_eq!(
            call(&path, &args(&["audit"]), Duration::from_secs(1)).unwrap(),
            None
        );
        // And a new server takes the stale file over.
        let server = Server::bind(&path).unwrap();
        let client = std::thread::spawn({
            let path = path.clone();
            move || call(&path, &args(&["audit"]), Duration::from_secs(5))
        });
        serve_n(&server, 1);
        assert!(client.join().unwrap().unwrap().is_some());
    }

    #[test]
    fn a_live_server_is_not_replaced_and_a_replaced_file_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watch.sock");
        let first = Server::bind(&path).unwrap();
        let err = Server::bind(&path).err().expect("a second server");
        assert!(format!("{err:#}").contains("already serves"), "{err:#}");
        // The first one's file replaced by someone else's: dropping it leaves that.
        std::fs::remove_file(&path).unwrap();
        let second = Server::bind(&path).unwrap();
        drop(first);
        assert!(path.exists());
        drop(second);
        assert!(!path.exists());
    }

    #[test]
    fn a_slow_server_is_a_timeout_not_a_reason_to_run_directly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watch.sock");
        let _server = Server::bind(&path).unwrap();
        // Never served: the connection waits in the backlog.
        let start = Instant::now();
        let err = call(&path, &args(&["audit"]), Duration::from_millis(300))
            .expect_err("no reply in time");
        assert!(format!("{err:#}").contains("no reply"), "{err:#}");
        assert!(start.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn garbage_and_other_versions_are_refused_and_the_server_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watch.sock");
        let server = Server::bind(&path).unwrap();
        let send = |bytes: &'static [u8]| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&path).unwrap();
                s.write_all(bytes).unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                out
            })
        };
        let garbage = send(b"not json\n");
        let seen = serve_n(&server, 1);
        assert!(
            seen[0][0].starts_with("error: parsing the request"),
            "{seen:?}"
        );
        assert_eq!(garbage.join().unwrap(), "");
        let future = send(b"{\"version\":99,\"args\":[\"audit\"]}\n");
        let seen = serve_n(&server, 1);
        assert!(seen.is_empty(), "the handler ran: {seen:?}");
        let reply: Reply = serde_json::from_str(&future.join().unwrap()).unwrap();
        assert_eq!(reply.code, crate::error::EXIT_SYSTEM);
        assert!(reply.stderr.contains("protocol 1"), "{}", reply.stderr);
        // Still serving.
        let client = std::thread::spawn({
            let path = path.clone();
            move || call(&path, &args(&["audit"]), Duration::from_secs(5))
        });
        serve_n(&server, 1);
        assert_eq!(client.join().unwrap().unwrap().unwrap().code, 4);
    }

    /// Runs `f` on a thread whose credentials are uid/gid 65534: setresuid(2) as a raw
    /// system call changes only the calling thread (glibc's wrapper would change every
    /// thread of the test process). The thread ends with its credentials.
    fn as_nobody<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Group first: without root, the uid could no longer change it.
            for call in [libc::SYS_setresgid, libc::SYS_setresuid] {
                // SAFETY: a system call on this thread's own credentials, with integer
                // arguments only.
                let rc = unsafe { libc::syscall(call, 65534, 65534, 65534) };
                assert_eq!(rc, 0, "dropping to nobody: {}", io::Error::last_os_error());
            }
            tx.send(f()).unwrap();
        });
        rx.recv().unwrap()
    }

    #[test]
    fn only_root_may_connect_and_a_non_root_peer_is_refused_anyway() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // Needs root to bind as root and to drop to another uid.
            eprintln!("rpc: skipped the peer credential test: not running as root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("watch.sock");
        let server = Server::bind(&path).unwrap();
        // Mode 0600: connecting is refused by the file system.
        let denied = as_nobody({
            let path = path.clone();
            move || call(&path, &args(&["revoke", "br0"]), Duration::from_secs(2))
        });
        let text = format!("{:#}", denied.expect_err("a non-root client"));
        assert!(text.contains("ermission denied"), "{text}");
        assert!(!server.accept_one(|_, _| unreachable!()).unwrap());

        // The file opened up by mistake: SO_PEERCRED still keeps the peer out.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let client = std::thread::spawn({
            let path = path.clone();
            move || {
                as_nobody(move || {
                    let mut s = UnixStream::connect(&path).unwrap();
                    let req = b"{\"version\":1,\"args\":[\"revoke\",\"br0\"]}\n";
                    s.write_all(req).unwrap();
                    s.shutdown(std::net::Shutdown::Write).unwrap();
                    let mut out = String::new();
                    s.read_to_string(&mut out).unwrap();
                    out
                })
            }
        });
        let seen = serve_n(&server, 1);
        assert!(seen.is_empty(), "the handler ran for uid 65534: {seen:?}");
        let reply: Reply = serde_json::from_str(&client.join().unwrap()).unwrap();
        assert_eq!(reply.code, crate::error::EXIT_BAD_INPUT);
        assert!(reply.stderr.contains("root only"), "{}", reply.stderr);
    }
}
