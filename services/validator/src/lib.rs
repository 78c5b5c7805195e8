//! Validator: the first stage. Reads `telemetry.raw`, writes `telemetry.validated` (the sender's
//! bytes, unchanged) or a dead letter with the reason.
//!
//! Checks, in order: the record decodes (single-object header, known schema of the telemetry
//! type, Avro body); required fields; the key matches the serial; exactly the payload matching
//! `kind` is set; every reading is finite and physically plausible; run performance counters are
//! consistent; timestamps are sane (not ahead of the send time, not older than the maximum age,
//! the sender's clock not skewed from the ingest time); the message id was not seen before for
//! this instrument.
//!
//! State: the recent message ids of each instrument (bounded by an event-time horizon and a
//! count), 16 bytes per id in event-time buckets. Each new id is one small record on
//! `validator.changelog` (key: serial and id, value: its bucket), written in the same transaction
//! as the outputs, so a restart neither forgets an id (letting a duplicate through) nor remembers
//! an uncommitted one. The changelog is never rewritten per instrument (that cost grows with the
//! ids held); an id that expires is tombstoned, so the compacted changelog holds the horizon's ids
//! (time retention of 25 h, above the longest horizon allowed, is a second bound).

use std::collections::{BTreeMap, HashSet};

use clap::Args;
use seqmon_model::topics::TopicRole;
use seqmon_model::{specs, DeadLetterReason as R, Telemetry, TelemetryKind};
use seqmon_processor::{key_str, ConfigError, Emitter, Envelope, Processor, StageError};

/// Validator settings.
#[derive(Debug, Clone, Args)]
pub struct ValidatorConfig {
    /// Largest allowed lead of event time over send time, ms (clock jitter inside an instrument).
    #[arg(long, env = "VALIDATOR_MAX_FUTURE_MS", default_value_t = 300_000)]
    pub max_future_ms: i64,
    /// Largest allowed lead of the sender's clock over the reference time (the broker's receive
    /// time, or the ingest timestamp), ms: nothing is sent after it arrived. A send time behind
    /// the reference is delivery delay (a collector's spool drained after an outage), allowed
    /// within --max-age-ms.
    #[arg(long, env = "VALIDATOR_MAX_CLOCK_SKEW_MS", default_value_t = 900_000)]
    pub max_clock_skew_ms: i64,
    /// Oldest accepted event, ms before the reference time (ingest time, or send time).
    #[arg(long, env = "VALIDATOR_MAX_AGE_MS", default_value_t = 7 * 24 * 3_600_000)]
    pub max_age_ms: i64,
    /// How far back in event time message ids are remembered for de-duplication, ms.
    #[arg(long, env = "VALIDATOR_DEDUP_HORIZON_MS", default_value_t = 3_600_000)]
    pub dedup_horizon_ms: i64,
    /// Most message ids remembered per instrument.
    #[arg(long, env = "VALIDATOR_DEDUP_MAX_IDS", default_value_t = 8192)]
    pub dedup_max_ids: usize,
    /// Largest record accepted, bytes; a larger one is a dead letter TOO_LARGE before it is
    /// decoded. Keep it well below the broker's message limit: the dead letter carries it.
    #[arg(long, env = "VALIDATOR_MAX_RECORD_BYTES", default_value_t = 262_144)]
    pub max_record_bytes: usize,
    /// Most attributes one record may carry.
    #[arg(long, env = "VALIDATOR_MAX_ATTRIBUTES", default_value_t = 64)]
    pub max_attributes: usize,
    /// Longest string field (identifier, log text, attribute key or value), bytes.
    #[arg(long, env = "VALIDATOR_MAX_STRING_BYTES", default_value_t = 4096)]
    pub max_string_bytes: usize,
}

impl Default for ValidatorConfig {
    /// The defaults stated in the clap attributes above (the environment is not read).
    fn default() -> Self {
        seqmon_processor::config::defaults()
    }
}

