//! The dispatcher's metrics and events: one small type per event whose `emit()` writes the log
//! line and the counter together. Labels are fixed sets: the receiver (`alertmanager-<n>` or
//! `webhook-<name>`, from the configuration) and the outcome. Failure lines are bounded: per
//! receiver at most one every 30 s (the counters count them all), so an outage of hours writes
//! a few hundred lines, not one per attempt.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// What became of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the receiver.
    Delivered,
    /// Refused or unanswered; tried again later.
    Retried,
    /// Given up: written to the dead-letter topic.
    DeadLettered,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Delivered, Outcome::Retried, Outcome::DeadLettered];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retried => "retried",
            Outcome::DeadLettered => "dead_lettered",
        }
    }
}

/// The dispatcher's metrics.
#[derive(Clone)]
pub struct DispatcherMetrics {
    registry: Registry,
    /// Alert records read.
    pub input_records: IntCounter,
    /// Deliveries (events to webhooks, alert updates to Alertmanager), by receiver and outcome.
    pub deliveries: IntCounterVec,
    /// Seconds from an alert record's timestamp to its delivery, by receiver.
    pub delivery_latency: HistogramVec,
    /// Deliveries not finished (the consumer pauses above --max-in-flight).
    pub in_flight: IntGauge,
    /// Circuit breaker per receiver: 0 closed, 1 half-open, 2 open.
    pub circuit: IntGaugeVec,
    /// Alerts firing in each Alertmanager's desired state.
    pub firing: IntGaugeVec,
    /// Unix time of the loop's last beat (liveness).
    pub heartbeat: IntGauge,
    /// Partitions of `alerts` this instance owns (0 until it joined its group).
    pub assigned: IntGauge,
    /// 1 once the group is joined and the owned partitions' state rebuilt (`/readyz`).
    pub ready: IntGauge,
    limiter: Arc<Mutex<BTreeMap<String, Instant>>>,
}

impl Default for DispatcherMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl DispatcherMetrics {
    /// Registers the metrics in a fresh registry.
    pub fn new() -> Self {
        // Every series carries stage="alert-dispatcher", beside process_* and build info.
        let registry = seqmon_runtime::metrics::component_registry("alert-dispatcher");
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("metric names are unique");
        };
        let input_records = IntCounter::new("seqmon_input_records_total", "Alert records read.")
            .expect("valid metric");
        reg(Box::new(input_records.clone()));
        let deliveries = IntCounterVec::new(
            Opts::new(
                "seqmon_deliveries_total",
                "Delivery attempts by receiver and outcome (delivered, retried, dead_lettered).",
            ),
            &["receiver", "outcome"],
        )
        .expect("valid metric");
        reg(Box::new(deliveries.clone()));
        let delivery_latency = HistogramVec::new(
            HistogramOpts::new(
                "seqmon_delivery_latency_seconds",
                "Seconds from an alert record's timestamp to its delivery.",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
            &["receiver"],
        )
        .expect("valid metric");
        reg(Box::new(delivery_latency.clone()));
        let in_flight =
            IntGauge::new("seqmon_in_flight", "Deliveries not finished.").expect("valid metric");
        reg(Box::new(in_flight.clone()));
        let circuit = IntGaugeVec::new(
            Opts::new(
                "seqmon_circuit_state",
                "Circuit breaker per receiver: 0 closed, 1 half-open, 2 open.",
            ),
            &["receiver"],
        )
        .expect("valid metric");
        reg(Box::new(circuit.clone()));
        let firing = IntGaugeVec::new(
            Opts::new(
                "seqmon_alertmanager_firing",
                "Alerts firing in the desired state of each Alertmanager.",
            ),
            &["receiver"],
        )
        .expect("valid metric");
        reg(Box::new(firing.clone()));
        let heartbeat = IntGauge::new(
            "seqmon_heartbeat_timestamp_seconds",
            "Unix time of the loop's last beat.",
        )
        .expect("valid metric");
        reg(Box::new(heartbeat.clone()));
        let assigned = IntGauge::new(
            "seqmon_assigned_partitions",
            "Partitions of the alerts topic this instance owns.",
        )
        .expect("valid metric");
        reg(Box::new(assigned.clone()));
        let ready = IntGauge::new(
            "seqmon_ready",
            "1 once joined and the owned partitions' state is rebuilt (what /readyz answers).",
        )
        .expect("valid metric");
        reg(Box::new(ready.clone()));
        DispatcherMetrics {
            registry,
            input_records,
            deliveries,
            delivery_latency,
            in_flight,
            circuit,
            firing,
            heartbeat,
            assigned,
            ready,
            limiter: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// Every series of a receiver at zero, so dashboards see them before the first event.
    pub fn register_receiver(&self, receiver: &str) {
        for o in Outcome::ALL {
            self.deliveries.with_label_values(&[receiver, o.as_str()]);
        }
        self.circuit.with_label_values(&[receiver]).set(0);
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        seqmon_runtime::metrics::render(&self.registry)
    }

    /// Whether a failure line of `receiver` may be written now (one per 30 s).
    fn may_log(&self, receiver: &str) -> bool {
        let mut l = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match l.get(receiver) {
            Some(t) if now.duration_since(*t) < Duration::from_secs(30) => false,
            _ => {
                l.insert(receiver.to_string(), now);
                true
            }
        }
    }
}

/// A delivery was accepted.
pub struct Delivered<'a> {
    pub receiver: &'a str,
    pub events: u64,
    /// Age of the oldest alert record it carried, seconds.
    pub age_s: Option<f64>,
}

impl Delivered<'_> {
    pub fn emit(&self, m: &DispatcherMetrics) {
        m.deliveries
            .with_label_values(&[self.receiver, Outcome::Delivered.as_str()])
            .inc_by(self.events);
        if let Some(age) = self.age_s {
            m.delivery_latency
                .with_label_values(&[self.receiver])
                .observe(age.max(0.0));
        }
        tracing::debug!(receiver = self.receiver, events = self.events, "delivered");
    }
}

