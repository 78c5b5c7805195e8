//! Prometheus metrics of a stage, and the HTTP endpoint serving `/metrics`, `/healthz` and
//! `/readyz`.
//!
//! Every seqmon component names its metrics `seqmon_<noun>_<unit>` and labels each series with
//! `stage="<component>"` (set once on the registry), so one query covers every stage. Other
//! labels are small fixed sets: the dead-letter reason (an enum), the output role, the
//! transaction outcome, an input partition. Every labelled series exists from start-up (zeros,
//! not gaps). The registry also carries `process_*` (CPU, memory, file descriptors, start time)
//! and `seqmon_build_info`.
//!
//! The endpoint is hyper's HTTP/1 server: one request per connection (no keep-alive), its
//! headers within 5 s, the whole exchange within 10 s; at most 64 connections at once, and one
//! more is closed at once rather than queued, so slow clients cannot hold a probe back for
//! long. A scrape never blocks the processing loop (it reads atomics).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use seqmon_model::DeadLetterReason;

use crate::events::{RebalanceKind, TransactionOutcome};

/// A registry for one seqmon component: every series carries `stage="<stage>"`; it holds the
/// process's `process_*` metrics (Linux) and `seqmon_build_info{version} 1`.
pub fn component_registry(stage: &str) -> Registry {
    let labels = HashMap::from([("stage".to_string(), stage.to_string())]);
    let registry = Registry::new_custom(None, Some(labels)).expect("valid stage label");
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process metrics registered once");
    let build_info = IntGaugeVec::new(
        Opts::new(
            "seqmon_build_info",
            "Always 1; the version of the running build in its label.",
        ),
        &["version"],
    )
    .expect("valid metric");
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    registry
        .register(Box::new(build_info))
        .expect("build info registered once");
    registry
}

/// The Prometheus text exposition of every metric in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&registry.gather(), &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// How long the loop may be silent before `/healthz` fails. The loop beats between batches and
/// while restoring state, so only a stuck loop stays silent this long.
pub const LIVENESS_SILENCE_SECS: i64 = 60;

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
    /// 1 while state is being restored.
    pub restoring: IntGauge,
    /// 1 while the assigned partitions' state cannot be restored (retried with backoff).
    pub restore_failing: IntGauge,
    /// State snapshots that did not restore and were quarantined.
    pub state_quarantined: IntCounter,
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
    /// Time from an input record's Kafka timestamp to the commit of the transaction that
    /// consumed it: how far behind the stage's output is.
    pub event_to_commit_seconds: Histogram,
    /// Records between the consumer's position and the end of each assigned input partition
    /// (the last stable offset: this consumer reads committed data only), by topic and partition.
    pub consumer_lag: IntGaugeVec,
    /// 1 when `/readyz` answers 200: joined the group, state restored, lag within bound.
    pub ready: IntGauge,
    /// Unix seconds of the last loop iteration, for liveness.
    pub heartbeat: Arc<AtomicI64>,
}

impl StageMetrics {
    /// Registers the metrics of `stage` in a fresh registry.
    pub fn new(stage: &str) -> Self {
        let registry = component_registry(stage);
        let register = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("unique metric");
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(format!("seqmon_{name}"), help).expect("valid metric");
            register(Box::new(c.clone()));
            c
        };
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(format!("seqmon_{name}"), help), labels)
                .expect("valid metric");
            register(Box::new(c.clone()));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(format!("seqmon_{name}"), help).expect("valid metric");
            register(Box::new(g.clone()));
            g
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(
                HistogramOpts::new(format!("seqmon_{name}"), help).buckets(buckets),
            )
            .expect("valid metric");
            register(Box::new(h.clone()));
            h
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
            &["reason"],
        );
        let output_records = vec(
            "output_records_total",
            "Records produced, by output.",
            &["output"],
        );
        let transactions = vec(
            "transactions_total",
            "Kafka transactions, by outcome.",
            &["outcome"],
        );
        let restored_state_keys = counter(
            "restored_state_keys_total",
            "State keys restored from the changelog.",
        );
        let state_quarantined = counter(
            "state_quarantined_total",
            "State snapshots that did not restore: dead-lettered, the key started afresh.",
        );
        let consumer_errors = counter(
            "consumer_errors_total",
            "Errors reported by the input consumer.",
        );
        let rebalances = vec(
            "rebalances_total",
            "Consumer-group rebalances, by kind.",
            &["kind"],
        );
        let assigned_partitions = gauge(
            "assigned_partitions",
            "Input partitions assigned to this instance.",
        );
        let restoring = gauge("restoring", "1 while state is being restored.");
        let restore_failing = gauge(
            "state_restore_failing",
            "1 while the assigned partitions' state cannot be restored: their input waits, the \
             restore is retried with backoff.",
        );
        let ready = gauge(
            "ready",
            "1 when joined, restored and caught up (what /readyz answers).",
        );
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "seqmon_consumer_lag_records",
                "Records between the consumer's position and the last stable offset, by input \
                 partition.",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        register(Box::new(consumer_lag.clone()));
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
        // 5 ms to about 44 min: a stage keeping up commits within its batch wait; minutes mean
        // it (or a stage before it) is behind, and an alert threshold may sit anywhere there.
        let event_to_commit_seconds = histogram(
            "event_to_commit_seconds",
            "Time from an input record's Kafka timestamp to the commit that consumed it.",
            prometheus::exponential_buckets(0.005, 2.0, 20).expect("valid buckets"),
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
            restoring,
            restore_failing,
            state_quarantined,
            consumer_errors,
            rebalances,
            assigned_partitions,
            transaction_seconds,
            batch_records,
            event_to_commit_seconds,
            consumer_lag,
            ready,
            heartbeat: Arc::new(AtomicI64::new(now_secs())),
        }
    }

    /// Records that the loop is alive.
    pub fn beat(&self) {
        self.heartbeat.store(now_secs(), Ordering::Relaxed);
    }

    /// Seconds since the loop last beat.
    pub fn silence_secs(&self) -> i64 {
        now_secs() - self.heartbeat.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What a probe or scrape is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 200 with this body.
    Ok(String),
    /// 503 with this body (the reason).
    Unavailable(String),
    /// 404.
    NotFound,
}

