//! `ingest-gateway`: HTTPS (mutual TLS) ingest of collectors' batches into raw telemetry,
//! exactly once. See the library's header for the guarantees.
//!
//! Start-up order matters: the transactional producer is initialised first (fencing an earlier
//! instance with the same id, whose open transaction the broker then aborts), then the receipts
//! are read back from the changelog (read committed), and only then is the listener opened.
//! Exit code 2 for bad configuration (named), 1 for a runtime failure.

use std::process::ExitCode;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use seqmon_ingest_gateway::committer::Writer;
use seqmon_ingest_gateway::config::GatewayConfig;
use seqmon_ingest_gateway::http::Gateway;
use seqmon_ingest_gateway::ledger::{now_ms, Ledger, Receipt};
use seqmon_ingest_gateway::limiter::RateLimiter;
use seqmon_ingest_gateway::metrics::GatewayMetrics;
use seqmon_ingest_gateway::tls;
use seqmon_model::topics::TopicRole;
use seqmon_runtime::metrics::Answer;
use seqmon_runtime::RuntimeError;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

const SERVICE: &str = "ingest-gateway";
/// Longest TLS handshake allowed (before a client is authenticated).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    seqmon_runtime::service::init_logging();
    seqmon_runtime::service::exit_code(run(GatewayConfig::parse()))
}

fn run(mut cfg: GatewayConfig) -> Result<(), RuntimeError> {
    cfg.validate()?;
    cfg.kafka.load_files()?;
    let tls = tls::server_config(&cfg)?;
    if cfg.kafka.key_ring.is_none() {
        tracing::warn!("no encryption key ring (--encryption-keys-dir): raw telemetry is stored unsealed on the brokers' disks");
    }
    seqmon_runtime::kafka::preflight(&cfg.kafka, cfg.kafka.connect_timeout())?;

    let metrics = GatewayMetrics::new();
    let ledger = Arc::new(Mutex::new(Ledger::new(
        cfg.idempotency_window_s as i64 * 1000,
        cfg.max_receipts,
    )));
    let transactional_id = cfg.transactional_id.clone().unwrap_or_else(|| {
        seqmon_runtime::kafka::default_transactional_id(&cfg.kafka.topic_prefix, SERVICE)
    });
    let writer = Writer::new(
        &cfg.kafka,
        &transactional_id,
        ledger.clone(),
        metrics.clone(),
        cfg.max_batches_per_transaction,
    )?;
    restore_receipts(&cfg, &ledger, &metrics)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| RuntimeError::Io {
            context: "cannot start the tokio runtime".into(),
            source,
        })?;
    rt.block_on(serve(cfg, tls, writer, ledger, metrics, transactional_id))
}

/// Reads every receipt on the changelog back into the ledger.
fn restore_receipts(
    cfg: &GatewayConfig,
    ledger: &Mutex<Ledger>,
    metrics: &GatewayMetrics,
) -> Result<(), RuntimeError> {
    let started = Instant::now();
    let changelog = cfg.kafka.topic(TopicRole::ChangelogIngestGateway);
    let partitions = seqmon_runtime::kafka::topic_partitions(
        &cfg.kafka,
        &changelog,
        cfg.kafka.connect_timeout(),
    )?;
    let ring = cfg
        .kafka
        .key_ring
        .as_ref()
        .map(|r| (r, TopicRole::ChangelogIngestGateway));
    let latest = seqmon_runtime::kafka::read_changelog(
        &cfg.kafka,
        &format!("{}{SERVICE}-restore", cfg.kafka.topic_prefix),
        Duration::from_secs(cfg.restore_timeout_s),
        &changelog,
        &partitions,
        ring,
        &|| {},
    )?;
    let now = now_ms();
    let mut l = ledger
        .lock()
        .map_err(|_| RuntimeError::Internal("ledger lock poisoned".into()))?;
    for (key, entry) in latest {
        if let Some((_, error)) = &entry.undecodable {
            // A lost receipt costs at most one duplicate batch if its client retries.
            tracing::warn!(%changelog, partition = entry.partition, offset = entry.offset, %error, "receipt record does not decode; skipped");
        }
        let Some(snap) = entry.snapshot else { continue };
        let (k, r): (_, Receipt) = Receipt::from_snapshot(&key, &snap).map_err(|e| {
            RuntimeError::Internal(format!("{changelog}: receipt {key} does not read: {e}"))
        })?;
        l.restore(k, r, now);
    }
    metrics.receipts.set(l.len() as i64);
    tracing::info!(%changelog, receipts = l.len(), elapsed_ms = started.elapsed().as_millis() as u64, "receipts restored");
    Ok(())
}

/// Drops the connection count when a connection ends.
struct Connected(GatewayMetrics);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

/// At most one log line per 10 s about failed handshakes (with the count since the last), so a
/// scanner or a misconfigured site cannot flood the log.
static LAST_HANDSHAKE_LOG: AtomicI64 = AtomicI64::new(0);

