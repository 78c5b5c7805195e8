//! The gateway's metrics and events: one small type per event whose `emit()` writes the log
//! line and the counter together. Labels are fixed sets (the answer's reason code, the
//! transaction outcome); clients never appear in a label.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::http::Reason;

/// Counters of the gateway.
#[derive(Clone)]
pub struct GatewayMetrics {
    registry: Registry,
    /// Requests answered, by reason code (`accepted`, `duplicate`, or why it was refused).
    pub requests: IntCounterVec,
    /// Records written to raw telemetry.
    pub records: IntCounter,
    /// Kafka transactions, by outcome.
    pub transactions: IntCounterVec,
    /// Batches per committed transaction.
    pub batches_per_transaction: Histogram,
    /// TLS handshakes that failed (no, untrusted, revoked or expired client certificate).
    pub handshake_failures: IntCounter,
    /// Client connections open.
    pub connections: IntGauge,
    /// Receipts held.
    pub receipts: IntGauge,
    /// Receipts dropped before their window ended (--max-receipts too small).
    pub receipts_evicted: IntGauge,
    /// 1 while the Kafka writer is alive.
    pub writer_up: IntGauge,
}

impl GatewayMetrics {
    /// Registers the gateway's metrics in a fresh registry.
    pub fn new() -> Self {
        // Every series carries stage="ingest-gateway", beside process_* and build info.
        let registry = seqmon_runtime::metrics::component_registry("ingest-gateway");
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("metric names are unique");
        };
        let requests = IntCounterVec::new(
            Opts::new(
                "seqmon_requests_total",
                "Requests answered, by reason code.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        reg(Box::new(requests.clone()));
        let records = IntCounter::new("seqmon_records_total", "Records written to raw telemetry.")
            .expect("valid metric");
        reg(Box::new(records.clone()));
        let transactions = IntCounterVec::new(
            Opts::new(
                "seqmon_transactions_total",
                "Kafka transactions, by outcome.",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        reg(Box::new(transactions.clone()));
        // Every series from start-up: a rate over a series that appears with its first event
        // misses that event.
        for r in Reason::ALL {
            requests.with_label_values(&[r.code()]);
        }
        for outcome in ["committed", "aborted"] {
            transactions.with_label_values(&[outcome]);
        }
        let batches_per_transaction = Histogram::with_opts(
            HistogramOpts::new(
                "seqmon_batches_per_transaction",
                "Batches per committed transaction.",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
        )
        .expect("valid metric");
        reg(Box::new(batches_per_transaction.clone()));
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            reg(Box::new(g.clone()));
            g
        };
        let handshake_failures = IntCounter::new(
            "seqmon_tls_handshake_failures_total",
            "TLS handshakes that failed (missing, untrusted, revoked or expired client certificate).",
        )
        .expect("valid metric");
        reg(Box::new(handshake_failures.clone()));
        Self {
            requests,
            records,
            transactions,
            batches_per_transaction,
            handshake_failures,
            connections: gauge("seqmon_connections", "Client connections open."),
            receipts: gauge("seqmon_receipts", "Batch receipts held."),
            receipts_evicted: gauge(
                "seqmon_receipts_evicted",
                "Receipts dropped before their window ended (raise --max-receipts).",
            ),
            writer_up: gauge("seqmon_writer_up", "1 while the Kafka writer is alive."),
            registry,
        }
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        seqmon_runtime::metrics::render(&self.registry)
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A request was answered.
pub struct RequestAnswered<'a> {
    pub client: &'a str,
    pub reason: Reason,
    pub records: u32,
    pub message: &'a str,
}

impl RequestAnswered<'_> {
    pub fn emit(&self, m: &GatewayMetrics) {
        m.requests.with_label_values(&[self.reason.code()]).inc();
        match self.reason {
            Reason::Accepted => {
                m.records.inc_by(u64::from(self.records));
                tracing::debug!(
                    client = self.client,
                    records = self.records,
                    "batch written"
                );
            }
            Reason::Duplicate => {
                tracing::info!(
                    client = self.client,
                    records = self.records,
                    "retried batch recognised, not written again"
                )
            }
            // Refusals a well-behaved collector never causes: worth a line each (bounded by the
            // rate limit per client).
            r if !r.retriable() => {
                tracing::warn!(
                    client = self.client,
                    reason = r.code(),
                    message = self.message,
                    "batch refused"
                )
            }
            r => tracing::debug!(client = self.client, reason = r.code(), "batch deferred"),
        }
    }
}

/// A Kafka transaction ended.
pub struct TransactionEnded<'a> {
    pub committed: bool,
    pub batches: usize,
    pub error: Option<&'a str>,
}

impl TransactionEnded<'_> {
    pub fn emit(&self, m: &GatewayMetrics) {
        let outcome = if self.committed {
            "committed"
        } else {
            "aborted"
        };
        m.transactions.with_label_values(&[outcome]).inc();
        if self.committed {
            m.batches_per_transaction.observe(self.batches as f64);
        } else {
            tracing::warn!(
                batches = self.batches,
                error = self.error.unwrap_or(""),
                "transaction aborted; clients will retry"
            );
        }
    }
}
