//! Chaos on a real broker: the six stage services as OS processes, fed a simulated fleet with bad
//! records, while the suite SIGKILLs every stage again and again in the middle of a transaction,
//! kills and restarts the broker, pauses a stage past its session timeout, and puts poison on
//! every input topic. Afterwards an oracle compares every output topic with an uninterrupted run
//! of the same input: nothing missing, nothing twice, nothing extra, and the dead letters are
//! exactly the bad records. `make chaos` runs it at full size; `make test` runs a trimmed one.
//!
//! The broker. The suite kills its broker, so it never uses the shared test broker: it runs its
//! own (`tools/kafka/broker.sh` with `KAFKA_PORT=$CHAOS_KAFKA_PORT`, default 29092), started here
//! unless it is running already (then left running), and refuses a port that
//! `KAFKA_BOOTSTRAP_SERVERS` names. A broker kill is `broker.sh kill` (SIGKILL, log dir kept), a
//! pause of `CHAOS_BROKER_DOWN_S`, then `broker.sh restart` on the same log dir (no format).
//!
//! Input. `CHAOS_RECORDS` raw records (at least; the simulator's fleet of `CHAOS_INSTRUMENTS`
//! instruments runs until it has them) with `CHAOS_BAD_RECORD_SHARE` bad ones, produced at a
//! steady pace while the faults happen (so every stage always has transactions to be killed in),
//! each with a header naming it; their offsets come from the delivery reports. At
//! `CHAOS_POISON_AT` of the stream, poison goes onto every input topic (one record of each kind:
//! garbage bytes, another schema, a NaN measurement, a valid record padded to ~999,000 bytes, an
//! event time ten years ahead; `alert_commands` has no measurement, so no NaN there). Whoever
//! reads a topic (features: the detector and the notifier) should dead-letter each, with a
//! reason, and not crash.
//!
//! Faults, in a fixed interleaved plan: `CHAOS_KILLS_PER_STAGE` SIGKILLs of each stage,
//! `CHAOS_BROKER_RESTARTS` broker kills, `CHAOS_PAUSES` SIGSTOPs of `CHAOS_PAUSE_STAGE`.
//! - Kill in an open transaction. The suite polls the topics only that stage writes in its
//!   transactions (an output no other stage writes, or its changelog), comparing each
//!   partition's high watermark (read_uncommitted) with its last stable offset (the high offset
//!   a read_committed client is told): HW > LSO means a transaction is open. It SIGKILLs the
//!   stage at once, waits 0.8 s (a commit already on its way would have completed by then) and
//!   checks again with the stage dead: a kill counts in `kills_in_open_txn` only if HW > LSO
//!   still holds then, i.e. the transaction was left open and can only be aborted (by the
//!   successor's fencing). An unverified kill is retried later (at most 3 × quota + 2 kills).
//! - Pause: the stage is SIGSTOPped (as soon as a transaction shows open, within 60 s; whether it
//!   still was once stopped is recorded), a standby
//!   instance of it (own transactional id, dynamic membership) is started, and the pause lasts
//!   the session timeout plus 5 s, so the group drops the paused member and the standby takes its
//!   partitions. Then SIGCONT: the zombie's open transaction carries a stale group generation,
//!   so it must not commit (it aborts and rejoins); the standby is stopped with SIGTERM.
//!
//! Crash loops. Any exit the suite did not cause is a crash: it is counted (`crash_loops`: the
//! number of such exits), its log tail kept, and the stage restarted after a back-off (1, 2, 4,
//! ... 30 s), as an orchestrator would; the plan goes on (kills of a stage crash-looping on its
//! own are skipped). A watchdog restarts (SIGKILL, same command line) a stage that is alive but
//! stalled (input waiting, committed offsets still for 60 s) or whose transaction stays open on
//! one of its own topics for 90 s (past the 60 s transaction timeout: a hanging transaction holds
//! every reader of that partition at its LSO), as a progress-based liveness check would; each is
//! counted (`watchdog_restarts`) with the log tail that says why.
//!
//! Stalls. A monitor samples, every 0.5 s, each stage group's committed offsets (OffsetFetch)
//! and the last stable offsets of its inputs. A stage stalls while it has readable input beyond
//! its committed offsets (more than the one offset a transaction marker takes; once the offsets
//! have stood still for 5 s, a read_committed probe checks the gap holds a record, as a gap of
//! aborted records and their marker holds none) and its committed offsets do not move; while
//! the broker is down nothing answers and the stall goes on.
//! `max_stall_s` is the longest such stretch of any stage; it therefore includes the broker's own
//! downtime. Per kill, `recovery_s` is the time from the SIGKILL to the restarted process's first
//! committed transaction.
//!
//! Oracle. After the faults the pipeline drains, every service is stopped with SIGTERM, and
//! every topic is read read_committed. The uninterrupted run is each stage's own processor, in
//! process, over exactly the input its group committed as consumed (same partitions, offsets and
//! timestamps; the detector and cohort analyzer are told the partition count), as
//! `reference_outputs` does for one stage: deterministic, and it needs no second broker run
//! (whose offsets, and so dead letters' provenance, would differ). An output topic's expected
//! content is the union of its writers' reference outputs and the poison the suite put on it;
//! the committed records are compared with it as a multiset of (key, value bytes): `missing`
//! (expected, not committed), `duplicates` (committed more often than expected), `extra`
//! (committed, never expected). Input a stage never consumed (it crash-loops, say) is reported as
//! `unprocessed_input`, not as missing output. Stages whose state is per key or per input partition (all but
//! the notifier) give the same output whatever the interleaving of their partitions, so the
//! comparison is exact, with two differences the code documents as by design and the report
//! lists apart (`explained`), never hidden:
//! - The anomaly detector keeps each partition's instrument clocks in memory (its low
//!   watermark): after a restart the `source_watermark_ms` its cohort signals carry differs, and
//!   its WATERMARK broadcasts start again only after an hour of event time (and may repeat one:
//!   the last period sent is in memory too).
//!   Signals from the detector that differ only in `source_watermark_ms` are matched as
//!   "watermark only"; WATERMARK broadcasts are counted apart. The cohort analyzer is compared
//!   exactly: its reference reads the signals as they were committed.
//! - The notifier's clock per partition is the latest window end of two topics (anomalies and
//!   features), and its timers fire on it: its output depends on how those topics interleave at
//!   its consumer, which no run controls (two uninterrupted runs differ too). Its reference reads
//!   them merged by Kafka timestamp (features first at a tie: the order a notifier that keeps up
//!   sees); the differences are reported as `order_dependent`, not counted. What is counted for
//!   the notifier is what holds whatever the interleaving: every (alert_id, sequence) and every
//!   (entry_id, revision) at most once, each alert's sequences 1..n without a gap, each
//!   instrument's maintenance revisions 1..n without a gap and up to the revision its final state
//!   on the changelog says, each live alert's last sequence equal to its state's; its dead
//!   letters (decode-level poison: order-independent) are compared exactly.
//!
//! Dead letters. Separately from the byte comparison, the dead letters found (by stage, source
//! topic, partition, offset) must be exactly the expected set: every simulated bad record at the
//! validator with the simulator's reason, every poison record at each stage reading its topic,
//! nothing else, nothing twice. A poison kind that a stage accepts is listed as a finding with
//! what happened to it.
//!
//! Report. A table on stderr (`--nocapture`), `out/chaos/latest.json` (and `<profile>.json`,
//! `latest.txt`) with `missing`, `duplicates`, `extra`, `kills`, `kills_in_open_txn`,
//! `broker_restarts`, `crash_loops`, `max_stall_s` and the detail per stage, topic and poison
//! record, the timeline, the findings and the log folder (`target/it-logs/<prefix>/`). The test
//! fails, after writing the report, on any loss, duplicate, extra record, dead-letter mismatch
//! (a poison kind accepted included), crash, watchdog restart, input left unconsumed, missing
//! quota (kills in open transactions, broker restarts, pauses), drain timeout or unclean
//! shutdown.
//!
//! Settings (environment; defaults are the trimmed run): CHAOS_PROFILE (label, "trimmed"),
//! CHAOS_RECORDS (6000), CHAOS_INSTRUMENTS (8), CHAOS_SEED (7), CHAOS_BAD_RECORD_SHARE (0.02),
//! CHAOS_KILLS_PER_STAGE (1), CHAOS_BROKER_RESTARTS (1), CHAOS_BROKER_DOWN_S (2), CHAOS_PAUSES
//! (0), CHAOS_PAUSE_STAGE (feature-extractor), CHAOS_KAFKA_PORT (29092), CHAOS_PARTITIONS (3),
//! CHAOS_BATCH_MAX_RECORDS (500), CHAOS_PRODUCE_SECONDS (from the plan), CHAOS_POISON_AT (0.5),
//! CHAOS_POISON_KINDS (all: garbage,wrong_schema,nan,oversized,far_future),
//! CHAOS_DRAIN_TIMEOUT_S (600).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use serde_json::{json, Value};

use seqmon_anomaly_detector::{AnomalyConfig, AnomalyDetector};
use seqmon_cohort_analyzer::{CohortAnalyzer, CohortConfig};
use seqmon_feature_extractor::FeatureExtractor;
use seqmon_integration_tests::*;
use seqmon_model::topics::TopicRole;
use seqmon_model::{
    decode, encode, Alert, AlertCommand, AlertCommandAction, Anomaly, AnomalySeverity,
    AnomalyState, CohortKind, CohortSignal, CohortSignalKind, DeadLetter, DeadLetterReason,
    Feature, MaintenanceEntry, SanitizedTelemetry, StateSnapshot, Telemetry, TelemetryKind,
};
use seqmon_notifier::{Notifier, NotifierConfig};
use seqmon_runtime::embedded::Chain;
use seqmon_runtime::{Driver, Envelope, Processor};
use seqmon_simulator::{simulate, Expect, FleetConfig, Simulation};
use seqmon_validator::Validator;

const STAGES: [&str; 6] = [
    "validator",
    "privacy-enforcer",
    "feature-extractor",
    "anomaly-detector",
    "cohort-analyzer",
    "notifier",
];

/// Session timeout the stages run with (their default), for the pause.
const SESSION_TIMEOUT_S: f64 = 10.0;
/// How long after a SIGKILL or SIGSTOP the open transaction is checked again.
const VERIFY_AFTER: Duration = Duration::from_millis(800);
/// A record this size (key and envelope aside) is just under the producer's 1,000,000 bytes.
const OVERSIZED_BYTES: usize = 999_000;
const YEAR_MS: i64 = 365 * 24 * 3_600_000;
/// Longest crash back-off (1, 2, 4, ... s).
const BACKOFF_MAX_S: f64 = 30.0;
/// A live stage with input waiting whose committed offsets do not move this long is stalled.
const WATCHDOG_S: f64 = 60.0;
/// A transaction open this long (the stages' transaction timeout is 60 s) is hanging.
const HANGING_TXN_S: f64 = 90.0;

// ---- settings ----------------------------------------------------------------------------

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} does not parse")),
        _ => default,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PoisonKind {
    Garbage,
    WrongSchema,
    Nan,
    Oversized,
    FarFuture,
}

impl PoisonKind {
    const ALL: [PoisonKind; 5] = [
        PoisonKind::Garbage,
        PoisonKind::WrongSchema,
        PoisonKind::Nan,
        PoisonKind::Oversized,
        PoisonKind::FarFuture,
    ];
    fn name(self) -> &'static str {
        match self {
            PoisonKind::Garbage => "garbage",
            PoisonKind::WrongSchema => "wrong_schema",
            PoisonKind::Nan => "nan",
            PoisonKind::Oversized => "oversized",
            PoisonKind::FarFuture => "far_future",
        }
    }
}

#[derive(Debug, Clone)]
struct Settings {
    profile: String,
    records: usize,
    instruments: usize,
    seed: u64,
    bad_record_share: f64,
    kills_per_stage: usize,
    broker_restarts: usize,
    broker_down_s: f64,
    pauses: usize,
    pause_stage: &'static str,
    kafka_port: u16,
    partitions: u32,
    batch_max_records: usize,
    produce_s: Option<f64>,
    poison_at: f64,
    poison_kinds: Vec<PoisonKind>,
    drain_timeout_s: f64,
}

impl Settings {
    fn from_env() -> Settings {
        let pause_stage: String = env_or("CHAOS_PAUSE_STAGE", "feature-extractor".to_string());
        let pause_stage = STAGES
            .into_iter()
            .find(|s| *s == pause_stage)
            .unwrap_or_else(|| panic!("CHAOS_PAUSE_STAGE={pause_stage} is not a stage"));
        let kinds: String = env_or(
            "CHAOS_POISON_KINDS",
            "garbage,wrong_schema,nan,oversized,far_future".to_string(),
        );
        let poison_kinds = kinds
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| {
                PoisonKind::ALL
                    .into_iter()
                    .find(|p| p.name() == k)
                    .unwrap_or_else(|| panic!("CHAOS_POISON_KINDS: {k} is not a poison kind"))
            })
            .collect();
        let s = Settings {
            profile: env_or("CHAOS_PROFILE", "trimmed".to_string()),
            records: env_or("CHAOS_RECORDS", 6000),
            instruments: env_or("CHAOS_INSTRUMENTS", 8),
            seed: env_or("CHAOS_SEED", 7),
            bad_record_share: env_or("CHAOS_BAD_RECORD_SHARE", 0.02),
            kills_per_stage: env_or("CHAOS_KILLS_PER_STAGE", 1),
            broker_restarts: env_or("CHAOS_BROKER_RESTARTS", 1),
            broker_down_s: env_or("CHAOS_BROKER_DOWN_S", 2.0),
            pauses: env_or("CHAOS_PAUSES", 0),
            pause_stage,
            kafka_port: env_or("CHAOS_KAFKA_PORT", 29092),
            partitions: env_or("CHAOS_PARTITIONS", 3),
            batch_max_records: env_or("CHAOS_BATCH_MAX_RECORDS", 500),
            produce_s: std::env::var("CHAOS_PRODUCE_SECONDS")
                .ok()
                .and_then(|v| v.parse().ok()),
            poison_at: env_or("CHAOS_POISON_AT", 0.5),
            poison_kinds,
            drain_timeout_s: env_or("CHAOS_DRAIN_TIMEOUT_S", 600.0),
        };
        assert!(s.partitions >= 2, "CHAOS_PARTITIONS must be at least 2");
        assert!((0.0..=1.0).contains(&s.poison_at));
        s
    }

    fn json(&self) -> Value {
        json!({
            "profile": self.profile, "records": self.records, "instruments": self.instruments,
            "seed": self.seed, "bad_record_share": self.bad_record_share,
            "kills_per_stage": self.kills_per_stage, "broker_restarts": self.broker_restarts,
            "broker_down_s": self.broker_down_s, "pauses": self.pauses,
            "pause_stage": self.pause_stage, "kafka_port": self.kafka_port,
            "partitions": self.partitions, "batch_max_records": self.batch_max_records,
            "poison_at": self.poison_at,
            "poison_kinds": self.poison_kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
        })
    }
}

