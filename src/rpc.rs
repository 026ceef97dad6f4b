//! The unix socket over which a running `loopgate watch` lends loopgate's table.
//!
//! While watch runs it holds `table ip loopgate` through the netlink socket that owns
//! it ([`kernel::nft::Owner`](crate::kernel::nft::Owner)): the kernel refuses every
//! change from any other socket. A command that changes the table (`expose`, `revoke`,
//! `apply`, `guard`, `unguard`) therefore borrows that socket for its one transaction:
//! it connects to `<state dir>/watch.sock`, asks for a lease, receives the owning
//! socket's descriptor (`SCM_RIGHTS`), runs its own transaction through it exactly as
//! it would with no watch, and closes the connection, which ends the lease. Watch does
//! not touch the socket meanwhile; it waits at most [`LEASE_LIMIT`].
//!
//! Why lend rather than have watch run a typed request: there is then one path for
//! every verb, not two. The command parses, validates, resolves runtime networks,
//! reads and writes its files and prints in its own process, with its own environment
//! and its own permissions; watch never parses a command line, never opens a path for
//! a client and captures no output, so no request can make it read or write a file,
//! and a verb added later needs nothing here. A slow runtime CLI delays only the
//! command that asked for it: the lease is taken after the command resolved what it
//! asks for, just before its transaction.
//!
//! Protocol, one JSON line each way on one connection: the client sends
//! `{"version":2,"request":"lease","command":"expose br0 …"}` (the command only for
//! watch's log); watch answers `{"version":2,"answer":"lent","portid":N,"limit_ms":M}`
//! with the descriptor attached, `{"version":2,"answer":"not-held"}` (watch does not
//! hold the table: change it directly), or `{"version":2,"answer":"refused",
//! "reason":"…"}`.
//!
//! Who may borrow: a peer with `CAP_NET_ADMIN` in its effective set, in watch's network
//! namespace and user namespace, which is what changing the table directly needs. The
//! peer is read through a pidfd of it (`SO_PEERPIDFD`, or `pidfd_open` on kernels
//! before 6.5), and the pidfd is checked again after its `/proc` entries were read: a
//! peer that exited and whose pid was reused meanwhile is refused. The socket file is
//! mode 0600 in a root-only directory besides. The client checks that the server is
//! root before it asks, and that the kernel names the lent socket as the table's owner
//! before it uses it.
//!
//! The limit of lending: a descriptor sent cannot be taken back. loopgate closes its
//! copy when its transaction ends, but a borrower that keeps its copy keeps the table
//! owned after watch stops, until it exits; `audit` then reports the table owned by
//! another process (critical) and a new watch cannot hold it. Only a process with
//! CAP_NET_ADMIN in watch's namespaces can borrow, and such a process can change the
//! host's network in any case (tests/cli/watch_socket_and_bounded_cli.rs shows the report).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The protocol version both ends speak; another version is refused, never guessed.
pub const VERSION: u32 = 2;

/// The largest request read, in bytes: a lease request is a short line.
const MAX_REQUEST: usize = 4096;

/// How long the server waits, in all, for a connected client to send its request: a
/// stuck or trickling client must not stall the loop that serves it.
const REQUEST_DEADLINE: Duration = Duration::from_millis(200);

// The kernel's seam enforces it on the borrower's side.
pub use crate::kernel::seam::LEASE_LIMIT;

/// `CAP_NET_ADMIN`, the bit in `/proc/PID/status`'s `CapEff`.
const CAP_NET_ADMIN: u32 = 12;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
enum Request {
    /// Lend me the table for one transaction; `command` is for watch's log only.
    Lease { command: String },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
enum Answer {
    /// The owning socket is attached; the lease ends when the client closes the
    /// connection, or after `limit_ms`.
    Lent { portid: u32, limit_ms: u64 },
    /// Watch does not hold the table: the client changes it directly.
    NotHeld,
    /// Watch will not lend it, and says why.
    Refused { reason: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    version: u32,
    #[serde(flatten)]
    body: T,
}

fn encode<T: Serialize>(body: T) -> Result<Vec<u8>> {
    let mut line = serde_json::to_vec(&Envelope {
        version: VERSION,
        body,
    })?;
    line.push(b'\n');
    Ok(line)
}

/// The uid of the process at the other end of a connected unix socket.
fn peer_uid(stream: &UnixStream) -> Result<u32> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .context("reading the peer's credentials (SO_PEERCRED)")?;
    Ok(cred.uid())
}

/// A client that passed the checks, as this process's `/proc` numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its pid in the PID namespace of this process's `/proc`.
    pub pid: i32,
}

