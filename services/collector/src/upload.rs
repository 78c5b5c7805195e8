//! Sends spooled batches to the ingest gateway over HTTPS: the gateway's CA is pinned (no
//! public roots), the site's client certificate authenticates, and `HTTPS_PROXY` / `NO_PROXY`
//! (or `ALL_PROXY`) are honoured, so a lab behind an HTTP proxy needs no inbound port and no
//! Kafka port outbound.
//!
//! Delivery: a batch leaves the spool only after the gateway answered 200 (written, or
//! recognised as a retry of a batch already written); every retry of a batch carries the same
//! idempotency key, so the gateway writes it once. Transient failures (network, proxy, 408,
//! 409, 429, 5xx) are retried with exponential backoff and jitter, honouring `Retry-After`; a
//! permanent refusal (400, 413, 415, 422) moves the batch to `rejected/` and is logged.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::spool::{Spool, Spooled};

/// Settings of the HTTPS sink.
#[derive(Debug, Clone)]
pub struct GatewayClient {
    /// `https://host[:port]/v1/telemetry`.
    pub url: String,
    /// The gateway's CA (PEM).
    pub ca: std::path::PathBuf,
    /// The site's certificate and key (PEM).
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// Why the uploader could not be set up: the message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct SetupError {
    pub setting: &'static str,
    pub message: String,
}

/// What a drain ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every batch was delivered (or set aside as rejected).
    Empty,
    /// Batches are still waiting (offline); the uploader retries on the next drain.
    Waiting(usize),
}

const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The HTTPS uploader and its backoff state.
pub struct Uploader {
    http: reqwest::blocking::Client,
    url: String,
    backoff: Duration,
    next_attempt: Instant,
    /// Failures since the last success, for bounded logging.
    failures: u64,
}

enum Attempt {
    Delivered,
    Rejected(String),
    Retry(Option<Duration>, String),
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, SetupError> {
    std::fs::read(path).map_err(|e| SetupError {
        setting,
        message: format!("cannot read {}: {e}", path.display()),
    })
}

/// A little jitter (0..25 %) so sites coming back together do not retry in lockstep.
fn jittered(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = getrandom::fill(&mut b)
        .map(|()| u16::from_le_bytes(b))
        .unwrap_or(0);
    d + d.mul_f64(f64::from(r) / f64::from(u16::MAX) / 4.0)
}

impl Uploader {
    /// Builds the HTTPS client from the certificate files.
    pub fn new(cfg: &GatewayClient) -> Result<Self, SetupError> {
        let ca = reqwest::Certificate::from_pem(&read("--gateway-ca", &cfg.ca)?).map_err(|e| {
            SetupError {
                setting: "--gateway-ca / COLLECTOR_GATEWAY_CA",
                message: format!("{}: {e}", cfg.ca.display()),
            }
        })?;
        let mut pem = read("--client-cert", &cfg.cert)?;
        pem.push(b'\n');
        pem.extend(read("--client-key", &cfg.key)?);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| SetupError {
            setting: "--client-cert / --client-key",
            message: format!("not a PEM certificate and private key: {e}"),
        })?;
        let http = reqwest::blocking::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .identity(identity)
            .https_only(true)
            .timeout(cfg.timeout)
            .connect_timeout(Duration::from_secs(15))
            .user_agent(concat!("seqmon-collector/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SetupError {
                setting: "--to",
                message: format!("cannot build the HTTPS client: {e}"),
            })?;
        Ok(Self {
            http,
            url: cfg.url.clone(),
            backoff: MIN_BACKOFF,
            next_attempt: Instant::now(),
            failures: 0,
        })
    }

