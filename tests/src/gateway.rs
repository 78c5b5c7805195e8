//! The ingest gateway's test fixtures: a PKI made in-process (CA, gateway, sites; one expired,
//! one from a stranger CA), a minimal HTTP CONNECT proxy, the gateway as an OS process, and a
//! site's HTTPS client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

use seqmon_model::Telemetry;

use crate::{free_port, Service};

/// Certificates of a test deployment, as PEM files in `dir`.
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn make(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let write = |name: &str, pem: String| std::fs::write(dir.join(name), pem).unwrap();
        let ca = |cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            p.distinguished_name.push(DnType::CommonName, cn);
            let cert = p.self_signed(&key).unwrap();
            (cert, key)
        };
        let (ca_cert, ca_key) = ca("seqmon test CA");
        let (other_cert, other_key) = ca("stranger CA");
        write("ca.pem", ca_cert.pem());
        let leaf = |cn: &str,
                    sans: Vec<String>,
                    issuer: (&rcgen::Certificate, &KeyPair),
                    expired: bool| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(sans).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            if expired {
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            let cert = p.signed_by(&key, issuer.0, issuer.1).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (c, k) = leaf(
            "gateway",
            vec!["localhost".into(), "127.0.0.1".into()],
            (&ca_cert, &ca_key),
            false,
        );
        write("gateway.pem", c);
        write("gateway-key.pem", k);
        for (name, issuer, expired) in [
            ("site-a", (&ca_cert, &ca_key), false),
            ("site-b", (&ca_cert, &ca_key), false),
            ("expired", (&ca_cert, &ca_key), true),
            ("stranger", (&other_cert, &other_key), false),
        ] {
            let (c, k) = leaf(name, vec![], issuer, expired);
            write(&format!("{name}.pem"), c);
            write(&format!("{name}-key.pem"), k);
        }
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    /// A site's HTTPS client (no proxy: the API tests talk to the gateway directly).
    pub fn client(&self, site: Option<&str>) -> reqwest::blocking::Client {
        let ca =
            reqwest::Certificate::from_pem(&std::fs::read(self.path("ca.pem")).unwrap()).unwrap();
        let mut b = reqwest::blocking::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .no_proxy()
            .timeout(Duration::from_secs(30));
        if let Some(site) = site {
            let mut pem = std::fs::read(self.path(&format!("{site}.pem"))).unwrap();
            pem.extend(std::fs::read(self.path(&format!("{site}-key.pem"))).unwrap());
            b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        b.build().unwrap()
    }
}

/// A minimal HTTP CONNECT proxy, as a lab's egress proxy: tunnels bytes and counts tunnels.
pub struct Proxy {
    pub port: u16,
    pub tunnels: Arc<AtomicUsize>,
}

impl Proxy {
    pub fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let tunnels = Arc::new(AtomicUsize::new(0));
        let count = tunnels.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let count = count.clone();
                std::thread::spawn(move || tunnel(client, &count));
            }
        });
        Proxy { port, tunnels }
    }
}

fn tunnel(mut client: TcpStream, count: &AtomicUsize) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).unwrap_or(0) == 0 || head.len() > 8192 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
        let _ = client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n");
        return;
    };
    let Ok(upstream) = TcpStream::connect(target) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
        return;
    };
    count.fetch_add(1, Ordering::SeqCst);
    let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
    let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let (mut c1, mut u1) = (client, upstream);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c1, &mut u1);
        let _ = u1.shutdown(std::net::Shutdown::Both);
    });
    let _ = std::io::copy(&mut u2, &mut c2);
    let _ = c2.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
}

pub fn write_key(dir: &Path, id: &str, byte: u8) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join(format!("{id}.key")),
        format!("{byte:02x}").repeat(32),
    )
    .unwrap();
}

pub struct Gateway {
    pub service: Service,
    pub port: u16,
}

