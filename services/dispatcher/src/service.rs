//! The running dispatcher: the consumer loop, one task per receiver, the dead-letter writer.
//! See the crate header for what it guarantees.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use seqmon_model::topics::TopicRole;
use seqmon_model::{decode, encode, Alert, DeadLetter, DeadLetterReason};
use seqmon_runtime::RuntimeError;
use tokio::sync::{mpsc, Notify};

use crate::am::AmState;
use crate::config::DispatcherConfig;
use crate::events::{
    CircuitChanged, Delivered, DeliveryDeadLettered, DeliveryRetried, DispatcherMetrics,
};
use crate::offsets::OffsetTracker;
use crate::retry::{unit_random, Backoff, Breaker, BreakerState, TokenBucket};
use crate::webhook::{self, Endpoint};

/// Where an alert record came from, so its offset can be marked done.
#[derive(Debug, Clone, Copy)]
struct Origin {
    generation: u64,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
}

/// One delivery finished (delivered or dead-lettered).
type Done = Origin;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn age_s(o: &Origin) -> Option<f64> {
    o.timestamp_ms.map(|t| (now_ms() - t) as f64 / 1000.0)
}

/// The site of an alert: the inventory's, `fleet` for a fleet alert, `unknown` otherwise.
pub fn site_of<'a>(inventory: &'a BTreeMap<String, String>, a: &Alert) -> &'a str {
    if a.cohort.is_some() {
        return "fleet";
    }
    inventory
        .get(&a.instrument_serial)
        .map(String::as_str)
        .unwrap_or("unknown")
}

/// Writes dead letters for deliveries given up; retries until the broker takes them.
#[derive(Clone)]
struct DeadLetters {
    /// None in process (`seqmon-pipeline`): dead letters are counted and logged.
    producer: Option<FutureProducer>,
    topic: String,
    source_topic: String,
    counted: Arc<AtomicU64>,
}

impl DeadLetters {
    async fn write(
        &self,
        origin: &Origin,
        key: &[u8],
        original: &[u8],
        reason: DeadLetterReason,
        detail: String,
    ) {
        let record = DeadLetter {
            stage: "alert-dispatcher".into(),
            reason,
            detail,
            source_topic: self.source_topic.clone(),
            source_partition: origin.partition,
            source_offset: origin.offset,
            source_key: Some(key.to_vec()),
            source_timestamp_ms: origin.timestamp_ms,
            original_bytes: original.to_vec(),
        };
        let Some(producer) = &self.producer else {
            self.counted.fetch_add(1, Ordering::SeqCst);
            tracing::info!(detail = %record.detail, "delivery given up (in process: no dead-letter topic)");
            return;
        };
        let Ok(bytes) = encode(&record) else {
            tracing::error!("a dead letter does not encode; dropped");
            return;
        };
        let mut attempt = 0u32;
        loop {
            let r = FutureRecord::to(&self.topic).key(key).payload(&bytes);
            match producer.send(r, Duration::from_secs(30)).await {
                Ok(_) => return,
                Err((e, _)) => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "cannot write a dead letter; retrying");
                    tokio::time::sleep(Duration::from_millis(500u64 << attempt.min(6))).await;
                }
            }
        }
    }
}

/// One event for one webhook endpoint.
struct Job {
    origin: Origin,
    key: Arc<Vec<u8>>,
    alert_bytes: Arc<Vec<u8>>,
    event_id: String,
    body: Arc<Vec<u8>>,
    attempts: u32,
}

/// Retry settings shared by the receivers.
#[derive(Clone, Copy)]
struct RetryCfg {
    backoff: Backoff,
    breaker_failures: u32,
    breaker_cooldown_ms: u64,
}

/// How an Alertmanager is kept in step.
#[derive(Clone, Copy)]
struct AmCfg {
    resend: Duration,
    batch: usize,
}

fn classify(r: Result<reqwest::StatusCode, reqwest::Error>) -> Result<(), (bool, String)> {
    match r {
        Ok(s) if s.is_success() => Ok(()),
        Ok(s) if s.as_u16() == 408 || s.as_u16() == 429 || s.is_server_error() => {
            Err((true, format!("HTTP {s}")))
        }
        Ok(s) => Err((false, format!("HTTP {s} (final)"))),
        Err(e) if e.is_timeout() => Err((true, "timed out".into())),
        Err(e) => Err((true, format!("{e}"))),
    }
}

