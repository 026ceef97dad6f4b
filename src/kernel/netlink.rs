//! A netfilter netlink socket: send a whole batch in one `sendmsg`, read replies.
//!
//! `mnl` opens and binds the socket; sending and receiving are done here because
//! `mnl::Socket::send_all` sends each nftnl page as its own datagram, and the kernel
//! treats each datagram as its own batch. A batch larger than one page must arrive in
//! one message to stay atomic (shared/notes/nftnl.md).

use anyhow::{Context, Result};
use std::io;
use std::os::raw::c_void;

const NLMSG_HDRLEN: usize = std::mem::size_of::<libc::nlmsghdr>();
/// Receive buffer: dumps come back in datagrams of up to this size.
const RECV_BUF: usize = 1 << 20;

pub struct NlSocket {
    sock: mnl::Socket,
    buf: Vec<u64>,
}

/// One reply message from the kernel.
pub struct Reply<'a> {
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

impl NlSocket {
    /// Opens a `NETLINK_NETFILTER` socket in the caller's network namespace.
    pub fn netfilter() -> Result<Self> {
        Self::open(mnl::Bus::Netfilter)
    }

    /// Opens a netlink socket on `bus` in the caller's network namespace.
    pub fn open(bus: mnl::Bus) -> Result<Self> {
        let sock = mnl::Socket::new(bus).context("opening a netlink socket")?;
        Ok(NlSocket {
            sock,
            buf: vec![0u64; RECV_BUF / 8],
        })
    }

    fn fd(&self) -> i32 {
        // SAFETY: the mnl socket is open for the lifetime of `self`.
        unsafe { mnl::mnl_sys::mnl_socket_get_fd(self.sock.as_raw_socket()) }
    }

    /// Raises both socket buffers so a large batch fits in one datagram and all its ACKs
    /// fit in the receive queue. `*BUFFORCE` needs CAP_NET_ADMIN, which loopgate has.
    pub fn size_buffers(&self, bytes: usize) -> Result<()> {
        let size = bytes.clamp(1 << 20, i32::MAX as usize) as libc::c_int;
        for opt in [libc::SO_SNDBUFFORCE, libc::SO_RCVBUFFORCE] {
            // SAFETY: valid fd, pointer to a live c_int with its exact size.
            let rc = unsafe {
                libc::setsockopt(
                    self.fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast::<c_void>(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error())
                    .context("sizing the netlink socket buffers");
            }
        }
        Ok(())
    }

    pub fn portid(&self) -> u32 {
        self.sock.portid()
    }

    /// Sends all `pages` as ONE datagram (scatter-gather), so the kernel sees one batch.
    pub fn send_pages(&self, pages: &[&[u8]]) -> Result<()> {
        let mut iov: Vec<libc::iovec> = pages
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut c_void,
                iov_len: p.len(),
            })
            .collect();
        let total: usize = pages.iter().map(|p| p.len()).sum();
        // SAFETY: sockaddr_nl is plain data; zeroed means "to the kernel" (pid 0).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: msghdr is plain data; every pointer set below outlives the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut addr as *mut libc::sockaddr_nl).cast::<c_void>();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as u32;
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len();
        // SAFETY: `msg` points at `addr` and `iov`, which point at the caller's pages;
        // all live until sendmsg returns.
        let sent = unsafe { libc::sendmsg(self.fd(), &msg, 0) };
        if sent < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EMSGSIZE) {
                anyhow::bail!(
                    "the kernel refused a {total}-byte netlink batch as too large (EMSGSIZE); split the policy"
                );
            }
            return Err(err).context("sending the netlink batch");
        }
        if sent as usize != total {
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
        let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
        let fd = self.fd();
        let bytes: &mut [u8] = {
            let len = self.buf.len() * 8;
            // SAFETY: the Vec<u64> owns `len` initialised bytes; u8 has no alignment needs,
            // and the u64 storage keeps nlmsghdr reads aligned.
            unsafe { std::slice::from_raw_parts_mut(self.buf.as_mut_ptr().cast::<u8>(), len) }
        };
        // SAFETY: valid fd and a writable buffer of the given length.
        let n = unsafe { libc::recv(fd, bytes.as_mut_ptr().cast::<c_void>(), bytes.len(), flags) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if !wait && err.kind() == io::ErrorKind::WouldBlock {
                return Ok(false);
            }
            return Err(err).context("reading a netlink reply");
        }
        let mut rest = &bytes[..n as usize];
        while rest.len() >= NLMSG_HDRLEN {
            // SAFETY: at least NLMSG_HDRLEN bytes remain; read_unaligned copes with any offset.
            let header: libc::nlmsghdr = unsafe { std::ptr::read_unaligned(rest.as_ptr().cast()) };
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

    /// Runs a dump request to completion, collecting each data message's bytes.
    pub fn dump(&mut self, request: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.send(request)?;
        let mut out = Vec::new();
        let mut done = false;
        let mut error = None;
        while !done {
            self.recv_each(true, |r| {
                match r.header.nlmsg_type as i32 {
                    libc::NLMSG_DONE => done = true,
                    libc::NLMSG_ERROR => {
                        done = true;
                        let code = r.error_code().unwrap_or(libc::EIO);
                        if code != 0 {
                            error = Some(code);
                        }
                    }
                    _ => out.push(r.bytes.to_vec()),
                }
                Ok(())
            })?;
        }
        if let Some(code) = error {
            return Err(io::Error::from_raw_os_error(code).into());
        }
        Ok(out)
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