// ---- stages ------------------------------------------------------------------------------

/// A stage's processor as its service builds it (default settings; the test pseudonym key).
fn processor(stage: &str) -> Box<dyn Processor> {
    match stage {
        "validator" => Box::new(Validator::default()),
        "privacy-enforcer" => Box::new(privacy_enforcer()),
        "feature-extractor" => Box::new(FeatureExtractor::default()),
        "anomaly-detector" => Box::new(AnomalyDetector::new(AnomalyConfig::default())),
        "cohort-analyzer" => Box::new(CohortAnalyzer::new(CohortConfig::default())),
        "notifier" => Box::new(Notifier::new(NotifierConfig::default())),
        other => panic!("no stage {other}"),
    }
}

/// Every topic a stage reads: its input, then its side inputs.
fn inputs_of(stage: &str) -> Vec<TopicRole> {
    let p = processor(stage);
    std::iter::once(p.input_role())
        .chain(p.side_input_roles().iter().copied())
        .collect()
}

/// Every topic a stage writes records to (outputs and dead letters; not its changelog).
fn outputs_of(stage: &str) -> Vec<TopicRole> {
    let p = processor(stage);
    p.output_roles()
        .iter()
        .copied()
        .chain(std::iter::once(p.dead_letter_role()))
        .collect()
}

/// Topics no other stage writes in a transaction (its changelog, an output of its own): while
/// the stage is stopped, HW > LSO on one of them means its transaction is open. (The suite's
/// poison on `validated` and `features` is written without a transaction: it never holds the
/// LSO back.)
fn exclusive_of(stage: &str) -> Vec<TopicRole> {
    match stage {
        "validator" => vec![TopicRole::Validated, TopicRole::ChangelogValidator],
        "privacy-enforcer" => vec![TopicRole::Sanitized, TopicRole::PrivacyAudit],
        "feature-extractor" => vec![TopicRole::Features, TopicRole::ChangelogFeatureExtractor],
        "anomaly-detector" => vec![TopicRole::ChangelogAnomalyDetector],
        "cohort-analyzer" => vec![TopicRole::ChangelogCohortAnalyzer],
        "notifier" => vec![
            TopicRole::Alerts,
            TopicRole::Maintenance,
            TopicRole::ChangelogNotifier,
        ],
        other => panic!("no stage {other}"),
    }
}

/// The stages that read `role` (as input or side input).
fn readers_of(role: TopicRole) -> Vec<&'static str> {
    STAGES
        .into_iter()
        .filter(|s| inputs_of(s).contains(&role))
        .collect()
}

// ---- the broker --------------------------------------------------------------------------

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// The suite's own broker, driven by tools/kafka/broker.sh; stopped at the end if started here.
struct ChaosBroker {
    port: u16,
    started_here: bool,
}

impl ChaosBroker {
    fn command(port: u16, sub: &str) -> Command {
        let mut c = Command::new(root().join("tools/kafka/broker.sh"));
        c.arg(sub).env("KAFKA_PORT", port.to_string());
        c
    }

    fn ensure(port: u16) -> ChaosBroker {
        if let Ok(servers) = std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
            let shared = servers
                .split(',')
                .any(|s| s.trim().rsplit(':').next() == Some(&port.to_string()));
            assert!(
                !shared,
                "CHAOS_KAFKA_PORT {port} is the broker of KAFKA_BOOTSTRAP_SERVERS ({servers}): the \
                 chaos suite kills its broker, so it needs one of its own"
            );
        }
        let running = ChaosBroker::command(port, "status")
            .status()
            .is_ok_and(|s| s.success());
        if !running {
            let status = ChaosBroker::command(port, "start").status().unwrap();
            assert!(status.success(), "broker.sh start on port {port} failed");
        }
        ChaosBroker {
            port,
            started_here: !running,
        }
    }
}

impl Drop for ChaosBroker {
    fn drop(&mut self) {
        if self.started_here {
            let _ = ChaosBroker::command(self.port, "stop").status();
        }
    }
}

// ---- processes ---------------------------------------------------------------------------

/// One stage instance as an OS process, restartable with the same command line.
struct Proc {
    stage: &'static str,
    instance: String,
    args: Vec<String>,
    metrics_port: u16,
    log: PathBuf,
    child: Option<Child>,
    stopped: bool,
    /// Asked to stop (SIGTERM): its exit is not a crash.
    retiring: bool,
}

impl Proc {
    fn new(
        stage: &'static str,
        instance: &str,
        bootstrap: &str,
        prefix: &str,
        extra: &[String],
        logs: &Path,
    ) -> Proc {
        let metrics_port = free_port();
        let mut args = seqmon_testkit::stage_args(stage, bootstrap, prefix, metrics_port);
        let at = args.iter().position(|a| a == "--transactional-id").unwrap();
        args[at + 1] = format!("{prefix}{stage}-{instance}");
        args.extend(extra.iter().cloned());
        Proc {
            stage,
            instance: instance.to_string(),
            args,
            metrics_port,
            log: logs.join(format!("{stage}-{instance}.log")),
            child: None,
            stopped: false,
            retiring: false,
        }
    }

    fn spawn(&mut self, why: &str) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        writeln!(file, "==== chaos: started ({why}) ====").unwrap();
        let child = Command::new(bin(self.stage))
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("SEQMON_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.stage));
        self.child = Some(child);
        self.stopped = false;
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, sig: &str) -> bool {
        let Some(pid) = self.pid() else { return false };
        Command::new("kill")
            .args([format!("-{sig}"), pid.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// SIGKILL and reap.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.stopped = false;
    }

    /// The exit status if the process ended (it is then forgotten).
    fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    fn metrics(&self) -> Option<BTreeMap<String, f64>> {
        scrape(self.metrics_port)
    }

    fn metric(&self, name: &str) -> Option<f64> {
        self.metrics()?.get(name).copied()
    }

    fn committed_txns(&self) -> Option<f64> {
        self.metric("seqmon_transactions_total{outcome=\"committed\"}")
    }

    fn aborted_txns(&self) -> Option<f64> {
        self.metric("seqmon_transactions_total{outcome=\"aborted\"}")
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.stopped {
            self.signal("CONT");
        }
        self.kill9();
    }
}

// ---- watermarks --------------------------------------------------------------------------

/// High watermark and last stable offset of partitions.
struct Marks {
    uncommitted: BaseConsumer,
    committed: BaseConsumer,
}

impl Marks {
    fn new(bootstrap: &str) -> Marks {
        let make = |isolation: &str| -> BaseConsumer {
            ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("isolation.level", isolation)
                .set("enable.auto.commit", "false")
                .create()
                .unwrap()
        };
        Marks {
            uncommitted: make("read_uncommitted"),
            committed: make("read_committed"),
        }
    }

    /// (HW, LSO), HW asked first: HW(t1) > LSO(t2) means a record written before t1 was still
    /// in an open transaction at t2.
    fn get(&self, topic: &str, partition: i32, timeout: Duration) -> Option<(i64, i64)> {
        let (_, hw) = self
            .uncommitted
            .fetch_watermarks(topic, partition, timeout)
            .ok()?;
        let (_, lso) = self
            .committed
            .fetch_watermarks(topic, partition, timeout)
            .ok()?;
        Some((hw, lso))
    }
}

/// Where a transaction was seen open: topic, partition, HW, LSO.
type OpenTxn = (String, i32, i64, i64);

// ---- the monitor (stalls) ----------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct Progress {
    /// The oldest transaction open on one of the stage's own topics: topic, partition, HW, LSO,
    /// since (seconds on the suite's clock) the LSO has stood there.
    open_txn: Option<(String, i32, i64, i64, f64)>,
    committed: i64,
    lag: i64,
    lag_known: bool,
    last_move_s: f64,
    max_stall_s: f64,
    max_stall_at_s: f64,
    samples: u64,
    unanswered: u64,
}

type Monitor = Arc<Mutex<BTreeMap<&'static str, Progress>>>;

/// Samples every stage's committed offsets and its inputs' LSO until `stop` (see the header).
fn monitor(
    bootstrap: String,
    prefix: String,
    partitions: u32,
    state: Monitor,
    stop: Arc<AtomicBool>,
    t0: Instant,
) {
    let lso: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let groups: BTreeMap<&str, BaseConsumer> = STAGES
        .iter()
        .map(|s| {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", format!("{prefix}{s}"))
                .set("enable.auto.commit", "false")
                .set("isolation.level", "read_uncommitted")
                .create()
                .unwrap();
            (*s, c)
        })
        .collect();
    let inputs: BTreeMap<&str, Vec<String>> = STAGES
        .iter()
        .map(|s| (*s, inputs_of(s).iter().map(|r| r.topic(&prefix)).collect()))
        .collect();
    let hw: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("isolation.level", "read_uncommitted")
        .create()
        .unwrap();
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("{prefix}chaos-probe"))
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut probed: HashMap<(String, i32, i64, i64), bool> = HashMap::new();
    let timeout = Duration::from_millis(1500);
    // (topic, partition) → (LSO, since) while a transaction holds the LSO there.
    let mut held: HashMap<(String, i32), (i64, f64)> = HashMap::new();
    let mut round = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let tick = Instant::now();
        round += 1;
        // Every 5 s: transactions open on each stage's own topics, and for how long.
        if round % 10 == 1 {
            for stage in STAGES {
                let mut oldest: Option<(String, i32, i64, i64, f64)> = None;
                for role in exclusive_of(stage) {
                    let topic = role.topic(&prefix);
                    for p in 0..partitions as i32 {
                        let marks = hw
                            .fetch_watermarks(&topic, p, timeout)
                            .ok()
                            .zip(lso.fetch_watermarks(&topic, p, timeout).ok());
                        let Some(((_, high), (_, stable))) = marks else {
                            continue;
                        };
                        let key = (topic.clone(), p);
                        if high > stable {
                            let now = t0.elapsed().as_secs_f64();
                            let since = match held.get(&key) {
                                Some((l, s)) if *l == stable => *s,
                                _ => now,
                            };
                            held.insert(key, (stable, since));
                            if oldest.as_ref().is_none_or(|o| since < o.4) {
                                oldest = Some((topic.clone(), p, high, stable, since));
                            }
                        } else {
                            held.remove(&key);
                        }
                    }
                }
                state.lock().unwrap().entry(stage).or_default().open_txn = oldest;
            }
        }
        for stage in STAGES {
            let mut tpl = TopicPartitionList::new();
            for t in &inputs[stage] {
                for p in 0..partitions as i32 {
                    tpl.add_partition(t, p);
                }
            }
            // Committed offsets and, per partition, the gap to the LSO beyond the one offset a
            // commit marker takes: (topic, partition, committed, LSO, gap).
            type Gap = (String, i32, i64, i64, i64);
            let sample = (|| -> Option<(i64, Vec<Gap>)> {
                let committed = groups[stage].committed_offsets(tpl, timeout).ok()?;
                let mut sum = 0i64;
                let mut gaps = Vec::new();
                for e in committed.elements() {
                    let (_, stable) = lso
                        .fetch_watermarks(e.topic(), e.partition(), timeout)
                        .ok()?;
                    let (from, gap) = match e.offset() {
                        Offset::Offset(o) => {
                            sum += o;
                            (o, (stable - o - 1).max(0))
                        }
                        _ => (0, stable),
                    };
                    if gap > 0 {
                        gaps.push((e.topic().to_string(), e.partition(), from, stable, gap));
                    }
                }
                Some((sum, gaps))
            })();
            let now = t0.elapsed().as_secs_f64();
            let still_s = state
                .lock()
                .unwrap()
                .get(stage)
                .map_or(0.0, |p| now - p.last_move_s);
            // A gap with nothing readable in it (an aborted transaction and its marker at the end
            // of a partition) is no input: probed once the offsets have stood still for 5 s.
            let sample = sample.map(|(sum, gaps)| {
                let lag: i64 = gaps
                    .iter()
                    .filter(|g| {
                        still_s < 5.0 || readable(&probe, &mut probed, g.0.clone(), g.1, g.2, g.3)
                    })
                    .map(|g| g.4)
                    .sum();
                (sum, lag)
            });
            let mut all = state.lock().unwrap();
            let p = all.entry(stage).or_default();
            match sample {
                Some((sum, lag)) => {
                    p.samples += 1;
                    if sum != p.committed || lag == 0 || !p.lag_known {
                        p.last_move_s = now;
                    }
                    p.committed = sum;
                    p.lag = lag;
                    p.lag_known = true;
                }
                None => p.unanswered += 1,
            }
            let stall = now - p.last_move_s;
            if p.lag > 0 && stall > p.max_stall_s {
                p.max_stall_s = stall;
                p.max_stall_at_s = now;
            }
        }
        if let Some(rest) = Duration::from_millis(500).checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

/// Whether a read_committed reader finds a record in [from, lso) of a partition (cached per
/// state); true when the broker does not say within 3 s (a stall is then not excused).
fn readable(
    probe: &BaseConsumer,
    cache: &mut HashMap<(String, i32, i64, i64), bool>,
    topic: String,
    partition: i32,
    from: i64,
    lso: i64,
) -> bool {
    let key = (topic, partition, from, lso);
    if let Some(v) = cache.get(&key) {
        return *v;
    }
    let mut tpl = TopicPartitionList::new();
    if tpl
        .add_partition_offset(&key.0, partition, Offset::Offset(from))
        .is_err()
        || probe.assign(&tpl).is_err()
    {
        return true;
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let answer = loop {
        match probe.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => break Some(m.offset() < lso),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break Some(false),
            _ if Instant::now() > deadline => break None,
            _ => {}
        }
    };
    let _ = probe.unassign();
    match answer {
        Some(v) => {
            cache.insert(key, v);
            v
        }
        None => true,
    }
}

// ---- input -------------------------------------------------------------------------------

/// One record the suite produces.
#[derive(Debug, Clone)]
struct Item {
    role: TopicRole,
    key: String,
    value: Vec<u8>,
    timestamp_ms: Option<i64>,
    /// Index into the simulation's records, or into the poison list.
    origin: Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Sim(usize),
    Poison(usize),
}

/// One poison record: where it goes and what it is.
#[derive(Debug, Clone)]
struct Poison {
    kind: PoisonKind,
    what: String,
}

type Delivered = Result<(i32, i64), String>;

/// Keeps each record's delivery report (partition and offset) by item index.
struct Deliveries {
    slots: Mutex<Vec<Option<Delivered>>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, id: usize) {
        let v = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        self.slots.lock().unwrap()[id] = Some(v);
    }
}