impl Answer {
    /// `Ok` when `healthy`, else `Unavailable`.
    pub fn health(healthy: bool, body: String) -> Self {
        if healthy {
            Answer::Ok(body)
        } else {
            Answer::Unavailable(body)
        }
    }
}

/// Serves a stage's `/metrics` (Prometheus text), `/healthz` (200 while the loop beat in the
/// last [`LIVENESS_SILENCE_SECS`]; the loop beats while restoring too) and `/readyz` (200 when
/// joined, restored and caught up; see [`StageMetrics::ready`]) until the process exits.
pub async fn serve(addr: std::net::SocketAddr, metrics: StageMetrics) -> std::io::Result<()> {
    serve_with(addr, move |path| match path {
        "/metrics" => Answer::Ok(metrics.render()),
        "/healthz" => match metrics.silence_secs() {
            silent if silent <= LIVENESS_SILENCE_SECS => Answer::Ok("ok\n".into()),
            silent => Answer::Unavailable(format!("processing loop silent for {silent} s\n")),
        },
        "/readyz" => {
            // The gauge is set from statistics the loop receives while it polls: a loop that
            // stopped polling would leave it at 1.
            let alive = metrics.silence_secs() <= LIVENESS_SILENCE_SECS;
            let ready = alive && metrics.ready.get() == 1;
            Answer::health(
                ready,
                if ready {
                    "ready\n".into()
                } else if !alive {
                    "processing loop silent\n".into()
                } else if metrics.restore_failing.get() == 1 {
                    "state restore failing (see the error log; retried with backoff)\n".into()
                } else if metrics.restoring.get() == 1 {
                    "restoring state\n".into()
                } else {
                    "not joined or behind (see seqmon_consumer_lag_records)\n".into()
                },
            )
        }
        _ => Answer::NotFound,
    })
    .await
}

/// A plain-HTTP endpoint for the cluster's own scrapers and probes: `answer(path)` gives the
/// answer for a GET or HEAD of `path` (the query string is ignored); other methods get 405.
pub async fn serve_with<F>(addr: std::net::SocketAddr, answer: F) -> std::io::Result<()>
where
    F: Fn(&str) -> Answer + Send + Sync + 'static,
{
    serve_listener_with(tokio::net::TcpListener::bind(addr).await?, answer).await
}

/// Most connections served at once; one more is closed at once.
const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one connection (its one request and answer).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

/// [`serve_with`] on a listener bound already (so a port in use fails the caller's start-up).
pub async fn serve_listener_with<F>(
    listener: tokio::net::TcpListener,
    answer: F,
) -> std::io::Result<()>
where
    F: Fn(&str) -> Answer + Send + Sync + 'static,
{
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};

    let answer = Arc::new(answer);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics endpoint listening");
    }
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            // Out of file descriptors or a connection reset before accept: transient; the
            // endpoint must outlive it.
            Err(e) => {
                tracing::debug!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Full: close this one now (the peer sees a reset and retries) instead of queueing it
        // behind slow clients.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(sock);
            continue;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = respond(&req, answer.as_ref());
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .keep_alive(false)
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(sock), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            drop(permit);
        });
    }
}

