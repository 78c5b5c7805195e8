//! Signed webhooks: which alert events an endpoint subscribed to, the body it gets, and the
//! signature that proves the body came from us and is fresh.
//!
//! Body: JSON `{"event_id", "event_type", "occurred_at", "site", "alert"}`, where `alert` is the
//! alert record (schema `alert` v3) as JSON and `event_id` is `<alert_id>#<sequence>`, unique per
//! transition and the same on every retry (also sent as the `Idempotency-Key` header: a receiver
//! that saw it already answers 2xx and does nothing).
//!
//! Signature: headers `X-Seqmon-Timestamp: <unix seconds>` and `X-Seqmon-Signature:
//! v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`. A receiver recomputes it, compares in
//! constant time, and refuses a timestamp more than five minutes from its clock (replay
//! protection): [`verify`] does all three.

use std::collections::BTreeSet;
use std::path::PathBuf;

use hmac::{Hmac, Mac};
use seqmon_model::{Alert, AnomalySeverity, InstrumentModel, Subsystem};
use seqmon_processor::config::Secret;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-seqmon-signature";
/// Header carrying the signing time (unix seconds).
pub const TIMESTAMP_HEADER: &str = "x-seqmon-timestamp";
/// Header carrying the event id.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Largest clock difference a receiver accepts, in seconds.
pub const MAX_SKEW_S: i64 = 300;

/// What an endpoint subscribes to; an empty list means any.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Sites (from the inventory; `fleet` for fleet alerts, `unknown` for an instrument the
    /// inventory does not list).
    #[serde(default)]
    pub sites: BTreeSet<String>,
    /// Models, as the schema spells them (`NOVASEQ_6000`).
    #[serde(default)]
    pub models: BTreeSet<InstrumentModel>,
    /// Subsystems (`FLUIDICS`).
    #[serde(default)]
    pub subsystems: BTreeSet<Subsystem>,
    /// Lowest severity delivered (default LOW: all).
    #[serde(default = "lowest")]
    pub min_severity: AnomalySeverity,
}

fn lowest() -> AnomalySeverity {
    AnomalySeverity::LOW
}

impl Default for Filter {
    /// Everything.
    fn default() -> Self {
        Filter {
            sites: BTreeSet::new(),
            models: BTreeSet::new(),
            subsystems: BTreeSet::new(),
            min_severity: lowest(),
        }
    }
}

impl Filter {
    /// Whether an alert of `site` passes.
    pub fn matches(&self, a: &Alert, site: &str) -> bool {
        (self.sites.is_empty() || self.sites.contains(site))
            && (self.models.is_empty() || self.models.contains(&a.instrument_model))
            && (self.subsystems.is_empty() || self.subsystems.contains(&a.subsystem))
            && a.severity >= self.min_severity
    }
}

/// One webhook endpoint, as the webhooks file lists it.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Name in logs, metrics and dead letters (letters, digits, `-`, `_`; at most 64).
    pub name: String,
    /// `https://` URL (`http://` only for 127.0.0.1 / localhost, for local tests).
    pub url: String,
    /// File holding the signing secret (its first line; at least 32 bytes).
    pub secret_file: PathBuf,
    /// Extra CA certificates (PEM) to trust for this endpoint (a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// What it subscribes to.
    #[serde(default)]
    pub filter: Filter,
    /// Requests a minute at most (average), in bursts of up to `burst`.
    #[serde(default = "default_rate")]
    pub rate_per_minute: u32,
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Attempts per event before it becomes a dead letter (a request refused by an open
    /// circuit is not an attempt).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Seconds after its first attempt that an event still undelivered becomes a dead letter,
    /// attempts left or not (an endpoint down for good costs time, not memory).
    #[serde(default = "default_give_up")]
    pub give_up_after_s: u64,
    /// Time allowed for one request, ms.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Loaded from `secret_file` by [`Endpoint::load_secret`].
    #[serde(skip)]
    pub secret: Secret,
}

fn default_rate() -> u32 {
    600
}
fn default_burst() -> u32 {
    20
}
fn default_attempts() -> u32 {
    8
}
fn default_timeout() -> u64 {
    10_000
}
fn default_give_up() -> u64 {
    6 * 3600
}

/// Parses an endpoint URL: `https://`, or `http://` to this host only; no credentials in it
/// (they would be logged and put in dead letters); a host. The error says what is wrong.
pub fn check_url(url: &str) -> Result<reqwest::Url, String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("{e}"))?;
    let local = matches!(
        u.host_str(),
        Some("127.0.0.1") | Some("localhost") | Some("[::1]")
    );
    match u.scheme() {
        "https" => {}
        "http" if local => {}
        _ => return Err("must be https:// (http:// only on this host)".into()),
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("must not carry credentials".into());
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    Ok(u)
}

