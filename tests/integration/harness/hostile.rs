//! A hostile HTTPS peer on loopback (a stand-in: no real broker misbehaves on purpose). It
//! speaks just enough HTTP/1.1 over TLS, with a certificate from a CA the test makes with
//! `openssl`, to answer each request as the test's handler says: echo request headers and
//! bodies back in error text, stream a body of a gigabyte (never allocated: one 64 KiB chunk
//! written over and over until the client hangs up), send the wrong content type, decline with
//! 429/503 and `Retry-After`, or hang up without answering (a lost reply).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;

/// One request as the server read it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// When the server had read it.
    pub at: std::time::Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// What the server answers.
pub enum Reply {
    /// A whole body with this status and content type.
    Body { status: u16, content_type: &'static str, body: String },
    /// `size` bytes of `x`, with `Content-Length` when `declared`, else chunked.
    Huge { size: u64, declared: bool },
    /// A JSON error with this status (429, 503) and, if given, `Retry-After` in seconds.
    Declined { status: u16, retry_after: Option<u64> },
    /// The request is read and the connection closed without an answer: a lost reply.
    HangUp,
}

pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// One gigabyte: what a hostile peer sends.
pub const GIGABYTE: u64 = 1 << 30;

pub struct HostileServer {
    pub addr: SocketAddr,
    /// PEM CA certificate the server's certificate chains to.
    pub ca: PathBuf,
    /// Every request read, in order.
    pub requests: Arc<Mutex<Vec<Request>>>,
    /// Bytes of huge bodies actually written before the client hung up.
    pub huge_bytes_sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl HostileServer {
    /// Starts the server in `dir` (certificates are made there) answering with `handler`.
    pub fn start(dir: &Path, handler: Handler) -> HostileServer {
        std::fs::create_dir_all(dir).unwrap();
        let (ca, cert, key) = super::make_ca_and_leaf(
            dir,
            "hostile",
            "/CN=hostile peer test CA",
            "/CN=127.0.0.1",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(&cert).unwrap().map(Result::unwrap).collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
        let config = Arc::new(rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let huge_bytes_sent: Arc<AtomicU64> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (reqs, sent, stopping) = (requests.clone(), huge_bytes_sent.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        let (config, handler, reqs, sent) = (config.clone(), handler.clone(), reqs.clone(), sent.clone());
                        std::thread::spawn(move || serve(tcp, config, handler, reqs, sent));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        HostileServer { addr, ca, requests, huge_bytes_sent, stop }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(tcp: TcpStream, config: Arc<rustls::ServerConfig>, handler: Handler, reqs: Arc<Mutex<Vec<Request>>>, sent: Arc<AtomicU64>) {
    tcp.set_nonblocking(false).ok();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).ok();
    tcp.set_write_timeout(Some(Duration::from_secs(30))).ok();
    let Ok(conn) = rustls::ServerConnection::new(config) else { return };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // One request a connection, said so: a client never reuses a connection the server closes.
    let Some(req) = read_request(&mut tls) else { return };
    reqs.lock().unwrap().push(req.clone());
    match handler(&req) {
        Reply::Body { status, content_type, body } => {
            let head = format!("HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            if tls.write_all(head.as_bytes()).and_then(|()| tls.write_all(body.as_bytes())).is_ok() {
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        }
        Reply::Huge { size, declared } => send_huge(&mut tls, size, declared, &sent),
        Reply::Declined { status, retry_after } => {
            let body = r#"{"errors":["request declined: try again later"]}"#;
            let retry = retry_after.map(|s| format!("Retry-After: {s}\r\n")).unwrap_or_default();
            let head = format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{retry}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            if tls.write_all(head.as_bytes()).and_then(|()| tls.write_all(body.as_bytes())).is_ok() {
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        }
        Reply::HangUp => {
            let _ = tls.sock.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Writes `size` bytes of `x` from one reused chunk; stops at the first write error (the client
/// hung up, as it should once its limit is reached).
fn send_huge(w: &mut impl Write, size: u64, declared: bool, sent: &AtomicU64) {
    let head = if declared {
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n")
    } else {
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_string()
    };
    if w.write_all(head.as_bytes()).is_err() {
        return;
    }
    let chunk = vec![b'x'; 64 * 1024];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        let result = if declared {
            w.write_all(&chunk[..n])
        } else {
            w.write_all(format!("{n:x}\r\n").as_bytes()).and_then(|()| w.write_all(&chunk[..n])).and_then(|()| w.write_all(b"\r\n"))
        };
        if result.is_err() {
            return;
        }
        sent.fetch_add(n as u64, Ordering::SeqCst);
        left -= n as u64;
    }
    if !declared {
        let _ = w.write_all(b"0\r\n\r\n");
    }
}

fn read_request(r: &mut impl Read) -> Option<Request> {
    let mut reader = BufReader::new(r);
    let mut line = String::new();
    reader.read_line(&mut line).ok().filter(|n| *n > 0)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    for _ in 0..200 {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len.min(1 << 20)];
    reader.read_exact(&mut body).ok()?;
    Some(Request { method, path, headers, body: String::from_utf8_lossy(&body).into_owned(), at: std::time::Instant::now() })
}

