//! A netlink socket and attribute codec, shared by the kernel modules that speak
//! netlink: nf_tables (`nft`), conntrack and the socket table (`host`, sock_diag) use
//! the socket, and `monitor` the attribute codec; so it sits beside them, not under
//! `nft`. It sends a whole nf_tables batch in one `sendmsg` and reads replies.
//!
//! `mnl` opens and binds the socket; sending and receiving are done here because
//! `mnl::Socket::send_all` sends each nftnl page as its own datagram, and the kernel
//! treats each datagram as its own batch. A batch larger than one page must arrive in
//! one message to stay atomic.
//!
//! Replies are checked with `mnl::cb_run2` (libmnl's `mnl_cb_run`): each must carry the
//! request's sequence number and this socket's port id, and a dump the kernel flags
//! `NLM_F_DUMP_INTR` (the objects changed while it ran) is started again.

use anyhow::{Context, Result};
use std::io;

const NLMSG_HDRLEN: usize = std::mem::size_of::<libc::nlmsghdr>();
/// Receive buffer: dumps come back in datagrams of up to this size.
const RECV_BUF: usize = 1 << 20;
/// Receive buffer of a socket for small answers ([`NlSocket::open_small`]): the kernel
/// sends no dump datagram over 32 KiB unless a request type asks for a larger minimum
/// (only link dumps with many virtual functions do), and an error acknowledgement
/// echoes a request loopgate keeps under 16 KiB of payload.
const SMALL_RECV_BUF: usize = 64 << 10;

/// A netlink socket of one bus (netfilter, sock_diag, ...), with a 1 MiB receive
/// buffer and the sequence numbers that tie each reply to its request.
pub struct NlSocket {
    sock: Handle,
    bus: mnl::Bus,
    buf: Vec<u64>,
    /// The sequence number of the last request sent; never 0 (the kernel's "unset").
    seq: u32,
    /// The buffer size last asked for, so a reopened socket gets it too.
    sized: Option<usize>,
}

/// The socket itself: opened here through libmnl, or lent by another loopgate process.
enum Handle {
    Mnl(mnl::Socket),
    /// A socket received from `loopgate watch` (SCM_RIGHTS), which owns loopgate's
    /// table; `portid` is the port id it is bound to, read with getsockname(2).
    Lent {
        fd: std::os::fd::OwnedFd,
        portid: u32,
    },
}

/// The kernel set this flag on a dump message when the dumped objects changed while
/// the dump ran (`nl_dump_check_consistent`): the dump as a whole is not one state.
pub const NLM_F_DUMP_INTR: u16 = 0x10;
/// How often a dump is started again after the kernel flagged it interrupted.
const DUMP_TRIES: usize = 5;

/// Why a reply buffer did not pass `mnl::cb_run2`, told apart from its errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// A message answers another request or another socket (sequence or port id).
    NotOurs { seq: u32, portid: u32 },
    /// The kernel flagged the dump interrupted: the objects changed while it ran.
    Interrupted,
    /// The kernel refused the request with this errno.
    Kernel(i32),
}

/// The first message in `buf` that libmnl's checks refuse, in the order `mnl_cb_run`
/// applies them (port id and sequence, then `NLM_F_DUMP_INTR`, then an error reply).
/// `cb_run2` reports only an errno, and the kernel's own errors use the same numbers,
/// so the buffer is looked at again to say which it was.
fn refusal(buf: &[u8], seq: u32, portid: u32) -> Option<Refusal> {
    for (header, bytes) in messages(buf) {
        let theirs = |ours: u32, got: u32| ours != 0 && got != 0 && ours != got;
        if theirs(seq, header.nlmsg_seq) || theirs(portid, header.nlmsg_pid) {
            return Some(Refusal::NotOurs {
                seq: header.nlmsg_seq,
                portid: header.nlmsg_pid,
            });
        }
        if header.nlmsg_flags & NLM_F_DUMP_INTR != 0 {
            return Some(Refusal::Interrupted);
        }
        let reply = Reply { header, bytes };
        match reply.error_code() {
            Some(0) => return None,
            Some(code) => return Some(Refusal::Kernel(code)),
            None if header.nlmsg_type == libc::NLMSG_DONE as u16 => return None,
            None => {}
        }
    }
    None
}