/// Produces `items` in order, never more than `allowance` of them, with an idempotent producer
/// (retries across a broker restart neither lose nor repeat a record). Returns each delivery.
fn feed(
    bootstrap: String,
    items: Arc<Vec<Item>>,
    prefix: String,
    allowance: Arc<AtomicUsize>,
    sent: Arc<AtomicUsize>,
) -> Vec<Option<Delivered>> {
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "600000")
        .set("message.max.bytes", "1048576")
        .create_with_context(Deliveries {
            slots: Mutex::new(vec![None; items.len()]),
        })
        .expect("producer");
    for (i, item) in items.iter().enumerate() {
        while allowance.load(Ordering::SeqCst) <= i {
            std::thread::sleep(Duration::from_millis(5));
        }
        let topic = item.role.topic(&prefix);
        let id = i.to_string();
        let mut record = BaseRecord::with_opaque_to(&topic, i)
            .key(item.key.as_bytes())
            .payload(item.value.as_slice())
            .headers(OwnedHeaders::new().insert(Header {
                key: "chaos-item",
                value: Some(id.as_bytes()),
            }));
        if let Some(ts) = item.timestamp_ms {
            record = record.timestamp(ts);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        sent.store(i + 1, Ordering::SeqCst);
    }
    producer.flush(Duration::from_secs(900)).expect("flush");
    let slots = producer.context().slots.lock().unwrap().clone();
    slots
}

/// A fleet of at least `records` raw records, its event time ending now.
fn fleet(s: &Settings) -> Simulation {
    let per_hour = 160.0 * s.instruments as f64;
    let mut hours = (s.records as f64 / per_hour * 1.03).max(1.0);
    loop {
        let start = (now_ms() - (hours * 3_600_000.0) as i64) / 60_000 * 60_000;
        let sim = simulate(&FleetConfig {
            instruments: s.instruments,
            duration_hours: hours,
            seed: s.seed,
            start_time_ms: start,
            bad_record_share: s.bad_record_share,
            ..Default::default()
        });
        if sim.records.len() >= s.records {
            return sim;
        }
        hours *= 1.05 * s.records as f64 / sim.records.len().max(1) as f64;
    }
}

/// A deterministic UUID-shaped id.
fn poison_id(n: usize) -> String {
    format!("c4a05000-0000-4000-8000-{n:012x}")
}

/// Pads a string field until the encoded record is about OVERSIZED_BYTES.
fn pad_to_size<T>(mut record: T, set: impl Fn(&mut T, String)) -> Vec<u8>
where
    T: seqmon_model::AvroRecord,
{
    set(&mut record, String::new());
    let base = encode(&record).unwrap().len();
    set(
        &mut record,
        "x".repeat(OVERSIZED_BYTES.saturating_sub(base + 8)),
    );
    encode(&record).unwrap()
}

/// The poison records (see the header), built from a good record at the poison position.
fn build_poison(s: &Settings, sim: &Simulation, at: usize) -> Vec<(Poison, Item)> {
    // A good sensor record near the poison position, and its instrument.
    let valid_sensor = |r: &seqmon_simulator::SimRecord| {
        r.expect == Expect::Valid
            && decode::<Telemetry>(&r.bytes).is_ok_and(|t| {
                t.kind == TelemetryKind::SENSOR_READINGS
                    && t.sensors
                        .as_ref()
                        .is_some_and(|x| x.laser_power_mw.is_some())
            })
    };
    let template_at = (at..sim.records.len())
        .chain(0..at)
        .find(|i| valid_sensor(&sim.records[*i]))
        .expect("a sensor record to build poison from");
    let template = &sim.records[template_at];
    let serial = template.key.clone();
    let ts = template.sent_time_ms + 100;
    let telemetry: Telemetry = decode(&template.bytes).unwrap();
    // Its sanitized form and the instrument's latest feature before it (so the poison differs
    // from a current record only in what it poisons), from the stages in process.
    let mut chain = Chain::new(vec![
        Driver::new(processor("validator")),
        Driver::new(processor("privacy-enforcer")),
        Driver::new(processor("feature-extractor")),
    ])
    .unwrap();
    let mut sanitized: Option<SanitizedTelemetry> = None;
    let mut feature: Option<Feature> = None;
    for (i, r) in sim.records.iter().enumerate().take(template_at + 1) {
        if r.key != serial {
            continue;
        }
        chain
            .push(&r.key, &r.bytes, &mut |_, e| {
                if e.role == TopicRole::Sanitized && i == template_at {
                    sanitized = decode(&e.value).ok();
                }
                if e.role == TopicRole::Features {
                    feature = decode(&e.value).ok();
                }
            })
            .unwrap();
    }
    let sanitized = sanitized.expect("the template passes validator and privacy enforcer");
    let feature = feature.expect("the instrument has a feature");
    let software = feature
        .software_version
        .clone()
        .unwrap_or_else(|| "unknown".into());
    let anomaly = Anomaly {
        anomaly_id: format!(
            "{serial}:{}:{}:chaos",
            feature.metric, feature.window_end_ms
        ),
        instrument_serial: serial.clone(),
        instrument_model: feature.instrument_model,
        subsystem: feature.subsystem,
        metric: feature.metric.clone(),
        state: AnomalyState::ACTIVE,
        score: 7.5,
        severity: AnomalySeverity::HIGH,
        rule: "baseline_shift".into(),
        window_start_ms: feature.window_start_ms,
        window_end_ms: feature.window_end_ms,
        observed_level: feature.level * 1.5,
        baseline_level: feature.level,
        baseline_stddev: feature.variability.max(0.01),
        slope_per_hour: 0.0,
        fraction_out_of_spec: 0.5,
        spec_low: feature.spec_low,
        spec_high: feature.spec_high,
        software_version: feature.software_version.clone(),
        reagent_kit_lot: feature.reagent_kit_lot.clone(),
        predicted_limit_ms: None,
        predicted_limit_earliest_ms: None,
        predicted_limit_latest_ms: None,
        flowcell_lot: feature.flowcell_lot.clone(),
        cohort: None,
        run_phase: feature.run_phase,
    };
    let cohort_key = CohortKind::SOFTWARE_VERSION.key(&software);
    let signal = CohortSignal {
        signal_id: format!("{cohort_key}:{serial}:{}:MEMBER", feature.window_end_ms),
        kind: CohortKind::SOFTWARE_VERSION,
        value: software.clone(),
        instrument_serial: serial.clone(),
        instrument_model: feature.instrument_model,
        event_time_ms: feature.window_end_ms,
        source_partition: 0,
        source_watermark_ms: feature.window_end_ms,
        signal: CohortSignalKind::MEMBER,
        count: false,
        decide: false,
        route: Vec::new(),
        anomaly: None,
    };
    let command = AlertCommand {
        command_id: poison_id(9999),
        alert_id: format!("{serial}:OPTICAL:{}", feature.window_end_ms),
        instrument_serial: serial.clone(),
        action: AlertCommandAction::ACKNOWLEDGE,
        issued_by: "chaos-suite".into(),
        issued_at_ms: ts,
        snooze_until_ms: None,
        resolution: None,
        assignee: None,
        comment: None,
        alert_sequence: None,
    };
    let wrong_schema = encode(&DeadLetter {
        stage: "chaos".into(),
        reason: DeadLetterReason::UNKNOWN,
        detail: "a dead letter where another schema belongs".into(),
        source_topic: "nowhere".into(),
        source_partition: 0,
        source_offset: 0,
        source_key: Some(serial.as_bytes().to_vec()),
        source_timestamp_ms: Some(ts),
        original_bytes: vec![1, 2, 3],
    })
    .unwrap();
    let mut n = 0usize;
    let mut next_id = || {
        n += 1;
        poison_id(n)
    };
    let far = |t: i64| t + 10 * YEAR_MS;
    let mut out = Vec::new();
    let roles = [
        TopicRole::Raw,
        TopicRole::Validated,
        TopicRole::Sanitized,
        TopicRole::Features,
        TopicRole::CohortSignals,
        TopicRole::Anomalies,
        TopicRole::AlertCommands,
    ];
    for role in roles {
        for kind in &s.poison_kinds {
            let (key, value, what): (String, Option<Vec<u8>>, String) = match (role, kind) {
                (_, PoisonKind::Garbage) => {
                    let bytes: Vec<u8> = (0..64u32)
                        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                        .collect();
                    (serial.clone(), Some(bytes), "64 bytes of noise".into())
                }
                (_, PoisonKind::WrongSchema) => (
                    serial.clone(),
                    Some(wrong_schema.clone()),
                    "a dead_letter record".into(),
                ),
                (TopicRole::Raw | TopicRole::Validated, k) => {
                    let mut t = telemetry.clone();
                    t.message_id = next_id();
                    let what = match k {
                        PoisonKind::Nan => {
                            t.sensors.as_mut().unwrap().laser_power_mw = Some(f64::NAN);
                            "telemetry, laser_power_mw NaN"
                        }
                        PoisonKind::FarFuture => {
                            t.event_time_ms = far(t.event_time_ms);
                            "telemetry, event time +10 years"
                        }
                        _ => "telemetry padded to 999,000 bytes (attribute)",
                    };
                    let value = if *k == PoisonKind::Oversized {
                        pad_to_size(t, |t, v| {
                            t.attributes.insert("chaos_padding".into(), v);
                        })
                    } else {
                        encode(&t).unwrap()
                    };
                    (serial.clone(), Some(value), what.into())
                }
                (TopicRole::Sanitized, k) => {
                    let mut t = sanitized.clone();
                    t.message_id = next_id();
                    let what = match k {
                        PoisonKind::Nan => {
                            t.sensors.as_mut().unwrap().laser_power_mw = Some(f64::NAN);
                            "sanitized telemetry, laser_power_mw NaN"
                        }
                        PoisonKind::FarFuture => {
                            t.event_time_ms = far(t.event_time_ms);
                            "sanitized telemetry, event time +10 years"
                        }
                        _ => "sanitized telemetry padded to 999,000 bytes (attribute)",
                    };
                    let value = if *k == PoisonKind::Oversized {
                        pad_to_size(t, |t, v| {
                            t.attributes.insert("chaos_padding".into(), v);
                        })
                    } else {
                        encode(&t).unwrap()
                    };
                    (serial.clone(), Some(value), what.into())
                }
                (TopicRole::Features, k) => {
                    let mut f = feature.clone();
                    f.feature_id = format!("{}:chaos:{}", f.feature_id, k.name());
                    let what = match k {
                        PoisonKind::Nan => {
                            f.level = f64::NAN;
                            "feature, level NaN"
                        }
                        PoisonKind::FarFuture => {
                            f.window_start_ms = far(f.window_start_ms);
                            f.window_end_ms = far(f.window_end_ms);
                            "feature, window +10 years"
                        }
                        _ => "feature padded to 999,000 bytes (run_id)",
                    };
                    let value = if *k == PoisonKind::Oversized {
                        pad_to_size(f, |f, v| f.run_id = Some(v))
                    } else {
                        encode(&f).unwrap()
                    };
                    (serial.clone(), Some(value), what.into())
                }
                (TopicRole::CohortSignals, k) => {
                    let mut g = signal.clone();
                    let what = match k {
                        PoisonKind::Nan => {
                            let mut a = anomaly.clone();
                            a.score = f64::NAN;
                            g.signal = CohortSignalKind::DEVIATION;
                            g.count = true;
                            g.decide = true;
                            g.signal_id = g.signal_id.replace(":MEMBER", ":DEVIATION");
                            g.anomaly = Some(encode(&a).unwrap());
                            "DEVIATION signal, its anomaly's score NaN"
                        }
                        PoisonKind::FarFuture => {
                            g.event_time_ms = far(g.event_time_ms);
                            g.source_watermark_ms = far(g.source_watermark_ms);
                            "MEMBER signal, event time and watermark +10 years"
                        }
                        _ => "MEMBER signal padded to 999,000 bytes (signal_id)",
                    };
                    let value = if *k == PoisonKind::Oversized {
                        pad_to_size(g, |g, v| g.signal_id = v)
                    } else {
                        encode(&g).unwrap()
                    };
                    (cohort_key.clone(), Some(value), what.into())
                }
                (TopicRole::Anomalies, k) => {
                    let mut a = anomaly.clone();
                    let what = match k {
                        PoisonKind::Nan => {
                            a.score = f64::NAN;
                            "anomaly, score NaN"
                        }
                        PoisonKind::FarFuture => {
                            a.window_start_ms = far(a.window_start_ms);
                            a.window_end_ms = far(a.window_end_ms);
                            "anomaly, window +10 years"
                        }
                        _ => "anomaly padded to 999,000 bytes (rule)",
                    };
                    let value = if *k == PoisonKind::Oversized {
                        pad_to_size(a, |a, v| a.rule = v)
                    } else {
                        encode(&a).unwrap()
                    };
                    (serial.clone(), Some(value), what.into())
                }
                (TopicRole::AlertCommands, k) => {
                    let mut c = command.clone();
                    c.command_id = next_id();
                    match k {
                        PoisonKind::Nan => (serial.clone(), None, String::new()),
                        PoisonKind::FarFuture => {
                            c.issued_at_ms = far(c.issued_at_ms);
                            (
                                serial.clone(),
                                Some(encode(&c).unwrap()),
                                "command issued +10 years".into(),
                            )
                        }
                        _ => (
                            serial.clone(),
                            Some(pad_to_size(c, |c, v| c.comment = Some(v))),
                            "command padded to 999,000 bytes (comment)".into(),
                        ),
                    }
                }
                (other, _) => panic!("no poison for {other}"),
            };
            let Some(value) = value else { continue };
            let index = out.len();
            out.push((
                Poison { kind: *kind, what },
                Item {
                    role,
                    key,
                    value,
                    timestamp_ms: Some(ts),
                    origin: Origin::Poison(index),
                },
            ));
        }
    }
    out
}