impl ValidatorConfig {
    /// Event-time length of one de-duplication bucket: a sixteenth of the horizon, at most a
    /// minute, so expiry keeps at most one bucket more than the horizon.
    fn bucket_ms(&self) -> i64 {
        (self.dedup_horizon_ms / 16).clamp(1, 60_000)
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |id: &str, message: &str| Err(ConfigError::of::<Self>(id, message));
        if self.max_future_ms < 0 {
            return bad("max_future_ms", "must not be negative");
        }
        if self.max_clock_skew_ms <= 0 {
            return bad("max_clock_skew_ms", "must be positive");
        }
        if self.max_age_ms <= 0 {
            return bad("max_age_ms", "must be positive");
        }
        let longest = i64::from(seqmon_model::topics::VALIDATOR_CHANGELOG_HOURS - 1) * 3_600_000;
        if self.dedup_horizon_ms <= 0 || self.dedup_horizon_ms > longest {
            return bad(
                "dedup_horizon_ms",
                "must be positive and at most 24 h (the validator changelog keeps 25 h)",
            );
        }
        if !(1_024..=8_388_608).contains(&self.max_record_bytes) {
            return bad("max_record_bytes", "must be 1024..=8388608");
        }
        if !(1..=10_000).contains(&self.max_attributes) {
            return bad("max_attributes", "must be 1..=10000");
        }
        if !(64..=1_048_576).contains(&self.max_string_bytes) {
            return bad("max_string_bytes", "must be 64..=1048576");
        }
        if self.dedup_max_ids == 0 {
            return bad("dedup_max_ids", "must be positive");
        }
        Ok(())
    }
}

/// Recent message ids of one instrument, in buckets of event time: a lookup checks every bucket,
/// expiry drops whole buckets. An id is kept as 128 bits, 16 bytes: a SHA-256 digest of it, never
/// its text or bits (two differing ids collide with odds near 2^-128).
#[derive(Debug, Default, Clone, PartialEq)]
struct SeenIds {
    /// Bucket start (ms of event time) → ids whose event time falls in that bucket.
    buckets: BTreeMap<i64, HashSet<u128>>,
    /// Newest event time seen (on restore: newest bucket start).
    newest: i64,
    /// Ids held over all buckets.
    count: usize,
}

impl SeenIds {
    fn contains(&self, id: u128) -> bool {
        self.buckets.values().any(|b| b.contains(&id))
    }

    fn bucket_of(&self, id: u128) -> Option<i64> {
        self.buckets
            .iter()
            .find(|(_, b)| b.contains(&id))
            .map(|(start, _)| *start)
    }

    fn insert(&mut self, bucket: i64, id: u128, event_time_ms: i64) {
        if self.buckets.entry(bucket).or_default().insert(id) {
            self.count += 1;
        }
        self.newest = self.newest.max(event_time_ms);
    }

    /// Drops buckets wholly older than the horizon, then the oldest while over the count;
    /// returns the ids dropped, so their changelog records can be tombstoned.
    fn expire(&mut self, horizon_ms: i64, bucket_ms: i64, max_ids: usize) -> Vec<u128> {
        let oldest_kept = self.newest.saturating_sub(horizon_ms);
        let mut dropped = Vec::new();
        while let Some((&start, ids)) = self.buckets.first_key_value() {
            let too_old = start + bucket_ms <= oldest_kept;
            let too_many = self.count > max_ids && self.buckets.len() > 1;
            if !(too_old || too_many) {
                break;
            }
            self.count -= ids.len();
            if let Some((_, ids)) = self.buckets.pop_first() {
                dropped.extend(ids);
            }
        }
        dropped
    }
}

/// A message id as 128 bits: the first half of its SHA-256 (stable across releases, since the
/// bits are what the changelog keeps; ids remembered by builds before 2026-11-29, which kept a
/// UUID's own bits, are no longer matched and expire with the horizon).
fn id_bits(id: &str) -> u128 {
    // A one-way digest, never the id's own bits: the id must not be readable on the changelog
    // (its record keys are not sealed, and message ids cross the boundary only as pseudonyms).
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(id.as_bytes());
    let mut bits = [0u8; 16];
    bits.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(bits)
}