/// The errno a dump's `NLMSG_DONE` carries when the kernel failed part-way (libmnl
/// treats every DONE as success).
fn done_error(buf: &[u8]) -> Option<i32> {
    messages(buf)
        .find(|(h, _)| h.nlmsg_type == libc::NLMSG_DONE as u16)
        .and_then(|(_, bytes)| bytes.get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4))
        .map(|raw| i32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]))
        .filter(|code| *code < 0)
        .map(|code| -code)
}

/// The netlink header at the start of `b`, which holds at least [`NLMSG_HDRLEN`] bytes
/// (in the byte order of this host, as the kernel writes it; any alignment).
fn header_of(b: &[u8]) -> libc::nlmsghdr {
    let u32_at = |at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let u16_at = |at: usize| u16::from_ne_bytes([b[at], b[at + 1]]);
    libc::nlmsghdr {
        nlmsg_len: u32_at(0),
        nlmsg_type: u16_at(4),
        nlmsg_flags: u16_at(6),
        nlmsg_seq: u32_at(8),
        nlmsg_pid: u32_at(12),
    }
}

/// The bytes of `words` (u64 storage keeps a buffer of netlink messages aligned as
/// libmnl requires).
pub(crate) fn as_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: the slice owns `size_of_val(words)` initialised bytes, u8 has no
    // alignment needs and every bit pattern is a valid u8; the shared borrow of
    // `words` bounds the returned one.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), std::mem::size_of_val(words)) }
}

/// The bytes of `words`, writable (any bytes written are a valid u64 again).
pub(crate) fn as_bytes_mut(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: as in `as_bytes`; the exclusive borrow of `words` is handed on, so no
    // other view of the storage exists while the returned one does, and every bit
    // pattern written through it is a valid u64.
    unsafe {
        std::slice::from_raw_parts_mut(
            words.as_mut_ptr().cast::<u8>(),
            std::mem::size_of_val(words),
        )
    }
}

/// The messages in one datagram, as (header, whole message). Stops at a malformed one.
fn messages(mut rest: &[u8]) -> impl Iterator<Item = (libc::nlmsghdr, &[u8])> {
    std::iter::from_fn(move || {
        if rest.len() < NLMSG_HDRLEN {
            return None;
        }
        let header = header_of(rest);
        let len = header.nlmsg_len as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return None;
        }
        let bytes = &rest[..len];
        rest = rest.get(len.div_ceil(4) * 4..).unwrap_or_default();
        Some((header, bytes))
    })
}

/// What `mnl::cb_run2` hands back per data message: where it lies in the buffer.
struct Collected {
    base: usize,
    spans: Vec<(usize, usize)>,
}

/// The `cb_run2` callback: notes each data message's place in the buffer (its bytes
/// are copied out after the run, from the buffer itself).
fn collect(header: &libc::nlmsghdr, into: &mut Collected) -> libc::c_int {
    let offset = (header as *const libc::nlmsghdr as usize).wrapping_sub(into.base);
    into.spans.push((offset, header.nlmsg_len as usize));
    mnl::mnl_sys::MNL_CB_OK
}

/// One reply message from the kernel.
pub struct Reply<'a> {
    /// The message's header, copied out (type, flags, sequence number, port id).
    pub header: libc::nlmsghdr,
    /// The bytes of the whole message, header included.
    pub bytes: &'a [u8],
}

impl Reply<'_> {
    /// For an `NLMSG_ERROR` message: the errno (0 is an ACK).
    pub fn error_code(&self) -> Option<i32> {
        if self.header.nlmsg_type != libc::NLMSG_ERROR as u16 {
            return None;
        }
        let raw = self.bytes.get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4)?;
        Some(-i32::from_ne_bytes(raw.try_into().ok()?))
    }

    /// For an `NLMSG_ERROR` message: the sequence number of the message it answers.
    pub fn error_seq(&self) -> Option<u32> {
        // struct nlmsgerr { int error; struct nlmsghdr msg; }: seq is at offset 8 of msg.
        let off = NLMSG_HDRLEN + 4 + 8;
        let raw = self.bytes.get(off..off + 4)?;
        Some(u32::from_ne_bytes(raw.try_into().ok()?))
    }

    /// The payload after the netlink header.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[NLMSG_HDRLEN.min(self.bytes.len())..]
    }
}

/// Where a request stands after one datagram of replies.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// More datagrams follow (a dump in progress).
    More,
    /// The request is answered (DONE or ACK).
    Done,
    /// The kernel flagged the dump interrupted: start it again.
    Interrupted,
}