/// Delivers one endpoint's events: waiting retries in a heap by due time, one request at a time.
async fn webhook_worker(
    ep: Endpoint,
    client: reqwest::Client,
    mut rx: mpsc::UnboundedReceiver<Job>,
    done: mpsc::UnboundedSender<Done>,
    dead: DeadLetters,
    retry: RetryCfg,
    metrics: DispatcherMetrics,
) {
    let receiver = format!("webhook-{}", ep.name);
    let start = Instant::now();
    let ms = || start.elapsed().as_millis() as u64;
    let mut breaker = Breaker::new(retry.breaker_failures, retry.breaker_cooldown_ms);
    let mut bucket = TokenBucket::new(ep.rate_per_minute, ep.burst, ms());
    let mut waiting: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let mut jobs: BTreeMap<u64, Job> = BTreeMap::new();
    let mut seq = 0u64;
    let mut last_state = BreakerState::Closed;
    let mut open = true;
    loop {
        let next_due = waiting.peek().map(|Reverse((due, _))| *due);
        let sleep = match next_due {
            Some(due) => Duration::from_millis(due.saturating_sub(ms())),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            job = rx.recv(), if open => match job {
                Some(job) => {
                    seq += 1;
                    waiting.push(Reverse((ms(), seq)));
                    jobs.insert(seq, job);
                }
                None => open = false,
            },
            _ = tokio::time::sleep(sleep), if next_due.is_some() => {
                let Some(Reverse((_, id))) = waiting.pop() else { continue };
                let Some(mut job) = jobs.remove(&id) else { continue };
                if let Err(wait) = bucket.take(ms()) {
                    seq += 1;
                    waiting.push(Reverse((ms() + wait, seq)));
                    jobs.insert(seq, job);
                    continue;
                }
                job.attempts += 1;
                let result = if breaker.admit(ms()) {
                    let ts = now_ms() / 1000;
                    let sig = webhook::sign(ep.secret.expose().as_bytes(), ts, &job.body);
                    let sent = client
                        .post(&ep.url)
                        .header("content-type", "application/json")
                        .header(webhook::TIMESTAMP_HEADER, ts.to_string())
                        .header(webhook::SIGNATURE_HEADER, sig)
                        .header(webhook::IDEMPOTENCY_HEADER, &job.event_id)
                        .body(job.body.as_ref().clone())
                        .send()
                        .await
                        .map(|r| r.status());
                    let c = classify(sent);
                    match &c {
                        Ok(()) => breaker.success(),
                        Err((true, _)) => breaker.failure(ms()),
                        // The endpoint answered: it is up.
                        Err((false, _)) => breaker.success(),
                    }
                    c
                } else {
                    Err((true, "circuit open".to_string()))
                };
                let state = breaker.state(ms());
                if state != last_state {
                    CircuitChanged { receiver: &receiver, state }.emit(&metrics);
                    last_state = state;
                }
                match result {
                    Ok(()) => {
                        Delivered { receiver: &receiver, events: 1, age_s: age_s(&job.origin) }.emit(&metrics);
                        let _ = done.send(job.origin);
                    }
                    Err((retriable, error)) if !retriable || job.attempts >= ep.max_attempts => {
                        DeliveryDeadLettered { receiver: &receiver, attempts: job.attempts, error: &error }.emit(&metrics);
                        let detail = format!("webhook {}: {error} after {} attempt(s); event {}", ep.name, job.attempts, job.event_id);
                        dead.write(&job.origin, &job.key, &job.alert_bytes, DeadLetterReason::DELIVERY_FAILED, detail).await;
                        let _ = done.send(job.origin);
                    }
                    Err((_, error)) => {
                        let delay = retry.backoff.delay(job.attempts, unit_random());
                        DeliveryRetried { receiver: &receiver, attempt: job.attempts, error: &error, retry_in_ms: delay }.emit(&metrics);
                        seq += 1;
                        waiting.push(Reverse((ms() + delay, seq)));
                        jobs.insert(seq, job);
                    }
                }
            },
            else => return,
        }
    }
}

