//! lgload: the load generator of scripts/bench.sh.
//!
//! `lgload serve ADDR` answers three kinds of client, told apart by the first byte:
//! `r` ping-pong (1 byte each way, one connection), `c` one request then close, and
//! `b` bulk (the server reads and discards). `lgload rr|crr|bulk ADDR SECONDS` runs one
//! kind for a bounded time and prints one JSON line: rate, p50 and p99 latency in µs.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn serve(addr: &str) {
    let listener = TcpListener::bind(addr).expect("bind");
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let _ = s.set_nodelay(true);
        std::thread::spawn(move || {
            let mut kind = [0u8; 1];
            if s.read_exact(&mut kind).is_err() {
                return;
            }
            match kind[0] {
                b'r' => {
                    let mut b = [0u8; 1];
                    while s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {}
                }
                b'c' => {
                    // Answer, then wait for the client to close first (it resets the
                    // connection, so neither side piles up TIME_WAIT sockets).
                    let _ = s.write_all(b"k");
                    let mut b = [0u8; 1];
                    let _ = s.read(&mut b);
                }
                _ => {
                    let mut buf = vec![0u8; 1 << 18];
                    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                }
            }
        });
    }
}

#[repr(C)]
struct Linger {
    l_onoff: i32,
    l_linger: i32,
}

fn linger_zero() -> Linger {
    Linger {
        l_onoff: 1,
        l_linger: 0,
    }
}

const SOL_SOCKET: i32 = 1;
const SO_LINGER: i32 = 13;

extern "C" {
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const std::ffi::c_void, len: u32) -> i32;
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(mode: &str, count: usize, elapsed: Duration, mut lat: Vec<u32>, extra: &str) {
    lat.sort_unstable();
    println!(
        "{{\"mode\":\"{mode}\",\"ops\":{count},\"rate\":{:.1},\"p50_us\":{},\"p99_us\":{}{extra}}}",
        count as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.99)
    );
}

fn rr(addr: &str, secs: f64) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s.write_all(b"r").unwrap();
    let (start, limit) = (Instant::now(), Duration::from_secs_f64(secs));
    let mut lat = Vec::with_capacity(1 << 20);
    let mut b = [7u8; 1];
    while start.elapsed() < limit {
        let t = Instant::now();
        s.write_all(&b).unwrap();
        s.read_exact(&mut b).unwrap();
        lat.push(t.elapsed().as_micros() as u32);
    }
    report("rr", lat.len(), start.elapsed(), lat, "");
}

fn crr(addr: &str, secs: f64) {
    let (start, limit) = (Instant::now(), Duration::from_secs_f64(secs));
    let mut lat = Vec::with_capacity(1 << 18);
    let mut errors = 0usize;
    while start.elapsed() < limit {
        let t = Instant::now();
        let ok = (|| -> std::io::Result<()> {
            let mut s = TcpStream::connect(addr)?;
            s.set_nodelay(true)?;
            s.write_all(b"c")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)?;
            // Close with RST (SO_LINGER 0): no TIME_WAIT, so a long run does not run out
            // of ephemeral ports.
            let linger = linger_zero();
            // SAFETY: valid fd and a pointer to a live linger struct of the right size.
            unsafe {
                setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    SOL_SOCKET,
                    SO_LINGER,
                    (&linger as *const Linger).cast(),
                    std::mem::size_of::<Linger>() as u32,
                )
            };
            Ok(())
        })();
        match ok {
            Ok(()) => lat.push(t.elapsed().as_micros() as u32),
            Err(_) => errors += 1,
        }
    }
    report(
        "crr",
        lat.len(),
        start.elapsed(),
        lat,
        &format!(",\"errors\":{errors}"),
    );
}

fn bulk(addr: &str, secs: f64) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"b").unwrap();
    let buf = vec![0x5au8; 1 << 18];
    let (start, limit) = (Instant::now(), Duration::from_secs_f64(secs));
    let mut bytes = 0u64;
    while start.elapsed() < limit {
        s.write_all(&buf).unwrap();
        bytes += buf.len() as u64;
    }
    let e = start.elapsed();
    println!(
        "{{\"mode\":\"bulk\",\"bytes\":{bytes},\"gbit_s\":{:.2}}}",
        bytes as f64 * 8.0 / e.as_secs_f64() / 1e9
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs = || args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1.0);
    match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("serve"), Some(a)) => serve(a),
        (Some("rr"), Some(a)) => rr(a, secs()),
        (Some("crr"), Some(a)) => crr(a, secs()),
        (Some("bulk"), Some(a)) => bulk(a, secs()),
        _ => {
            eprintln!("usage: lgload serve ADDR | lgload rr|crr|bulk ADDR SECONDS");
            std::process::exit(2);
        }
    }
}