/// `scheme://host[:port]` of a URL, for logs (its path may hold a token).
pub fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}/…",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "(unparsable)".into(),
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("url", &redacted(&self.url))
            .field("secret", &self.secret)
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

/// The webhooks file: `{"webhooks": [endpoint, ...]}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksFile {
    pub webhooks: Vec<Endpoint>,
}

impl Endpoint {
    /// Checks the endpoint (no I/O); the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let named = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !named {
            return Err(format!(
                "webhook {:?}: name must be 1 to 64 letters, digits, - or _",
                self.name
            ));
        }
        if let Err(e) = check_url(&self.url) {
            return Err(format!("webhook {}: url {e}", self.name));
        }
        if !(60..=7 * 86_400).contains(&self.give_up_after_s) {
            return Err(format!(
                "webhook {}: give_up_after_s must be 60 to 604800",
                self.name
            ));
        }
        if self.max_attempts == 0 || self.max_attempts > 100 {
            return Err(format!(
                "webhook {}: max_attempts must be 1 to 100",
                self.name
            ));
        }
        if !(100..=120_000).contains(&self.timeout_ms) {
            return Err(format!(
                "webhook {}: timeout_ms must be 100 to 120000",
                self.name
            ));
        }
        if self.rate_per_minute == 0 || self.burst == 0 {
            return Err(format!(
                "webhook {}: rate_per_minute and burst must be positive",
                self.name
            ));
        }
        Ok(())
    }

    /// Reads the signing secret.
    pub fn load_secret(&mut self) -> Result<(), String> {
        let text = std::fs::read_to_string(&self.secret_file).map_err(|e| {
            format!(
                "webhook {}: cannot read secret_file {}: {e}",
                self.name,
                self.secret_file.display()
            )
        })?;
        let secret = text.lines().next().unwrap_or("").trim().to_string();
        if secret.len() < 32 {
            return Err(format!(
                "webhook {}: the secret in {} is shorter than 32 bytes",
                self.name,
                self.secret_file.display()
            ));
        }
        self.secret = Secret::new(secret);
        Ok(())
    }
}

/// The body of one alert event.
#[derive(Debug, Serialize)]
struct Body<'a> {
    event_id: &'a str,
    event_type: String,
    occurred_at: String,
    site: &'a str,
    alert: &'a Alert,
}

/// The event id of an alert record: `<alert_id>#<sequence>`.
pub fn event_id(a: &Alert) -> String {
    format!("{}#{}", a.alert_id, a.sequence)
}

/// The JSON body for an alert record.
pub fn body(a: &Alert, site: &str) -> Vec<u8> {
    let id = event_id(a);
    let b = Body {
        event_id: &id,
        event_type: format!("alert.{}", a.transition.as_str().to_ascii_lowercase()),
        occurred_at: seqmon_model::civil::iso_time(a.event_time_ms),
        site,
        alert: a,
    };
    // An alert always serializes (strings, numbers, enums); a non-finite number would be null.
    serde_json::to_vec(&b).unwrap_or_default()
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("any key length");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// `v1=<hex>` for a body signed at `timestamp` (unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

/// Why a receiver refuses a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no or malformed signature or timestamp header")]
    Malformed,
    #[error("timestamp {0} s from now: replayed or clock skewed")]
    Stale(i64),
    #[error("signature does not match")]
    Mismatch,
}