/// One Alertmanager: its desired state and the records waiting for it to take their alert.
struct AmSlot {
    url: String,
    state: Mutex<AmState>,
    /// Alert id → records whose delivery completes when that alert is posted.
    waiting: Mutex<BTreeMap<String, Vec<Origin>>>,
    wake: Notify,
}

/// Keeps one Alertmanager in step: posts dirty alerts until accepted, re-posts the firing ones
/// every resend interval.
async fn am_worker(
    index: usize,
    slot: Arc<AmSlot>,
    client: reqwest::Client,
    done: mpsc::UnboundedSender<Done>,
    retry: RetryCfg,
    am: AmCfg,
    metrics: DispatcherMetrics,
) {
    let AmCfg { resend, batch } = am;
    let receiver = format!("alertmanager-{index}");
    let url = format!("{}/api/v2/alerts", slot.url.trim_end_matches('/'));
    let ttl_ms = 4 * resend.as_millis() as i64;
    let start = Instant::now();
    let ms = || start.elapsed().as_millis() as u64;
    let mut breaker = Breaker::new(retry.breaker_failures, retry.breaker_cooldown_ms);
    let mut last_state = BreakerState::Closed;
    let mut failures = 0u32;
    let mut next_resend = Instant::now();
    loop {
        let resend_now = Instant::now() >= next_resend;
        let (ids, alerts) = {
            let s = slot.state.lock().unwrap_or_else(|e| e.into_inner());
            metrics
                .firing
                .with_label_values(&[&receiver])
                .set(s.firing_count() as i64);
            if resend_now {
                (Vec::new(), s.firing(now_ms(), ttl_ms))
            } else {
                s.pending(now_ms(), ttl_ms, batch)
            }
        };
        if alerts.is_empty() && !resend_now {
            tokio::select! {
                _ = slot.wake.notified() => {},
                _ = tokio::time::sleep_until(next_resend.into()) => {},
            }
            continue;
        }
        let mut ok = true;
        for chunk in alerts.chunks(batch) {
            let result = if breaker.admit(ms()) {
                let sent = client
                    .post(&url)
                    .json(chunk)
                    .send()
                    .await
                    .map(|r| r.status());
                let c = classify(sent);
                match &c {
                    Ok(()) => breaker.success(),
                    Err(_) => breaker.failure(ms()),
                }
                c
            } else {
                Err((true, "circuit open".to_string()))
            };
            let state = breaker.state(ms());
            if state != last_state {
                CircuitChanged {
                    receiver: &receiver,
                    state,
                }
                .emit(&metrics);
                last_state = state;
            }
            if let Err((_, error)) = result {
                failures += 1;
                let delay = retry.backoff.delay(failures, unit_random());
                DeliveryRetried {
                    receiver: &receiver,
                    attempt: failures,
                    error: &error,
                    retry_in_ms: delay,
                }
                .emit(&metrics);
                tokio::time::sleep(Duration::from_millis(delay)).await;
                ok = false;
                break;
            }
        }
        if !ok {
            continue;
        }
        failures = 0;
        if resend_now {
            next_resend = Instant::now() + resend;
            continue;
        }
        slot.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .posted(&ids);
        let finished: Vec<Origin> = {
            let mut w = slot.waiting.lock().unwrap_or_else(|e| e.into_inner());
            ids.iter()
                .flat_map(|id| w.remove(id).unwrap_or_default())
                .collect()
        };
        let oldest = finished
            .iter()
            .filter_map(age_s)
            .fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.max(a))));
        Delivered {
            receiver: &receiver,
            events: finished.len() as u64,
            age_s: oldest,
        }
        .emit(&metrics);
        for o in finished {
            let _ = done.send(o);
        }
        slot.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .prune(10_000);
    }
}