/// Runs `mnl::cb_run2` over one datagram of replies to request `seq` on port `portid`,
/// appending each data message to `out`; a kernel error, a DONE carrying an errno or a
/// reply that is not ours is an error. `buf` must be aligned for `nlmsghdr`.
fn check_datagram(buf: &[u8], seq: u32, portid: u32, out: &mut Vec<Vec<u8>>) -> Result<Step> {
    let mut got = Collected {
        base: buf.as_ptr() as usize,
        spans: Vec::new(),
    };
    let run = mnl::cb_run2(buf, seq, portid, collect, &mut got);
    // What cb_run2 passed before it stopped was checked; what follows a refusal is not
    // taken.
    out.extend(got.spans.iter().map(|&(at, n)| buf[at..at + n].to_vec()));
    match run {
        Ok(mnl::CbResult::Ok) => Ok(Step::More),
        Ok(mnl::CbResult::Stop) => match done_error(buf) {
            Some(code) => Err(io::Error::from_raw_os_error(code).into()),
            None => Ok(Step::Done),
        },
        Err(e) => match refusal(buf, seq, portid) {
            Some(Refusal::Interrupted) => Ok(Step::Interrupted),
            Some(Refusal::Kernel(code)) => Err(io::Error::from_raw_os_error(code).into()),
            Some(Refusal::NotOurs { seq: s, portid: p }) => Err(anyhow::anyhow!(
                "a netlink reply did not answer loopgate's request (sequence {s}, port id {p}; expected {seq}, {portid})"
            )),
            None => Err(anyhow::Error::new(e).context("checking a netlink reply")),
        },
    }
}

impl NlSocket {
    /// Opens a `NETLINK_NETFILTER` socket in the caller's network namespace.
    pub fn netfilter() -> Result<Self> {
        Self::open(mnl::Bus::Netfilter)
    }

    /// Opens a netlink socket on `bus` in the caller's network namespace.
    pub fn open(bus: mnl::Bus) -> Result<Self> {
        Self::open_sized(bus, RECV_BUF)
    }

    /// [`NlSocket::open`] with a 64 KiB receive buffer, for requests whose answers are
    /// small: a generation, an address dump. What `watch` opens on every wake-up; the
    /// 1 MiB buffer, zeroed on each allocation, was a tenth of what an idle watch cost.
    pub fn open_small(bus: mnl::Bus) -> Result<Self> {
        Self::open_sized(bus, SMALL_RECV_BUF)
    }

    fn open_sized(bus: mnl::Bus, bytes: usize) -> Result<Self> {
        let sock = mnl::Socket::new(bus).context("opening a netlink socket")?;
        let s = NlSocket {
            sock: Handle::Mnl(sock),
            bus,
            buf: vec![0u64; bytes / 8],
            seq: 0,
            sized: None,
        };
        s.close_on_exec()?;
        Ok(s)
    }

    /// Marks the socket close-on-exec (libmnl opens it without `SOCK_CLOEXEC`). A
    /// socket that owns a table must close when loopgate exits: inherited by a child
    /// it would keep the table owned, and locked against loopgate, after loopgate exits.
    fn close_on_exec(&self) -> Result<()> {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        fcntl(self.as_fd(), FcntlArg::F_GETFD)
            .and_then(|flags| {
                let flags = FdFlag::from_bits_retain(flags) | FdFlag::FD_CLOEXEC;
                fcntl(self.as_fd(), FcntlArg::F_SETFD(flags))
            })
            .map_err(io::Error::from)
            .context("marking a netlink socket close-on-exec")?;
        Ok(())
    }

    /// A sequence number no earlier request on this socket carried, never 0: a reply
    /// can then be matched to exactly one request.
    pub fn next_seq(&mut self) -> u32 {
        self.seq = match self.seq.wrapping_add(1) {
            0 => 1,
            s => s,
        };
        self.seq
    }

    /// Marks every sequence number up to `last` as used (a batch numbers its own
    /// messages, starting at [`NlSocket::next_seq`]).
    pub fn used_seq_through(&mut self, last: u32) {
        self.seq = last;
    }

    /// Replaces the socket with a fresh one (a new port id): whatever the old one still
    /// had queued, such as the rest of an abandoned dump, is gone with it.
    fn reopen(&mut self) -> Result<()> {
        self.sock = Handle::Mnl(mnl::Socket::new(self.bus).context("opening a netlink socket")?);
        self.close_on_exec()?;
        if let Some(bytes) = self.sized {
            self.size_buffers(bytes)?;
        }
        Ok(())
    }