/// A pidfd of the peer of `stream`.
fn peer_pidfd(stream: &UnixStream) -> Result<OwnedFd> {
    if let Ok(fd) = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerPidfd) {
        return Ok(fd);
    }
    // Before Linux 6.5: a pidfd of the pid SO_PEERCRED names, checked like the other.
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .context("reading the peer's credentials (SO_PEERCRED)")?;
    crate::kernel::os::pidfd_open(cred.pid()).context("opening a pidfd of the peer")
}

/// The pid `pidfd` refers to, as this process's `/proc` numbers it; `None` when that
/// process has exited (the kernel then shows -1) or is not visible from here.
fn pidfd_pid(pidfd: &OwnedFd) -> Option<i32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    let pid: i32 = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))?
        .trim()
        .parse()
        .ok()?;
    (pid > 0).then_some(pid)
}

/// The namespace `kind` (`net`, `user`) of `who` (`self`, `thread-self` or a pid), as
/// (device, inode) of its nsfs file.
fn namespace(who: &str, kind: &str) -> Result<(u64, u64)> {
    let path = format!("/proc/{who}/ns/{kind}");
    let meta = std::fs::metadata(&path).with_context(|| format!("reading {path}"))?;
    Ok((meta.dev(), meta.ino()))
}

/// Whether `CapEff` in a `/proc/PID/status` text has `CAP_NET_ADMIN`.
fn has_net_admin(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// Checks the peer of `stream`: CAP_NET_ADMIN in its effective set, in this thread's
/// network namespace and this process's user namespace. `Err(reason)` says, for the
/// peer and watch's log, why it may not borrow the table.
fn authenticate(stream: &UnixStream) -> std::result::Result<Peer, String> {
    let pidfd = peer_pidfd(stream).map_err(|e| crate::error::one_line(&e))?;
    let Some(pid) = pidfd_pid(&pidfd) else {
        return Err("the peer exited, or its pid is not visible to loopgate watch".into());
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("reading the peer's status: {}", crate::error::plain_io(&e)))?;
    let same = |kind: &str, mine: &str| -> std::result::Result<bool, String> {
        let theirs = namespace(&pid.to_string(), kind).map_err(|e| crate::error::one_line(&e))?;
        let ours = namespace(mine, kind).map_err(|e| crate::error::one_line(&e))?;
        Ok(theirs == ours)
    };
    let net = same("net", "thread-self")?;
    let user = same("user", "self")?;
    // The pid read above was the peer's own only if the peer is still alive now.
    if pidfd_pid(&pidfd) != Some(pid) {
        return Err("the peer exited while it was checked".into());
    }
    if !user {
        return Err(format!(
            "pid {pid} is in another user namespace; only a process in loopgate watch's may change its table"
        ));
    }
    if !net {
        return Err(format!(
            "pid {pid} is in another network namespace; it would change another namespace's table"
        ));
    }
    if !has_net_admin(&status) {
        return Err(format!(
            "pid {pid} lacks CAP_NET_ADMIN, which changing table ip loopgate needs"
        ));
    }
    Ok(Peer { pid })
}

/// The listening end: a unix socket at a path the caller chooses (such as
/// `<state dir>/watch.sock`), non-blocking, to be polled with the caller's other
/// descriptors ([`AsFd`]); [`Server::accept`] takes one waiting borrower. The socket
/// file is removed on drop, unless another server has replaced it meanwhile.
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

    /// Takes one waiting connection, if any, without blocking when there is none
    /// (`Ok(None)`); reads its request (at most 4 KiB, within 200 ms) and checks the
    /// peer. A peer that may not borrow, a request of another protocol version or a
    /// malformed one is answered with a refusal here and returned as an error naming
    /// why (for watch's log); the server stays usable.
    pub fn accept(&self) -> Result<Option<Borrower>> {
        let stream = match self.listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(None),
            Err(e) => return Err(e).context("accepting a connection"),
        };
        // Accepted sockets do not inherit O_NONBLOCK on Linux; the timeouts bound waits.
        stream.set_nonblocking(false)?;
        stream.set_write_timeout(Some(Duration::from_secs(1)))?;
        let refuse = |reason: String| -> Result<Option<Borrower>> {
            let _ = (&stream).write_all(&encode(Answer::Refused {
                reason: reason.clone(),
            })?);
            bail!("refused a client: {reason}")
        };
        // The request first (bounded), so that a refusal reaches a peer that is still
        // sending; the peer is checked through its pidfd, whatever it did meanwhile.
        let line = match read_line(&stream) {
            Ok(l) => l,
            Err(e) => return refuse(crate::error::one_line(&e)),
        };
        let peer = match authenticate(&stream) {
            Ok(p) => p,
            Err(reason) => return refuse(reason),
        };
        let version = serde_json::from_slice::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v.get("version").and_then(|v| v.as_u64()));
        if version != Some(VERSION as u64) {
            return refuse(match version {
                Some(v) => format!(
                    "loopgate watch speaks protocol {VERSION}, this loopgate {v}; restart watch after an upgrade"
                ),
                None => "the request is not a loopgate request".to_string(),
            });
        }
        match serde_json::from_slice::<Envelope<Request>>(&line) {
            Ok(Envelope {
                body: Request::Lease { command },
                ..
            }) => Ok(Some(Borrower {
                stream,
                peer,
                command: command.chars().take(200).collect(),
            })),
            Err(e) => refuse(format!("malformed request: {e}")),
        }
    }
}