/// Starts the gateway on free ports; `kafka` are the connection flags (`--bootstrap-servers
/// ...` or `--properties-file ...`), `extra` any other settings.
pub fn start_gateway(
    prefix: &str,
    pki: &Pki,
    keys: &Path,
    kafka: &[&str],
    extra: &[&str],
) -> Gateway {
    let port = free_port();
    let metrics_port = free_port();
    let mut args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--tls-cert",
        pki.path("gateway.pem").to_str().unwrap(),
        "--tls-key",
        pki.path("gateway-key.pem").to_str().unwrap(),
        "--client-ca",
        pki.path("ca.pem").to_str().unwrap(),
        "--topic-prefix",
        prefix,
        "--transactional-id",
        &format!("{prefix}ingest-gateway-0"),
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
        "--encryption-keys-dir",
        keys.to_str().unwrap(),
        "--encryption-active-key",
        "k1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(kafka.iter().map(|s| s.to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    Gateway {
        service: Service::launch("ingest-gateway", prefix, args, metrics_port),
        port,
    }
}

/// POSTs a batch as a site; the status and the JSON answer, or the transport error.
pub fn post(
    client: &reqwest::blocking::Client,
    port: u16,
    key: Option<&str>,
    body: Vec<u8>,
) -> Result<(u16, serde_json::Value), String> {
    let mut req = client
        .post(format!("https://127.0.0.1:{port}/v1/telemetry"))
        .header("content-type", seqmon_model::ingest::CONTENT_TYPE)
        .body(body);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let resp = req.send().map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let text = resp.text().unwrap_or_default();
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    ))
}

/// Status and reason code of an answer.
pub fn reason(answer: &(u16, serde_json::Value)) -> (u16, String) {
    (
        answer.0,
        answer.1["reason"].as_str().unwrap_or("").to_string(),
    )
}

/// A batch frame of `n` telemetry records whose message ids start with `tag`.
pub fn frame(tag: &str, n: usize) -> Vec<u8> {
    let mut f = seqmon_model::ingest::begin(n as u32);
    for i in 0..n {
        let t = Telemetry {
            message_id: format!("{tag}-{i}"),
            instrument_serial: format!("M{:05}", i % 3),
            ..sample()
        };
        let bytes = seqmon_model::encode(&t).unwrap();
        seqmon_model::ingest::push(&mut f, &t.instrument_serial, t.sent_time_ms, &bytes);
    }
    f
}

/// One telemetry record the collector makes of the first sample run folder (collected once per
/// test process).
pub fn sample() -> Telemetry {
    static SAMPLE: std::sync::OnceLock<Telemetry> = std::sync::OnceLock::new();
    SAMPLE
        .get_or_init(|| {
            let run = seqmon_collector::sample_run_folders();
            let folder = run.first().expect("sample run folders");
            seqmon_collector::collect::collect_run_with(
                folder,
                Some(seqmon_collector::consent::ConsentOverride::OptedIn),
                crate::now_ms(),
                &seqmon_collector::files::Limits::default(),
            )
            .unwrap()
            .records
            .remove(0)
        })
        .clone()
}

/// What a gateway test sets up first: its own topics on the plain broker, a scratch folder with
/// a PKI, and a key ring of one key `k1`.
pub struct Setup {
    pub prefix: String,
    pub dir: PathBuf,
    pub pki: Pki,
    pub keys: PathBuf,
    pub ring: seqmon_runtime::envelope::KeyRing,
}

impl Setup {
    pub fn new(test: &str, key_byte: u8) -> Setup {
        let prefix = crate::unique_prefix(test);
        crate::create_topics(&prefix, 2);
        let dir = std::env::temp_dir().join(format!("seqmon-gw-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pki = Pki::make(&dir.join("pki"));
        let keys = dir.join("keys");
        write_key(&keys, "k1", key_byte);
        let ring = seqmon_runtime::envelope::KeyRing::from_dir(&keys, "k1").unwrap();
        Setup {
            prefix,
            dir,
            pki,
            keys,
            ring,
        }
    }
}