/// Rebalances bump the generation: deliveries of an earlier generation no longer count.
struct Ctx {
    generation: Arc<AtomicU64>,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, _c: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = r {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Rebuilds each Alertmanager's desired state from `alerts` up to the group's committed offsets.
fn restore(
    cfg: &DispatcherConfig,
    topic: &str,
    slots: &[Arc<AmSlot>],
    inventory: &BTreeMap<String, String>,
) -> Result<u64, RuntimeError> {
    if slots.is_empty() {
        return Ok(0);
    }
    let timeout = cfg.kafka.connect_timeout();
    let c: rdkafka::consumer::BaseConsumer = cfg
        .kafka
        .client_config()
        .set("group.id", cfg.group())
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(RuntimeError::kafka("create restore consumer"))?;
    let parts = seqmon_runtime::kafka::topic_partitions(&cfg.kafka, topic, timeout)?;
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition(topic, *p);
    }
    let committed = c
        .committed_offsets(tpl, timeout)
        .map_err(RuntimeError::kafka("committed offsets"))?;
    let mut start = TopicPartitionList::new();
    let mut until: BTreeMap<i32, i64> = BTreeMap::new();
    for e in committed.elements() {
        let (low, _) = c
            .fetch_watermarks(topic, e.partition(), timeout)
            .map_err(RuntimeError::kafka("watermarks"))?;
        if let Offset::Offset(o) = e.offset() {
            if o > low {
                until.insert(e.partition(), o);
                start
                    .add_partition_offset(topic, e.partition(), Offset::Offset(low))
                    .map_err(RuntimeError::kafka("assign"))?;
            }
        }
    }
    if until.is_empty() {
        return Ok(0);
    }
    c.assign(&start).map_err(RuntimeError::kafka("assign"))?;
    let mut n = 0u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    while !until.is_empty() && Instant::now() < deadline {
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                if until.get(&m.partition()).is_some_and(|u| m.offset() < *u) {
                    if let Ok(a) = decode::<Alert>(m.payload().unwrap_or_default()) {
                        let site = site_of(inventory, &a);
                        for s in slots {
                            s.state
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .apply(&a, site);
                        }
                        n += 1;
                    }
                }
                if until
                    .get(&m.partition())
                    .is_some_and(|u| m.offset() + 1 >= *u)
                {
                    until.remove(&m.partition());
                }
            }
            Some(Err(e)) => return Err(RuntimeError::kafka("restore")(e)),
            None => {
                // The rest of a partition may be transaction markers.
                if let Ok(pos) = c.position() {
                    until.retain(|p, u| !matches!(pos.find_partition(topic, *p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= *u));
                }
            }
        }
    }
    for s in slots {
        s.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .settle_restored();
    }
    Ok(n)
}

fn client(timeout: Duration, ca: Option<&std::path::Path>) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)));
    if let Some(path) = ca {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate", path.display()));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| e.to_string())
}