// ---- the plan ----------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Kill(&'static str),
    Broker,
    Pause(&'static str),
}

impl Action {
    /// A rough duration, to pace the input over the plan.
    fn estimate_s(self) -> f64 {
        match self {
            Action::Kill(_) => 5.0,
            Action::Broker => 35.0,
            Action::Pause(_) => 40.0,
        }
    }
}

/// Kills round-robin over the stages (each round starting one stage later), broker restarts and
/// pauses spread evenly between them.
fn plan(s: &Settings) -> VecDeque<Action> {
    let mut kills = Vec::new();
    for round in 0..s.kills_per_stage {
        for i in 0..STAGES.len() {
            kills.push(Action::Kill(STAGES[(i + round) % STAGES.len()]));
        }
    }
    let mut specials: Vec<Action> = Vec::new();
    let n_special = s.broker_restarts + s.pauses;
    let (mut b, mut p) = (0, 0);
    for i in 0..n_special {
        // Alternate, broker first.
        if (i % 2 == 0 && b < s.broker_restarts) || p >= s.pauses {
            specials.push(Action::Broker);
            b += 1;
        } else {
            specials.push(Action::Pause(s.pause_stage));
            p += 1;
        }
    }
    let mut out = VecDeque::new();
    let slots = specials.len() + 1;
    let mut k = 0;
    for (i, special) in specials.into_iter().enumerate() {
        let until = kills.len() * (i + 1) / slots;
        while k < until {
            out.push_back(kills[k]);
            k += 1;
        }
        out.push_back(special);
    }
    while k < kills.len() {
        out.push_back(kills[k]);
        k += 1;
    }
    out
}

// ---- the harness -------------------------------------------------------------------------

#[derive(Debug, Default, Clone)]
struct StageStats {
    kills: usize,
    kills_in_open_txn: usize,
    kill_attempts_unverified: usize,
    kills_skipped: usize,
    /// Restarts by the suite's watchdog: alive but stalled, or a transaction left open.
    watchdog_restarts: usize,
    watchdog_log: Vec<Value>,
    restarts: usize,
    crashes: usize,
    recovery_s: Vec<f64>,
    crash_log: Vec<Value>,
}

struct Harness {
    s: Settings,
    prefix: String,
    bootstrap: String,
    logs: PathBuf,
    t0: Instant,
    procs: Vec<Proc>,
    marks: Marks,
    monitor: Monitor,
    stats: BTreeMap<&'static str, StageStats>,
    timeline: Vec<Value>,
    pauses: Vec<Value>,
    broker_restarts: usize,
    broker_outages: Vec<Value>,
    total_items: usize,
    allowance: Arc<AtomicUsize>,
    sent: Arc<AtomicUsize>,
    chaos_started: Option<Instant>,
    produce_s: f64,
    actions_done: usize,
    actions_total: usize,
    /// Per process index: when it may be restarted after a crash, and crashes in a row.
    backoff: HashMap<usize, (Instant, u32)>,
    /// Per stage: no watchdog restart before this time (seconds on the suite's clock).
    watchdog_grace: HashMap<&'static str, f64>,
    problems: Vec<String>,
}

impl Harness {
    fn now_s(&self) -> f64 {
        (self.t0.elapsed().as_secs_f64() * 10.0).round() / 10.0
    }

    fn event(&mut self, what: &str, detail: Value) {
        let t = self.now_s();
        eprintln!("chaos {t:>7.1}s {what} {detail}");
        self.timeline
            .push(json!({"t_s": t, "event": what, "detail": detail}));
    }

    fn stage_extra(&self) -> Vec<String> {
        vec![
            "--batch-max-records".into(),
            self.s.batch_max_records.to_string(),
        ]
    }

    fn index(&self, stage: &str, instance: &str) -> usize {
        self.procs
            .iter()
            .position(|p| p.stage == stage && p.instance == instance)
            .unwrap()
    }

    /// Crash detection and restarts, and the input's pace. Called often by every wait.
    fn tick(&mut self) {
        for i in 0..self.procs.len() {
            if self.procs[i].stopped || self.procs[i].retiring {
                continue;
            }
            if let Some(status) = self.procs[i].exited() {
                let stage = self.procs[i].stage;
                let instance = self.procs[i].instance.clone();
                let tail = self.procs[i].log_tail(12);
                let now = self.now_s();
                let st = self.stats.entry(stage).or_default();
                st.crashes += 1;
                let in_a_row = self.backoff.get(&i).map_or(0, |b| b.1) + 1;
                let wait = (2f64.powi(in_a_row as i32 - 1)).min(BACKOFF_MAX_S);
                st.crash_log.push(json!({
                    "t_s": now, "instance": instance, "status": status.to_string(),
                    "log_tail": tail,
                }));
                self.backoff.insert(
                    i,
                    (Instant::now() + Duration::from_secs_f64(wait), in_a_row),
                );
                self.event(
                    "crash",
                    json!({"stage": stage, "instance": instance, "status": status.to_string(),
                           "restart_in_s": wait, "log_tail": tail}),
                );
            }
            if self.procs[i].child.is_none() {
                if let Some((at, n)) = self.backoff.get(&i).copied() {
                    if Instant::now() >= at {
                        let stage = self.procs[i].stage;
                        self.procs[i].spawn("restart after a crash");
                        self.stats.entry(stage).or_default().restarts += 1;
                        // Crashes in a row reset once it commits (checked below).
                        self.backoff
                            .insert(i, (Instant::now() + Duration::from_secs(3600), n));
                    }
                }
            }
        }
        self.watchdog();
        // A process that committed after a crash is out of its crash loop.
        let settled: Vec<usize> = self
            .backoff
            .iter()
            .filter(|(i, _)| {
                self.procs.get(**i).is_some_and(|p| {
                    p.child.is_some() && p.committed_txns().is_some_and(|c| c > 0.0)
                })
            })
            .map(|(i, _)| *i)
            .collect();
        for i in settled {
            self.backoff.remove(&i);
        }
        self.pace();
    }

    /// A stage that is alive but stalls (input waiting, offsets still for WATCHDOG_S), or whose
    /// transaction stays open past the transaction timeout (a hanging transaction holds every
    /// reader of the partition at its LSO), is killed and restarted as a progress-based liveness
    /// check would; counted and reported as a problem, never silent.
    fn watchdog(&mut self) {
        let now = self.t0.elapsed().as_secs_f64();
        let mon = self.monitor.lock().unwrap().clone();
        for i in 0..self.procs.len() {
            let p = &self.procs[i];
            if p.instance != "0" || p.stopped || p.child.is_none() || self.backoff.contains_key(&i)
            {
                continue;
            }
            if self.watchdog_grace.get(p.stage).is_some_and(|t| now < *t) {
                continue;
            }
            let Some(m) = mon.get(p.stage) else { continue };
            let stalled = m.lag > 0 && now - m.last_move_s > WATCHDOG_S;
            let hanging = m.open_txn.as_ref().filter(|o| now - o.4 > HANGING_TXN_S);
            if !stalled && hanging.is_none() {
                continue;
            }
            let stage = p.stage;
            let why = match hanging {
                Some(o) => format!(
                    "transaction open on {}[{}] for {:.0} s (HW {} > LSO {})",
                    o.0,
                    o.1,
                    now - o.4,
                    o.2,
                    o.3
                ),
                None => format!(
                    "alive, {} input records waiting, committed offsets still for {:.0} s",
                    m.lag,
                    now - m.last_move_s
                ),
            };
            let tail = p.log_tail(15);
            self.procs[i].kill9();
            self.procs[i].spawn("watchdog restart");
            self.watchdog_grace.insert(stage, now + 60.0);
            let t = self.now_s();
            let st = self.stats.entry(stage).or_default();
            st.watchdog_restarts += 1;
            st.restarts += 1;
            st.watchdog_log
                .push(json!({"t_s": t, "why": why, "log_tail": tail}));
            self.event("watchdog restart", json!({"stage": stage, "why": why}));
        }
    }

    /// Lets the producer go on: by time over `produce_s`, never more than one plan step ahead.
    fn pace(&self) {
        let total = self.total_items as f64;
        let allowed = match self.chaos_started {
            None => total * 0.03,
            Some(start) if self.actions_done < self.actions_total => {
                let by_time = start.elapsed().as_secs_f64() / self.produce_s;
                let cap = (self.actions_done as f64 + 1.5) / (self.actions_total as f64 + 1.0);
                total * by_time.min(cap).max(0.03)
            }
            Some(_) => total,
        };
        let allowed = (allowed.ceil() as usize).min(self.total_items);
        self.allowance.fetch_max(allowed, Ordering::SeqCst);
    }

