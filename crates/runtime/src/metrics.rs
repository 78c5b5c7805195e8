//! Prometheus metrics of a stage, and a small HTTP endpoint serving `/metrics` and `/healthz`.
//!
//! Names follow `<service>_<noun>_<unit>_total` with small fixed label sets: the dead-letter
//! reason (a fixed enum), the output role and the transaction outcome.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use seqmon_model::DeadLetterReason;

use crate::events::{RebalanceKind, TransactionOutcome};

/// Counters of one stage.
#[derive(Clone)]
pub struct StageMetrics {
    /// Registry holding this stage's metrics.
    pub registry: Registry,
    /// Input records handed to the processor.
    pub input_records: IntCounter,
    /// Input records the processor accepted (not dead-lettered).
    pub accepted_records: IntCounter,
    /// Dead letters, by reason.
    pub dead_letter_records: IntCounterVec,
    /// Records produced, by output role.
    pub output_records: IntCounterVec,
    /// Transactions, by outcome (committed, aborted).
    pub transactions: IntCounterVec,
    /// State keys restored from the changelog.
    pub restored_state_keys: IntCounter,
    /// Time to rebuild state from the changelog.
    pub restore_seconds: Histogram,
    /// Consumer errors (fetch failures, broker unreachable).
    pub consumer_errors: IntCounter,
    /// Rebalances, by kind (assigned, revoked, failed).
    pub rebalances: IntCounterVec,
    /// Input partitions currently assigned.
    pub assigned_partitions: IntGauge,
    /// Time from the start of a transaction to its commit (produce, offsets, commit).
    pub transaction_seconds: Histogram,
    /// Input records per transaction.
    pub batch_records: Histogram,
    /// Unix seconds of the last loop iteration, for liveness.
    pub heartbeat: Arc<AtomicI64>,
}

impl StageMetrics {
    /// Registers the metrics of `stage` in a fresh registry.
    pub fn new(stage: &str) -> Self {
        let prefix = stage.replace('-', "_");
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::with_opts(Opts::new(format!("{prefix}_{name}"), help))
                .expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(format!("{prefix}_{name}"), help), &[label])
                .expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let input_records = counter(
            "input_records_total",
            "Input records handed to the processor.",
        );
        let accepted_records = counter(
            "accepted_records_total",
            "Input records accepted (not dead-lettered).",
        );
        let dead_letter_records = vec(
            "dead_letter_records_total",
            "Input records sent to the dead-letter topic, by reason.",
            "reason",
        );
        let output_records = vec(
            "output_records_total",
            "Records produced, by output.",
            "output",
        );
        let transactions = vec(
            "transactions_total",
            "Kafka transactions, by outcome.",
            "outcome",
        );
        let restored_state_keys = counter(
            "restored_state_keys_total",
            "State keys restored from the changelog.",
        );
        let consumer_errors = counter(
            "consumer_errors_total",
            "Errors reported by the input consumer.",
        );
        let rebalances = vec(
            "rebalances_total",
            "Consumer-group rebalances, by kind.",
            "kind",
        );
        let assigned_partitions = IntGauge::with_opts(Opts::new(
            format!("{prefix}_assigned_partitions"),
            "Input partitions assigned to this instance.",
        ))
        .expect("valid metric");
        registry
            .register(Box::new(assigned_partitions.clone()))
            .expect("unique metric");
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(
                HistogramOpts::new(format!("{prefix}_{name}"), help).buckets(buckets),
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let transaction_seconds = histogram(
            "transaction_duration_seconds",
            "Time from beginning a transaction to its commit.",
            prometheus::exponential_buckets(0.001, 2.0, 14).expect("valid buckets"),
        );
        let batch_records = histogram(
            "batch_records",
            "Input records per transaction.",
            prometheus::exponential_buckets(1.0, 4.0, 9).expect("valid buckets"),
        );
        let restore_seconds = histogram(
            "restore_duration_seconds",
            "Time to rebuild state from the changelog.",
            prometheus::exponential_buckets(0.01, 2.0, 14).expect("valid buckets"),
        );
        // Every label value exists from the start, so a dashboard sees zeros, not gaps.
        for r in DeadLetterReason::ALL {
            dead_letter_records.with_label_values(&[r.code()]);
        }
        for o in TransactionOutcome::ALL {
            transactions.with_label_values(&[o.label()]);
        }
        for k in RebalanceKind::ALL {
            rebalances.with_label_values(&[k.label()]);
        }
        StageMetrics {
            registry,
            input_records,
            accepted_records,
            dead_letter_records,
            output_records,
            transactions,
            restored_state_keys,
            restore_seconds,
            consumer_errors,
            rebalances,
            assigned_partitions,
            transaction_seconds,
            batch_records,
            heartbeat: Arc::new(AtomicI64::new(now_secs())),
        }
    }

    /// Records that the loop is alive.
    pub fn beat(&self) {
        self.heartbeat.store(now_secs(), Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Serves `/metrics` (Prometheus text) and `/healthz` (200 while the loop beat in the last 60 s)
/// until the process exits. Runs on the given tokio runtime.
pub async fn serve(addr: std::net::SocketAddr, metrics: StageMetrics) -> std::io::Result<()> {
    serve_with(addr, move |path| match path {
        "/metrics" => (true, metrics.render()),
        "/healthz" => {
            let age = now_secs() - metrics.heartbeat.load(Ordering::Relaxed);
            if age <= 60 {
                (true, "ok\n".to_string())
            } else {
                (false, format!("processing loop silent for {age} s\n"))
            }
        }
        _ => (false, String::new()),
    })
    .await
}

/// A plain-HTTP endpoint for the cluster's own scrapers and probes: `answer(path)` gives
/// (healthy, body) for `/metrics` and `/healthz`; other paths are 404. One short read per
/// connection, so a slow or hostile peer costs one task, never the service.
pub async fn serve_with<F>(addr: std::net::SocketAddr, answer: F) -> std::io::Result<()>
where
    F: Fn(&str) -> (bool, String) + Send + Sync + 'static,
{
    serve_listener_with(tokio::net::TcpListener::bind(addr).await?, answer).await
}

/// [`serve_with`] on a listener bound already (so a port in use fails the caller's start-up).
pub async fn serve_listener_with<F>(
    listener: tokio::net::TcpListener,
    answer: F,
) -> std::io::Result<()>
where
    F: Fn(&str) -> (bool, String) + Send + Sync + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answer = Arc::new(answer);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics endpoint listening");
    }
    loop {
        let (mut sock, _) = listener.accept().await?;
        let answer = answer.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf));
            let n = read.await.ok().and_then(Result::ok).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match (path, answer(path)) {
                ("/metrics" | "/healthz", (true, body)) => ("200 OK", body),
                ("/metrics" | "/healthz", (false, body)) => ("503 Service Unavailable", body),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let response = format!("HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            let _ = sock.write_all(response.as_bytes()).await;
        });
    }
}