/// Changelog key of one remembered id: the serial's length, the serial, then the id's 128 bits
/// as 32 hex digits, so any serial splits back unambiguously.
fn state_key(serial: &str, id: u128) -> String {
    format!("{}:{serial}{id:032x}", serial.len())
}

fn split_state_key(key: &str) -> Option<(&str, u128)> {
    let (len, rest) = key.split_once(':')?;
    let len: usize = len.parse().ok()?;
    if rest.len() != len + 32 || !rest.is_char_boundary(len) {
        return None;
    }
    let (serial, hex) = rest.split_at(len);
    Some((serial, u128::from_str_radix(hex, 16).ok()?))
}

/// The validator processor.
#[derive(Debug, Default)]
pub struct Validator {
    cfg: ValidatorConfig,
    seen: BTreeMap<String, SeenIds>,
}

impl Validator {
    /// A validator with the given settings.
    pub fn new(cfg: ValidatorConfig) -> Self {
        Validator {
            cfg,
            seen: BTreeMap::new(),
        }
    }

    /// Runs every check except de-duplication; `Err` is the rejection.
    /// Caps on attributes and string lengths: one record must not cost the boundary unbounded
    /// work or audit records.
    fn check_size(&self, t: &Telemetry) -> Result<(), (R, String)> {
        if t.attributes.len() > self.cfg.max_attributes {
            return Err((
                R::TOO_LARGE,
                format!(
                    "{} attributes; at most {} (--max-attributes)",
                    t.attributes.len(),
                    self.cfg.max_attributes
                ),
            ));
        }
        // On the stack: this runs for every record.
        let log = t.log_event.as_ref();
        let ic = t.instrument_configuration.as_ref();
        let rc = t.run_configuration.as_ref();
        let len = |s: Option<&String>| s.map_or(0, String::len);
        let longest_attribute = t
            .attributes
            .iter()
            .map(|(k, v)| k.len().max(v.len()))
            .max()
            .unwrap_or(0);
        let strings: [(&str, usize); 14] = [
            ("message_id", t.message_id.len()),
            ("instrument_serial", t.instrument_serial.len()),
            ("run_id", len(t.run_id.as_ref())),
            ("log_event.code", len(log.map(|l| &l.code))),
            ("log_event.message", len(log.map(|l| &l.message))),
            (
                "instrument_configuration.control_software_version",
                len(ic.map(|c| &c.control_software_version)),
            ),
            (
                "instrument_configuration.rta_version",
                len(ic.map(|c| &c.rta_version)),
            ),
            (
                "instrument_configuration.firmware_version",
                len(ic.map(|c| &c.firmware_version)),
            ),
            ("run_configuration.chemistry", len(rc.map(|c| &c.chemistry))),
            (
                "run_configuration.flowcell_serial",
                len(rc.map(|c| &c.flowcell_serial)),
            ),
            (
                "run_configuration.flowcell_lot",
                len(rc.map(|c| &c.flowcell_lot)),
            ),
            (
                "run_configuration.reagent_kit_lot",
                len(rc.map(|c| &c.reagent_kit_lot)),
            ),
            (
                "run_configuration.buffer_lot",
                len(rc.map(|c| &c.buffer_lot)),
            ),
            ("attributes", longest_attribute),
        ];
        match strings
            .iter()
            .find(|(_, len)| *len > self.cfg.max_string_bytes)
        {
            Some((field, len)) => Err((
                R::TOO_LARGE,
                format!(
                    "{field} is {len} bytes; at most {} (--max-string-bytes)",
                    self.cfg.max_string_bytes
                ),
            )),
            None => Ok(()),
        }
    }