/// The request line, up to its newline (or the end), bounded in size and, in all, in
/// time ([`REQUEST_DEADLINE`]).
fn read_line(stream: &UnixStream) -> Result<Vec<u8>> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut line = Vec::new();
    let mut buf = [0u8; 1024];
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
        if line.len() > MAX_REQUEST {
            bail!("the request is larger than {MAX_REQUEST} bytes");
        }
    }
}

/// A checked client that asked to borrow the table.
pub struct Borrower {
    stream: UnixStream,
    /// Who asked.
    pub peer: Peer,
    /// The command it runs, as it described it (for the log only; at most 200
    /// characters, not trusted for anything else).
    pub command: String,
}

/// How a lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEnd {
    /// The borrower closed the connection after this long.
    Returned(Duration),
    /// The borrower still had it after [`LEASE_LIMIT`]; watch stopped waiting and uses the
    /// socket again (a descriptor sent cannot be taken back: the borrower's copy works
    /// until it closes it).
    Expired,
}

impl Borrower {
    /// Tells the borrower that watch does not hold the table: it changes it directly.
    pub fn not_held(self) -> Result<()> {
        (&self.stream)
            .write_all(&encode(Answer::NotHeld)?)
            .context("answering a client")
    }

    /// Sends `fd` (the socket that owns the table, bound to `portid`) and waits until
    /// the borrower closes the connection, at most `limit`.
    pub fn lend(self, fd: BorrowedFd<'_>, portid: u32, limit: Duration) -> Result<LeaseEnd> {
        let start = Instant::now();
        let line = encode(Answer::Lent {
            portid,
            limit_ms: limit.as_millis() as u64,
        })?;
        let fds = [fd.as_raw_fd()];
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
        nix::sys::socket::sendmsg::<()>(
            self.stream.as_raw_fd(),
            &[IoSlice::new(&line)],
            &cmsg,
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .context("lending the table's socket")?;
        // The lease lasts until the borrower closes its end (EOF), however it ends.
        let mut buf = [0u8; 256];
        loop {
            let Some(left) = limit.checked_sub(start.elapsed()).filter(|d| !d.is_zero()) else {
                return Ok(LeaseEnd::Expired);
            };
            self.stream.set_read_timeout(Some(left))?;
            match (&self.stream).read(&mut buf) {
                Ok(0) => return Ok(LeaseEnd::Returned(start.elapsed())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Ok(LeaseEnd::Returned(start.elapsed()))
                }
                Err(e) => return Err(e).context("waiting for the borrower"),
            }
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

/// The table lent by watch: the owning socket and the connection whose closing ends
/// the lease (drop this value after the transaction, and after the socket).
pub struct Lent {
    /// The socket that owns the table; taken once with [`Lent::take_socket`].
    socket: Option<OwnedFd>,
    /// The port id watch says the socket is bound to.
    pub portid: u32,
    /// When watch takes the table back whether or not this process is done.
    pub deadline: Instant,
    _stream: UnixStream,
}

impl Lent {
    /// The lent socket (once).
    pub fn take_socket(&mut self) -> Option<OwnedFd> {
        self.socket.take()
    }
}

/// What [`borrow`] got.
pub enum Borrowed {
    /// No watch listens (no socket file, or a stale one): change the table directly.
    NoServer,
    /// Watch runs but does not hold the table: change it directly.
    NotHeld,
    /// The table's owning socket, for one transaction.
    Lent(Lent),
}

/// Asks the watch listening at `path` to lend its table for one transaction of
/// `command` (a description for its log). Waits at most `timeout` for the answer:
/// watch serves one borrower at a time, and may be repairing.
///
/// Errors: the server is not root, refused (its reason), did not answer in time, or
/// answered something else; nothing was changed.
pub fn borrow(path: &Path, command: &str, timeout: Duration) -> Result<Borrowed> {
    let stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ECONNREFUSED)) => {
            return Ok(Borrowed::NoServer)
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {}", path.display())),
    };
    let uid = peer_uid(&stream)?;
    if uid != 0 {
        bail!(
            "{} is served by uid {uid}, not root; refusing to borrow the table from it",
            path.display()
        );
    }
    stream.set_write_timeout(Some(timeout))?;
    (&stream)
        .write_all(&encode(Request::Lease {
            command: command.to_string(),
        })?)
        .with_context(|| format!("asking loopgate watch at {}", path.display()))?;
    stream.set_read_timeout(Some(timeout))?;
    let mut line = Vec::new();
    let mut socket: Option<OwnedFd> = None;
    while !line.contains(&b'\n') {
        let mut buf = [0u8; 1024];
        let (n, fds) = match crate::kernel::os::recv_with_fds(&stream, &mut buf) {
            Ok(got) => got,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => bail!(
                "loopgate watch at {} did not lend table ip loopgate within {timeout:?}; nothing was changed",
                path.display()
            ),
            Err(e) => return Err(e).context("reading loopgate watch's answer"),
        };
        for owned in fds {
            if socket.is_none() {
                socket = Some(owned);
            }
        }
        if n == 0 {
            bail!(
                "loopgate watch at {} closed the connection without an answer; nothing was changed",
                path.display()
            );
        }
        line.extend_from_slice(&buf[..n]);
        if line.len() > MAX_REQUEST {
            bail!("loopgate watch's answer is too long");
        }
    }
    let answer: Envelope<Answer> = serde_json::from_slice(&line)
        .with_context(|| format!("reading the answer of loopgate watch at {}", path.display()))?;
    if answer.version != VERSION {
        bail!(
            "loopgate watch speaks protocol {}, this loopgate {VERSION}; restart watch after an upgrade",
            answer.version
        );
    }
    match answer.body {
        Answer::NotHeld => Ok(Borrowed::NotHeld),
        Answer::Refused { reason } => bail!("loopgate watch refused to lend its table: {reason}"),
        Answer::Lent { portid, limit_ms } => {
            let socket =
                socket.context("loopgate watch said it lent its table but sent no socket")?;
            Ok(Borrowed::Lent(Lent {
                socket: Some(socket),
                portid,
                deadline: Instant::now() + Duration::from_millis(limit_ms),
                _stream: stream,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Serves one borrower with `f`, waiting for it at most 10 s.
    fn serve_one<T>(server: &Server, f: impl FnOnce(Result<Option<Borrower>>) -> T) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "no client came");
            let mut fds = [nix::poll::PollFd::new(
                server.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            nix::poll::poll(&mut fds, 100u16).unwrap();
            if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                return f(server.accept());
            }
        }
    }

    #[test]
    fn a_lease_carries_the_socket_and_ends_when_the_borrower_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watch.sock");
        let server = Server::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        assert!(server.accept().unwrap().is_none(), "nothing waiting");

        // Any descriptor stands in for the netlink socket here: a pipe's read end,
        // which the client proves it received by reading what the server wrote.
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"owned").unwrap();
        let client = std::thread::spawn({
            let path = path.clone();
            move || {
                let Borrowed::Lent(mut lent) =
                    borrow(&path, "expose br0 --port 3306", Duration::from_secs(5)).unwrap()
                else {
                    panic!("not lent")
                };
                let fd = lent.take_socket().unwrap();
                let mut got = [0u8; 5];
                nix::unistd::read(&fd, &mut got).unwrap();
                std::thread::sleep(Duration::from_millis(50));
                (lent.portid, got)
            }
        });
        let end = serve_one(&server, |b| {
            let b = b.unwrap().expect("a borrower");
            assert_eq!(b.command, "expose br0 --port 3306");
            assert_eq!(b.peer.pid, std::process::id() as i32);
            b.lend(r.as_fd(), 4242, Duration::from_secs(5)).unwrap()
        });
        let (portid, got) = client.join().unwrap();
        assert_eq!((portid, &got), (4242, b"owned"));
        assert!(
            matches!(end, LeaseEnd::Returned(d) if d >= Duration::from_millis(50)),
            "{end:?}"
        );
        drop(server);
        assert!(!path.exists(), "the socket file goes with the server");
    }

    #[test]
    fn a_borrower_that_keeps_the_table_loses_it_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watch.sock");
        let server = Server::bind(&path).unwrap();
        let (tx, rx) = mpsc::channel::<()>();
        let client = std::thread::spawn({
            let path = path.clone();
            move || {
                let lent = borrow(&path, "apply", Duration::from_secs(5)).unwrap();
                rx.recv().unwrap();
                drop(lent);
            }
        });
        let (r, _w) = nix::unistd::pipe().unwrap();
        let start = Instant::now();
        let end = serve_one(&server, |b| {
            b.unwrap()
                .unwrap()
                .lend(r.as_fd(), 1, Duration::from_millis(300))
                .unwrap()
        });
        assert_eq!(end, LeaseEnd::Expired);
        assert!(start.elapsed() < Duration::from_secs(3));
        tx.send(()).unwrap();
        client.join().unwrap();
    }

    #[test]
    fn no_server_or_a_stale_socket_file_means_change_it_directly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watch.sock");
        let got = borrow(&path, "audit", Duration::from_secs(1)).unwrap();
        assert!(matches!(got, Borrowed::NoServer));
        // A server that died without removing its file.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let got = borrow(&path, "audit", Duration::from_secs(1)).unwrap();
        assert!(matches!(got, Borrowed::NoServer));
        // And a new server takes the stale file over, and says when it holds nothing.
        let server = Server::bind(&path).unwrap();
        let client = std::thread::spawn({
            let path = path.clone();
            move || borrow(&path, "revoke", Duration::from_secs(5)).unwrap()
        });
        serve_one(&server, |b| b.unwrap().unwrap().not_held().unwrap());
        assert!(matches!(client.join().unwrap(), Borrowed::NotHeld));
    }

    #[test]
    fn a_live_server_is_not_replaced_and_a_replaced_file_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watch.sock");
        let first = Server::bind(&path).unwrap();
        let err = Server::bind(&path).err().expect("a second server");
        assert!(format!("{err:#}").contains("already serves"), "{err:#}");
        std::fs::remove_file(&path).unwrap();
        let second = Server::bind(&path).unwrap();
        drop(first);
        assert!(path.exists());
        drop(second);
        assert!(!path.exists());
    }

