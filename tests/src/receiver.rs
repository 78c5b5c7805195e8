//! A webhook receiver for the delivery tests: HTTPS (rustls, a certificate from an in-process CA)
//! on 127.0.0.1, verifying each request's signature and timestamp as a real receiver would, and
//! misbehaving on purpose: failing the first requests with 503, answering one too late (after the
//! sender's timeout), answering slowly, or refusing everything with 400.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// How the receiver misbehaves.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// The first this many requests get 503.
    pub fail_first: usize,
    /// The request with this number (from 1, after the failures) is answered only after
    /// `late_by`: the sender has timed out by then (the receiver still processed it).
    pub late_request: Option<usize>,
    pub late_by: Duration,
    /// Every request waits this long before its answer.
    pub delay: Duration,
    /// Every request gets 400.
    pub refuse_all: bool,
}

/// What the receiver saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Requests by answer status.
    pub statuses: BTreeMap<u16, usize>,
    /// Requests whose signature or timestamp failed verification.
    pub bad_signatures: usize,
    /// Idempotency key → times received with a valid signature.
    pub keys: BTreeMap<String, usize>,
    /// Bodies of the first request of each key, in arrival order.
    pub bodies: Vec<serde_json::Value>,
}

/// A running receiver.
pub struct Receiver {
    pub url: String,
    pub seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A CA and a server certificate for 127.0.0.1, written to `dir` (`ca.pem`).
pub fn make_tls(dir: &Path) -> (Arc<rustls::ServerConfig>, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.distinguished_name
        .push(DnType::CommonName, "webhook test CA");
    let ca = p.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut lp = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    lp.distinguished_name.push(DnType::CommonName, "receiver");
    let leaf = lp.signed_by(&key, &ca, &ca_key).unwrap();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let cert = rustls_pki_types::CertificateDer::from(leaf.der().to_vec());
    let key = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    (Arc::new(config), ca_path)
}

/// Starts a receiver checking signatures with `secret`.
pub fn start(tls: Arc<rustls::ServerConfig>, secret: &str, behaviour: Behaviour) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://127.0.0.1:{}/hook",
        listener.local_addr().unwrap().port()
    );
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let (s, st, secret) = (seen.clone(), stop.clone(), secret.to_string());
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || loop {
        if st.load(Ordering::SeqCst) {
            return;
        }
        match listener.accept() {
            Ok((sock, _)) => {
                sock.set_nonblocking(false).unwrap();
                let (tls, seen, secret, b, count) = (
                    tls.clone(),
                    s.clone(),
                    secret.clone(),
                    behaviour.clone(),
                    count.clone(),
                );
                std::thread::spawn(move || serve(sock, tls, &seen, &secret, &b, &count));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    });
    Receiver { url, seen, stop }
}

fn serve(
    sock: std::net::TcpStream,
    tls: Arc<rustls::ServerConfig>,
    seen: &Mutex<Seen>,
    secret: &str,
    b: &Behaviour,
    count: &AtomicUsize,
) {
    sock.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let Ok(conn) = rustls::ServerConnection::new(tls) else {
        return;
    };
    let mut stream = rustls::StreamOwned::new(conn, sock);
    loop {
        // One request: headers, then the body by content-length (keep-alive: several per
        // connection).
        let mut reader = BufReader::new(&mut stream);
        let mut headers = BTreeMap::new();
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        drop(reader);
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        let now = seqmon_testkit::now_ms() / 1000;
        let verified = seqmon_dispatcher::webhook::verify(
            secret.as_bytes(),
            headers.get("x-seqmon-timestamp").map(String::as_str),
            headers.get("x-seqmon-signature").map(String::as_str),
            &body,
            now,
        );
        let status = if verified.is_err() {
            401
        } else if b.refuse_all {
            400
        } else if n <= b.fail_first {
            503
        } else {
            200
        };
        {
            let mut s = seen.lock().unwrap();
            *s.statuses.entry(status).or_default() += 1;
            if verified.is_err() {
                s.bad_signatures += 1;
            }
            if status == 200 {
                let key = headers.get("idempotency-key").cloned().unwrap_or_default();
                let first = !s.keys.contains_key(&key);
                *s.keys.entry(key).or_default() += 1;
                if first {
                    s.bodies
                        .push(serde_json::from_slice(&body).unwrap_or_default());
                }
            }
        }
        if b.late_request == Some(n.saturating_sub(b.fail_first)) && status == 200 {
            std::thread::sleep(b.late_by);
        }
        std::thread::sleep(b.delay);
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            _ => "Service Unavailable",
        };
        let answer = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n"
        );
        if stream.write_all(answer.as_bytes()).is_err() || stream.flush().is_err() {
            return;
        }
    }
}