    fn check(&self, t: &Telemetry, input: &Envelope<'_>) -> Result<(), (R, String)> {
        let fail = |r: R, d: &str| Err((r, d.to_string()));
        if t.message_id.trim().is_empty() {
            return fail(R::MISSING_FIELD, "message_id is empty");
        }
        if t.instrument_serial.trim().is_empty() {
            return fail(R::MISSING_FIELD, "instrument_serial is empty");
        }
        if input.key.is_some() && key_str(input) != t.instrument_serial {
            return fail(
                R::INCONSISTENT_PAYLOAD,
                "record key differs from instrument_serial",
            );
        }
        let present = [
            (
                TelemetryKind::SENSOR_READINGS,
                "sensors",
                t.sensors.is_some(),
            ),
            (
                TelemetryKind::OPERATION_LOG,
                "log_event",
                t.log_event.is_some(),
            ),
            (
                TelemetryKind::RUN_PERFORMANCE,
                "run_performance",
                t.run_performance.is_some(),
            ),
            (
                TelemetryKind::INSTRUMENT_CONFIGURATION,
                "instrument_configuration",
                t.instrument_configuration.is_some(),
            ),
            (
                TelemetryKind::RUN_CONFIGURATION,
                "run_configuration",
                t.run_configuration.is_some(),
            ),
        ];
        for (kind, field, set) in present {
            if kind == t.kind && !set {
                return Err((
                    R::MISSING_FIELD,
                    format!("kind {:?} without {field}", t.kind),
                ));
            }
            if kind != t.kind && set {
                return Err((
                    R::INCONSISTENT_PAYLOAD,
                    format!("kind {:?} also carries {field}", t.kind),
                ));
            }
        }
        let in_range = |prefix: &str, name: &str, v: f64| -> Result<(), (R, String)> {
            let spec = specs::metric(name).map(|m| m.plausible);
            match spec {
                _ if !v.is_finite() => Err((
                    R::OUT_OF_RANGE,
                    format!("{prefix}.{name} is not a finite number"),
                )),
                Some((lo, hi)) if v < lo || v > hi => Err((
                    R::OUT_OF_RANGE,
                    format!("{prefix}.{name} outside plausible range [{lo}, {hi}]"),
                )),
                _ => Ok(()),
            }
        };
        if let Some(s) = &t.sensors {
            let mut any = false;
            for (name, v) in s.fields() {
                if let Some(v) = v {
                    any = true;
                    in_range("sensors", name, v)?;
                }
            }
            if !any {
                return fail(R::MISSING_FIELD, "sensors carries no reading");
            }
        }
        if let Some(p) = &t.run_performance {
            if t.run_id.is_none() {
                return fail(R::MISSING_FIELD, "run_performance without run_id");
            }
            if p.lane < 1 || p.read_number < 1 || p.cycle < 1 || p.total_cycles < 1 {
                return fail(
                    R::OUT_OF_RANGE,
                    "run_performance lane, read_number, cycle and total_cycles must be >= 1",
                );
            }
            if p.cycle > p.total_cycles {
                return fail(
                    R::INCONSISTENT_PAYLOAD,
                    "run_performance.cycle exceeds total_cycles",
                );
            }
            for (name, v) in p.metrics() {
                if let Some(v) = v {
                    in_range("run_performance", name, v)?;
                }
            }
        }
        if let Some(c) = &t.run_configuration {
            if t.run_id.is_none() {
                return fail(R::MISSING_FIELD, "run_configuration without run_id");
            }
            // Cycle counts a real run has (at most 2 x 1000 cycles plus indexes) and expiry dates
            // in a consumable's lifetime: a number field must not carry a record number or a
            // date of birth either.
            let cycles = |n: i32| (0..=1000).contains(&n);
            if c.read1_cycles < 1
                || ![
                    c.read1_cycles,
                    c.read2_cycles,
                    c.index1_cycles,
                    c.index2_cycles,
                ]
                .into_iter()
                .all(cycles)
            {
                return fail(R::OUT_OF_RANGE, "run_configuration cycle counts");
            }
            // Days since 1970-01-01: 0 when not reported, else 2010-01-01 ..= 2039-12-31.
            let expiry = |d: i32| d == 0 || (14_610..=25_567).contains(&d);
            if !expiry(c.reagent_kit_expiry_date) || !expiry(c.buffer_expiry_date) {
                return fail(R::OUT_OF_RANGE, "run_configuration expiry dates");
            }
            for (name, v) in [
                ("flowcell_lot", &c.flowcell_lot),
                ("reagent_kit_lot", &c.reagent_kit_lot),
                ("buffer_lot", &c.buffer_lot),
                ("chemistry", &c.chemistry),
            ] {
                if v.trim().is_empty() {
                    return Err((
                        R::MISSING_FIELD,
                        format!("run_configuration.{name} is empty"),
                    ));
                }
            }
        }
        if let Some(c) = &t.instrument_configuration {
            if c.control_software_version.trim().is_empty() {
                return fail(
                    R::MISSING_FIELD,
                    "instrument_configuration.control_software_version is empty",
                );
            }
        }
        if let Some(l) = &t.log_event {
            if l.code.trim().is_empty() {
                return fail(R::MISSING_FIELD, "log_event.code is empty");
            }
        }
        // Timestamps. The reference is the broker's receive time where the topic records it
        // (LogAppendTime: a clock the instrument cannot set, so a clock glitch or a forged time
        // is caught however far it jumps); else the record's Kafka timestamp, which on a topic
        // stamped by the producer (simulations, backfills) is the sender's own clock.
        if t.event_time_ms > t.sent_time_ms + self.cfg.max_future_ms {
            return fail(
                R::TIMESTAMP_FUTURE,
                "event_time_ms is later than sent_time_ms",
            );
        }
        let clock = match (input.arrival_time_ms, input.timestamp_ms) {
            (Some(arrival), _) => Some((arrival, "the broker's receive time")),
            (None, Some(ingest)) => Some((ingest, "the ingest timestamp")),
            (None, None) => None,
        };
        let reference = match clock {
            Some((at, name)) => {
                if t.sent_time_ms - at > self.cfg.max_clock_skew_ms {
                    return fail(
                        R::CLOCK_SKEW,
                        &format!("sent_time_ms is later than {name} by more than the allowed skew"),
                    );
                }
                if t.event_time_ms > at + self.cfg.max_future_ms {
                    return fail(
                        R::TIMESTAMP_FUTURE,
                        &format!("event_time_ms is later than {name}"),
                    );
                }
                at
            }
            None => t.sent_time_ms,
        };
        if t.event_time_ms < reference - self.cfg.max_age_ms {
            return fail(
                R::TIMESTAMP_STALE,
                "event_time_ms is older than the maximum age",
            );
        }
        Ok(())
    }
}

