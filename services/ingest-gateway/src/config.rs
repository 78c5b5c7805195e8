//! Settings of the ingest gateway. Each default is stated once, in its clap attribute;
//! [`GatewayConfig::validate`] is pure and runs before any file or socket is touched.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use seqmon_model::topics::INGEST_RECEIPT_HOURS;
use seqmon_processor::ConfigError;
use seqmon_runtime::config::KafkaConnection;

/// Takes collectors' batches over HTTPS (mutual TLS) and writes them to raw telemetry exactly
/// once.
#[derive(Debug, Clone, Parser)]
#[command(name = "ingest-gateway", version, about)]
pub struct GatewayConfig {
    /// Address of the HTTPS listener.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Server certificate chain (PEM), leaf first.
    #[arg(long, env = "GATEWAY_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// Server private key (PEM).
    #[arg(long, env = "GATEWAY_TLS_KEY")]
    pub tls_key: PathBuf,
    /// CA certificate(s) (PEM) that sign the sites' client certificates; every client must
    /// present one. The certificate's subject common name names the site.
    #[arg(long, env = "GATEWAY_CLIENT_CA")]
    pub client_ca: PathBuf,
    /// Certificate revocation list(s) (PEM) of that CA: a revoked site is refused at the
    /// handshake. Repeat the flag, or separate with commas.
    #[arg(long, env = "GATEWAY_CLIENT_CRL", value_delimiter = ',')]
    pub client_crl: Vec<PathBuf>,
    /// Largest request body, bytes; a larger one is refused (413) before it is read.
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: u64,
    /// Most MiB of request bodies and batches held in memory at once; a request beyond it is
    /// answered 503 (busy) before its body is read. At least --max-body-bytes.
    #[arg(long, env = "GATEWAY_MAX_INFLIGHT_MIB", default_value_t = 256)]
    pub max_inflight_mib: u64,
    /// Most records in one batch.
    #[arg(long, env = "GATEWAY_MAX_RECORDS_PER_BATCH", default_value_t = 10_000)]
    pub max_records_per_batch: u32,
    /// Largest record value, bytes: below the broker's max.message.bytes (about 1 MB by
    /// default) with room for the envelope, or the broker would refuse it mid-transaction.
    #[arg(long, env = "GATEWAY_MAX_RECORD_BYTES", default_value_t = 512 * 1024)]
    pub max_record_bytes: u32,
    /// Requests per second each client (site certificate) may make, sustained.
    #[arg(long, env = "GATEWAY_RATE_LIMIT_PER_S", default_value_t = 10.0)]
    pub rate_limit_per_s: f64,
    /// Requests a client may make at once after a pause (its bucket's size).
    #[arg(long, env = "GATEWAY_RATE_LIMIT_BURST", default_value_t = 20)]
    pub rate_limit_burst: u32,
    /// Seconds a batch's receipt is kept: a retry within this window is recognised and not
    /// written again. At most the changelog's retention less an hour.
    #[arg(long, env = "GATEWAY_IDEMPOTENCY_WINDOW_S", default_value_t = 24 * 3600)]
    pub idempotency_window_s: u64,
    /// Most receipts held in memory; beyond it the oldest are dropped (counted).
    #[arg(long, env = "GATEWAY_MAX_RECEIPTS", default_value_t = 2_000_000)]
    pub max_receipts: usize,
    /// Most client connections open at once; more wait in the listen queue.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds a client has for the TLS handshake, and for sending a request's head and body.
    #[arg(long, env = "GATEWAY_REQUEST_TIMEOUT_S", default_value_t = 30)]
    pub request_timeout_s: u64,
    /// Most batches committed in one Kafka transaction (batches waiting together share it).
    #[arg(
        long,
        env = "GATEWAY_MAX_BATCHES_PER_TRANSACTION",
        default_value_t = 64
    )]
    pub max_batches_per_transaction: usize,
    /// Seconds to read the receipts back from the changelog at start-up.
    #[arg(long, env = "GATEWAY_RESTORE_TIMEOUT_S", default_value_t = 300)]
    pub restore_timeout_s: u64,
    /// Kafka transactional id; default `<prefix>ingest-gateway-<host>`.
    #[arg(long, env = "SEQMON_TRANSACTIONAL_ID")]
    pub transactional_id: Option<String>,
    /// Address of the plain-HTTP `/metrics` and `/healthz` endpoint (cluster-internal).
    #[arg(long, env = "SEQMON_METRICS_ADDR", default_value = "0.0.0.0:9100")]
    pub metrics_addr: SocketAddr,
    #[command(flatten)]
    pub kafka: KafkaConnection,
}

