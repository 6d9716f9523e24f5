//! A TCP proxy on 127.0.0.1 that delays every byte by a fixed time in each direction: a WAN
//! round trip in front of a loopback sshd (this kernel has no `netem`). A delay line, not a
//! bandwidth limit: bytes read at `t` are written at `t + delay`, in order, however many are in
//! flight. Half-closes are passed on, so `scp` and `sftp` end their sessions as usual.
//!
//! A thread accepts; each connection gets a reader and a writer thread per direction. Dropping
//! the proxy stops accepting; connections still open end when either side closes.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct DelayProxy {
    /// Where clients connect.
    pub port: u16,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    acceptor: Option<JoinHandle<()>>,
}

impl DelayProxy {
    /// Forwards connections on a fresh loopback port to `127.0.0.1:target`, delaying each
    /// direction by `delay`.
    pub fn start(target: u16, delay: Duration) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy's port");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let acceptor = {
            let (stop, accepted) = (stop.clone(), accepted.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    match TcpStream::connect(("127.0.0.1", target)) {
                        Ok(server) => forward(client, server, delay),
                        Err(_) => drop(client),
                    }
                }
            })
        };
        DelayProxy { port, stop, accepted, acceptor: Some(acceptor) }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept, which then sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn forward(client: TcpStream, server: TcpStream, delay: Duration) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let pairs = [(client.try_clone(), server.try_clone()), (server.try_clone(), client.try_clone())];
    for (from, to) in pairs {
        if let (Ok(from), Ok(to)) = (from, to) {
            delay_line(from, to, delay);
        }
    }
}

/// One direction: a reader stamps each chunk with when it is due, a writer sends it then. An
/// empty chunk stands for end of stream and becomes a half-close.
fn delay_line(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from.read(&mut buf).unwrap_or(0);
            if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() || n == 0 {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for (due, chunk) in rx {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if chunk.is_empty() || to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

#[cfg(test)]
mod self_tests {
    use super::*;

    /// An echo server that answers each connection's bytes and closes after the client's
    /// half-close; bytes pass both ways unchanged, and end of stream reaches both ends.
    #[test]
    fn bytes_and_half_closes_pass_both_ways() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let echo_port = echo.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in echo.incoming().take(2) {
                let mut conn = conn.unwrap();
                std::thread::spawn(move || {
                    let mut all = Vec::new();
                    conn.read_to_end(&mut all).unwrap();
                    conn.write_all(&all).unwrap();
                });
            }
        });
        let proxy = DelayProxy::start(echo_port, Duration::from_millis(3));
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for _ in 0..2 {
            let mut c = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            c.write_all(&payload).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).expect("the echo and its end of stream come back through the proxy");
            assert!(back == payload, "{} bytes came back, {} sent", back.len(), payload.len());
        }
        assert_eq!(proxy.accepted(), 2);
    }
}