    /// Drops replies still queued from earlier requests (late ACKs of a batch), so the
    /// next request reads only its own.
    fn discard_queued(&mut self) -> Result<()> {
        while self.recv_each(false, |_| Ok(()))? {}
        Ok(())
    }

    fn fd(&self) -> i32 {
        match &self.sock {
            Handle::Mnl(s) => std::os::fd::AsRawFd::as_raw_fd(s),
            Handle::Lent { fd, .. } => std::os::fd::AsRawFd::as_raw_fd(fd),
        }
    }

    /// The socket's descriptor, to lend it to another process (SCM_RIGHTS).
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: `fd()` is open for as long as `self` lives, which bounds the borrow.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd()) }
    }

    /// Takes a netfilter netlink socket another process lent this one (`watch` lends
    /// the socket that owns loopgate's table). Errors: `fd` is not a bound
    /// `NETLINK_NETFILTER` socket.
    pub fn from_lent(fd: std::os::fd::OwnedFd) -> Result<Self> {
        use std::os::fd::AsRawFd;
        let addr =
            nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(fd.as_raw_fd())
                .map_err(io::Error::from)
                .context("reading the lent socket's address")?;
        let mut proto: libc::c_int = 0;
        let mut plen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid fd, pointer and length of a live c_int.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PROTOCOL,
                (&mut proto as *mut libc::c_int).cast(),
                &mut plen,
            )
        };
        let portid = addr.as_netlink_addr().map_or(0, |a| a.pid());
        if rc < 0 || proto != libc::NETLINK_NETFILTER || portid == 0 {
            anyhow::bail!("the lent descriptor is not a bound netfilter netlink socket");
        }
        let s = NlSocket {
            sock: Handle::Lent { fd, portid },
            bus: mnl::Bus::Netfilter,
            buf: vec![0u64; RECV_BUF / 8],
            seq: 0,
            sized: None,
        };
        s.close_on_exec()?;
        Ok(s)
    }

    /// Drops every reply still queued on the socket: what a borrower of a lent socket
    /// left unread must not be taken for the answer to the owner's next request.
    pub fn settle(&mut self) -> Result<()> {
        self.discard_queued()
    }

    /// Raises both socket buffers so a large batch fits in one datagram and all its ACKs
    /// fit in the receive queue. `*BUFFORCE` needs CAP_NET_ADMIN, which loopgate has.
    pub fn size_buffers(&mut self, bytes: usize) -> Result<()> {
        self.sized = Some(bytes);
        use nix::sys::socket::{setsockopt, sockopt};
        let size = bytes.clamp(1 << 20, i32::MAX as usize);
        setsockopt(&self.as_fd(), sockopt::SndBufForce, &size)
            .and_then(|()| setsockopt(&self.as_fd(), sockopt::RcvBufForce, &size))
            .map_err(io::Error::from)
            .context("sizing the netlink socket buffers")?;
        Ok(())
    }

    /// The port id the kernel assigned this socket at bind; replies carry it.
    pub fn portid(&self) -> u32 {
        match &self.sock {
            Handle::Mnl(s) => s.portid(),
            Handle::Lent { portid, .. } => *portid,
        }
    }

    /// Sends all `pages` as ONE datagram (scatter-gather), so the kernel sees one batch.
    pub fn send_pages(&self, pages: &[&[u8]]) -> Result<()> {
        use nix::sys::socket::{sendmsg, MsgFlags, NetlinkAddr};
        let iov: Vec<io::IoSlice> = pages.iter().map(|p| io::IoSlice::new(p)).collect();
        let total: usize = pages.iter().map(|p| p.len()).sum();
        // Port id 0: to the kernel.
        let to = NetlinkAddr::new(0, 0);
        let sent = match sendmsg(self.fd(), &iov, &[], MsgFlags::empty(), Some(&to)) {
            Ok(n) => n,
            Err(errno) => {
                let err = io::Error::from(errno);
                if err.raw_os_error() == Some(libc::EMSGSIZE) {
                    anyhow::bail!(
                        "the kernel refused a {total}-byte netlink batch as too large (EMSGSIZE); split the policy"
                    );
                }
                return Err(err).context("sending the netlink batch");
            }
        };
        if sent != total {
            anyhow::bail!("the kernel took {sent} of {total} batch bytes");
        }
        Ok(())
    }

    /// Sends one request message.
    pub fn send(&self, msg: &[u8]) -> Result<()> {
        self.send_pages(&[msg])
    }

    /// Reads one datagram and calls `each` for every message in it. With `wait` false,
    /// returns `Ok(false)` when nothing is queued.
    pub fn recv_each(
        &mut self,
        wait: bool,
        mut each: impl FnMut(&Reply) -> Result<()>,
    ) -> Result<bool> {
        use nix::sys::socket::{recv, MsgFlags};
        let flags = match wait {
            true => MsgFlags::empty(),
            false => MsgFlags::MSG_DONTWAIT,
        };
        let fd = self.fd();
        let bytes = as_bytes_mut(&mut self.buf);
        let n = match recv(fd, bytes, flags) {
            Ok(n) => n,
            Err(errno) => {
                let err = io::Error::from(errno);
                if !wait && err.kind() == io::ErrorKind::WouldBlock {
                    return Ok(false);
                }
                return Err(err).context("reading a netlink reply");
            }
        };
        let mut rest = &bytes[..n];
        while rest.len() >= NLMSG_HDRLEN {
            let header = header_of(rest);
            let len = header.nlmsg_len as usize;
            if len < NLMSG_HDRLEN || len > rest.len() {
                anyhow::bail!("malformed netlink reply (length {len})");
            }
            each(&Reply {
                header,
                bytes: &rest[..len],
            })?;
            let aligned = (len + 3) & !3;
            rest = &rest[aligned.min(rest.len())..];
        }
        Ok(true)
    }

    /// Runs a request to completion (a dump, or a get or change answered with an ACK),
    /// collecting each data message's bytes. The request gets a fresh sequence number;
    /// `mnl::cb_run2` checks every reply against it and this socket's port id, and stops
    /// at a dump the kernel flagged interrupted (`NLM_F_DUMP_INTR`), which is then run
    /// again from the start on a fresh socket, a bounded number of times.
    pub fn dump(&mut self, request: &[u8]) -> Result<Vec<Vec<u8>>> {
        let mut request = request.to_vec();
        if request.len() < NLMSG_HDRLEN {
            anyhow::bail!("a netlink request shorter than its header");
        }
        for _ in 0..DUMP_TRIES {
            match self.dump_once(&mut request)? {
                Some(rows) => return Ok(rows),
                // The rest of the abandoned dump would arrive ahead of the next one's.
                None => self.reopen()?,
            }
        }
        anyhow::bail!(
            "a netlink dump was interrupted by concurrent changes {DUMP_TRIES} times in a row; try again"
        )
    }

    /// One run of `request`; `None` when the kernel flagged the dump interrupted.
    fn dump_once(&mut self, request: &mut [u8]) -> Result<Option<Vec<Vec<u8>>>> {
        self.discard_queued()?;
        let seq = self.next_seq();
        request[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.send(request)?;
        let portid = self.portid();
        let mut out = Vec::new();
        loop {
            let len = self.recv_raw()?;
            assert!(
                len <= self.buf.len() * 8,
                "recv returned more than the buffer"
            );
            // The u64 storage gives the alignment mnl requires of a buffer of nlmsghdr.
            let buf = &as_bytes(&self.buf)[..len];
            match check_datagram(buf, seq, portid, &mut out)? {
                Step::More => continue,
                Step::Done => return Ok(Some(out)),
                Step::Interrupted => return Ok(None),
            }
        }
    }

    /// Reads one datagram into the buffer, waiting for it; returns its length.
    fn recv_raw(&mut self) -> Result<usize> {
        let fd = self.fd();
        nix::sys::socket::recv(
            fd,
            as_bytes_mut(&mut self.buf),
            nix::sys::socket::MsgFlags::empty(),
        )
        .map_err(io::Error::from)
        .context("reading a netlink reply")
    }
}