/// An attempt failed; it will be tried again.
pub struct DeliveryRetried<'a> {
    pub receiver: &'a str,
    pub attempt: u32,
    pub error: &'a str,
    pub retry_in_ms: u64,
}

impl DeliveryRetried<'_> {
    pub fn emit(&self, m: &DispatcherMetrics) {
        m.deliveries
            .with_label_values(&[self.receiver, Outcome::Retried.as_str()])
            .inc();
        if m.may_log(self.receiver) {
            tracing::warn!(
                receiver = self.receiver,
                attempt = self.attempt,
                error = self.error,
                retry_in_ms = self.retry_in_ms,
                "delivery failed; retrying (further failures of this receiver are logged at most every 30 s)"
            );
        }
    }
}

/// An event was given up and written to the dead-letter topic.
pub struct DeliveryDeadLettered<'a> {
    pub receiver: &'a str,
    pub attempts: u32,
    pub error: &'a str,
}

impl DeliveryDeadLettered<'_> {
    pub fn emit(&self, m: &DispatcherMetrics) {
        m.deliveries
            .with_label_values(&[self.receiver, Outcome::DeadLettered.as_str()])
            .inc();
        if m.may_log(&format!("{}-dead", self.receiver)) {
            tracing::error!(
                receiver = self.receiver,
                attempts = self.attempts,
                error = self.error,
                "event given up after its attempts: written to the dead-letter topic (reason DELIVERY_FAILED)"
            );
        }
    }
}

/// A receiver's circuit breaker changed state.
pub struct CircuitChanged<'a> {
    pub receiver: &'a str,
    pub state: crate::retry::BreakerState,
}

impl CircuitChanged<'_> {
    pub fn emit(&self, m: &DispatcherMetrics) {
        m.circuit
            .with_label_values(&[self.receiver])
            .set(self.state.gauge());
        tracing::info!(receiver = self.receiver, state = ?self.state, "circuit breaker");
    }
}