/// Runs the dispatcher until SIGTERM or SIGINT.
pub async fn run(cfg: DispatcherConfig, metrics: DispatcherMetrics) -> Result<(), RuntimeError> {
    let (endpoints, inventory) = cfg.load_files()?;
    let retry = RetryCfg {
        backoff: Backoff {
            base_ms: cfg.backoff_base_ms,
            cap_ms: cfg.backoff_cap_ms,
        },
        breaker_failures: cfg.breaker_failures,
        breaker_cooldown_ms: cfg.breaker_cooldown_s * 1000,
    };
    let bad = |setting: &str, message: String| RuntimeError::Config {
        setting: setting.into(),
        message,
    };
    let alerts_topic = cfg.kafka.topic(TopicRole::Alerts);
    let producer: FutureProducer = cfg
        .kafka
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .map_err(RuntimeError::kafka("create producer"))?;
    let dead = DeadLetters {
        producer: Some(producer),
        counted: Arc::new(AtomicU64::new(0)),
        topic: cfg.kafka.topic(TopicRole::DeadLetters),
        source_topic: alerts_topic.clone(),
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();

    // Alertmanagers: state rebuilt from the topic first, then kept in step.
    let slots: Vec<Arc<AmSlot>> = cfg
        .alertmanager_urls
        .iter()
        .map(|u| {
            Arc::new(AmSlot {
                url: u.clone(),
                state: Mutex::new(AmState::new(cfg.console_url.clone())),
                waiting: Mutex::new(BTreeMap::new()),
                wake: Notify::new(),
            })
        })
        .collect();
    let restored =
        tokio::task::block_in_place(|| restore(&cfg, &alerts_topic, &slots, &inventory))?;
    tracing::info!(
        records = restored,
        alertmanagers = slots.len(),
        "Alertmanager state rebuilt from the alerts topic"
    );
    let am_client = client(
        Duration::from_secs(cfg.alertmanager_timeout_s),
        cfg.alertmanager_ca_file.as_deref(),
    )
    .map_err(|e| {
        bad(
            "--alertmanager-ca-file / DISPATCHER_ALERTMANAGER_CA_FILE",
            e,
        )
    })?;
    for (i, slot) in slots.iter().enumerate() {
        metrics.register_receiver(&format!("alertmanager-{i}"));
        tokio::spawn(am_worker(
            i,
            slot.clone(),
            am_client.clone(),
            done_tx.clone(),
            retry,
            AmCfg {
                resend: Duration::from_secs(cfg.resend_interval_s),
                batch: cfg.alertmanager_batch,
            },
            metrics.clone(),
        ));
    }
    // Webhooks: a task each.
    let mut hooks: Vec<(Endpoint, mpsc::UnboundedSender<Job>)> = Vec::new();
    for ep in endpoints {
        let c =
            client(Duration::from_millis(ep.timeout_ms), ep.ca_file.as_deref()).map_err(|e| {
                bad(
                    "--webhooks-file / DISPATCHER_WEBHOOKS_FILE",
                    format!("webhook {}: {e}", ep.name),
                )
            })?;
        let (tx, rx) = mpsc::unbounded_channel();
        metrics.register_receiver(&format!("webhook-{}", ep.name));
        tokio::spawn(webhook_worker(
            ep.clone(),
            c,
            rx,
            done_tx.clone(),
            dead.clone(),
            retry,
            metrics.clone(),
        ));
        hooks.push((ep, tx));
    }

    let generation = Arc::new(AtomicU64::new(0));
    let consumer: StreamConsumer<Ctx> = cfg
        .kafka
        .client_config()
        .set("group.id", cfg.group())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (cfg.session_timeout_ms / 4).to_string(),
        )
        .create_with_context(Ctx {
            generation: generation.clone(),
        })
        .map_err(RuntimeError::kafka("create consumer"))?;
    consumer
        .subscribe(&[&alerts_topic])
        .map_err(RuntimeError::kafka("subscribe"))?;
    tracing::info!(topic = %alerts_topic, group = %cfg.group(), webhooks = hooks.len(), alertmanagers = slots.len(), "dispatching");

    let mut tracker = OffsetTracker::default();
    let mut seen_generation = 0u64;
    let mut paused = false;
    let mut commit_tick = tokio::time::interval(Duration::from_secs(1));
    let signal = seqmon_runtime::service::wait_for_signal();
    tokio::pin!(signal);
    let mut stopping: Option<Instant> = None;
    loop {
        metrics.heartbeat.set(now_ms() / 1000);
        let g = generation.load(Ordering::SeqCst);
        if g != seen_generation {
            seen_generation = g;
            tracker.forget();
        }
        let in_flight = tracker.in_flight();
        metrics.in_flight.set(in_flight as i64);
        if let Some(since) = stopping {
            if in_flight == 0 || since.elapsed() > Duration::from_secs(10) {
                commit(&consumer, &alerts_topic, &mut tracker, CommitMode::Sync);
                tracing::info!(in_flight, "stopped: finished deliveries committed");
                return Ok(());
            }
        }
        let want_pause = in_flight >= cfg.max_in_flight || stopping.is_some();
        if want_pause != paused {
            if let Ok(a) = consumer.assignment() {
                let r = if want_pause {
                    consumer.pause(&a)
                } else if in_flight <= cfg.max_in_flight / 2 || stopping.is_some() {
                    consumer.resume(&a)
                } else {
                    Ok(())
                };
                if r.is_ok() && (want_pause || in_flight <= cfg.max_in_flight / 2) {
                    paused = want_pause;
                    tracing::info!(
                        paused,
                        in_flight,
                        "consumer {}",
                        if paused {
                            "paused: deliveries back up"
                        } else {
                            "resumed"
                        }
                    );
                }
            }
        }
        tokio::select! {
            m = consumer.recv(), if !paused => {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                metrics.input_records.inc();
                let origin = Origin { generation: seen_generation, partition: m.partition(), offset: m.offset(), timestamp_ms: m.timestamp().to_millis() };
                let key = Arc::new(m.key().unwrap_or_default().to_vec());
                let bytes = Arc::new(m.payload().unwrap_or_default().to_vec());
                let a: Alert = match decode(&bytes) {
                    Ok(a) => a,
                    Err(e) => {
                        tracker.track(origin.partition, origin.offset, 1);
                        dead.write(&origin, &key, &bytes, e.reason(), format!("alert record does not decode: {e}")).await;
                        tracker.done(origin.partition, origin.offset);
                        continue;
                    }
                };
                let site = site_of(&inventory, &a).to_string();
                let targets: Vec<&(Endpoint, mpsc::UnboundedSender<Job>)> = hooks.iter().filter(|(ep, _)| ep.filter.matches(&a, &site)).collect();
                tracker.track(origin.partition, origin.offset, (slots.len() + targets.len()) as u32);
                for slot in &slots {
                    slot.waiting.lock().unwrap_or_else(|e| e.into_inner()).entry(a.alert_id.clone()).or_default().push(origin);
                    slot.state.lock().unwrap_or_else(|e| e.into_inner()).apply(&a, &site);
                    slot.wake.notify_one();
                }
                if !targets.is_empty() {
                    let body = Arc::new(webhook::body(&a, &site));
                    let event_id = webhook::event_id(&a);
                    for (_, tx) in targets {
                        let job = Job { origin, key: key.clone(), alert_bytes: bytes.clone(), event_id: event_id.clone(), body: body.clone(), attempts: 0 };
                        if tx.send(job).is_err() {
                            return Err(RuntimeError::Internal("a webhook task ended".into()));
                        }
                    }
                }
            }
            Some(d) = done_rx.recv() => {
                if d.generation == seen_generation {
                    tracker.done(d.partition, d.offset);
                }
            }
            _ = commit_tick.tick() => commit(&consumer, &alerts_topic, &mut tracker, CommitMode::Async),
            _ = &mut signal, if stopping.is_none() => {
                tracing::info!(in_flight, "SIGTERM: finishing deliveries in hand (at most 10 s), then committing");
                stopping = Some(Instant::now());
            }
        }
    }
}