const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

/// Appends one netlink attribute (header, payload, padding to 4 bytes).
pub fn put_attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len() + (4 - len % 4) % 4, 0);
}

/// Appends a nested attribute whose payload `fill` writes.
pub fn nest_attr(buf: &mut Vec<u8>, ty: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    put_attr(buf, ty | NLA_F_NESTED, &[]);
    fill(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

/// The attributes in `buf`, as (type without flags, payload). Stops at a truncated one.
pub fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = buf.get(len.div_ceil(4) * 4..).unwrap_or_default();
        Some((ty, payload))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEQ: u32 = 7;
    const PORT: u32 = 4242;
    const NEWTABLE: u16 = 0xa00; // (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE

    fn msg(ty: u16, flags: u16, seq: u32, pid: u32, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&pid.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(len.div_ceil(4) * 4, 0);
        m
    }

    fn data(flags: u16, seq: u32, pid: u32) -> Vec<u8> {
        msg(
            NEWTABLE,
            libc::NLM_F_MULTI as u16 | flags,
            seq,
            pid,
            &[1, 2, 3, 4],
        )
    }

    fn done(errno: i32) -> Vec<u8> {
        msg(
            libc::NLMSG_DONE as u16,
            0,
            SEQ,
            PORT,
            &(-errno).to_ne_bytes(),
        )
    }

    fn error(errno: i32) -> Vec<u8> {
        // struct nlmsgerr: the error, then the header of the request it answers.
        let mut payload = (-errno).to_ne_bytes().to_vec();
        payload.extend_from_slice(&msg(NEWTABLE, 0, SEQ, PORT, &[])[..NLMSG_HDRLEN]);
        msg(libc::NLMSG_ERROR as u16, 0, SEQ, PORT, &payload)
    }

    /// Runs the check over `parts` laid out as one datagram, in u64-aligned storage.
    fn check(parts: &[Vec<u8>]) -> (Result<Step>, usize) {
        let bytes = parts.concat();
        let mut storage = vec![0u64; bytes.len().div_ceil(8)];
        as_bytes_mut(&mut storage)[..bytes.len()].copy_from_slice(&bytes);
        let buf = &as_bytes(&storage)[..bytes.len()];
        let mut out = Vec::new();
        let step = check_datagram(buf, SEQ, PORT, &mut out);
        (step, out.len())
    }

    fn errno(r: &Result<Step>) -> Option<i32> {
        r.as_ref()
            .err()?
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
    }

    #[test]
    fn a_dump_collects_its_messages_until_done() {
        let (step, rows) = check(&[data(0, SEQ, PORT), data(0, SEQ, PORT)]);
        assert_eq!((step.unwrap(), rows), (Step::More, 2));
        let (step, rows) = check(&[data(0, SEQ, PORT), done(0)]);
        assert_eq!((step.unwrap(), rows), (Step::Done, 1));
        let (step, rows) = check(&[data(0, SEQ, PORT), error(0)]);
        assert_eq!((step.unwrap(), rows), (Step::Done, 1), "an ACK ends a get");
    }

    #[test]
    fn an_interrupted_dump_is_reported_as_such_not_as_data() {
        let intr = NLM_F_DUMP_INTR;
        let (step, rows) = check(&[data(0, SEQ, PORT), data(intr, SEQ, PORT), done(0)]);
        assert_eq!((step.unwrap(), rows), (Step::Interrupted, 1));
        // Also when only the DONE carries the flag.
        let mut last = done(0);
        last[6..8].copy_from_slice(&intr.to_ne_bytes());
        assert_eq!(
            check(&[data(0, SEQ, PORT), last]).0.unwrap(),
            Step::Interrupted
        );
    }

    #[test]
    fn a_reply_to_another_request_or_socket_is_refused() {
        for stale in [data(0, SEQ - 1, PORT), data(0, SEQ, PORT + 1)] {
            let (step, rows) = check(&[stale, done(0)]);
            let text = format!("{:#}", step.unwrap_err());
            assert!(text.contains("did not answer loopgate's request"), "{text}");
            assert_eq!(rows, 0);
        }
    }

    #[test]
    fn kernel_errors_keep_their_errno() {
        assert_eq!(errno(&check(&[error(libc::ENOENT)]).0), Some(libc::ENOENT));
        // EINTR from the kernel is an error, not a dump to start again.
        assert_eq!(errno(&check(&[error(libc::EINTR)]).0), Some(libc::EINTR));
        // A dump that failed part-way says so in its DONE.
        let (step, _) = check(&[data(0, SEQ, PORT), done(libc::ENOBUFS)]);
        assert_eq!(errno(&step), Some(libc::ENOBUFS));
    }

    #[test]
    fn sequence_numbers_are_never_zero_or_repeated_across_wrap_around() {
        let mut sock = NlSocket::open(mnl::Bus::Netfilter).unwrap();
        sock.seq = u32::MAX - 1;
        assert_eq!(sock.next_seq(), u32::MAX);
        assert_eq!(sock.next_seq(), 1);
        assert_eq!(sock.next_seq(), 2);
    }
}