    #[test]
    fn a_slow_server_is_a_timeout_not_a_reason_to_change_it_directly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watch.sock");
        let _server = Server::bind(&path).unwrap();
        let start = Instant::now();
        let err = borrow(&path, "audit", Duration::from_millis(300))
            .err()
            .expect("no answer in time");
        assert!(format!("{err:#}").contains("did not lend"), "{err:#}");
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
        for (bytes, says) in [
            (&b"not json\n"[..], "not a loopgate request"),
            (
                &b"{\"version\":1,\"args\":[\"revoke\",\"br0\"]}\n"[..],
                "protocol 2, this loopgate 1",
            ),
            (
                &b"{\"version\":2,\"request\":\"run\",\"args\":[]}\n"[..],
                "malformed request",
            ),
        ] {
            let client = send(bytes);
            let err = serve_one(&server, |b| b.err().expect("refused"));
            assert!(format!("{err:#}").contains(says), "{err:#}");
            let answer = client.join().unwrap();
            assert!(
                answer.contains("\"refused\"") && answer.contains(says),
                "{answer}"
            );
        }
        let client = std::thread::spawn({
            let path = path.clone();
            move || borrow(&path, "guard br1", Duration::from_secs(5)).unwrap()
        });
        serve_one(&server, |b| b.unwrap().unwrap().not_held().unwrap());
        assert!(matches!(client.join().unwrap(), Borrowed::NotHeld));
    }

    #[test]
    fn capabilities_are_read_from_capeff() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000001000\n";
        assert!(has_net_admin(status));
        assert!(!has_net_admin("CapEff:\t000001ffffffefff\n"));
        assert!(!has_net_admin("CapPrm:\t0000000000001000\n"));
    }

    #[test]
    fn a_root_peer_without_cap_net_admin_is_refused() {
        let euid = nix::unistd::geteuid().as_raw();
        assert_eq!(
            euid, 0,
            "the peer checks need root (scripts/test.sh runs the tests as root)"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watch.sock");
        let server = Server::bind(&path).unwrap();
        // Control: the same request with the capabilities gets the table.
        let client = std::thread::spawn({
            let path = path.clone();
            move || {
                matches!(
                    borrow(&path, "expose", Duration::from_secs(5)),
                    Ok(Borrowed::NotHeld)
                )
            }
        });
        serve_one(&server, |b| b.unwrap().unwrap().not_held().unwrap());
        assert!(client.join().unwrap());
        // A uid-0 process without CAP_NET_ADMIN (dropped from its bounding set, so
        // exec as root does not give it back): this test binary, run by setpriv.
        let client = std::thread::spawn({
            let path = path.clone();
            move || {
                std::process::Command::new("setpriv")
                    .args(["--bounding-set=-net_admin", "--inh-caps=-net_admin", "--"])
                    .arg(std::env::current_exe().unwrap())
                    .args(["--exact", "rpc::tests::borrow_from_env", "--nocapture"])
                    .env("LOOPGATE_RPC_TEST_SOCKET", &path)
                    .output()
                    .unwrap()
            }
        });
        let err = serve_one(&server, |b| b.err().expect("refused"));
        assert!(
            format!("{err:#}").contains("lacks CAP_NET_ADMIN"),
            "{err:#}"
        );
        let out = client.join().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("refused to lend its table"), "{text}");
    }

    /// Helper of [`a_root_peer_without_cap_net_admin_is_refused`], run as a child: a
    /// capability-less process asks to borrow. Does nothing when run on its own.
    #[test]
    fn borrow_from_env() {
        if let Some(path) = std::env::var_os("LOOPGATE_RPC_TEST_SOCKET") {
            match borrow(Path::new(&path), "expose", Duration::from_secs(5)) {
                Ok(_) => println!("lent"),
                Err(e) => println!("{e:#}"),
            }
        }
    }
}