impl Processor for Validator {
    fn stage(&self) -> &'static str {
        "validator"
    }
    fn input_role(&self) -> TopicRole {
        TopicRole::Raw
    }
    fn output_roles(&self) -> &'static [TopicRole] {
        &[TopicRole::Validated]
    }
    fn dead_letter_role(&self) -> TopicRole {
        TopicRole::DeadLettersSensitive
    }
    fn changelog_role(&self) -> Option<TopicRole> {
        Some(TopicRole::ChangelogValidator)
    }

    fn process(&mut self, input: &Envelope<'_>, out: &mut Emitter) -> Result<(), StageError> {
        if input.value.len() > self.cfg.max_record_bytes {
            out.reject(
                R::TOO_LARGE,
                format!(
                    "record of {} bytes; at most {} (--max-record-bytes)",
                    input.value.len(),
                    self.cfg.max_record_bytes
                ),
            );
            return Ok(());
        }
        let Some(t) = out.decode_or_reject::<Telemetry>(input) else {
            return Ok(());
        };
        if let Err((reason, detail)) = self.check_size(&t).and_then(|()| self.check(&t, input)) {
            out.reject(reason, detail);
            return Ok(());
        }
        let id = id_bits(&t.message_id);
        let bucket_ms = self.cfg.bucket_ms();
        let seen = self.seen.entry(t.instrument_serial.clone()).or_default();
        if seen.contains(id) {
            out.reject(
                R::DUPLICATE_MESSAGE,
                "message_id already seen for this instrument",
            );
            return Ok(());
        }
        seen.insert(
            t.event_time_ms.div_euclid(bucket_ms) * bucket_ms,
            id,
            t.event_time_ms,
        );
        // Expired ids are tombstoned on the changelog (their snapshot is gone), so compaction
        // keeps it at the horizon's ids and a restore reads no more than that.
        for expired in seen.expire(self.cfg.dedup_horizon_ms, bucket_ms, self.cfg.dedup_max_ids) {
            out.state_changed(&state_key(&t.instrument_serial, expired));
        }
        out.state_changed(&state_key(&t.instrument_serial, id));
        out.emit_bytes(TopicRole::Validated, &t.instrument_serial, input.value);
        Ok(())
    }

    /// One record per remembered id: its bucket start. An id that expired reads as gone.
    fn snapshot(&self, key: &str) -> Result<Option<Vec<u8>>, StageError> {
        // An id that is no longer held (expired) is a tombstone.
        Ok(split_state_key(key)
            .and_then(|(serial, id)| self.seen.get(serial)?.bucket_of(id))
            .map(|bucket| bucket.to_string().into_bytes()))
    }

    fn restore(&mut self, key: &str, state: &[u8]) -> Result<(), StageError> {
        let bad = |message: String| StageError::State {
            key: key.into(),
            message,
        };
        let (serial, id) =
            split_state_key(key).ok_or_else(|| bad("not a serial and message id".into()))?;
        let bucket: i64 = std::str::from_utf8(state)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("state is not a bucket start".into()))?;
        self.seen
            .entry(serial.to_string())
            .or_default()
            .insert(bucket, id, bucket);
        Ok(())
    }

    fn clear_state(&mut self) {
        self.seen.clear();
    }

    fn state_keys(&self) -> Vec<String> {
        self.seen
            .iter()
            .flat_map(|(serial, seen)| {
                seen.buckets
                    .values()
                    .flatten()
                    .map(move |id| state_key(serial, *id))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqmon_model::{encode, InstrumentModel, SensorReadings};
    use seqmon_processor::transplant_state;

    fn telemetry(id: &str, t: i64) -> Telemetry {
        Telemetry {
            message_id: id.into(),
            instrument_serial: "M01234".into(),
            instrument_model: InstrumentModel::MISEQ,
            event_time_ms: t,
            sent_time_ms: t + 10,
            kind: TelemetryKind::SENSOR_READINGS,
            run_id: None,
            sensors: Some(SensorReadings {
                laser_power_mw: Some(150.0),
                ..Default::default()
            }),
            log_event: None,
            run_performance: None,
            instrument_configuration: None,
            run_configuration: None,
            attributes: Default::default(),
        }
    }

    fn run(
        v: &mut Validator,
        bytes: &[u8],
        ts: Option<i64>,
    ) -> (Vec<seqmon_processor::Emitted>, Option<R>) {
        run_arrived(v, bytes, ts, None)
    }

    fn run_arrived(
        v: &mut Validator,
        bytes: &[u8],
        ts: Option<i64>,
        arrival: Option<i64>,
    ) -> (Vec<seqmon_processor::Emitted>, Option<R>) {
        let env = Envelope {
            key: Some(b"M01234"),
            value: bytes,
            topic: "telemetry.raw",
            partition: 0,
            offset: 0,
            timestamp_ms: ts,
            arrival_time_ms: arrival,
        };
        let mut out = Emitter::default();
        v.process(&env, &mut out).unwrap();
        let (records, rejection, _) = out.take();
        (records, rejection.map(|r| r.reason))
    }

    #[test]
    fn a_clock_glitch_is_caught_against_the_brokers_receive_time_however_far_it_jumps() {
        let now = 1_800_000_000_000;
        for ahead in [3_600_000, 5 * 365 * 86_400_000] {
            // The instrument's clock jumped: event, send and producer timestamp all moved.
            let mut t = telemetry(&format!("glitch-{ahead}"), now + ahead);
            t.sent_time_ms = now + ahead;
            let bytes = encode(&t).unwrap();
            let mut v = Validator::default();
            let (_, rej) = run_arrived(&mut v, &bytes, Some(now + ahead), Some(now));
            assert_eq!(rej, Some(R::CLOCK_SKEW), "{ahead} ms ahead");
            // The producer's timestamp alone comes from the same clock: it cannot tell.
            let (_, rej) = run_arrived(&mut v, &bytes, Some(now + ahead), None);
            assert_eq!(rej, None, "{ahead} ms ahead, producer time only");
        }
        // Delivered a day late (a collector's spool after an outage): delay, not skew.
        let mut late = telemetry("spooled", now - 86_400_000);
        late.sent_time_ms = now - 86_400_000 + 10;
        let mut v = Validator::default();
        let (_, rej) = run_arrived(&mut v, &encode(&late).unwrap(), Some(now), Some(now));
        assert_eq!(rej, None, "delivery delay is not clock skew");
        // On time, judged by the broker's clock: accepted.
        let mut t = telemetry("on-time", now - 1_000);
        t.sent_time_ms = now - 500;
        let mut v = Validator::default();
        let (_, rej) = run_arrived(&mut v, &encode(&t).unwrap(), Some(0), Some(now));
        assert_eq!(
            rej, None,
            "the producer's timestamp is ignored when the broker's is known"
        );
    }

    #[test]
    fn accepts_a_good_record_and_forwards_its_bytes() {
        let mut v = Validator::default();
        let bytes = encode(&telemetry("a", 1_000_000)).unwrap();
        let (out, rej) = run(&mut v, &bytes, None);
        assert_eq!(rej, None);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].value, bytes);
        assert_eq!(out[0].role, TopicRole::Validated);
    }

    #[test]
    fn oversized_records_are_dead_letters_and_processing_goes_on() {
        let mut v = Validator::default();
        let mut big_text = telemetry("big-text", 1_000_000);
        big_text.kind = TelemetryKind::OPERATION_LOG;
        big_text.sensors = None;
        big_text.log_event = Some(seqmon_model::OperationLogEvent {
            code: "E-FLU-301".into(),
            severity: seqmon_model::Severity::ERROR,
            subsystem: seqmon_model::Subsystem::FLUIDICS,
            message: "x".repeat(10 * 1024 * 1024),
        });
        let mut many_keys = telemetry("many-keys", 1_000_000);
        many_keys.attributes = (0..300_000)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        let mut long_key = telemetry("long-key", 1_000_000);
        long_key.attributes = [("k".repeat(5000), "v".to_string())].into();
        for t in [big_text, many_keys, long_key] {
            let (out, rej) = run(&mut v, &encode(&t).unwrap(), None);
            assert_eq!(rej, Some(R::TOO_LARGE), "{}", t.message_id);
            assert!(out.is_empty());
        }
        let mut small_cap = Validator::new(ValidatorConfig {
            max_record_bytes: 2048,
            ..ValidatorConfig::default()
        });
        let mut medium = telemetry("medium", 1_000_000);
        medium.attributes = [("application_name".to_string(), "y".repeat(3000))].into();
        let (_, rej) = run(&mut small_cap, &encode(&medium).unwrap(), None);
        assert_eq!(rej, Some(R::TOO_LARGE), "refused before decoding");
        let (out, rej) = run(
            &mut v,
            &encode(&telemetry("next", 1_000_000)).unwrap(),
            None,
        );
        assert_eq!((out.len(), rej), (1, None), "the next record is processed");
    }

    #[test]
    fn each_bad_record_gets_its_reason() {
        let t0 = 1_000_000_000;
        let mut cases: Vec<(Vec<u8>, Option<i64>, R)> = vec![
            (b"garbage!!garbage".to_vec(), None, R::UNDECODABLE),
            (
                vec![0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0],
                None,
                R::UNKNOWN_SCHEMA,
            ),
        ];
        let mut t = telemetry("", t0);
        cases.push((encode(&t).unwrap(), None, R::MISSING_FIELD));
        t = telemetry("b", t0);
        t.sensors = Some(SensorReadings {
            laser_power_mw: Some(99_999.0),
            ..Default::default()
        });
        cases.push((encode(&t).unwrap(), None, R::OUT_OF_RANGE));
        t = telemetry("c", t0);
        t.sensors = None;
        cases.push((encode(&t).unwrap(), None, R::MISSING_FIELD));
        t = telemetry("d", t0);
        t.event_time_ms = t0 + 3_600_000;
        cases.push((encode(&t).unwrap(), None, R::TIMESTAMP_FUTURE));
        t = telemetry("e", t0);
        cases.push((encode(&t).unwrap(), Some(t0 - 86_400_000), R::CLOCK_SKEW));
        t = telemetry("f", t0 - 30 * 86_400_000);
        t.sent_time_ms = t0;
        cases.push((encode(&t).unwrap(), None, R::TIMESTAMP_STALE));
        t = telemetry("g", t0);
        t.instrument_serial = "OTHER".into();
        cases.push((encode(&t).unwrap(), None, R::INCONSISTENT_PAYLOAD));
        let alert_schema = seqmon_model::store().latest("alert");
        let mut wrong = seqmon_model::codec::header(alert_schema).to_vec();
        wrong.push(0);
        cases.push((wrong, None, R::WRONG_SCHEMA));
        let mut v = Validator::default();
        for (bytes, ts, want) in cases {
            let (out, rej) = run(&mut v, &bytes, ts);
            assert_eq!(rej, Some(want));
            assert!(out.is_empty(), "{want:?} forwards nothing");
        }
    }

    #[test]
    fn duplicates_are_refused_even_across_a_restore() {
        let mut v = Validator::default();
        let bytes = encode(&telemetry("same", 1_000_000)).unwrap();
        assert_eq!(run(&mut v, &bytes, None).1, None);
        assert_eq!(run(&mut v, &bytes, None).1, Some(R::DUPLICATE_MESSAGE));
        let mut restarted = Validator::default();
        assert_eq!(transplant_state(&v, &mut restarted).unwrap(), 1);
        assert_eq!(
            run(&mut restarted, &bytes, None).1,
            Some(R::DUPLICATE_MESSAGE)
        );
    }

    #[test]
    fn state_keys_split_back_for_any_serial_and_id() {
        let uuid = "6f1c0d3e-0000-4000-8000-00000000002a";
        // A digest, not the UUID's own bits: the changelog's keys must not spell the id.
        assert_ne!(id_bits(uuid), 0x6f1c0d3e_0000_4000_8000_00000000002a);
        assert!(!state_key("M01234", id_bits(uuid)).contains("6f1c0d3e"));
        assert_ne!(id_bits("retry-1"), id_bits("retry-2"));
        for serial in ["M01234", "a:b", "ü:1", ""] {
            for id in [id_bits(uuid), id_bits("x"), 0, u128::MAX] {
                let key = state_key(serial, id);
                assert_eq!(split_state_key(&key), Some((serial, id)), "{key}");
            }
        }
        assert_eq!(split_state_key("M01234"), None);
        assert_eq!(split_state_key("3:M01zz"), None);
    }

    #[test]
    fn dedup_memory_is_bounded_by_horizon() {
        let mut v = Validator::new(ValidatorConfig {
            dedup_horizon_ms: 1_000,
            ..Default::default()
        });
        for i in 0..100 {
            run(
                &mut v,
                &encode(&telemetry(&format!("id{i}"), 1_000_000 + i * 100)).unwrap(),
                None,
            );
        }
        // 1 s horizon, 100 ms apart: the last second plus at most one bucket (62 ms) more.
        assert!(v.seen["M01234"].count <= 11, "{}", v.seen["M01234"].count);
        assert_eq!(v.state_keys().len(), v.seen["M01234"].count);
        // The next record tombstones what it pushes out of the horizon.
        let mut out = Emitter::default();
        let later = encode(&telemetry("id-late", 1_000_000 + 100 * 100 + 5_000)).unwrap();
        let env = Envelope {
            key: Some(b"M01234"),
            value: &later,
            topic: "telemetry.raw",
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            arrival_time_ms: None,
        };
        v.process(&env, &mut out).unwrap();
        let (_, _, changed) = out.take();
        let tombstones: Vec<_> = changed
            .iter()
            .filter(|k| v.snapshot(k).unwrap().is_none())
            .collect();
        assert!(tombstones.len() >= 10, "{changed:?}");
        assert_eq!(v.seen["M01234"].count, 1);
    }
}