    fn sleep(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.tick();
            std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
        }
    }

    /// Waits for `done` with ticks; false on timeout.
    fn wait_for(&mut self, timeout: Duration, mut done: impl FnMut(&mut Harness) -> bool) -> bool {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            self.tick();
            if done(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn exclusive_partitions(&self, stage: &str) -> Vec<(String, i32)> {
        let mut out = Vec::new();
        for role in exclusive_of(stage) {
            for p in 0..self.s.partitions as i32 {
                out.push((role.topic(&self.prefix), p));
            }
        }
        out
    }

    /// Polls the stage's own topics until a transaction is open on one.
    fn find_open_txn(&mut self, stage: &str, timeout: Duration) -> Option<OpenTxn> {
        let parts = self.exclusive_partitions(stage);
        let until = Instant::now() + timeout;
        let mut last_tick = Instant::now();
        let mut i = 0;
        while Instant::now() < until {
            if last_tick.elapsed() > Duration::from_millis(250) {
                self.tick();
                last_tick = Instant::now();
            }
            let (t, p) = &parts[i % parts.len()];
            i += 1;
            if let Some((hw, lso)) = self.marks.get(t, *p, Duration::from_secs(2)) {
                if hw > lso {
                    return Some((t.clone(), *p, hw, lso));
                }
            }
        }
        None
    }

    /// Whether a transaction of the (stopped) stage is open: HW > LSO on one of its topics.
    fn pending_txn(&self, stage: &str) -> Option<OpenTxn> {
        self.exclusive_partitions(stage)
            .into_iter()
            .find_map(|(t, p)| {
                let (hw, lso) = self.marks.get(&t, p, Duration::from_secs(5))?;
                (hw > lso).then_some((t, p, hw, lso))
            })
    }

    fn start_stages(&mut self) {
        let extra = self.stage_extra();
        for stage in STAGES {
            let mut p = Proc::new(
                stage,
                "0",
                &self.bootstrap,
                &self.prefix,
                &extra,
                &self.logs,
            );
            p.spawn("initial start");
            self.procs.push(p);
            self.stats.entry(stage).or_default();
        }
        let ok = self.wait_for(Duration::from_secs(60), |h| {
            h.procs.iter().all(|p| p.metrics().is_some())
        });
        assert!(ok, "the stages did not all serve /metrics within 60 s");
        self.event(
            "stages started",
            json!({"logs": self.logs.display().to_string()}),
        );
    }

    /// Waits until the process commits a transaction; seconds since `since`.
    fn wait_first_commit(&mut self, idx: usize, since: Instant, timeout: Duration) -> Option<f64> {
        let ok = self.wait_for(timeout, |h| {
            h.procs[idx].committed_txns().is_some_and(|c| c > 0.0)
        });
        ok.then(|| (since.elapsed().as_secs_f64() * 100.0).round() / 100.0)
    }

    fn kill(
        &mut self,
        stage: &'static str,
        queue: &mut VecDeque<Action>,
        attempts: &mut HashMap<&'static str, usize>,
    ) {
        let idx = self.index(stage, "0");
        // A stage crash-looping on its own has no transaction to kill it in.
        if self.backoff.get(&idx).is_some_and(|b| b.1 >= 2) {
            self.event("kill skipped", json!({"stage": stage, "why": "crash loop"}));
            self.stats.entry(stage).or_default().kills_skipped += 1;
            return;
        }
        let seen = self.find_open_txn(stage, Duration::from_secs(30));
        let killed_at = Instant::now();
        self.procs[idx].kill9();
        std::thread::sleep(VERIFY_AFTER);
        let pending = self.pending_txn(stage);
        let verified = pending.is_some();
        {
            let st = self.stats.entry(stage).or_default();
            st.kills += 1;
            if verified {
                st.kills_in_open_txn += 1;
            } else {
                st.kill_attempts_unverified += 1;
            }
        }
        self.event(
            "SIGKILL",
            json!({"stage": stage, "seen_open": seen.as_ref().map(|o| json!({"topic": o.0, "partition": o.1, "hw": o.2, "lso": o.3})),
                   "open_after_kill": pending.as_ref().map(|o| json!({"topic": o.0, "partition": o.1, "hw": o.2, "lso": o.3})),
                   "in_open_txn": verified}),
        );
        self.procs[idx].spawn("restart after SIGKILL");
        let grace = self.t0.elapsed().as_secs_f64() + 30.0;
        self.watchdog_grace.insert(stage, grace);
        self.stats.entry(stage).or_default().restarts += 1;
        let recovery = self.wait_first_commit(idx, killed_at, Duration::from_secs(60));
        match recovery {
            Some(s) => self.stats.entry(stage).or_default().recovery_s.push(s),
            // No input to commit is no problem; a crash loop or a stall is counted apart.
            None if self.lag(stage) > 0 && !self.backoff.contains_key(&idx) => {
                self.problems.push(format!(
                    "{stage}: no commit within 60 s of its restart after a kill, with {} input records waiting",
                    self.lag(stage)
                ))
            }
            None => {}
        }
        self.event(
            "recovered",
            json!({"stage": stage, "first_commit_after_kill_s": recovery}),
        );
        let tried = attempts.entry(stage).or_default();
        *tried += 1;
        if !verified && *tried < 3 * self.s.kills_per_stage + 2 {
            queue.push_back(Action::Kill(stage));
            self.actions_total += 1;
        }
    }

    fn restart_broker(&mut self) {
        let status = ChaosBroker::command(self.s.kafka_port, "kill")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        let down = Instant::now();
        self.event("broker SIGKILL", json!({"ok": status.success()}));
        assert!(status.success(), "broker.sh kill failed");
        self.sleep(Duration::from_secs_f64(self.s.broker_down_s));
        let log = std::fs::File::create(
            self.logs
                .join(format!("broker-restart-{}.log", self.broker_restarts + 1)),
        )
        .unwrap();
        let mut child = ChaosBroker::command(self.s.kafka_port, "restart")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let status = loop {
            self.tick();
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "broker.sh restart failed");
        let down_s = down.elapsed().as_secs_f64();
        let grace = self.t0.elapsed().as_secs_f64() + 30.0;
        for stage in STAGES {
            self.watchdog_grace.insert(stage, grace);
        }
        self.broker_restarts += 1;
        self.event(
            "broker restarted",
            json!({"down_s": (down_s * 10.0).round() / 10.0}),
        );
        // Every stage commits again.
        let base: Vec<Option<f64>> = self.procs.iter().map(Proc::committed_txns).collect();
        let mut back: BTreeMap<&'static str, f64> = BTreeMap::new();
        self.wait_for(Duration::from_secs(90), |h| {
            for (i, p) in h.procs.iter().enumerate() {
                if back.contains_key(p.stage) {
                    continue;
                }
                let now = p.committed_txns();
                let moved = match (base[i], now) {
                    (Some(b), Some(n)) => n > b,
                    (None, Some(n)) => n > 0.0,
                    _ => false,
                };
                if moved {
                    back.insert(
                        p.stage,
                        (down.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                    );
                }
            }
            back.len() == STAGES.len()
        });
        let missing: Vec<&str> = STAGES
            .iter()
            .copied()
            .filter(|s| !back.contains_key(s))
            .collect();
        let looping: Vec<&str> = self
            .backoff
            .keys()
            .filter_map(|i| self.procs.get(*i).map(|p| p.stage))
            .collect();
        let stuck: Vec<&str> = missing
            .iter()
            .copied()
            .filter(|s| self.lag(s) > 0 && !looping.contains(s))
            .collect();
        if !stuck.is_empty() {
            self.problems.push(format!(
                "after broker restart {}: {stuck:?} did not commit within 90 s with input waiting",
                self.broker_restarts
            ));
        }
        self.broker_outages
            .push(json!({"down_s": (down_s * 10.0).round() / 10.0,
            "first_commit_after_kill_s": back, "not_back": missing}));
        self.event(
            "stages committing again",
            json!({"since_broker_kill_s": back}),
        );
    }

    fn pause(&mut self, stage: &'static str) {
        let seen = self.find_open_txn(stage, Duration::from_secs(60));
        let idx = self.index(stage, "0");
        let aborted_before = self.procs[idx].aborted_txns().unwrap_or(0.0);
        assert!(self.procs[idx].signal("STOP"), "SIGSTOP {stage}");
        self.procs[idx].stopped = true;
        let paused = Instant::now();
        std::thread::sleep(VERIFY_AFTER);
        let pending = self.pending_txn(stage);
        self.event(
            "SIGSTOP",
            json!({"stage": stage, "seen_open": seen.is_some(), "open_while_stopped": pending.is_some()}),
        );
        // A standby of the stage joins the group; it gets the partitions once the paused member
        // is dropped (session timeout).
        let mut extra = self.stage_extra();
        extra.extend(["--static-membership".to_string(), "false".to_string()]);
        let mut standby = Proc::new(
            stage,
            "standby",
            &self.bootstrap,
            &self.prefix,
            &extra,
            &self.logs,
        );
        standby.spawn("standby for the paused instance");
        self.procs.push(standby);
        let sidx = self.procs.len() - 1;
        let parts = f64::from(self.s.partitions);
        self.sleep(Duration::from_secs_f64(
            SESSION_TIMEOUT_S + 5.0 - VERIFY_AFTER.as_secs_f64(),
        ));
        let took_over = self.wait_for(Duration::from_secs(30), |h| {
            h.procs[sidx].metric("seqmon_assigned_partitions") == Some(parts)
        });
        let standby_input_at_resume = self.procs[sidx]
            .metric("seqmon_input_records_total")
            .unwrap_or(0.0);
        assert!(self.procs[idx].signal("CONT"), "SIGCONT {stage}");
        self.procs[idx].stopped = false;
        let grace = self.t0.elapsed().as_secs_f64() + 60.0;
        self.watchdog_grace.insert(stage, grace);
        let paused_s = paused.elapsed().as_secs_f64();
        self.event(
            "SIGCONT",
            json!({"stage": stage, "paused_s": (paused_s * 10.0).round() / 10.0,
                   "standby_took_all_partitions": took_over,
                   "standby_input_records": standby_input_at_resume}),
        );
        // The zombie's transaction must not commit: it aborts (stale generation) and rejoins.
        let zombie_aborted = self.wait_for(Duration::from_secs(60), |h| {
            h.procs[idx]
                .aborted_txns()
                .is_some_and(|a| a > aborted_before)
        });
        let aborts = self.procs[idx].aborted_txns().unwrap_or(0.0) - aborted_before;
        // Retire the standby (it leaves the group: dynamic membership).
        self.procs[sidx].retiring = true;
        self.procs[sidx].signal("TERM");
        let mut standby_exit = None;
        self.wait_for(Duration::from_secs(60), |h| {
            standby_exit = h.procs[sidx]
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            standby_exit.is_some()
        });
        let standby = self.procs.remove(sidx);
        self.backoff.remove(&sidx);
        let standby_ok = standby_exit.is_some_and(|s| s.success());
        drop(standby);
        let back = self.wait_for(Duration::from_secs(60), |h| {
            h.procs[idx].metric("seqmon_assigned_partitions") == Some(parts)
        });
        let record = json!({
            "stage": stage, "paused_s": (paused_s * 10.0).round() / 10.0,
            "session_timeout_s": SESSION_TIMEOUT_S,
            "in_open_txn": pending.is_some(),
            "standby_took_all_partitions": took_over,
            "standby_input_records_while_paused": standby_input_at_resume,
            "zombie_aborted_txns": aborts, "zombie_aborted": zombie_aborted,
            "standby_clean_exit": standby_ok,
            "paused_instance_has_all_partitions_again": back,
        });
        if !(took_over && back && standby_ok) {
            self.problems.push(format!("pause of {stage}: {record}"));
        }
        self.event("pause done", record.clone());
        self.pauses.push(record);
    }

    fn run_plan(&mut self, mut queue: VecDeque<Action>) {
        self.actions_total = queue.len();
        self.chaos_started = Some(Instant::now());
        let started = Instant::now();
        let mut attempts: HashMap<&'static str, usize> = HashMap::new();
        let mut step = 0usize;
        while let Some(action) = queue.pop_front() {
            // Spread the actions over the input: action i no sooner than its share of the time.
            let due = self.produce_s * (step as f64 + 0.5) / (self.actions_total as f64 + 0.5);
            let wait = due - started.elapsed().as_secs_f64();
            if wait > 0.0 {
                self.sleep(Duration::from_secs_f64(wait.min(60.0)));
            }
            match action {
                Action::Kill(stage) => self.kill(stage, &mut queue, &mut attempts),
                Action::Broker => self.restart_broker(),
                Action::Pause(stage) => self.pause(stage),
            }
            step += 1;
            self.actions_done += 1;
        }
        self.event("plan done", json!({"actions": step}));
    }

    /// Input records waiting for `stage` at the monitor's last sample.
    fn lag(&self, stage: &str) -> i64 {
        self.monitor.lock().unwrap().get(stage).map_or(0, |p| p.lag)
    }

    /// A stage crashed at least twice in a row without committing in between.
    fn crash_looping(&self) -> bool {
        self.backoff.values().any(|b| b.1 >= 2)
    }

    /// All input produced, then every stage caught up for 5 s.
    fn drain(&mut self) -> bool {
        let total = self.total_items;
        let started = Instant::now();
        let limit = Duration::from_secs_f64(self.s.drain_timeout_s);
        let produced = self.wait_for(limit, |h| h.sent.load(Ordering::SeqCst) >= total);
        let stuck_after =
            |h: &Harness| Duration::from_secs(if h.crash_looping() { 60 } else { 150 });
        let mut quiet: Option<Instant> = None;
        let mut stuck = false;
        let mut last_move = (Instant::now(), 0i64);
        let caught_up = self.wait_for(limit.saturating_sub(started.elapsed()), |h| {
            let all = h.monitor.lock().unwrap();
            let fresh = STAGES
                .iter()
                .all(|s| all.get(s).is_some_and(|p| p.lag_known && p.lag == 0));
            // Nothing committed anywhere for a while with input waiting: stuck (60 s when a
            // stage is crash-looping, else 150 s: the watchdog acts on a stall after 60 s).
            let total: i64 = all.values().map(|p| p.committed).sum();
            drop(all);
            if total != last_move.1 {
                last_move = (Instant::now(), total);
            } else if !fresh && last_move.0.elapsed() > stuck_after(h) {
                stuck = true;
                return true;
            }
            if fresh {
                let q = *quiet.get_or_insert_with(Instant::now);
                q.elapsed() > Duration::from_secs(5)
            } else {
                quiet = None;
                false
            }
        });
        let lags: BTreeMap<&str, i64> = self
            .monitor
            .lock()
            .unwrap()
            .iter()
            .map(|(s, p)| (*s, p.lag))
            .collect();
        let caught_up = caught_up && !stuck;
        self.event(
            "drained",
            json!({"produced": produced, "caught_up": caught_up, "stuck": stuck, "lag": lags,
                   "drain_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0}),
        );
        if !(produced && caught_up) {
            self.problems.push(format!(
                "drain: produced {produced}, caught up {caught_up}, lag {lags:?}"
            ));
        }
        produced && caught_up
    }

    /// SIGTERM to every stage; each should exit 0 after its last transaction.
    fn shutdown(&mut self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for p in &self.procs {
            p.signal("TERM");
        }
        let until = Instant::now() + Duration::from_secs(60);
        let mut problems = Vec::new();
        for p in &mut self.procs {
            if p.child.is_none() {
                problems.push(format!(
                    "{} was not running at the end (crash back-off)",
                    p.stage
                ));
                out.insert(
                    format!("{}-{}", p.stage, p.instance),
                    "not running (crash back-off)".into(),
                );
                continue;
            }
            let status = loop {
                match p.child.as_mut().map(|c| c.try_wait()) {
                    None => break None,
                    Some(Ok(Some(s))) => break Some(s),
                    _ if Instant::now() > until => {
                        p.kill9();
                        break None;
                    }
                    _ => std::thread::sleep(Duration::from_millis(100)),
                }
            };
            p.child = None;
            let text = status.map_or("did not exit within 60 s".to_string(), |s| s.to_string());
            if !status.is_some_and(|s| s.success()) {
                problems.push(format!("{} did not stop cleanly: {text}", p.stage));
            }
            out.insert(format!("{}-{}", p.stage, p.instance), text);
        }
        self.problems.extend(problems);
        out
    }
}

// ---- the oracle --------------------------------------------------------------------------

/// What a stage's group committed as consumed: next offset per (topic, partition).
fn consumed_offsets(
    bootstrap: &str,
    prefix: &str,
    stage: &str,
    partitions: u32,
) -> HashMap<(String, i32), i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{prefix}{stage}"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for role in inputs_of(stage) {
        for p in 0..partitions as i32 {
            tpl.add_partition(&role.topic(prefix), p);
        }
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(30))
        .unwrap();
    committed
        .elements()
        .iter()
        .map(|e| {
            let o = match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            };
            ((e.topic().to_string(), e.partition()), o)
        })
        .collect()
}

/// A reference output: topic role, key, value.
type Out = (TopicRole, String, Vec<u8>);

/// `stage`'s processor in process over `records` in the given order (role of each record).
fn run_reference(
    stage: &str,
    prefix: &str,
    partitions: u32,
    records: &[(TopicRole, &Committed)],
) -> Vec<Out> {
    let mut driver = Driver::new(processor(stage));
    seqmon_runtime::kafka::default_record_limits(&mut driver);
    driver
        .processor_mut()
        .on_input_partitions(partitions as usize);
    let mut outputs = Vec::new();
    let mut emitted = Vec::new();
    for (role, r) in records {
        let topic = role.topic(prefix);
        let env = Envelope {
            key: Some(r.key.as_bytes()),
            value: &r.value,
            topic: &topic,
            partition: r.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            arrival_time_ms: None,
        };
        driver.handle(&env, &mut emitted, |_| {}).unwrap();
        outputs.extend(emitted.drain(..).map(|e| (e.role, e.key, e.value)));
    }
    outputs
}

#[derive(Debug, Default)]
struct TopicDiff {
    expected: usize,
    committed: usize,
    missing: usize,
    duplicates: usize,
    extra: usize,
    missing_by_origin: BTreeMap<String, usize>,
    explained: BTreeMap<String, usize>,
    examples: Vec<String>,
}

impl TopicDiff {
    fn json(&self) -> Value {
        json!({"expected": self.expected, "committed": self.committed, "missing": self.missing,
               "duplicates": self.duplicates, "extra": self.extra,
               "missing_by_origin": self.missing_by_origin, "explained": self.explained,
               "examples": self.examples})
    }
}

fn describe(role: TopicRole, key: &str, value: &[u8]) -> String {
    let body = match role {
        TopicRole::DeadLetters | TopicRole::DeadLettersSensitive => decode::<DeadLetter>(value)
            .map(|d| {
                format!(
                    "{} {:?} {}[{}]@{}",
                    d.stage, d.reason, d.source_topic, d.source_partition, d.source_offset
                )
            })
            .unwrap_or_default(),
        TopicRole::CohortSignals => decode::<CohortSignal>(value)
            .map(|c| {
                format!(
                    "{:?} {} wm={}",
                    c.signal, c.signal_id, c.source_watermark_ms
                )
            })
            .unwrap_or_default(),
        TopicRole::Alerts => decode::<Alert>(value)
            .map(|a| format!("{} #{} {:?}", a.alert_id, a.sequence, a.transition))
            .unwrap_or_default(),
        TopicRole::Anomalies => decode::<Anomaly>(value)
            .map(|a| format!("{} {:?}", a.anomaly_id, a.state))
            .unwrap_or_default(),
        TopicRole::Features => decode::<Feature>(value)
            .map(|f| f.feature_id)
            .unwrap_or_default(),
        _ => String::new(),
    };
    format!("{key} {} bytes {body}", value.len())
}

fn is_watermark(v: &[u8]) -> bool {
    decode::<CohortSignal>(v).is_ok_and(|c| c.signal == CohortSignalKind::WATERMARK)
}

/// A cohort signal with its `source_watermark_ms` left out.
fn without_watermark(v: &[u8]) -> Option<String> {
    let mut c = decode::<CohortSignal>(v).ok()?;
    c.source_watermark_ms = 0;
    Some(format!("{c:?}"))
}

/// Multiset comparison of one topic (see the header), with the detector's watermark
/// differences on cohort.signals set apart.
fn compare(
    role: TopicRole,
    expected: &[(String, Vec<u8>, String)],
    committed: &[Committed],
) -> TopicDiff {
    let mut want: HashMap<(&str, &[u8]), Vec<&str>> = HashMap::new();
    for (k, v, origin) in expected {
        want.entry((k.as_str(), v.as_slice()))
            .or_default()
            .push(origin.as_str());
    }
    let mut got: HashMap<(&str, &[u8]), usize> = HashMap::new();
    for r in committed {
        *got.entry((r.key.as_str(), r.value.as_slice())).or_default() += 1;
    }
    let mut d = TopicDiff {
        expected: expected.len(),
        committed: committed.len(),
        ..Default::default()
    };
    // Leftovers for the watermark relaxation: (key, value, origin) missing, (key, value) extra.
    let mut missing: Vec<(&str, &[u8], &str)> = Vec::new();
    let mut extra: Vec<(&str, &[u8])> = Vec::new();
    let mut duplicate: Vec<(&str, &[u8], usize)> = Vec::new();
    for (kv, origins) in &want {
        let g = got.get(kv).copied().unwrap_or(0);
        for origin in origins.iter().skip(g) {
            missing.push((kv.0, kv.1, origin));
        }
        if g > origins.len() {
            duplicate.push((kv.0, kv.1, g - origins.len()));
        }
    }
    for (kv, g) in &got {
        if !want.contains_key(kv) {
            for _ in 0..*g {
                extra.push(*kv);
            }
        }
    }
    if role == TopicRole::CohortSignals {
        // WATERMARK broadcasts: restart-dependent by design.
        let before = (missing.len(), extra.len());
        missing.retain(|m| !(m.2 == "anomaly-detector" && is_watermark(m.1)));
        extra.retain(|e| !is_watermark(e.1));
        let wm_dupes: usize = duplicate
            .iter()
            .filter(|d| is_watermark(d.1))
            .map(|d| d.2)
            .sum();
        duplicate.retain(|d| !is_watermark(d.1));
        let gone_missing = before.0 - missing.len();
        let gone_extra = before.1 - extra.len();
        if gone_missing + gone_extra + wm_dupes > 0 {
            d.explained.insert(
                "detector WATERMARK broadcasts not sent (restart: an hour of event time first)"
                    .into(),
                gone_missing,
            );
            d.explained.insert(
                "detector WATERMARK broadcasts sent instead (other watermark after a restart)"
                    .into(),
                gone_extra,
            );
            d.explained.insert(
                "detector WATERMARK broadcasts sent again (period kept in memory)".into(),
                wm_dupes,
            );
        }
        // MEMBER/DEVIATION from the detector differing only in source_watermark_ms: matched
        // against what was committed beyond expectation (extra, or a copy too many).
        let mut pool: HashMap<(String, String), usize> = HashMap::new();
        for (k, v) in &extra {
            if let Some(n) = without_watermark(v) {
                *pool.entry((k.to_string(), n)).or_default() += 1;
            }
        }
        for (k, v, copies) in &duplicate {
            if let Some(n) = without_watermark(v) {
                *pool.entry((k.to_string(), n)).or_default() += copies;
            }
        }
        let mut matched = 0;
        let mut matched_keys: HashMap<(String, String), usize> = HashMap::new();
        missing.retain(|m| {
            if m.2 != "anomaly-detector" {
                return true;
            }
            let Some(n) = without_watermark(m.1) else {
                return true;
            };
            let key = (m.0.to_string(), n);
            match pool.get_mut(&key) {
                Some(c) if *c > 0 => {
                    *c -= 1;
                    matched += 1;
                    *matched_keys.entry(key).or_default() += 1;
                    false
                }
                _ => true,
            }
        });
        extra.retain(|e| {
            let Some(n) = without_watermark(e.1) else {
                return true;
            };
            match matched_keys.get_mut(&(e.0.to_string(), n)) {
                Some(c) if *c > 0 => {
                    *c -= 1;
                    false
                }
                _ => true,
            }
        });
        for d in &mut duplicate {
            let Some(n) = without_watermark(d.1) else {
                continue;
            };
            if let Some(c) = matched_keys.get_mut(&(d.0.to_string(), n)) {
                let take = (*c).min(d.2);
                *c -= take;
                d.2 -= take;
            }
        }
        duplicate.retain(|d| d.2 > 0);
        if matched > 0 {
            d.explained.insert("detector signals differing only in source_watermark_ms (in-memory partition clocks after a restart)".into(), matched);
        }
    }
    d.missing = missing.len();
    d.extra = extra.len();
    d.duplicates = duplicate.iter().map(|(_, _, n)| n).sum();
    for (_, _, origin) in &missing {
        *d.missing_by_origin.entry(origin.to_string()).or_default() += 1;
    }
    for (k, v, origin) in missing.iter().take(5) {
        d.examples
            .push(format!("missing (from {origin}): {}", describe(role, k, v)));
    }
    for (k, v, n) in duplicate.iter().take(5) {
        d.examples
            .push(format!("duplicate x{n}: {}", describe(role, k, v)));
    }
    for (k, v) in extra.iter().take(5) {
        d.examples.push(format!("extra: {}", describe(role, k, v)));
    }
    d
}

/// The notifier's exactly-once invariants on its committed output and final state.
fn notifier_invariants(
    alerts: &[Committed],
    maintenance: &[Committed],
    changelog: Option<&[Committed]>,
) -> Value {
    let mut seqs: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    let mut undecodable = 0;
    for r in alerts {
        match decode::<Alert>(&r.value) {
            Ok(a) => seqs.entry(a.alert_id).or_default().push(a.sequence),
            Err(_) => undecodable += 1,
        }
    }
    let (mut alert_dupes, mut alert_gaps) = (0usize, 0usize);
    let mut last_seq: HashMap<String, i32> = HashMap::new();
    for (id, v) in &mut seqs {
        v.sort_unstable();
        let distinct: BTreeSet<i32> = v.iter().copied().collect();
        alert_dupes += v.len() - distinct.len();
        let max = *distinct.iter().next_back().unwrap();
        alert_gaps += (max.max(0) as usize).saturating_sub(distinct.len());
        last_seq.insert(id.clone(), max);
    }
    let mut revisions: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    let mut entry_ids: HashMap<(String, i32), usize> = HashMap::new();
    for r in maintenance {
        match decode::<MaintenanceEntry>(&r.value) {
            Ok(m) => {
                *entry_ids
                    .entry((m.entry_id.clone(), m.revision))
                    .or_default() += 1;
                revisions
                    .entry(m.instrument_serial)
                    .or_default()
                    .push(m.revision);
            }
            Err(_) => undecodable += 1,
        }
    }
    let entry_dupes: usize = entry_ids.values().map(|n| n - 1).sum();
    let mut revision_gaps = 0usize;
    let mut last_rev: HashMap<String, i32> = HashMap::new();
    for (key, v) in &revisions {
        let distinct: BTreeSet<i32> = v.iter().copied().collect();
        let max = *distinct.iter().next_back().unwrap();
        revision_gaps += (max.max(0) as usize).saturating_sub(distinct.len());
        last_rev.insert(key.clone(), max);
    }
    // The final state on the changelog: each book's revisions and live alerts' sequences.
    let mut state_mismatches = Vec::new();
    let mut checked = 0;
    if let Some(changelog) = changelog {
        let mut latest: HashMap<&str, &Committed> = HashMap::new();
        for r in changelog {
            latest.insert(r.key.as_str(), r);
        }
        for (key, r) in latest {
            if key.starts_with('~') || r.value.is_empty() {
                continue;
            }
            let Ok(snap) = decode::<StateSnapshot>(&r.value) else {
                continue;
            };
            let Ok(book) = serde_json::from_slice::<Value>(&snap.state_json) else {
                continue;
            };
            checked += 1;
            let revs = book["revisions"].as_i64().unwrap_or(0) as i32;
            let out = last_rev.get(key).copied().unwrap_or(0);
            if revs != out {
                state_mismatches.push(format!("{key}: state revisions {revs}, output up to {out}"));
            }
            if let Some(alerts) = book["alerts"].as_object() {
                for a in alerts.values() {
                    let id = a["alert_id"].as_str().unwrap_or_default();
                    let seq = a["sequence"].as_i64().unwrap_or(0) as i32;
                    let out = last_seq.get(id).copied().unwrap_or(0);
                    if seq != out {
                        state_mismatches
                            .push(format!("{id}: state sequence {seq}, output up to {out}"));
                    }
                }
            }
        }
    }
    json!({
        "alerts": alerts.len(), "alert_ids": seqs.len(), "maintenance": maintenance.len(),
        "undecodable": undecodable,
        "duplicate_alert_sequences": alert_dupes, "alert_sequence_gaps": alert_gaps,
        "duplicate_entry_revisions": entry_dupes, "revision_gaps": revision_gaps,
        "books_checked_against_state": checked,
        "state_output_mismatches": state_mismatches.len(),
        "state_output_examples": state_mismatches.iter().take(5).collect::<Vec<_>>(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct DlKey {
    stage: String,
    topic: String,
    partition: i32,
    offset: i64,
}

// ---- the test ----------------------------------------------------------------------------

#[test]
fn chaos_kills_restarts_pauses_and_poison_lose_nothing_and_duplicate_nothing() {
    let s = Settings::from_env();
    let wall = Instant::now();
    let _broker = ChaosBroker::ensure(s.kafka_port);
    let bootstrap = format!("127.0.0.1:{}", s.kafka_port);
    use_bootstrap(bootstrap.clone());
    let prefix = unique_prefix("chaos");
    create_topics(&prefix, s.partitions);
    let logs = root()
        .join("target/it-logs")
        .join(prefix.trim_end_matches('.'));
    std::fs::create_dir_all(&logs).unwrap();

    // Input: the fleet, with the poison at its position.
    let sim = fleet(&s);
    let at = ((sim.records.len() as f64) * s.poison_at) as usize;
    let poison = build_poison(&s, &sim, at.min(sim.records.len() - 1));
    let mut items: Vec<Item> = Vec::with_capacity(sim.records.len() + poison.len());
    for (i, r) in sim.records.iter().enumerate() {
        if i == at {
            items.extend(poison.iter().map(|(_, item)| item.clone()));
        }
        items.push(Item {
            role: TopicRole::Raw,
            key: r.key.clone(),
            value: r.bytes.clone(),
            timestamp_ms: Some(r.sent_time_ms + 100),
            origin: Origin::Sim(i),
        });
    }
    if at >= sim.records.len() {
        items.extend(poison.iter().map(|(_, item)| item.clone()));
    }
    let bad = sim
        .records
        .iter()
        .filter(|r| matches!(r.expect, Expect::DeadLetter { .. }))
        .count();
    let queue = plan(&s);
    let planned_s: f64 = queue.iter().map(|a| a.estimate_s()).sum();
    let produce_s = s.produce_s.unwrap_or(planned_s * 1.1 + 5.0);
    let items = Arc::new(items);
    let allowance = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let feeder = {
        let (b, i, p, a, n) = (
            bootstrap.clone(),
            items.clone(),
            prefix.clone(),
            allowance.clone(),
            sent.clone(),
        );
        std::thread::spawn(move || feed(b, i, p, a, n))
    };
    let t0 = Instant::now();
    let progress: Monitor = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let monitor_thread = {
        let (b, p, st, stp) = (
            bootstrap.clone(),
            prefix.clone(),
            progress.clone(),
            stop.clone(),
        );
        let parts = s.partitions;
        std::thread::spawn(move || monitor(b, p, parts, st, stp, t0))
    };
    let mut h = Harness {
        s: s.clone(),
        prefix: prefix.clone(),
        bootstrap: bootstrap.clone(),
        logs: logs.clone(),
        t0,
        procs: Vec::new(),
        marks: Marks::new(&bootstrap),
        monitor: progress.clone(),
        stats: BTreeMap::new(),
        timeline: Vec::new(),
        pauses: Vec::new(),
        broker_restarts: 0,
        broker_outages: Vec::new(),
        total_items: items.len(),
        allowance,
        sent,
        chaos_started: None,
        produce_s,
        actions_done: 0,
        actions_total: 0,
        backoff: HashMap::new(),
        watchdog_grace: HashMap::new(),
        problems: Vec::new(),
    };
    h.event(
        "start",
        json!({"prefix": prefix, "raw_records": sim.records.len(), "bad_records": bad,
               "poison_records": poison.len(), "plan": format!("{queue:?}"),
               "produce_s": (produce_s * 10.0).round() / 10.0}),
    );
    h.start_stages();
    // A little input first, so every stage has joined and committed before the first fault.
    h.pace();
    h.wait_for(Duration::from_secs(60), |h| {
        h.procs
            .iter()
            .all(|p| p.committed_txns().is_some_and(|c| c > 0.0))
    });
    h.run_plan(queue);
    let drained = h.drain();
    let exits = h.shutdown();
    stop.store(true, Ordering::SeqCst);
    monitor_thread.join().unwrap();
    let deliveries = feeder.join().unwrap();
    let chaos_s = h.t0.elapsed().as_secs_f64();

    // ---- the oracle ----
    let oracle_started = Instant::now();
    let read_roles = [
        TopicRole::Raw,
        TopicRole::Validated,
        TopicRole::Sanitized,
        TopicRole::Features,
        TopicRole::Anomalies,
        TopicRole::CohortSignals,
        TopicRole::AlertCommands,
        TopicRole::Alerts,
        TopicRole::Maintenance,
        TopicRole::PrivacyAudit,
        TopicRole::DeadLettersSensitive,
        TopicRole::DeadLetters,
        TopicRole::ChangelogNotifier,
    ];
    let topics: HashMap<TopicRole, Vec<Committed>> = read_roles
        .iter()
        .map(|r| (*r, read_committed(&r.topic(&prefix))))
        .collect();

    // The input as produced: every item delivered, and in raw exactly once.
    let mut problems = std::mem::take(&mut h.problems);
    let undelivered: Vec<String> = deliveries
        .iter()
        .enumerate()
        .filter(|(_, d)| !matches!(d, Some(Ok(_))))
        .map(|(i, d)| format!("item {i}: {d:?}"))
        .collect();
    if !undelivered.is_empty() {
        problems.push(format!(
            "{} input records not delivered: {:?}",
            undelivered.len(),
            &undelivered[..undelivered.len().min(3)]
        ));
    }
    let location = |i: usize| {
        deliveries[i]
            .as_ref()
            .and_then(|d| d.as_ref().ok())
            .copied()
    };
    let mut raw_seen: HashMap<usize, usize> = HashMap::new();
    for r in &topics[&TopicRole::Raw] {
        if let Some((_, v)) = r.headers.iter().find(|(k, _)| k == "chaos-item") {
            if let Ok(i) = String::from_utf8_lossy(v).parse::<usize>() {
                *raw_seen.entry(i).or_default() += 1;
            }
        }
    }
    let raw_items = items.iter().filter(|i| i.role == TopicRole::Raw).count();
    let raw_missing = items
        .iter()
        .enumerate()
        .filter(|(i, it)| it.role == TopicRole::Raw && !raw_seen.contains_key(i))
        .count();
    let raw_twice: usize = raw_seen.values().map(|n| n - 1).sum();
    if raw_missing + raw_twice > 0 || topics[&TopicRole::Raw].len() != raw_items {
        problems.push(format!(
            "input: raw holds {} records for {raw_items} produced ({raw_missing} missing, {raw_twice} twice)",
            topics[&TopicRole::Raw].len()
        ));
    }

    // What each stage consumed, and its uninterrupted run over exactly that.
    let mut consumed: HashMap<&str, HashMap<(String, i32), i64>> = HashMap::new();
    let mut unprocessed: BTreeMap<&str, usize> = BTreeMap::new();
    let mut expected: HashMap<TopicRole, Vec<(String, Vec<u8>, String)>> = HashMap::new();
    let mut notifier_reference: Vec<Out> = Vec::new();
    for stage in STAGES {
        let offsets = consumed_offsets(&bootstrap, &prefix, stage, s.partitions);
        let mut records: Vec<(TopicRole, &Committed)> = Vec::new();
        let mut left = 0;
        for role in inputs_of(stage) {
            let name = role.topic(&prefix);
            for r in &topics[&role] {
                if r.offset
                    < offsets
                        .get(&(name.clone(), r.partition))
                        .copied()
                        .unwrap_or(0)
                {
                    records.push((role, r));
                } else {
                    left += 1;
                }
            }
        }
        unprocessed.insert(stage, left);
        if stage == "notifier" {
            // The order a notifier that keeps up sees: by Kafka timestamp, features first.
            let rank = |role: TopicRole| match role {
                TopicRole::Features => 0,
                TopicRole::Anomalies => 1,
                _ => 2,
            };
            records.sort_by_key(|(role, r)| {
                (
                    r.partition,
                    r.timestamp_ms.unwrap_or(i64::MIN),
                    rank(*role),
                    r.offset,
                )
            });
        } else {
            records.sort_by_key(|(_, r)| (r.partition, r.offset));
        }
        let outputs = run_reference(stage, &prefix, s.partitions, &records);
        if stage == "notifier" {
            notifier_reference = outputs.clone();
        }
        for (role, k, v) in outputs {
            expected
                .entry(role)
                .or_default()
                .push((k, v, stage.to_string()));
        }
        consumed.insert(stage, offsets);
    }
    for (_, item) in &poison {
        expected.entry(item.role).or_default().push((
            item.key.clone(),
            item.value.clone(),
            "harness".into(),
        ));
    }

    // Every output topic against the uninterrupted run.
    let compared = [
        TopicRole::Validated,
        TopicRole::Sanitized,
        TopicRole::PrivacyAudit,
        TopicRole::Features,
        TopicRole::Anomalies,
        TopicRole::CohortSignals,
        TopicRole::DeadLettersSensitive,
        TopicRole::DeadLetters,
    ];
    let mut diffs: BTreeMap<&str, TopicDiff> = BTreeMap::new();
    for role in compared {
        let d = compare(
            role,
            expected.get(&role).map_or(&[][..], Vec::as_slice),
            &topics[&role],
        );
        diffs.insert(role.spec().name, d);
    }
    // The notifier: order-dependent differences apart; its invariants counted.
    let mut order_dependent: BTreeMap<&str, Value> = BTreeMap::new();
    for role in [TopicRole::Alerts, TopicRole::Maintenance] {
        let d = compare(
            role,
            expected.get(&role).map_or(&[][..], Vec::as_slice),
            &topics[&role],
        );
        order_dependent.insert(role.spec().name, d.json());
    }
    let invariants = notifier_invariants(
        &topics[&TopicRole::Alerts],
        &topics[&TopicRole::Maintenance],
        Some(topics[&TopicRole::ChangelogNotifier].as_slice()),
    );
    let as_committed = |outs: &[Out], role: TopicRole| -> Vec<Committed> {
        outs.iter()
            .filter(|o| o.0 == role)
            .map(|o| Committed {
                partition: 0,
                offset: 0,
                key: o.1.clone(),
                value: o.2.clone(),
                timestamp_ms: None,
                headers: Vec::new(),
            })
            .collect()
    };
    let reference_invariants = notifier_invariants(
        &as_committed(&notifier_reference, TopicRole::Alerts),
        &as_committed(&notifier_reference, TopicRole::Maintenance),
        None,
    );
    let inv = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0) as usize;
    let notifier_missing = inv(&invariants, "alert_sequence_gaps")
        + inv(&invariants, "revision_gaps")
        + inv(&invariants, "state_output_mismatches");
    let notifier_dupes = inv(&invariants, "duplicate_alert_sequences")
        + inv(&invariants, "duplicate_entry_revisions");
    if inv(&reference_invariants, "alert_sequence_gaps")
        + inv(&reference_invariants, "revision_gaps")
        + inv(&reference_invariants, "duplicate_alert_sequences")
        + inv(&reference_invariants, "duplicate_entry_revisions")
        > 0
    {
        problems.push(format!("the notifier's invariants do not hold on its own uninterrupted run: {reference_invariants}"));
    }

    // Dead letters: exactly the bad set.
    let mut want_dl: BTreeMap<DlKey, (Option<DeadLetterReason>, String)> = BTreeMap::new();
    let mut not_consumed_dl = 0usize;
    for (i, item) in items.iter().enumerate() {
        let Some((partition, offset)) = location(i) else {
            continue;
        };
        let topic = item.role.topic(&prefix);
        let expectations: Vec<(&str, Option<DeadLetterReason>, String)> = match item.origin {
            Origin::Sim(j) => match sim.records[j].expect {
                Expect::DeadLetter { stage, reason, .. } => {
                    vec![(stage, Some(reason), format!("simulated {}", reason.code()))]
                }
                _ => Vec::new(),
            },
            Origin::Poison(j) => readers_of(item.role)
                .into_iter()
                .map(|st| {
                    (
                        st,
                        None,
                        format!(
                            "poison {} on {}: {}",
                            poison[j].0.kind.name(),
                            item.role.spec().name,
                            poison[j].0.what
                        ),
                    )
                })
                .collect(),
        };
        for (stage, reason, what) in expectations {
            let done = consumed[stage]
                .get(&(topic.clone(), partition))
                .copied()
                .unwrap_or(0);
            if offset >= done {
                not_consumed_dl += 1;
                continue;
            }
            want_dl.insert(
                DlKey {
                    stage: stage.into(),
                    topic: topic.clone(),
                    partition,
                    offset,
                },
                (reason, what),
            );
        }
    }
    let mut found_dl: BTreeMap<DlKey, Vec<DeadLetter>> = BTreeMap::new();
    for role in [TopicRole::DeadLettersSensitive, TopicRole::DeadLetters] {
        for r in &topics[&role] {
            if let Ok(d) = decode::<DeadLetter>(&r.value) {
                found_dl
                    .entry(DlKey {
                        stage: d.stage.clone(),
                        topic: d.source_topic.clone(),
                        partition: d.source_partition,
                        offset: d.source_offset,
                    })
                    .or_default()
                    .push(d);
            }
        }
    }
    let mut dl_missing = Vec::new();
    let mut dl_wrong_reason = Vec::new();
    for (k, (reason, what)) in &want_dl {
        match found_dl.get(k) {
            None => dl_missing.push(format!(
                "{} {}[{}]@{}: {what}",
                k.stage, k.topic, k.partition, k.offset
            )),
            Some(found) => {
                if let Some(r) = reason {
                    if found[0].reason != *r {
                        dl_wrong_reason.push(format!(
                            "{what} at {}[{}]@{}: {:?}",
                            k.topic, k.partition, k.offset, found[0].reason
                        ));
                    }
                }
            }
        }
    }
    let dl_dupes: usize = found_dl.values().map(|v| v.len() - 1).sum();
    let mut dl_unexpected: BTreeMap<String, usize> = BTreeMap::new();
    let mut dl_unexpected_by_key: BTreeMap<String, usize> = BTreeMap::new();
    let mut dl_unexpected_examples = Vec::new();
    for (k, v) in &found_dl {
        if !want_dl.contains_key(k) {
            let group = format!("{} {}", k.stage, v[0].reason.code());
            let first_of_group = !dl_unexpected.contains_key(&group);
            *dl_unexpected.entry(group.clone()).or_default() += v.len();
            let key = v[0]
                .source_key
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            *dl_unexpected_by_key
                .entry(format!(
                    "{group} key {key} on {}",
                    k.topic.trim_start_matches(&prefix)
                ))
                .or_default() += v.len();
            if first_of_group || dl_unexpected_examples.len() < 6 {
                dl_unexpected_examples.push(format!(
                    "{} {:?} {}[{}]@{}: {}",
                    k.stage,
                    v[0].reason,
                    k.topic,
                    k.partition,
                    k.offset,
                    v[0].detail.chars().take(160).collect::<String>()
                ));
            }
        }
    }
    let dl_unexpected_n: usize = dl_unexpected.values().sum();

    // Each poison record: what became of it at each stage that reads its topic.
    let mut poison_rows = Vec::new();
    let mut findings: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Origin::Poison(j) = item.origin else {
            continue;
        };
        let p = &poison[j].0;
        let loc = location(i);
        for stage in readers_of(item.role) {
            let outcome = match loc {
                None => "not delivered".to_string(),
                Some((partition, offset)) => {
                    let topic = item.role.topic(&prefix);
                    let key = DlKey {
                        stage: stage.into(),
                        topic: topic.clone(),
                        partition,
                        offset,
                    };
                    let done = consumed[stage]
                        .get(&(topic, partition))
                        .copied()
                        .unwrap_or(0);
                    match found_dl.get(&key) {
                        Some(v) => format!("dead letter {}", v[0].reason.code()),
                        None if offset >= done => "not consumed".into(),
                        None => "ACCEPTED (no dead letter)".into(),
                    }
                }
            };
            if !outcome.starts_with("dead letter") {
                findings.push(format!(
                    "poison {} on {} ({}): {stage}: {outcome}",
                    p.kind.name(),
                    item.role.spec().name,
                    p.what
                ));
            }
            poison_rows.push(json!({"topic": item.role.spec().name, "kind": p.kind.name(), "what": p.what,
                "bytes": item.value.len(), "stage": stage, "location": loc.map(|(p, o)| format!("{p}@{o}")), "outcome": outcome}));
        }
    }

    // Totals and the per-stage view.
    let missing: usize = diffs.values().map(|d| d.missing).sum::<usize>() + notifier_missing;
    let duplicates: usize = diffs.values().map(|d| d.duplicates).sum::<usize>() + notifier_dupes;
    let extra: usize = diffs.values().map(|d| d.extra).sum();
    let kills: usize = h.stats.values().map(|st| st.kills).sum();
    let kills_in_open_txn: usize = h.stats.values().map(|st| st.kills_in_open_txn).sum();
    let crash_loops: usize = h.stats.values().map(|st| st.crashes).sum();
    let mon = progress.lock().unwrap().clone();
    let max_stall_s = mon.values().map(|p| p.max_stall_s).fold(0.0, f64::max);
    let mut stage_rows = BTreeMap::new();
    for stage in STAGES {
        let st = h.stats.get(stage).cloned().unwrap_or_default();
        let dl_expected = want_dl.keys().filter(|k| k.stage == stage).count();
        let dl_found: usize = found_dl
            .iter()
            .filter(|(k, _)| k.stage == stage)
            .map(|(_, v)| v.len())
            .sum();
        let mut m = 0;
        let mut e = 0;
        let mut dup = 0;
        for role in outputs_of(stage) {
            if let Some(d) = diffs.get(role.spec().name) {
                m += d.missing_by_origin.get(stage).copied().unwrap_or(0);
                let writers: Vec<&str> = STAGES
                    .iter()
                    .copied()
                    .filter(|w| outputs_of(w).contains(&role))
                    .collect();
                if writers.len() == 1 {
                    e += d.extra;
                    dup += d.duplicates;
                }
            }
        }
        if stage == "notifier" {
            m += notifier_missing;
            dup += notifier_dupes;
        }
        let p = mon.get(stage).cloned().unwrap_or_default();
        stage_rows.insert(stage, json!({
            "kills": st.kills, "kills_in_open_txn": st.kills_in_open_txn,
            "kills_unverified": st.kill_attempts_unverified, "kills_skipped_in_crash_loop": st.kills_skipped,
            "watchdog_restarts": st.watchdog_restarts, "watchdog_log": st.watchdog_log,
            "restarts": st.restarts,
            "crashes": st.crashes, "crash_log": st.crash_log,
            "dead_letters_expected": dl_expected, "dead_letters_found": dl_found,
            "missing": m, "duplicates": dup, "extra": e,
            "extra_duplicates_in_shared_topics": "see topics",
            "unprocessed_input": unprocessed.get(stage).copied().unwrap_or(0),
            "max_stall_s": (p.max_stall_s * 10.0).round() / 10.0,
            "max_stall_at_s": (p.max_stall_at_s * 10.0).round() / 10.0,
            "recovery_s": st.recovery_s,
            "max_recovery_s": st.recovery_s.iter().copied().fold(0.0, f64::max),
        }));
    }

    // Verdicts.
    if let Some((stage, st)) = h
        .stats
        .iter()
        .find(|(_, st)| st.kills_in_open_txn < s.kills_per_stage)
    {
        problems.push(format!(
            "{stage}: {} kills in an open transaction, {} wanted",
            st.kills_in_open_txn, s.kills_per_stage
        ));
    }
    for (stage, st) in &h.stats {
        for w in &st.watchdog_log {
            // The line that says why, if the log has one (a fatal client error).
            let tail = w["log_tail"].as_str().unwrap_or("");
            let fatal = tail
                .lines()
                .rev()
                .find(|l| l.contains("FATAL") || l.contains("Fatal"))
                .map(|l| {
                    let plain: String = strip_ansi(l);
                    format!("; its log: {}", plain.chars().take(220).collect::<String>())
                })
                .unwrap_or_default();
            problems.push(format!(
                "{stage} stalled (watchdog restart at {} s): {}{fatal}",
                w["t_s"],
                w["why"].as_str().unwrap_or("")
            ));
        }
    }
    let watchdog_restarts: usize = h.stats.values().map(|st| st.watchdog_restarts).sum();
    if h.broker_restarts != s.broker_restarts {
        problems.push(format!(
            "{} broker restarts, {} wanted",
            h.broker_restarts, s.broker_restarts
        ));
    }
    if h.pauses.len() != s.pauses {
        problems.push(format!("{} pauses, {} wanted", h.pauses.len(), s.pauses));
    }
    for (stage, n) in &unprocessed {
        if *n > 0 {
            problems.push(format!("{stage}: {n} input records never consumed"));
        }
    }
    if !dl_missing.is_empty() || !dl_wrong_reason.is_empty() || dl_unexpected_n > 0 || dl_dupes > 0
    {
        findings.push(format!(
            "dead letters: {} expected and missing, {} with another reason, {} unexpected ({:?}), {} twice",
            dl_missing.len(), dl_wrong_reason.len(), dl_unexpected_n, dl_unexpected, dl_dupes
        ));
    }
    let passed = missing == 0
        && duplicates == 0
        && extra == 0
        && crash_loops == 0
        && watchdog_restarts == 0
        && problems.is_empty()
        && dl_missing.is_empty()
        && dl_wrong_reason.is_empty()
        && dl_unexpected_n == 0
        && dl_dupes == 0
        && drained;

    let report = json!({
        "profile": s.profile, "passed": passed, "prefix": prefix,
        "logs": logs.display().to_string(),
        "settings": s.json(),
        "raw_records": sim.records.len(), "bad_records": bad, "poison_records": poison.len(),
        "missing": missing, "duplicates": duplicates, "extra": extra,
        "kills": kills, "kills_in_open_txn": kills_in_open_txn,
        "broker_restarts": h.broker_restarts, "crash_loops": crash_loops,
        "watchdog_restarts": watchdog_restarts,
        "max_stall_s": (max_stall_s * 10.0).round() / 10.0,
        "elapsed_s": (wall.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "chaos_s": (chaos_s * 10.0).round() / 10.0,
        "oracle_s": (oracle_started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "produce_s_planned": (produce_s * 10.0).round() / 10.0,
        "stages": stage_rows,
        "topics": diffs.iter().map(|(k, d)| (k.to_string(), d.json())).collect::<BTreeMap<_, _>>(),
        "notifier": {"invariants": invariants, "invariants_on_reference": reference_invariants,
                     "order_dependent": order_dependent},
        "dead_letters": {"expected": want_dl.len(), "found": found_dl.values().map(Vec::len).sum::<usize>(),
                         "missing": dl_missing, "wrong_reason": dl_wrong_reason,
                         "unexpected": dl_unexpected, "unexpected_by_key": dl_unexpected_by_key,
                         "unexpected_examples": dl_unexpected_examples,
                         "duplicates": dl_dupes, "expected_but_not_consumed": not_consumed_dl},
        "poison": poison_rows,
        "pauses": h.pauses, "broker_outages": h.broker_outages,
        "stall_monitor": mon.iter().map(|(k, p)| (k.to_string(), json!({"max_stall_s": (p.max_stall_s * 10.0).round() / 10.0, "at_s": (p.max_stall_at_s * 10.0).round() / 10.0, "samples": p.samples, "unanswered": p.unanswered}))).collect::<BTreeMap<_, _>>(),
        "shutdown": exits,
        "input": {"raw_missing": raw_missing, "raw_twice": raw_twice, "undelivered": undelivered.len()},
        "problems": problems, "findings": findings,
        "timeline": h.timeline,
    });
    let table = render(&report);
    eprintln!("{table}");
    let dir = root().join("out/chaos");
    std::fs::create_dir_all(&dir).unwrap();
    let text = serde_json::to_string_pretty(&report).unwrap();
    std::fs::write(dir.join("latest.json"), &text).unwrap();
    std::fs::write(dir.join(format!("{}.json", s.profile)), &text).unwrap();
    std::fs::write(dir.join("latest.txt"), &table).unwrap();
    assert!(
        passed,
        "chaos run failed; see the table above, out/chaos/latest.json and {}",
        logs.display()
    );
}

/// A log line without its terminal colours.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The report as a table.
fn render(r: &Value) -> String {
    let mut t = String::new();
    let n = |v: &Value| v.as_u64().map_or_else(|| v.to_string(), |x| x.to_string());
    let _ = writeln!(
        t,
        "\n== chaos ({}) on {} raw records ({} bad, {} poison): {}",
        r["profile"].as_str().unwrap_or(""),
        r["raw_records"],
        r["bad_records"],
        r["poison_records"],
        if r["passed"].as_bool() == Some(true) {
            "PASSED"
        } else {
            "FAILED"
        }
    );
    let _ = writeln!(
        t,
        "{:<18} {:>5} {:>7} {:>8} {:>7} {:>8} {:>11} {:>7} {:>5} {:>5} {:>6} {:>8} {:>9}",
        "stage",
        "kills",
        "in txn",
        "restarts",
        "crashes",
        "watchdog",
        "dead l. e/f",
        "missing",
        "dupes",
        "extra",
        "unproc",
        "stall s",
        "recover s"
    );
    for stage in STAGES {
        let s = &r["stages"][stage];
        let _ = writeln!(
            t,
            "{:<18} {:>5} {:>7} {:>8} {:>7} {:>8} {:>11} {:>7} {:>5} {:>5} {:>6} {:>8} {:>9}",
            stage,
            n(&s["kills"]),
            n(&s["kills_in_open_txn"]),
            n(&s["restarts"]),
            n(&s["crashes"]),
            n(&s["watchdog_restarts"]),
            format!(
                "{}/{}",
                n(&s["dead_letters_expected"]),
                n(&s["dead_letters_found"])
            ),
            n(&s["missing"]),
            n(&s["duplicates"]),
            n(&s["extra"]),
            n(&s["unprocessed_input"]),
            s["max_stall_s"],
            s["max_recovery_s"]
        );
    }
    let _ = writeln!(
        t,
        "\n{:<24} {:>8} {:>9} {:>7} {:>5} {:>5}  explained",
        "topic", "expected", "committed", "missing", "dupes", "extra"
    );
    if let Some(topics) = r["topics"].as_object() {
        for (name, d) in topics {
            let explained: Vec<String> = d["explained"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(_, v)| v.as_u64() != Some(0))
                        .map(|(k, v)| format!("{v} {k}"))
                        .collect()
                })
                .unwrap_or_default();
            let _ = writeln!(
                t,
                "{:<24} {:>8} {:>9} {:>7} {:>5} {:>5}  {}",
                name,
                n(&d["expected"]),
                n(&d["committed"]),
                n(&d["missing"]),
                n(&d["duplicates"]),
                n(&d["extra"]),
                explained.join("; ")
            );
        }
    }
    let inv = &r["notifier"]["invariants"];
    let _ = writeln!(t, "notifier (alerts, maintenance): {} alerts, {} entries; duplicate (alert, seq) {}, seq gaps {}, duplicate (entry, revision) {}, revision gaps {}, state/output mismatches {} of {} books",
        inv["alerts"], inv["maintenance"], inv["duplicate_alert_sequences"], inv["alert_sequence_gaps"], inv["duplicate_entry_revisions"], inv["revision_gaps"], inv["state_output_mismatches"], inv["books_checked_against_state"]);
    for role in ["alerts", "maintenance.schedule"] {
        let d = &r["notifier"]["order_dependent"][role];
        let _ = writeln!(t, "  {role} vs the in-order reference (order-dependent, not counted): expected {} committed {} differ: -{} +{} x{}", d["expected"], d["committed"], d["missing"], d["extra"], d["duplicates"]);
    }
    let _ = writeln!(
        t,
        "\n{:<22} {:<13} {:<18} outcome",
        "poison on", "kind", "stage"
    );
    if let Some(rows) = r["poison"].as_array() {
        for p in rows {
            let _ = writeln!(
                t,
                "{:<22} {:<13} {:<18} {}",
                p["topic"].as_str().unwrap_or(""),
                p["kind"].as_str().unwrap_or(""),
                p["stage"].as_str().unwrap_or(""),
                p["outcome"].as_str().unwrap_or("")
            );
        }
    }
    let dl = &r["dead_letters"];
    let _ = writeln!(t, "\ndead letters: expected {} found {}; missing {}, wrong reason {}, unexpected {}, twice {}", dl["expected"], dl["found"], dl["missing"].as_array().map_or(0, Vec::len), dl["wrong_reason"].as_array().map_or(0, Vec::len), dl["unexpected"], dl["duplicates"]);
    if let Some(m) = r["dead_letters"]["unexpected_by_key"].as_object() {
        for (k, v) in m {
            let _ = writeln!(t, "  unexpected: {v} x {k}");
        }
    }
    let _ = writeln!(t, "missing {}  duplicates {}  extra {}  kills {}  in open txn {}  broker restarts {}  crash loops {}  watchdog restarts {}  max stall {} s  elapsed {} s",
        r["missing"], r["duplicates"], r["extra"], r["kills"], r["kills_in_open_txn"], r["broker_restarts"], r["crash_loops"], r["watchdog_restarts"], r["max_stall_s"], r["elapsed_s"]);
    for key in ["problems", "findings"] {
        if let Some(list) = r[key].as_array() {
            for item in list {
                let _ = writeln!(
                    t,
                    "{key}: {}",
                    item.as_str()
                        .map_or_else(|| item.to_string(), str::to_string)
                );
            }
        }
    }
    if let Some(list) = r["pauses"].as_array() {
        for p in list {
            let _ = writeln!(t, "pause: {} SIGSTOPped {} s (session timeout {} s), open txn {}; standby took all partitions {} and processed {} records; the resumed instance aborted {} txn(s); standby exit clean {}",
                p["stage"].as_str().unwrap_or(""), p["paused_s"], p["session_timeout_s"], p["in_open_txn"], p["standby_took_all_partitions"], p["standby_input_records_while_paused"], p["zombie_aborted_txns"], p["standby_clean_exit"]);
        }
    }
    if let Some(list) = r["broker_outages"].as_array() {
        for b in list {
            let _ = writeln!(
                t,
                "broker kill -9: down {} s; stages committing again after (s since the kill): {}",
                b["down_s"], b["first_commit_after_kill_s"]
            );
        }
    }
    let _ = writeln!(t, "logs: {}", r["logs"].as_str().unwrap_or(""));
    t
}

/// The oracle itself, without a broker: a record lost, one committed twice and one never expected
/// are each counted, and only a detector signal differing in its watermark alone is excused.
#[test]
fn the_oracle_counts_a_lost_a_duplicated_and_an_extra_record() {
    let rec = |key: &str, value: &[u8]| Committed {
        partition: 0,
        offset: 0,
        key: key.into(),
        value: value.to_vec(),
        timestamp_ms: None,
        headers: Vec::new(),
    };
    let exp = |key: &str, value: &[u8], origin: &str| {
        (key.to_string(), value.to_vec(), origin.to_string())
    };
    let expected = vec![
        exp("a", b"1", "validator"),
        exp("b", b"2", "validator"),
        exp("c", b"3", "validator"),
    ];
    let committed = vec![
        rec("a", b"1"),
        rec("b", b"2"),
        rec("b", b"2"),
        rec("d", b"4"),
    ];
    let d = compare(TopicRole::Validated, &expected, &committed);
    assert_eq!(
        (d.missing, d.duplicates, d.extra),
        (1, 1, 1),
        "{:?}",
        d.examples
    );
    assert_eq!(d.missing_by_origin.get("validator"), Some(&1));

    // cohort.signals: a detector MEMBER signal with another watermark is explained; one with
    // another event time is not.
    let signal = |event_time_ms: i64, watermark: i64| {
        encode(&CohortSignal {
            signal_id: format!("software_version:1.0:A1:{event_time_ms}:MEMBER"),
            kind: CohortKind::SOFTWARE_VERSION,
            value: "1.0".into(),
            instrument_serial: "A1".into(),
            instrument_model: seqmon_model::InstrumentModel::UNKNOWN,
            event_time_ms,
            source_partition: 0,
            source_watermark_ms: watermark,
            signal: CohortSignalKind::MEMBER,
            count: false,
            decide: false,
            route: Vec::new(),
            anomaly: None,
        })
        .unwrap()
    };
    let key = "software_version:1.0";
    let expected = vec![
        exp(key, &signal(1000, 500), "anomaly-detector"),
        exp(key, &signal(2000, 500), "anomaly-detector"),
    ];
    let committed = vec![rec(key, &signal(1000, 900)), rec(key, &signal(2500, 500))];
    let d = compare(TopicRole::CohortSignals, &expected, &committed);
    assert_eq!(
        (d.missing, d.duplicates, d.extra),
        (1, 0, 1),
        "{:?}",
        d.examples
    );
    assert_eq!(d.explained.values().sum::<usize>(), 1, "{:?}", d.explained);
}