fn commit(
    consumer: &StreamConsumer<Ctx>,
    topic: &str,
    tracker: &mut OffsetTracker,
    mode: CommitMode,
) {
    let ready = tracker.committable();
    if ready.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in ready {
        let _ = tpl.add_partition_offset(topic, p, Offset::Offset(o));
    }
    if let Err(e) = consumer.commit(&tpl, mode) {
        tracing::warn!(error = %e, "offset commit failed; the records are redelivered after a restart");
    }
}

/// What an in-process delivery did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LocalCounts {
    /// Receivers configured (Alertmanagers and webhook endpoints).
    pub receivers: u64,
    /// Alert records handed over.
    pub events: u64,
    /// Deliveries they asked for (one per receiver that subscribed), and how they ended.
    pub deliveries: u64,
    pub delivered: u64,
    pub dead_lettered: u64,
    /// Not finished when the wait ended.
    pub unfinished: u64,
}

/// The dispatcher's receivers in process, without Kafka: what `seqmon-pipeline` (make run)
/// delivers its alerts with. Same Alertmanager reconciliation and webhook workers; dead letters
/// are counted instead of written.
pub struct LocalDelivery {
    rt: tokio::runtime::Runtime,
    slots: Vec<Arc<AmSlot>>,
    hooks: Vec<(Endpoint, mpsc::UnboundedSender<Job>)>,
    inventory: BTreeMap<String, String>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    counted: Arc<AtomicU64>,
    counts: LocalCounts,
}