    fn attempt(&self, batch: &Spooled) -> Attempt {
        let body = match std::fs::read(&batch.path) {
            Ok(b) => b,
            // Unreadable (permissions, I/O error): set aside rather than block the spool.
            Err(e) => {
                return Attempt::Rejected(format!("cannot read {}: {e}", batch.path.display()))
            }
        };
        let sent = self
            .http
            .post(&self.url)
            .header("content-type", seqmon_model::ingest::CONTENT_TYPE)
            .header("idempotency-key", &batch.idempotency_key)
            .body(body)
            .send();
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                // The source chain says what failed: proxy, DNS, TLS, connection reset.
                let mut why = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    why.push_str(": ");
                    why.push_str(&s.to_string());
                    src = s.source();
                }
                return Attempt::Retry(None, why);
            }
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp.text().unwrap_or_default();
        match status.as_u16() {
            200..=299 => Attempt::Delivered,
            408 | 409 | 429 | 500..=599 => Attempt::Retry(retry_after, format!("{status}: {text}")),
            // The batch itself is wrong: set it aside.
            400 | 413 | 415 | 422 => Attempt::Rejected(format!("{status}: {text}")),
            // Anything else (401, 403, 404 from a wrong --to path or a proxy's page, 421, ...)
            // says the collector is pointed at the wrong place: keep the batch and retry.
            _ => Attempt::Retry(
                None,
                format!("{status} (check --to and the client certificate): {text}"),
            ),
        }
    }

    /// Sends waiting batches, oldest first, until the spool is empty, `until` has passed, or
    /// `stop` is set; backs off between failures.
    pub fn drain(
        &mut self,
        spool: &mut Spool,
        until: Instant,
        stop: &AtomicBool,
    ) -> std::io::Result<Drained> {
        // One directory scan per pass, not per batch: a spool of thousands of batches after a
        // long outage drains in linear time.
        let mut waiting = std::collections::VecDeque::from(spool.batches()?);
        loop {
            if waiting.is_empty() {
                waiting = spool.batches()?.into();
            }
            let Some(batch) = waiting.front().cloned() else {
                return Ok(Drained::Empty);
            };
            let now = Instant::now();
            if self.next_attempt > now {
                if self.next_attempt > until || stop.load(Ordering::SeqCst) {
                    return Ok(Drained::Waiting(waiting.len()));
                }
                std::thread::sleep((self.next_attempt - now).min(Duration::from_millis(200)));
                continue;
            }
            if stop.load(Ordering::SeqCst) {
                return Ok(Drained::Waiting(waiting.len()));
            }
            if !batch.path.exists() {
                // Dropped meanwhile (spool full) or removed by hand.
                waiting.pop_front();
                continue;
            }
            if !batch.path.is_file() {
                // Not a batch this collector wrote (a folder, a device): never send it, and
                // never let it block the batches behind it.
                tracing::error!(path = %batch.path.display(), "not a batch file; moved to rejected/");
                spool.reject(&batch)?;
                waiting.pop_front();
                continue;
            }
            match self.attempt(&batch) {
                Attempt::Delivered => {
                    spool.delivered(&batch)?;
                    waiting.pop_front();
                    if self.failures > 0 {
                        tracing::info!(failures = self.failures, "gateway reachable again");
                    }
                    self.failures = 0;
                    self.backoff = MIN_BACKOFF;
                }
                Attempt::Rejected(why) => {
                    tracing::error!(batch = %batch.path.display(), idempotency_key = %batch.idempotency_key, answer = %why, "gateway refused the batch for good; kept in rejected/");
                    spool.reject(&batch)?;
                    waiting.pop_front();
                }
                Attempt::Retry(after, why) => {
                    self.failures += 1;
                    // Retry-After is a floor, not a schedule: the backoff still grows, so a
                    // batch that keeps failing is not retried every second for ever.
                    let wait = after.unwrap_or_default().max(self.backoff).min(MAX_BACKOFF);
                    // One line on the first failure, then one per doubling: bounded while a
                    // site stays offline for days.
                    if self.failures.is_power_of_two() {
                        tracing::warn!(failures = self.failures, waiting = waiting.len(), retry_in_ms = wait.as_millis() as u64, error = %why, "batch not delivered; will retry");
                    }
                    self.next_attempt = Instant::now() + jittered(wait);
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