fn respond<B>(
    req: &hyper::Request<B>,
    answer: &(impl Fn(&str) -> Answer + ?Sized),
) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>> {
    use hyper::{header, Method, StatusCode};
    let text = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = hyper::Response::new(http_body_util::Full::new(
            hyper::body::Bytes::from(if req.method() == Method::HEAD {
                String::new()
            } else {
                body
            }),
        ));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        response
    };
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "GET or HEAD only\n".into(),
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let path = req.uri().path();
    let content_type = if path == "/metrics" {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        PLAIN
    };
    match answer(path) {
        Answer::Ok(body) => text(StatusCode::OK, content_type, body),
        Answer::Unavailable(body) => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, body),
        Answer::NotFound => text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sends `request` raw and returns the whole response (the server closes after it).
    async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
        let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
        sock.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        sock.read_to_string(&mut response).await.expect("read");
        response
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn the_endpoint_answers_paths_methods_and_query_strings_as_http_says() {
        runtime().block_on(async {
            let metrics = StageMetrics::new("validator");
            metrics.ready.set(1);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let m = metrics.clone();
            tokio::spawn(serve_listener_with(listener, move |path| match path {
                "/metrics" => Answer::Ok(m.render()),
                "/readyz" => Answer::health(m.ready.get() == 1, "ready\n".into()),
                "/healthz" => Answer::Unavailable("silent\n".into()),
                _ => Answer::NotFound,
            }));
            let scrape = exchange(addr, &get("/metrics?debug=1")).await;
            assert!(scrape.starts_with("HTTP/1.1 200"), "{scrape}");
            assert!(scrape.contains("text/plain; version=0.0.4"), "{scrape}");
            assert!(scrape.contains("seqmon_input_records_total{stage=\"validator\"} 0"));
            assert!(exchange(addr, &get("/readyz")).await.starts_with("HTTP/1.1 200"));
            let sick = exchange(addr, &get("/healthz")).await;
            assert!(sick.starts_with("HTTP/1.1 503") && sick.ends_with("silent\n"), "{sick}");
            assert!(exchange(addr, &get("/metricsx")).await.starts_with("HTTP/1.1 404"));
            let post = "POST /metrics HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
            let refused = exchange(addr, post).await;
            assert!(refused.starts_with("HTTP/1.1 405"), "{refused}");
            assert!(refused.to_ascii_lowercase().contains("allow: get, head"));
            let head = "HEAD /readyz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n";
            let answered = exchange(addr, head).await;
            assert!(answered.starts_with("HTTP/1.1 200") && answered.ends_with("\r\n\r\n"));
            let garbage = exchange(addr, "\x16\x03\x01 not http\r\n\r\n").await;
            assert!(garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"), "{garbage}");
        });
    }

    #[test]
    fn a_client_that_never_sends_its_headers_is_cut_off() {
        runtime().block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(serve_listener_with(listener, |_| Answer::Ok("ok".into())));
            let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
            silent
                .write_all(b"GET /metrics HTTP/1.1\r\n")
                .await
                .unwrap();
            let mut rest = Vec::new();
            let closed = tokio::time::timeout(
                HEADER_READ_TIMEOUT + Duration::from_secs(5),
                silent.read_to_end(&mut rest),
            )
            .await;
            assert!(
                closed.is_ok(),
                "the connection stayed open past the header timeout"
            );
            // Meanwhile others are served.
            let ok = exchange(addr, &get("/metrics")).await;
            assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        });
    }

    #[test]
    fn every_series_carries_the_stage_and_labelled_series_exist_from_the_start() {
        let metrics = StageMetrics::new("privacy-enforcer");
        let text = metrics.render();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect();
        assert!(!series.is_empty());
        for s in &series {
            assert!(s.contains("stage=\"privacy-enforcer\""), "{s}");
        }
        for r in DeadLetterReason::ALL {
            let code = r.code();
            assert!(
                text.contains(&format!(
                    "seqmon_dead_letter_records_total{{reason=\"{code}\","
                )),
                "{code} not pre-initialised"
            );
        }
        assert!(text.contains("seqmon_transactions_total{outcome=\"aborted\""));
        let build_info = format!(
            "seqmon_build_info{{version=\"{}\",stage=\"privacy-enforcer\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&build_info), "{build_info} not in\n{text}");
        assert!(text.contains("# TYPE seqmon_event_to_commit_seconds histogram"));
        #[cfg(target_os = "linux")]
        for family in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
        ] {
            assert!(
                text.contains(&format!("{family}{{stage=")),
                "{family} missing"
            );
        }
    }
}
