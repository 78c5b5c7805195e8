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
    /// When it was first tried (ms on the worker's clock).
    first_try_ms: Option<u64>,
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

/// An answer: delivered, or an error that retrying may cure (true) or not (false). Final:
/// a redirect (not followed: it would turn the POST into a GET, or https into http) and the
/// answers that say the body itself is refused (400, 410, 413, 415, 422); everything else
/// (401 while a secret rotates, 404 while a receiver deploys, 429, 5xx, timeouts) is retried.
/// Errors never carry the URL (it may hold a token).
fn classify(r: Result<reqwest::StatusCode, reqwest::Error>) -> Result<(), (bool, String)> {
    match r {
        Ok(s) if s.is_success() => Ok(()),
        Ok(s) if s.is_redirection() => Err((
            false,
            format!("HTTP {s}: redirects are not followed (final)"),
        )),
        Ok(s) if [400, 410, 413, 415, 422].contains(&s.as_u16()) => {
            Err((false, format!("HTTP {s} (final)")))
        }
        Ok(s) => Err((true, format!("HTTP {s}"))),
        Err(e) if e.is_timeout() => Err((true, "timed out".into())),
        Err(e) => Err((true, e.without_url().to_string())),
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
    let give_up_ms = ep.give_up_after_s * 1000;
    loop {
        let next_due = waiting.peek().map(|Reverse((due, _))| *due);
        let sleep = match next_due {
            Some(due) => Duration::from_millis(due.saturating_sub(ms())),
            None => Duration::from_secs(3600),
        };
        // Sleep until the next job is due and the bucket has a token (a due job is not
        // popped while there is none, so a backlog costs no spinning).
        let sleep = sleep.max(Duration::from_millis(bucket.wait_ms(ms())));
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
                if bucket.wait_ms(ms()) > 0 {
                    continue;
                }
                let Some(Reverse((_, id))) = waiting.pop() else { continue };
                let Some(mut job) = jobs.remove(&id) else { continue };
                // An open circuit sends nothing: the job waits for the probe, without an
                // attempt counted (the give-up time still runs).
                if !breaker.admit(ms()) {
                    let give_up = job.first_try_ms.is_some_and(|t| ms().saturating_sub(t) > give_up_ms);
                    if !give_up {
                        let at = breaker.reopens_at().unwrap_or(ms()).max(ms() + 100);
                        seq += 1;
                        waiting.push(Reverse((at, seq)));
                        jobs.insert(seq, job);
                        continue;
                    }
                    DeliveryDeadLettered { receiver: &receiver, attempts: job.attempts, error: "circuit open past the give-up time" }.emit(&metrics);
                    let detail = format!("webhook {}: circuit open after {} attempt(s) over {} s; event {}", ep.name, job.attempts, give_up_ms / 1000, job.event_id);
                    dead.write(&job.origin, &job.key, &job.alert_bytes, DeadLetterReason::DELIVERY_FAILED, detail).await;
                    let _ = done.send(job.origin);
                    continue;
                }
                let _ = bucket.take(ms());
                job.attempts += 1;
                job.first_try_ms.get_or_insert(ms());
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
                let result = classify(sent);
                match &result {
                    Ok(()) => breaker.success(),
                    Err((true, _)) => breaker.failure(ms()),
                    // The endpoint answered: it is up.
                    Err((false, _)) => breaker.success(),
                }
                let state = breaker.state(ms());
                if state != last_state {
                    CircuitChanged { receiver: &receiver, state }.emit(&metrics);
                    last_state = state;
                }
                let out_of_time = job.first_try_ms.is_some_and(|t| ms().saturating_sub(t) > give_up_ms);
                match result {
                    Ok(()) => {
                        Delivered { receiver: &receiver, events: 1, age_s: age_s(&job.origin) }.emit(&metrics);
                        let _ = done.send(job.origin);
                    }
                    Err((retriable, error)) if !retriable || job.attempts >= ep.max_attempts || out_of_time => {
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
    wake: Notify,
}

/// Keeps one Alertmanager in step: posts dirty alerts until accepted (a refused batch is
/// halved until the one alert Alertmanager refuses is found and set aside, logged), re-posts
/// the firing ones every resend interval. A failed re-post never holds back dirty posts.
async fn am_worker(
    index: usize,
    slot: Arc<AmSlot>,
    client: reqwest::Client,
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
    let mut size = batch.max(1);
    let mut next_resend = Instant::now();
    let post = |alerts: Vec<crate::am::AmAlert>| {
        let client = client.clone();
        let url = url.clone();
        async move {
            if alerts.is_empty() {
                return Ok(());
            }
            classify(
                client
                    .post(&url)
                    .json(&alerts)
                    .send()
                    .await
                    .map(|r| r.status()),
            )
        }
    };
    loop {
        let (ids, alerts) = {
            let s = slot.state.lock().unwrap_or_else(|e| e.into_inner());
            metrics
                .firing
                .with_label_values(&[&receiver])
                .set(s.firing_count() as i64);
            s.pending(now_ms(), ttl_ms, size)
        };
        if !ids.is_empty() {
            let result = if !alerts.is_empty() && !breaker.admit(ms()) {
                Err((true, "circuit open".to_string()))
            } else {
                let r = post(alerts).await;
                match &r {
                    Ok(()) => breaker.success(),
                    Err(_) => breaker.failure(ms()),
                }
                r
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
            match result {
                Ok(()) => {
                    failures = 0;
                    size = batch.max(1);
                    let mut s = slot.state.lock().unwrap_or_else(|e| e.into_inner());
                    s.posted(&ids);
                    s.prune(10_000);
                    drop(s);
                    Delivered {
                        receiver: &receiver,
                        events: ids.len() as u64,
                        age_s: None,
                    }
                    .emit(&metrics);
                }
                Err((false, error)) if ids.len() > 1 => {
                    // Refused as a whole: find the alert it refuses by halving.
                    size = (ids.len() / 2).max(1);
                    DeliveryRetried {
                        receiver: &receiver,
                        attempt: 1,
                        error: &error,
                        retry_in_ms: 0,
                    }
                    .emit(&metrics);
                }
                Err((false, error)) => {
                    // One alert Alertmanager will not take: set aside, said loudly.
                    slot.state
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .posted(&ids);
                    size = batch.max(1);
                    DeliveryDeadLettered {
                        receiver: &receiver,
                        attempts: 1,
                        error: &format!("{error}; alert {}", ids[0].0),
                    }
                    .emit(&metrics);
                }
                Err((true, error)) => {
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
                }
            }
            continue;
        }
        if Instant::now() >= next_resend {
            let firing = slot
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .firing(now_ms(), ttl_ms);
            let mut ok = true;
            for chunk in firing.chunks(batch.max(1)) {
                if let Err((_, error)) = post(chunk.to_vec()).await {
                    DeliveryRetried {
                        receiver: &receiver,
                        attempt: 1,
                        error: &error,
                        retry_in_ms: 10_000,
                    }
                    .emit(&metrics);
                    ok = false;
                    break;
                }
            }
            // A failed re-post is tried again soon, without holding back dirty posts.
            next_resend = Instant::now()
                + if ok {
                    resend
                } else {
                    resend.min(Duration::from_secs(10))
                };
            continue;
        }
        tokio::select! {
            _ = slot.wake.notified() => {},
            _ = tokio::time::sleep_until(next_resend.into()) => {},
        }
    }
}

/// Rebalances bump the generation: deliveries of an earlier generation no longer count.
struct Ctx {
    generation: Arc<AtomicU64>,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, _c: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = r {
            tracing::info!(partitions = tpl.count(), "partitions revoked");
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn post_rebalance(&self, _c: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        match r {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned");
                self.generation.fetch_add(1, Ordering::SeqCst);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// Rebuilds each Alertmanager's desired state for `partitions` from `alerts`, up to the group's
/// committed offsets, where consumption resumes (a partition with none is consumed from its
/// start, so nothing is rebuilt for it).
fn restore(
    cfg: &DispatcherConfig,
    topic: &str,
    partitions: &[i32],
    slots: &[Arc<AmSlot>],
    inventory: &BTreeMap<String, String>,
    metrics: &DispatcherMetrics,
) -> Result<u64, RuntimeError> {
    for s in slots {
        s.state.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
    if partitions.is_empty() {
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
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = c
        .committed_offsets(tpl, timeout)
        .map_err(RuntimeError::kafka("committed offsets"))?;
    let mut start = TopicPartitionList::new();
    let mut until: BTreeMap<i32, i64> = BTreeMap::new();
    for e in committed.elements() {
        let (low, high) = c
            .fetch_watermarks(topic, e.partition(), timeout)
            .map_err(RuntimeError::kafka("watermarks"))?;
        let _ = high;
        let upto = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        if upto > low {
            until.insert(e.partition(), upto);
            start
                .add_partition_offset(topic, e.partition(), Offset::Offset(low))
                .map_err(RuntimeError::kafka("assign"))?;
        }
    }
    let mut n = 0u64;
    if !until.is_empty() {
        c.assign(&start).map_err(RuntimeError::kafka("assign"))?;
        let deadline = Instant::now() + Duration::from_secs(300);
        while !until.is_empty() {
            if Instant::now() > deadline {
                return Err(RuntimeError::Internal(format!(
                    "rebuilding the Alertmanager state from {topic} took over 300 s; {} partition(s) unread",
                    until.len()
                )));
            }
            // The liveness probe sees a restore as progress.
            metrics.heartbeat.set(now_ms() / 1000);
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
                        until.retain(|p, u| {
                            !matches!(pos.find_partition(topic, *p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= *u)
                        });
                    }
                }
            }
        }
    }
    for s in slots {
        let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
        st.settle_restored();
        st.prune(10_000);
        drop(st);
        s.wake.notify_one();
    }
    Ok(n)
}

fn client(timeout: Duration, ca: Option<&std::path::Path>) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
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
        .producer_config()
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

    // Alertmanagers: kept in step by a task each; their state is rebuilt from the topic for
    // the partitions this instance owns, at every assignment.
    let slots: Vec<Arc<AmSlot>> = cfg
        .alertmanager_urls
        .iter()
        .map(|u| {
            Arc::new(AmSlot {
                url: u.clone(),
                state: Mutex::new(AmState::new(cfg.console_url.clone())),
                wake: Notify::new(),
            })
        })
        .collect();
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
        // A new group starts at the beginning: every retained transition is delivered (the
        // receivers' idempotency keys absorb what they had). To start a new deployment at the
        // end instead, set the group's offsets first (kafka-consumer-groups --reset-offsets
        // --to-latest --group <group> --topic <alerts>).
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
    let mut seen_generation = u64::MAX;
    let mut paused = false;
    let mut commit_tick = tokio::time::interval(Duration::from_secs(1));
    let signal = seqmon_runtime::service::wait_for_signal();
    tokio::pin!(signal);
    let mut stopping: Option<Instant> = None;
    // A rebalance (seen before any record of the new assignment is handled): deliveries of
    // the old generation no longer count, and Alertmanager's state is rebuilt for the
    // partitions owned now, up to their committed offsets, where consumption resumes.
    let rebalanced = |seen: &mut u64, tracker: &mut OffsetTracker| -> Result<bool, RuntimeError> {
        let g = generation.load(Ordering::SeqCst);
        if g == *seen {
            return Ok(false);
        }
        *seen = g;
        tracker.forget();
        let owned: Vec<i32> = consumer
            .assignment()
            .map(|a| {
                a.elements_for_topic(&alerts_topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect()
            })
            .unwrap_or_default();
        metrics.ready.set(0);
        let restored = tokio::task::block_in_place(|| {
            restore(&cfg, &alerts_topic, &owned, &slots, &inventory, &metrics)
        })?;
        metrics.assigned.set(owned.len() as i64);
        // Generation 0: the loop's first pass, before the group assigned anything.
        metrics.ready.set(i64::from(g > 0));
        tracing::info!(partitions = ?owned, records = restored, "assignment: Alertmanager state rebuilt from the alerts topic");
        Ok(true)
    };
    loop {
        metrics.heartbeat.set(now_ms() / 1000);
        rebalanced(&mut seen_generation, &mut tracker)?;
        let in_flight = tracker.in_flight();
        metrics.in_flight.set(in_flight as i64);
        if let Some(since) = stopping {
            if in_flight == 0 || since.elapsed() > Duration::from_secs(10) {
                commit(&consumer, &alerts_topic, &mut tracker, CommitMode::Sync);
                tracing::info!(in_flight, "stopped: finished deliveries committed");
                return Ok(());
            }
        }
        // Above --max-in-flight the partitions pause (and resume at half); the consumer is
        // still polled, so the group and rebalances are served meanwhile.
        let want_pause = in_flight >= cfg.max_in_flight
            || stopping.is_some()
            || (paused && in_flight > cfg.max_in_flight / 2);
        if want_pause != paused {
            if let Ok(a) = consumer.assignment() {
                let r = if want_pause {
                    consumer.pause(&a)
                } else {
                    consumer.resume(&a)
                };
                if r.is_ok() {
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
            m = consumer.recv() => {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                // A rebalance served inside this recv: the state is rebuilt first; the record
                // belongs to the new assignment (consumption resumed at its committed offset).
                rebalanced(&mut seen_generation, &mut tracker)?;
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
                // Alertmanager is state, rebuilt from the topic on every start and assignment
                // and re-posted every interval: its posts do not hold the offsets back.
                for slot in &slots {
                    if slot.state.lock().unwrap_or_else(|e| e.into_inner()).apply(&a, &site) {
                        slot.wake.notify_one();
                    }
                }
                let targets: Vec<&(Endpoint, mpsc::UnboundedSender<Job>)> = hooks.iter().filter(|(ep, _)| ep.filter.matches(&a, &site)).collect();
                tracker.track(origin.partition, origin.offset, targets.len() as u32);
                if !targets.is_empty() {
                    let body = Arc::new(webhook::body(&a, &site));
                    let event_id = webhook::event_id(&a);
                    for (_, tx) in targets {
                        let job = Job { origin, key: key.clone(), alert_bytes: bytes.clone(), event_id: event_id.clone(), body: body.clone(), attempts: 0, first_try_ms: None };
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
    /// Records handed to the Alertmanagers (delivered once their state is all posted).
    am_submitted: u64,
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
                    wake: Notify::new(),
                })
            })
            .collect();
        for (i, slot) in slots.iter().enumerate() {
            rt.spawn(am_worker(
                i,
                slot.clone(),
                am_client.clone(),
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
            am_submitted: 0,
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
            slot.state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .apply(a, &site);
            slot.wake.notify_one();
            self.counts.deliveries += 1;
            self.am_submitted += 1;
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
                    first_try_ms: None,
                };
                if tx.send(job).is_ok() {
                    self.counts.deliveries += 1;
                }
            }
        }
    }

    /// Waits up to `timeout` for every delivery to finish; what each came to. Alertmanager's
    /// records count as delivered once every alert it should hold has been posted.
    pub fn finish(mut self, timeout: Duration) -> LocalCounts {
        let want = self.counts.deliveries - self.am_submitted;
        let mut finished = 0u64;
        let rx = &mut self.done_rx;
        let slots = self.slots.clone();
        let settled = self.rt.block_on(async {
            let deadline = tokio::time::Instant::now() + timeout;
            while finished < want {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(_)) => finished += 1,
                    _ => break,
                }
            }
            loop {
                let dirty: usize = slots
                    .iter()
                    .map(|s| {
                        s.state
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .dirty_count()
                    })
                    .sum();
                if dirty == 0 || tokio::time::Instant::now() >= deadline {
                    return dirty == 0;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let dead = self.counted.load(Ordering::SeqCst);
        let am_done = if settled { self.am_submitted } else { 0 };
        self.counts.dead_lettered = dead;
        self.counts.delivered = finished.saturating_sub(dead) + am_done;
        self.counts.unfinished = want - finished + (self.am_submitted - am_done);
        self.rt.shutdown_timeout(Duration::from_secs(1));
        self.counts
    }
}