impl GatewayConfig {
    /// Checks the settings without touching files or the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |id: &str, m: &str| Err(ConfigError::of::<Self>(id, m));
        if self.max_body_bytes < 1024 {
            return bad("max_body_bytes", "must be at least 1024");
        }
        if self.max_inflight_mib.saturating_mul(1024 * 1024) < self.max_body_bytes
            || self.max_inflight_mib > 1024 * 1024
        {
            return bad(
                "max_inflight_mib",
                "must hold at least one body of --max-body-bytes, and at most 1048576",
            );
        }
        if self.max_records_per_batch == 0 {
            return bad("max_records_per_batch", "must be positive");
        }
        if !(64..=1_000_000).contains(&self.max_record_bytes) {
            return bad(
                "max_record_bytes",
                "must be 64..=1000000 (the broker's max.message.bytes is about 1 MB)",
            );
        }
        if !(self.rate_limit_per_s.is_finite() && self.rate_limit_per_s > 0.0) {
            return bad("rate_limit_per_s", "must be a positive number");
        }
        if self.rate_limit_burst == 0 {
            return bad("rate_limit_burst", "must be positive");
        }
        let most = u64::from(INGEST_RECEIPT_HOURS - 1) * 3600;
        if self.idempotency_window_s == 0 || self.idempotency_window_s > most {
            return Err(ConfigError::of::<Self>(
                "idempotency_window_s",
                format!(
                    "must be 1..={most} (the changelog keeps receipts {INGEST_RECEIPT_HOURS} h)"
                ),
            ));
        }
        if self.max_receipts == 0 {
            return bad("max_receipts", "must be positive");
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be positive");
        }
        if self.request_timeout_s == 0 {
            return bad("request_timeout_s", "must be positive");
        }
        if self.max_batches_per_transaction == 0 {
            return bad("max_batches_per_transaction", "must be positive");
        }
        if self.restore_timeout_s == 0 {
            return bad("restore_timeout_s", "must be positive");
        }
        if self.transactional_id.as_deref() == Some("") {
            return bad("transactional_id", "must not be empty");
        }
        self.kafka.validate()
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> GatewayConfig {
        let mut args = vec![
            "ingest-gateway",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--client-ca",
            "ca.pem",
        ];
        args.extend_from_slice(extra);
        GatewayConfig::try_parse_from(args).expect("parses")
    }

    #[test]
    fn defaults_validate_and_bad_settings_are_named() {
        parse(&[]).validate().expect("defaults are valid");
        for (flag, value, named) in [
            (
                "--max-body-bytes",
                "10",
                "--max-body-bytes / GATEWAY_MAX_BODY_BYTES",
            ),
            (
                "--rate-limit-per-s",
                "0",
                "--rate-limit-per-s / GATEWAY_RATE_LIMIT_PER_S",
            ),
            (
                "--rate-limit-per-s",
                "NaN",
                "--rate-limit-per-s / GATEWAY_RATE_LIMIT_PER_S",
            ),
            (
                "--idempotency-window-s",
                "90000",
                "--idempotency-window-s / GATEWAY_IDEMPOTENCY_WINDOW_S",
            ),
            (
                "--max-batches-per-transaction",
                "0",
                "--max-batches-per-transaction / GATEWAY_MAX_BATCHES_PER_TRANSACTION",
            ),
        ] {
            let e = parse(&[flag, value]).validate().expect_err(flag);
            assert_eq!(e.setting, named);
        }
    }

    #[test]
    fn the_certificate_files_are_required() {
        assert!(GatewayConfig::try_parse_from(["ingest-gateway"]).is_err());
    }
}