impl LocalDelivery {
    /// Starts the receivers `cfg` names (its Kafka settings are not used).
    pub fn start(cfg: &DispatcherConfig) -> Result<Self, RuntimeError> {
        cfg.validate()?;
        let (endpoints, inventory) = cfg.load_files()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|source| RuntimeError::Io {
                context: "cannot start the tokio runtime".into(),
                source,
            })?;
        let metrics = DispatcherMetrics::new();
        let retry = RetryCfg {
            backoff: Backoff {
                base_ms: cfg.backoff_base_ms,
                cap_ms: cfg.backoff_cap_ms,
            },
            breaker_failures: cfg.breaker_failures,
            breaker_cooldown_ms: cfg.breaker_cooldown_s * 1000,
        };
        let counted = Arc::new(AtomicU64::new(0));
        let dead = DeadLetters {
            producer: None,
            topic: String::new(),
            source_topic: "alerts".into(),
            counted: counted.clone(),
        };
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Done>();
        let bad = |setting: &str, message: String| RuntimeError::Config {
            setting: setting.into(),
            message,
        };
        let _guard = rt.enter();
        let am_client = client(
            Duration::from_secs(cfg.alertmanager_timeout_s),
            cfg.alertmanager_ca_file.as_deref(),
        )
        .map_err(|e| bad("--alertmanager-ca-file", e))?;
        let slots: Vec<Arc<AmSlot>> = cfg
            .alertmanager_urls
            .iter()
            .map(|u| {
                Arc::new(AmSlot {
                    url: u.clone(),
                    state: Mutex::new(AmState::new(cfg.console_url.clone())),
                    waiting: Mutex::new(BTreeMap::new()),
                    wake: Notify::new(),
                })
            })
            .collect();
        for (i, slot) in slots.iter().enumerate() {
            rt.spawn(am_worker(
                i,
                slot.clone(),
                am_client.clone(),
                done_tx.clone(),
                retry,
                AmCfg {
                    resend: Duration::from_secs(cfg.resend_interval_s),
                    batch: cfg.alertmanager_batch,
                },
                metrics.clone(),
            ));
        }
        let mut hooks = Vec::new();
        for ep in endpoints {
            let c = client(Duration::from_millis(ep.timeout_ms), ep.ca_file.as_deref())
                .map_err(|e| bad("--webhooks-file", format!("webhook {}: {e}", ep.name)))?;
            let (tx, rx) = mpsc::unbounded_channel();
            rt.spawn(webhook_worker(
                ep.clone(),
                c,
                rx,
                done_tx.clone(),
                dead.clone(),
                retry,
                metrics.clone(),
            ));
            hooks.push((ep, tx));
        }
        drop(_guard);
        let receivers = (slots.len() + hooks.len()) as u64;
        Ok(LocalDelivery {
            rt,
            slots,
            hooks,
            inventory,
            done_rx,
            counted,
            counts: LocalCounts {
                receivers,
                ..Default::default()
            },
        })
    }

    /// Hands one alert record to every receiver that takes it.
    pub fn submit(&mut self, a: &Alert) {
        let origin = Origin {
            generation: 0,
            partition: 0,
            offset: self.counts.events as i64,
            timestamp_ms: Some(now_ms()),
        };
        self.counts.events += 1;
        let site = site_of(&self.inventory, a).to_string();
        for slot in &self.slots {
            slot.waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(a.alert_id.clone())
                .or_default()
                .push(origin);
            slot.state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .apply(a, &site);
            slot.wake.notify_one();
            self.counts.deliveries += 1;
        }
        let bytes = Arc::new(encode(a).unwrap_or_default());
        let body = Arc::new(webhook::body(a, &site));
        for (ep, tx) in &self.hooks {
            if ep.filter.matches(a, &site) {
                let job = Job {
                    origin,
                    key: Arc::new(a.instrument_serial.clone().into_bytes()),
                    alert_bytes: bytes.clone(),
                    event_id: webhook::event_id(a),
                    body: body.clone(),
                    attempts: 0,
                };
                if tx.send(job).is_ok() {
                    self.counts.deliveries += 1;
                }
            }
        }
    }

    /// Waits up to `timeout` for every delivery to finish; what each came to.
    pub fn finish(mut self, timeout: Duration) -> LocalCounts {
        let want = self.counts.deliveries;
        let mut finished = 0u64;
        let rx = &mut self.done_rx;
        self.rt.block_on(async {
            let deadline = tokio::time::Instant::now() + timeout;
            while finished < want {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(_)) => finished += 1,
                    _ => break,
                }
            }
        });
        let dead = self.counted.load(Ordering::SeqCst);
        self.counts.dead_lettered = dead;
        self.counts.delivered = finished.saturating_sub(dead);
        self.counts.unfinished = want - finished;
        self.rt.shutdown_timeout(Duration::from_secs(1));
        self.counts
    }
}