/// What a receiver does: checks the signature (constant time) and the timestamp's freshness.
pub fn verify(
    secret: &[u8],
    timestamp_header: Option<&str>,
    signature_header: Option<&str>,
    body: &[u8],
    now_s: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp_header
        .and_then(|t| t.trim().parse().ok())
        .ok_or(VerifyError::Malformed)?;
    let hex = signature_header
        .and_then(|s| s.trim().strip_prefix("v1="))
        .ok_or(VerifyError::Malformed)?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(VerifyError::Malformed);
    }
    let skew = now_s.saturating_sub(ts);
    if skew.saturating_abs() > MAX_SKEW_S {
        return Err(VerifyError::Stale(skew));
    }
    let tag: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect();
    mac(secret, ts, body)
        .verify_slice(&tag)
        .map_err(|_| VerifyError::Mismatch)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use seqmon_model::{AlertAction, AlertState, AlertTransition, TransitionCause};

    pub(crate) fn alert() -> Alert {
        Alert {
            alert_id: "A00123:fluidics:1000".into(),
            instrument_serial: "A00123".into(),
            instrument_model: InstrumentModel::NOVASEQ_6000,
            subsystem: Subsystem::FLUIDICS,
            action: AlertAction::OPEN,
            severity: AnomalySeverity::HIGH,
            metric: "fluidics_pressure_kpa".into(),
            score: 7.0,
            title: "t".into(),
            suspected_part: "fluidics pump".into(),
            opened_at_ms: 1000,
            event_time_ms: 1000,
            anomaly_count: 1,
            cohort: None,
            state: AlertState::OPEN,
            transition: AlertTransition::OPENED,
            cause: TransitionCause::ANOMALY,
            sequence: 1,
            command_id: None,
            actor: None,
            comment: None,
            assignee: None,
            acknowledged_by: None,
            snoozed_until_ms: None,
            resolution: None,
            escalation_level: 0,
            reopen_count: 0,
            evidence: None,
        }
    }

    #[test]
    fn signatures_verify_and_refuse_tampering_and_replays() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let b = body(&alert(), "emea-1");
        let sig = sign(secret, 1_000_000, &b);
        assert!(verify(secret, Some("1000000"), Some(&sig), &b, 1_000_100).is_ok());
        let mut tampered = b.clone();
        tampered[10] ^= 1;
        assert_eq!(
            verify(secret, Some("1000000"), Some(&sig), &tampered, 1_000_100),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(
                b"another secret of 32 bytes ......",
                Some("1000000"),
                Some(&sig),
                &b,
                1_000_000
            ),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(secret, Some("1000000"), Some(&sig), &b, 1_000_000 + 301),
            Err(VerifyError::Stale(301))
        );
        // A replay with a fresh timestamp but the old signature fails.
        assert_eq!(
            verify(secret, Some("1000400"), Some(&sig), &b, 1_000_400),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(secret, None, Some(&sig), &b, 0),
            Err(VerifyError::Malformed)
        );
        assert_eq!(
            verify(secret, Some("1"), Some("v1=zz"), &b, 1),
            Err(VerifyError::Malformed)
        );
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["event_id"], "A00123:fluidics:1000#1");
        assert_eq!(v["event_type"], "alert.opened");
        assert_eq!(v["alert"]["state"], "OPEN");
        assert_eq!(v["site"], "emea-1");
    }

    #[test]
    fn filters_and_endpoint_settings() {
        let f: Filter = serde_json::from_str(
            r#"{"sites":["emea-1"],"models":["NOVASEQ_6000"],"subsystems":["FLUIDICS"],"min_severity":"HIGH"}"#,
        )
        .unwrap();
        let a = alert();
        assert!(f.matches(&a, "emea-1"));
        assert!(!f.matches(&a, "us-2"));
        let mut low = a.clone();
        low.severity = AnomalySeverity::MEDIUM;
        assert!(!f.matches(&low, "emea-1"));
        assert!(Filter::default().matches(&low, "anywhere"));
        assert!(
            serde_json::from_str::<Filter>(r#"{"site":["x"]}"#).is_err(),
            "typos fail"
        );
        let e: WebhooksFile = serde_json::from_str(
            r#"{"webhooks":[{"name":"fse","url":"http://example.com/x","secret_file":"/nope"}]}"#,
        )
        .unwrap();
        assert!(e.webhooks[0].validate().unwrap_err().contains("https"));
        for bad in [
            "https://bad host/x",
            "https://a.example:99999/x",
            "http://localhost:@evil.example/",
            "https://user:pw@h.example/x",
            "ftp://h.example/",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert!(check_url("http://127.0.0.1:8080/hook").is_ok());
        assert_eq!(
            redacted("https://hooks.example/T0/B1/secret"),
            "https://hooks.example/…"
        );
        assert_eq!(
            verify(
                b"k",
                Some(&i64::MIN.to_string()),
                Some(&format!("v1={}", "0".repeat(64))),
                b"",
                i64::MAX
            ),
            Err(VerifyError::Stale(i64::MAX))
        );
        let mut ok = e.webhooks[0].clone();
        ok.url = "https://example.com/x".into();
        assert!(ok.validate().is_ok());
        assert!(ok
            .clone()
            .load_secret()
            .unwrap_err()
            .contains("secret_file"));
        ok.secret = Secret::new("s3cr3t-value-that-must-not-print".into());
        assert!(!format!("{ok:?}").contains("s3cr3t"));
    }
}