fn handshake_failed(metrics: &GatewayMetrics, peer: std::net::SocketAddr, why: &str) {
    metrics.handshake_failures.inc();
    let now = now_ms() / 1000;
    let last = LAST_HANDSHAKE_LOG.load(Ordering::Relaxed);
    if now - last >= 10
        && LAST_HANDSHAKE_LOG
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(%peer, error = why, total = metrics.handshake_failures.get(), "TLS handshake failed (client certificate missing, untrusted, revoked or expired?)");
    }
}

async fn serve(
    cfg: GatewayConfig,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    writer: Writer,
    ledger: Arc<Mutex<Ledger>>,
    metrics: GatewayMetrics,
    transactional_id: String,
) -> Result<(), RuntimeError> {
    let (jobs, queue) = tokio::sync::mpsc::channel(cfg.max_batches_per_transaction * 4);
    let alive = writer.alive();
    let mut writer_done = tokio::task::spawn_blocking(move || writer.run(queue));
    let gateway = Arc::new(Gateway {
        max_records: cfg.max_records_per_batch,
        max_value_bytes: cfg.max_record_bytes,
        max_body_bytes: cfg.max_body_bytes,
        request_timeout: cfg.request_timeout(),
        limiter: Mutex::new(RateLimiter::new(cfg.rate_limit_per_s, cfg.rate_limit_burst)),
        ledger,
        jobs,
        memory: Arc::new(Semaphore::new(
            usize::try_from(cfg.max_inflight_mib * 1024).unwrap_or(Semaphore::MAX_PERMITS),
        )),
        metrics: metrics.clone(),
    });
    {
        let m = metrics.clone();
        let alive = alive.clone();
        let addr = cfg.metrics_addr;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| RuntimeError::Io {
                context: format!("cannot listen on --metrics-addr / SEQMON_METRICS_ADDR {addr}"),
                source,
            })?;
        tokio::spawn(async move {
            let served =
                seqmon_runtime::metrics::serve_listener_with(listener, move |path| match path {
                    "/metrics" => Answer::Ok(m.render()),
                    "/healthz" | "/readyz" if alive.load(Ordering::SeqCst) => {
                        Answer::Ok("ok\n".into())
                    }
                    "/healthz" | "/readyz" => {
                        Answer::Unavailable("the Kafka writer has stopped\n".into())
                    }
                    _ => Answer::NotFound,
                });
            if let Err(e) = served.await {
                tracing::error!(%addr, error = %e, "metrics endpoint failed");
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| RuntimeError::Io {
            context: format!("cannot listen on --listen {}", cfg.listen),
            source,
        })?;
    tracing::info!(listen = %cfg.listen, %transactional_id, raw_topic = %cfg.kafka.topic(TopicRole::Raw), "ingest gateway listening");
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(cfg.max_connections));
    let timeout = cfg.request_timeout();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let signal = seqmon_runtime::service::wait_for_signal();
    tokio::pin!(signal);
    let stopped_by = loop {
        let permit = tokio::select! {
            _ = &mut signal => break None,
            done = &mut writer_done => break Some(done),
            p = permits.clone().acquire_owned() => p,
        };
        let Ok(permit) = permit else { break None };
        let (tcp, peer) = tokio::select! {
            _ = &mut signal => break None,
            done = &mut writer_done => break Some(done),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let mut stopping = stop_rx.clone();
        let gateway = gateway.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            metrics.connections.inc();
            let _connected = Connected(metrics.clone());
            // Unauthenticated peers get a short handshake window, so idle sockets cannot hold
            // the connection slots for a whole request timeout.
            let handshake = timeout.min(HANDSHAKE_TIMEOUT);
            let stream = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return handshake_failed(&metrics, peer, &e.to_string()),
                Err(_) => return handshake_failed(&metrics, peer, "handshake timed out"),
            };
            let Some(client) = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(tls::client_identity)
            else {
                return handshake_failed(&metrics, peer, "no client certificate");
            };
            let client: Arc<str> = client.into();
            let service = service_fn(move |req| gateway.clone().handle(client.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopping.changed() => {
                    // Idle keep-alive connections close now; a request in flight finishes.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    };
    match stopped_by {
        Some(done) => {
            // The writer ended on its own: a fatal Kafka error.
            let result = done.map_err(|e| RuntimeError::Internal(format!("writer thread: {e}")))?;
            result.and(Err(RuntimeError::Internal(
                "the Kafka writer stopped".into(),
            )))
        }
        None => {
            tracing::info!("stopping: no new connections; finishing the requests in flight");
            drop(listener);
            let _ = stop_tx.send(());
            let drain = permits.acquire_many(cfg.max_connections as u32);
            let _ = tokio::time::timeout(timeout, drain).await;
            // Dropping the last sender ends the writer once its queue is empty.
            drop(gateway);
            match tokio::time::timeout(Duration::from_secs(60), writer_done).await {
                Ok(Ok(result)) => result,
                Ok(Err(e)) => Err(RuntimeError::Internal(format!("writer thread: {e}"))),
                Err(_) => Err(RuntimeError::Internal(
                    "the Kafka writer did not finish within 60 s".into(),
                )),
            }
        }
    }
}
