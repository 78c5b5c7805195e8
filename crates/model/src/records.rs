//! Rust types of the Avro records in `schemas/`, newest version of each.
//!
//! Field names and order follow the schemas exactly; the codec's round-trip tests keep them in
//! step. Enum variants are spelled as the schema symbols.

// Enum variants are the schema symbols, spelled as Avro spells them.
#![allow(non_camel_case_types, clippy::upper_case_acronyms)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A Rust type stored as one Avro record type of the schema store.
pub trait AvroRecord: Serialize + for<'de> Deserialize<'de> {
    /// Record-type name: the folder under `schemas/`.
    const SCHEMA_NAME: &'static str;

    /// The schema version this record is written with; `None` for the latest. A record that an
    /// older version can still express is written with it while readers of that version may
    /// still run (a rolling upgrade), so they keep reading everything but what is new.
    fn write_version(&self) -> Option<u32> {
        None
    }
}

macro_rules! avro_record {
    ($t:ty, $name:literal) => {
        impl AvroRecord for $t {
            const SCHEMA_NAME: &'static str = $name;
        }
    };
    // A record type whose `instrument_model` gained symbols in version `$v`: written with the
    // version before unless its model is one of them.
    ($t:ty, $name:literal, models_added_in: $v:literal) => {
        impl AvroRecord for $t {
            const SCHEMA_NAME: &'static str = $name;

            fn write_version(&self) -> Option<u32> {
                self.instrument_model.in_first_symbols().then_some($v - 1)
            }
        }
    };
}

/// Sequencer model. `NEXTSEQ_2000` is the NextSeq 1000 and 2000, `NEXTSEQ_550` the NextSeq 500
/// and 550, `NOVASEQ_X` the NovaSeq X and X Plus, `HISEQ` every HiSeq.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum InstrumentModel {
    UNKNOWN,
    NOVASEQ_6000,
    NEXTSEQ_2000,
    MISEQ,
    ISEQ_100,
    NOVASEQ_X,
    NEXTSEQ_550,
    MINISEQ,
    HISEQ,
}

impl InstrumentModel {
    /// Every model, in the schemas' symbol order.
    pub const ALL: [InstrumentModel; 9] = [
        InstrumentModel::UNKNOWN,
        InstrumentModel::NOVASEQ_6000,
        InstrumentModel::NEXTSEQ_2000,
        InstrumentModel::MISEQ,
        InstrumentModel::ISEQ_100,
        InstrumentModel::NOVASEQ_X,
        InstrumentModel::NEXTSEQ_550,
        InstrumentModel::MINISEQ,
        InstrumentModel::HISEQ,
    ];

    /// Whether the schemas' versions before 2026-12 have this symbol. A record of such a model
    /// is written with the version before the one that added the others, so a reader of that
    /// version, still running during a rolling upgrade, reads it (see
    /// [`AvroRecord::write_version`]); only records of the new models need the new version.
    pub fn in_first_symbols(self) -> bool {
        match self {
            InstrumentModel::UNKNOWN
            | InstrumentModel::NOVASEQ_6000
            | InstrumentModel::NEXTSEQ_2000
            | InstrumentModel::MISEQ
            | InstrumentModel::ISEQ_100 => true,
            InstrumentModel::NOVASEQ_X
            | InstrumentModel::NEXTSEQ_550
            | InstrumentModel::MINISEQ
            | InstrumentModel::HISEQ => false,
        }
    }
}

/// Instrument subsystem.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Subsystem {
    OTHER,
    OPTICAL,
    MECHANICAL,
    THERMAL,
    FLUIDICS,
    CHEMISTRY,
    SOFTWARE,
}

impl Subsystem {
    /// Lower-case label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Subsystem::OTHER => "other",
            Subsystem::OPTICAL => "optical",
            Subsystem::MECHANICAL => "mechanical",
            Subsystem::THERMAL => "thermal",
            Subsystem::FLUIDICS => "fluidics",
            Subsystem::CHEMISTRY => "chemistry",
            Subsystem::SOFTWARE => "software",
        }
    }
}

/// Which telemetry category a message carries.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TelemetryKind {
    SENSOR_READINGS,
    OPERATION_LOG,
    RUN_PERFORMANCE,
    INSTRUMENT_CONFIGURATION,
    RUN_CONFIGURATION,
}

/// Operation-log severity.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    DEBUG,
    INFO,
    WARNING,
    ERROR,
    CRITICAL,
}

/// Optical, mechanical, thermal and fluidics sensor sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SensorReadings {
    pub laser_power_mw: Option<f64>,
    pub focus_fwhm_px: Option<f64>,
    pub focus_z_offset_um: Option<f64>,
    pub stage_position_error_um: Option<f64>,
    pub stage_motor_current_a: Option<f64>,
    pub flowcell_temp_c: Option<f64>,
    pub flowcell_temp_setpoint_c: Option<f64>,
    pub chiller_temp_c: Option<f64>,
    pub ambient_temp_c: Option<f64>,
    pub fluidics_pressure_kpa: Option<f64>,
    pub flow_rate_ul_min: Option<f64>,
    pub run_phase: Option<RunPhase>,
}

/// What an instrument was doing when it took a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RunPhase {
    UNKNOWN,
    IDLE,
    PRIMING,
    SEQUENCING,
    WASH,
}

impl RunPhase {
    /// The phase whose baseline and operating spec a sample of this phase is judged against:
    /// `None` (the spec's own, sequencing) for SEQUENCING and instruments that do not say; the
    /// phase itself otherwise, UNKNOWN included (a phase newer than this build, which may well
    /// not be sequencing: judged on its own, with no spec).
    pub fn own_baseline(phase: Option<RunPhase>) -> Option<RunPhase> {
        match phase {
            None | Some(RunPhase::SEQUENCING) => None,
            Some(p) => Some(p),
        }
    }

    /// The name of a metric's series in a phase: the metric for sequencing (see
    /// [`RunPhase::own_baseline`]), `metric@phase` otherwise (`laser_power_mw@idle`).
    pub fn series(metric: &str, phase: Option<RunPhase>) -> String {
        match RunPhase::own_baseline(phase) {
            None => metric.to_string(),
            Some(p) => format!("{metric}@{}", p.as_str()),
        }
    }

    /// The metric and phase of a series name ([`RunPhase::series`]).
    pub fn parse_series(series: &str) -> (&str, Option<RunPhase>) {
        match series.split_once('@') {
            Some((metric, phase)) => (
                metric,
                [
                    RunPhase::UNKNOWN,
                    RunPhase::IDLE,
                    RunPhase::PRIMING,
                    RunPhase::WASH,
                ]
                .into_iter()
                .find(|p| p.as_str() == phase),
            ),
            None => (series, None),
        }
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunPhase::UNKNOWN => "unknown",
            RunPhase::IDLE => "idle",
            RunPhase::PRIMING => "priming",
            RunPhase::SEQUENCING => "sequencing",
            RunPhase::WASH => "wash",
        }
    }
}

impl SensorReadings {
    /// Every sensor as (field name, value), in schema order.
    pub fn fields(&self) -> [(&'static str, Option<f64>); 11] {
        [
            ("laser_power_mw", self.laser_power_mw),
            ("focus_fwhm_px", self.focus_fwhm_px),
            ("focus_z_offset_um", self.focus_z_offset_um),
            ("stage_position_error_um", self.stage_position_error_um),
            ("stage_motor_current_a", self.stage_motor_current_a),
            ("flowcell_temp_c", self.flowcell_temp_c),
            ("flowcell_temp_setpoint_c", self.flowcell_temp_setpoint_c),
            ("chiller_temp_c", self.chiller_temp_c),
            ("ambient_temp_c", self.ambient_temp_c),
            ("fluidics_pressure_kpa", self.fluidics_pressure_kpa),
            ("flow_rate_ul_min", self.flow_rate_ul_min),
        ]
    }
}

/// One operation-log event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationLogEvent {
    pub code: String,
    pub severity: Severity,
    pub subsystem: Subsystem,
    pub message: String,
}

/// Run performance of one lane at one cycle.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunPerformance {
    pub lane: i32,
    pub read_number: i32,
    pub cycle: i32,
    pub total_cycles: i32,
    pub cluster_density_k_per_mm2: Option<f64>,
    pub pct_pf: Option<f64>,
    pub pct_q30: Option<f64>,
    pub mean_qscore: Option<f64>,
    pub error_rate_pct: Option<f64>,
    pub phasing_pct: Option<f64>,
    pub prephasing_pct: Option<f64>,
    pub intensity_a: Option<f64>,
    pub intensity_c: Option<f64>,
    pub intensity_g: Option<f64>,
    pub intensity_t: Option<f64>,
    #[serde(default)]
    pub pct_aligned: Option<f64>,
    #[serde(default)]
    pub signal_to_noise: Option<f64>,
    #[serde(default)]
    pub yield_gbp: Option<f64>,
}

impl RunPerformance {
    /// Every optional metric as (field name, value), in schema order.
    pub fn metrics(&self) -> [(&'static str, Option<f64>); 14] {
        [
            ("cluster_density_k_per_mm2", self.cluster_density_k_per_mm2),
            ("pct_pf", self.pct_pf),
            ("pct_q30", self.pct_q30),
            ("mean_qscore", self.mean_qscore),
            ("error_rate_pct", self.error_rate_pct),
            ("phasing_pct", self.phasing_pct),
            ("prephasing_pct", self.prephasing_pct),
            ("intensity_a", self.intensity_a),
            ("intensity_c", self.intensity_c),
            ("intensity_g", self.intensity_g),
            ("intensity_t", self.intensity_t),
            ("pct_aligned", self.pct_aligned),
            ("signal_to_noise", self.signal_to_noise),
            ("yield_gbp", self.yield_gbp),
        ]
    }
}

/// Instrument identity and versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstrumentConfiguration {
    pub control_software_version: String,
    pub rta_version: String,
    pub firmware_version: String,
}

/// Run parameters and consumable lots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfiguration {
    pub read1_cycles: i32,
    pub index1_cycles: i32,
    pub index2_cycles: i32,
    pub read2_cycles: i32,
    pub chemistry: String,
    pub flowcell_serial: String,
    pub flowcell_lot: String,
    pub reagent_kit_lot: String,
    pub reagent_kit_expiry_date: i32,
    pub buffer_lot: String,
    pub buffer_expiry_date: i32,
}

/// Raw and validated telemetry (schema `telemetry`, newest version).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    pub message_id: String,
    pub instrument_serial: String,
    pub instrument_model: InstrumentModel,
    pub event_time_ms: i64,
    pub sent_time_ms: i64,
    pub kind: TelemetryKind,
    pub run_id: Option<String>,
    pub sensors: Option<SensorReadings>,
    pub log_event: Option<OperationLogEvent>,
    pub run_performance: Option<RunPerformance>,
    pub instrument_configuration: Option<InstrumentConfiguration>,
    pub run_configuration: Option<RunConfiguration>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}
avro_record!(Telemetry, "telemetry", models_added_in: 5);

/// One typed parameter of a templated log message (schema `sanitized_telemetry` v3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogParameter {
    pub name: String,
    pub number: Option<f64>,
    pub unit: Option<String>,
    pub symbol: Option<String>,
}

/// An operation-log event past the privacy boundary: its text only as a template and typed
/// parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SanitizedLogEvent {
    pub code: String,
    pub severity: Severity,
    pub subsystem: Subsystem,
    pub message: String,
    #[serde(default = "other_symbol")]
    pub template_id: String,
    #[serde(default)]
    pub parameters: Vec<LogParameter>,
}

/// The symbol a closed catalogue gives an unknown value.
pub const OTHER: &str = "OTHER";

/// What a sender writes in a required string field whose value its source lacks (a run folder
/// without a buffer lot); it crosses the privacy boundary as it is.
pub const NOT_REPORTED: &str = "unknown";

fn other_symbol() -> String {
    OTHER.to_string()
}

/// Telemetry that passed the privacy boundary (schema `sanitized_telemetry`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SanitizedTelemetry {
    pub message_id: String,
    pub instrument_serial: String,
    pub instrument_model: InstrumentModel,
    pub event_time_ms: i64,
    pub sent_time_ms: i64,
    pub kind: TelemetryKind,
    pub privacy_policy_version: i32,
    pub run_id: Option<String>,
    pub sensors: Option<SensorReadings>,
    pub log_event: Option<SanitizedLogEvent>,
    pub run_performance: Option<RunPerformance>,
    pub instrument_configuration: Option<InstrumentConfiguration>,
    pub run_configuration: Option<RunConfiguration>,
    pub attributes: BTreeMap<String, String>,
}
avro_record!(SanitizedTelemetry, "sanitized_telemetry", models_added_in: 5);

/// Window statistics of one metric (schema `feature`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    pub feature_id: String,
    pub instrument_serial: String,
    pub instrument_model: InstrumentModel,
    pub subsystem: Subsystem,
    pub metric: String,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub sample_count: i32,
    pub level: f64,
    pub slope_per_hour: f64,
    pub variability: f64,
    pub min: f64,
    pub max: f64,
    pub fraction_out_of_spec: f64,
    pub spec_low: Option<f64>,
    pub spec_high: Option<f64>,
    pub run_id: Option<String>,
    pub software_version: Option<String>,
    pub reagent_kit_lot: Option<String>,
    pub flowcell_lot: Option<String>,
    pub run_phase: Option<RunPhase>,
}
avro_record!(Feature, "feature", models_added_in: 4);

/// The first measurement of a record that is not a finite number, by field: measurements must be
/// finite wherever the schema has one (a NaN or an infinity would poison every sum, baseline and
/// stored state it reached), so each stage refuses such a record as bad input.
fn first_non_finite<'a>(
    fields: impl IntoIterator<Item = (&'a str, Option<f64>)>,
) -> Option<String> {
    fields
        .into_iter()
        .find(|(_, v)| v.is_some_and(|v| !v.is_finite()))
        .map(|(name, _)| name.to_string())
}

impl Telemetry {
    /// The first sensor, run-performance or log-parameter value that is not finite.
    pub fn non_finite_measurement(&self) -> Option<String> {
        first_non_finite(
            self.sensors
                .iter()
                .flat_map(|s| s.fields())
                .chain(self.run_performance.iter().flat_map(|p| p.metrics())),
        )
    }
}

impl SanitizedTelemetry {
    /// The first sensor, run-performance or log-parameter value that is not finite.
    pub fn non_finite_measurement(&self) -> Option<String> {
        first_non_finite(
            self.sensors
                .iter()
                .flat_map(|s| s.fields())
                .chain(self.run_performance.iter().flat_map(|p| p.metrics()))
                .chain(
                    self.log_event
                        .iter()
                        .flat_map(|l| l.parameters.iter().map(|p| (p.name.as_str(), p.number))),
                ),
        )
    }
}

impl Anomaly {
    /// The first score, level, baseline or limit that is not finite.
    pub fn non_finite_measurement(&self) -> Option<String> {
        first_non_finite([
            ("score", Some(self.score)),
            ("observed_level", Some(self.observed_level)),
            ("baseline_level", Some(self.baseline_level)),
            ("baseline_stddev", Some(self.baseline_stddev)),
            ("slope_per_hour", Some(self.slope_per_hour)),
            ("fraction_out_of_spec", Some(self.fraction_out_of_spec)),
            ("spec_low", self.spec_low),
            ("spec_high", self.spec_high),
        ])
    }
}

impl Feature {
    /// The first statistic or spec limit that is not finite.
    pub fn non_finite_measurement(&self) -> Option<String> {
        first_non_finite([
            ("level", Some(self.level)),
            ("slope_per_hour", Some(self.slope_per_hour)),
            ("variability", Some(self.variability)),
            ("min", Some(self.min)),
            ("max", Some(self.max)),
            ("fraction_out_of_spec", Some(self.fraction_out_of_spec)),
            ("spec_low", self.spec_low),
            ("spec_high", self.spec_high),
        ])
    }
}

/// Anomaly episode state.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AnomalyState {
    ACTIVE,
    CLEARED,
    PREDICTED,
}

/// Anomaly and alert severity.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AnomalySeverity {
    LOW,
    MEDIUM,
    HIGH,
    CRITICAL,
}

/// A metric departing from, or returning to, its instrument's baseline (schema `anomaly`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub anomaly_id: String,
    pub instrument_serial: String,
    pub instrument_model: InstrumentModel,
    pub subsystem: Subsystem,
    pub metric: String,
    pub state: AnomalyState,
    pub score: f64,
    pub severity: AnomalySeverity,
    pub rule: String,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub observed_level: f64,
    pub baseline_level: f64,
    pub baseline_stddev: f64,
    pub slope_per_hour: f64,
    pub fraction_out_of_spec: f64,
    pub spec_low: Option<f64>,
    pub spec_high: Option<f64>,
    pub software_version: Option<String>,
    pub reagent_kit_lot: Option<String>,
    pub predicted_limit_ms: Option<i64>,
    pub predicted_limit_earliest_ms: Option<i64>,
    pub predicted_limit_latest_ms: Option<i64>,
    pub flowcell_lot: Option<String>,
    pub cohort: Option<CohortEvidence>,
    pub run_phase: Option<RunPhase>,
}
avro_record!(Anomaly, "anomaly", models_added_in: 5);

/// What the instruments of a cohort share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CohortKind {
    UNKNOWN,
    REAGENT_KIT_LOT,
    FLOWCELL_LOT,
    SOFTWARE_VERSION,
}

impl CohortKind {
    /// The kind as cohort keys spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            CohortKind::UNKNOWN => "unknown",
            CohortKind::REAGENT_KIT_LOT => "reagent_kit_lot",
            CohortKind::FLOWCELL_LOT => "flowcell_lot",
            CohortKind::SOFTWARE_VERSION => "software_version",
        }
    }

    /// Words for alert titles and parts lists.
    pub fn label(self) -> &'static str {
        match self {
            CohortKind::UNKNOWN => "cohort",
            CohortKind::REAGENT_KIT_LOT => "reagent kit lot",
            CohortKind::FLOWCELL_LOT => "flow-cell lot",
            CohortKind::SOFTWARE_VERSION => "control software",
        }
    }

    /// The Kafka key of the cohort with this value on `cohort.signals`, and the
    /// `instrument_serial` of its fleet anomalies and alerts: `kind:value`.
    pub fn key(self, value: &str) -> String {
        format!("{}:{value}", self.as_str())
    }

    /// The kind and value of a cohort key; `None` for a key no kind spells.
    pub fn parse_key(key: &str) -> Option<(CohortKind, &str)> {
        let (kind, value) = key.split_once(':')?;
        let kind = [
            CohortKind::REAGENT_KIT_LOT,
            CohortKind::FLOWCELL_LOT,
            CohortKind::SOFTWARE_VERSION,
        ]
        .into_iter()
        .find(|k| k.as_str() == kind)?;
        Some((kind, value))
    }
}

/// Instruments sharing a lot or a software version that deviate together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CohortEvidence {
    pub kind: CohortKind,
    pub value: String,
    pub members: i32,
    pub deviating: i32,
    pub instruments: Vec<String>,
}

/// What a cohort signal says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CohortSignalKind {
    MEMBER,
    DEVIATION,
    /// A detector partition's progress only (v2), sent to every partition of `cohort.signals`.
    WATERMARK,
}

/// Membership or deviation of one instrument in one cohort, or a detector partition's
/// watermark (schema `cohort_signal`, topic `cohort.signals`, keyed by [`CohortKind::key`];
/// watermarks by `~watermark/<n>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CohortSignal {
    pub signal_id: String,
    pub kind: CohortKind,
    pub value: String,
    pub instrument_serial: String,
    pub instrument_model: InstrumentModel,
    pub event_time_ms: i64,
    pub source_partition: i32,
    pub source_watermark_ms: i64,
    pub signal: CohortSignalKind,
    pub count: bool,
    pub decide: bool,
    /// Keys ([`CohortKind::key`]) of the cohorts still to decide, in order.
    pub route: Vec<String>,
    #[serde(with = "apache_avro::serde_avro_bytes_opt")]
    pub anomaly: Option<Vec<u8>>,
}
impl AvroRecord for CohortSignal {
    const SCHEMA_NAME: &'static str = "cohort_signal";

    /// Version 1 but for WATERMARK (v2's only addition) and the models v3 added: a cohort
    /// analyzer older than v2, still running during a rolling upgrade, reads every MEMBER and
    /// DEVIATION of the older models and dead-letters only what it would not use.
    fn write_version(&self) -> Option<u32> {
        if !self.instrument_model.in_first_symbols() {
            None
        } else if self.signal == CohortSignalKind::WATERMARK {
            Some(2)
        } else {
            Some(1)
        }
    }
}

/// Alert lifecycle step.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AlertAction {
    OPEN,
    UPDATE,
    RESOLVE,
}

/// Alert for the service team (schema `alert`). Severity symbols are those of [`AnomalySeverity`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub alert_id: String,
    pub instrument_serial: String,
    pub instrument_model: InstrumentModel,
    pub subsystem: Subsystem,
    pub action: AlertAction,
    pub severity: AnomalySeverity,
    pub metric: String,
    pub score: f64,
    pub title: String,
    pub suspected_part: String,
    pub opened_at_ms: i64,
    pub event_time_ms: i64,
    pub anomaly_count: i32,
    pub cohort: Option<CohortEvidence>,
    pub state: AlertState,
    pub transition: AlertTransition,
    pub cause: TransitionCause,
    pub sequence: i32,
    pub command_id: Option<String>,
    pub actor: Option<String>,
    pub comment: Option<String>,
    pub assignee: Option<String>,
    pub acknowledged_by: Option<String>,
    pub snoozed_until_ms: Option<i64>,
    pub resolution: Option<Resolution>,
    pub escalation_level: i32,
    pub reopen_count: i32,
    pub evidence: Option<Evidence>,
}
avro_record!(Alert, "alert", models_added_in: 4);

/// Where an alert stands (schema `alert` v3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AlertState {
    PREDICTED,
    OPEN,
    ACKNOWLEDGED,
    SNOOZED,
    RESOLVED,
}

impl AlertState {
    /// Every state, for metrics and summaries.
    pub const ALL: [AlertState; 5] = [
        Self::PREDICTED,
        Self::OPEN,
        Self::ACKNOWLEDGED,
        Self::SNOOZED,
        Self::RESOLVED,
    ];

    /// The schema symbol.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PREDICTED => "PREDICTED",
            Self::OPEN => "OPEN",
            Self::ACKNOWLEDGED => "ACKNOWLEDGED",
            Self::SNOOZED => "SNOOZED",
            Self::RESOLVED => "RESOLVED",
        }
    }
}

/// What an alert record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AlertTransition {
    PREDICTED,
    OPENED,
    WORSENED,
    UPDATED,
    ACKNOWLEDGED,
    SNOOZED,
    UNSNOOZED,
    ASSIGNED,
    ESCALATED,
    RESOLVED,
    REOPENED,
}

impl AlertTransition {
    /// Every transition, for metrics and summaries.
    pub const ALL: [AlertTransition; 11] = [
        Self::PREDICTED,
        Self::OPENED,
        Self::WORSENED,
        Self::UPDATED,
        Self::ACKNOWLEDGED,
        Self::SNOOZED,
        Self::UNSNOOZED,
        Self::ASSIGNED,
        Self::ESCALATED,
        Self::RESOLVED,
        Self::REOPENED,
    ];

    /// The schema symbol.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PREDICTED => "PREDICTED",
            Self::OPENED => "OPENED",
            Self::WORSENED => "WORSENED",
            Self::UPDATED => "UPDATED",
            Self::ACKNOWLEDGED => "ACKNOWLEDGED",
            Self::SNOOZED => "SNOOZED",
            Self::UNSNOOZED => "UNSNOOZED",
            Self::ASSIGNED => "ASSIGNED",
            Self::ESCALATED => "ESCALATED",
            Self::RESOLVED => "RESOLVED",
            Self::REOPENED => "REOPENED",
        }
    }
}

/// What caused an alert transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TransitionCause {
    ANOMALY,
    FORECAST,
    COMMAND,
    TIMER,
}

/// How an alert ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Resolution {
    CLEARED,
    REPAIRED,
    PART_REPLACED,
    FALSE_ALARM,
    NOT_REPRODUCIBLE,
}

impl Resolution {
    /// The schema symbol, also what `seqmon-admin alert resolve --resolution` takes (lower case).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CLEARED => "CLEARED",
            Self::REPAIRED => "REPAIRED",
            Self::PART_REPLACED => "PART_REPLACED",
            Self::FALSE_ALARM => "FALSE_ALARM",
            Self::NOT_REPRODUCIBLE => "NOT_REPRODUCIBLE",
        }
    }

    /// Whether the work was done: the maintenance entry closes (otherwise it is cancelled).
    pub fn fixed(self) -> bool {
        matches!(self, Self::REPAIRED | Self::PART_REPLACED)
    }
}

impl std::str::FromStr for Resolution {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::CLEARED,
            Self::REPAIRED,
            Self::PART_REPLACED,
            Self::FALSE_ALARM,
            Self::NOT_REPRODUCIBLE,
        ]
        .into_iter()
        .find(|r| r.as_str().eq_ignore_ascii_case(&s.replace('-', "_")))
        .ok_or_else(|| {
            format!("{s:?} is not a resolution (repaired, part_replaced, false_alarm, not_reproducible)")
        })
    }
}

/// One window's level of a series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    pub window_end_ms: i64,
    pub level: f64,
}

/// What a person needs to judge an alert or a maintenance entry (schema record `Evidence`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub metric: String,
    pub series: String,
    pub rule: String,
    pub anomaly_id: String,
    pub observed: f64,
    pub baseline: f64,
    pub baseline_stddev: f64,
    pub slope_per_hour: f64,
    pub score: f64,
    pub spec_low: Option<f64>,
    pub spec_high: Option<f64>,
    pub recent: Vec<SeriesPoint>,
    pub predicted_limit_ms: Option<i64>,
    pub predicted_limit_earliest_ms: Option<i64>,
    pub predicted_limit_latest_ms: Option<i64>,
}

/// What a service engineer asks of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AlertCommandAction {
    UNKNOWN,
    ACKNOWLEDGE,
    SNOOZE,
    RESOLVE,
    ASSIGN,
}

/// A command on an alert (schema `alert_command`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertCommand {
    pub command_id: String,
    pub alert_id: String,
    pub instrument_serial: String,
    pub action: AlertCommandAction,
    pub issued_by: String,
    pub issued_at_ms: i64,
    pub snooze_until_ms: Option<i64>,
    pub resolution: Option<Resolution>,
    pub assignee: Option<String>,
    pub comment: Option<String>,
    pub alert_sequence: Option<i32>,
}
avro_record!(AlertCommand, "alert_command");

/// The Kafka key of an alert's records: its `instrument_serial` (a serial, or a fleet alert's
/// cohort key), read off an alert id `<key>:<subsystem>:<opened_at_ms>`.
pub fn alert_key(alert_id: &str) -> Option<&str> {
    let mut parts = alert_id.rsplitn(3, ':');
    let opened = parts.next()?;
    let _subsystem = parts.next()?;
    let key = parts.next()?;
    (opened.parse::<i64>().is_ok() && !key.is_empty()).then_some(key)
}

impl Alert {
    /// Whether the alert is about this instrument: its own alert, or a fleet alert that lists it
    /// among the cohort's deviating members.
    pub fn covers(&self, serial: &str) -> bool {
        match &self.cohort {
            Some(c) => c.instruments.iter().any(|s| s == serial),
            None => self.instrument_serial == serial,
        }
    }
}

/// Maintenance priority.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MaintenancePriority {
    P1,
    P2,
    P3,
}

/// Maintenance schedule entry (schema `maintenance_entry`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaintenanceEntry {
    pub entry_id: String,
    pub alert_id: String,
    pub instrument_serial: String,
    pub instrument_model: InstrumentModel,
    pub subsystem: Subsystem,
    pub suspected_part: String,
    pub priority: MaintenancePriority,
    pub due_by_ms: i64,
    pub reason: String,
    pub created_at_ms: i64,
    pub predicted_limit_ms: Option<i64>,
    pub status: MaintenanceStatus,
    pub revision: i32,
    pub updated_at_ms: i64,
    pub resolution: Option<Resolution>,
    pub visit: Option<Visit>,
    pub predicted_limit_earliest_ms: Option<i64>,
    pub predicted_limit_latest_ms: Option<i64>,
    pub evidence: Option<Evidence>,
}
avro_record!(MaintenanceEntry, "maintenance_entry", models_added_in: 4);

/// Whether a maintenance entry's work is still to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MaintenanceStatus {
    OPEN,
    CLOSED,
    CANCELLED,
}

/// How a visit window was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum VisitBasis {
    NO_RUN_HISTORY,
    HABITUAL_IDLE,
    IDLE_NOW,
    BETWEEN_RUNS,
}

/// A proposed service visit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Visit {
    pub visit_id: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub basis: VisitBasis,
    pub parts: Vec<String>,
    pub entry_ids: Vec<String>,
}

/// Fixed list of dead-letter reasons.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DeadLetterReason {
    UNDECODABLE,
    UNKNOWN_SCHEMA,
    WRONG_SCHEMA,
    MISSING_FIELD,
    INCONSISTENT_PAYLOAD,
    OUT_OF_RANGE,
    TIMESTAMP_FUTURE,
    TIMESTAMP_STALE,
    CLOCK_SKEW,
    DUPLICATE_MESSAGE,
    PRIVACY_VIOLATION,
    LATE_EVENT,
    TOO_LARGE,
    UNKNOWN_ALERT,
    STALE_TRANSITION,
    INVALID_COMMAND,
    DELIVERY_FAILED,
    UNKNOWN,
}

impl DeadLetterReason {
    /// Every reason, for metrics pre-registration and summaries.
    pub const ALL: [DeadLetterReason; 18] = [
        Self::UNDECODABLE,
        Self::UNKNOWN_SCHEMA,
        Self::WRONG_SCHEMA,
        Self::MISSING_FIELD,
        Self::INCONSISTENT_PAYLOAD,
        Self::OUT_OF_RANGE,
        Self::TIMESTAMP_FUTURE,
        Self::TIMESTAMP_STALE,
        Self::CLOCK_SKEW,
        Self::DUPLICATE_MESSAGE,
        Self::PRIVACY_VIOLATION,
        Self::LATE_EVENT,
        Self::TOO_LARGE,
        Self::UNKNOWN_ALERT,
        Self::STALE_TRANSITION,
        Self::INVALID_COMMAND,
        Self::DELIVERY_FAILED,
        Self::UNKNOWN,
    ];

    /// The schema symbol, e.g. `OUT_OF_RANGE`.
    pub fn code(self) -> &'static str {
        match self {
            Self::UNDECODABLE => "UNDECODABLE",
            Self::UNKNOWN_SCHEMA => "UNKNOWN_SCHEMA",
            Self::WRONG_SCHEMA => "WRONG_SCHEMA",
            Self::MISSING_FIELD => "MISSING_FIELD",
            Self::INCONSISTENT_PAYLOAD => "INCONSISTENT_PAYLOAD",
            Self::OUT_OF_RANGE => "OUT_OF_RANGE",
            Self::TIMESTAMP_FUTURE => "TIMESTAMP_FUTURE",
            Self::TIMESTAMP_STALE => "TIMESTAMP_STALE",
            Self::CLOCK_SKEW => "CLOCK_SKEW",
            Self::DUPLICATE_MESSAGE => "DUPLICATE_MESSAGE",
            Self::PRIVACY_VIOLATION => "PRIVACY_VIOLATION",
            Self::LATE_EVENT => "LATE_EVENT",
            Self::TOO_LARGE => "TOO_LARGE",
            Self::UNKNOWN_ALERT => "UNKNOWN_ALERT",
            Self::STALE_TRANSITION => "STALE_TRANSITION",
            Self::INVALID_COMMAND => "INVALID_COMMAND",
            Self::DELIVERY_FAILED => "DELIVERY_FAILED",
            Self::UNKNOWN => "UNKNOWN",
        }
    }
}

/// A refused input record (schema `dead_letter`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub stage: String,
    pub reason: DeadLetterReason,
    pub detail: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    #[serde(with = "apache_avro::serde_avro_bytes_opt")]
    pub source_key: Option<Vec<u8>>,
    pub source_timestamp_ms: Option<i64>,
    #[serde(with = "apache_avro::serde_avro_bytes")]
    pub original_bytes: Vec<u8>,
}
avro_record!(DeadLetter, "dead_letter");

/// Privacy rule that removed a field.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PrivacyRule {
    FIELD_NOT_ALLOWLISTED,
    TEXT_NOT_ALLOWLISTED,
    SEQUENCE_DATA,
    EMAIL_ADDRESS,
    PERSON_NAME,
    PATIENT_IDENTIFIER,
    SAMPLE_IDENTIFIER,
    PHONE_NUMBER,
    DATE_OF_BIRTH,
    IDENTIFIER_FORMAT,
    GRAMMAR_MISMATCH,
    NOT_IN_CATALOGUE,
    UNKNOWN_TEMPLATE,
    UNKNOWN_ATTRIBUTE_KEY,
    SIZE_LIMIT,
}

/// What the privacy enforcer did.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PrivacyAction {
    FIELD_REMOVED,
    RECORD_REJECTED,
    PSEUDONYMIZED,
    REPLACED_WITH_OTHER,
}

/// One removal at the privacy boundary (schema `privacy_audit`): rule and field, never the value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivacyAudit {
    pub message_id: String,
    pub instrument_serial: String,
    pub event_time_ms: i64,
    pub field: String,
    pub rule: PrivacyRule,
    pub action: PrivacyAction,
    #[serde(default = "one")]
    pub count: i32,
    #[serde(default)]
    pub event_code: Option<String>,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
}
avro_record!(PrivacyAudit, "privacy_audit");

fn one() -> i32 {
    1
}

/// One key's state in a stage's changelog topic (schema `state_snapshot`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateSnapshot {
    pub stage: String,
    pub key: String,
    pub format_version: i32,
    /// The bytes the stage's state format defines. Despite the schema's field name (released, so
    /// kept), not always JSON: the feature extractor's format 2 is a single-object encoded
    /// [`FeatureExtractorState`].
    #[serde(with = "apache_avro::serde_avro_bytes")]
    pub state_json: Vec<u8>,
}
avro_record!(StateSnapshot, "state_snapshot");

/// The feature extractor's state on its changelog (schema `feature_extractor_state`, inside a
/// [`StateSnapshot`] of state format 2): a base or a delta; see the feature extractor's `state`
/// module for how they are written and assembled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureExtractorState {
    pub base_offset: i64,
    pub base: Option<FeatureExtractorBase>,
    pub delta: Option<DeltaInputs>,
}

impl AvroRecord for FeatureExtractorState {
    const SCHEMA_NAME: &'static str = "feature_extractor_state";

    /// Version 1 unless the base names a model version 2 added, so a feature extractor of
    /// version 1, still restoring during a rolling upgrade, reads every other instrument's state.
    fn write_version(&self) -> Option<u32> {
        self.base
            .as_ref()
            .and_then(|b| b.instrument_model)
            .is_none_or(InstrumentModel::in_first_symbols)
            .then_some(1)
    }
}

/// Everything held for one instrument.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureExtractorBase {
    pub instrument_model: Option<InstrumentModel>,
    pub software_version: Option<String>,
    pub reagent_kit_lot: Option<String>,
    pub flowcell_lot: Option<String>,
    pub run_id: Option<String>,
    pub max_event_time_ms: i64,
    pub closed_until_ms: i64,
    pub active_since_ms: Option<i64>,
    pub windows: Vec<WindowSums>,
    pub repeats: Vec<SensorRepeat>,
    pub repeat_phases: Vec<SensorPhase>,
}

/// Running sums of one series in one open window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowSums {
    pub start_ms: i64,
    pub series: String,
    pub n: i32,
    pub sum: f64,
    pub sum_sq: f64,
    pub sum_t: f64,
    pub sum_tt: f64,
    pub sum_tv: f64,
    pub min: f64,
    pub max: f64,
    pub out_of_spec: i32,
}

/// A sensor's last reading and its unchanged repeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorRepeat {
    pub sensor: String,
    pub last: f64,
    pub repeats: i32,
}

/// The run phase of a sensor's last new reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorPhase {
    pub sensor: String,
    pub phase: Option<RunPhase>,
}

/// Inputs folded in after the base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeltaInputs {
    pub slot: i32,
    pub inputs: Vec<FoldedInput>,
}

/// One input record as it was read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldedInput {
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub arrival_time_ms: Option<i64>,
    #[serde(with = "apache_avro::serde_avro_bytes")]
    pub value: Vec<u8>,
}

/// The anomaly detector's state on its changelog (schema `anomaly_detector_state`, inside a
/// [`StateSnapshot`] of state format 2): one record per changed piece, exactly one of the three
/// set; the detector's `state` module says which changelog key holds which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnomalyDetectorState {
    pub series: Option<DetectorSeries>,
    pub fleet: Option<DetectorFleetSpread>,
    pub cohorts: Option<Vec<CohortMembership>>,
}

avro_record!(AnomalyDetectorState, "anomaly_detector_state");

/// One series of one instrument and its open episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorSeries {
    pub n: i64,
    pub primed: bool,
    pub mean: f64,
    pub var: f64,
    pub spread: f64,
    pub cusum_hi: f64,
    pub cusum_lo: f64,
    pub bin: DetectorHourBin,
    pub upper: DetectorSideTrend,
    pub lower: DetectorSideTrend,
    pub hits: i64,
    pub misses: i64,
    pub drifting: bool,
    pub hour_spread: f64,
    pub hours: i64,
    pub hour_alarm: bool,
    pub prediction: Option<DetectorPrediction>,
    pub episode: Option<DetectorEpisode>,
}

/// Windows gathered into the current hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorHourBin {
    pub hour: i64,
    pub n: i64,
    pub sum: f64,
    pub sum_sq: f64,
    pub sum_var: f64,
}

/// The trend towards one spec limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorSideTrend {
    pub line: DetectorLine,
    pub jumps: i64,
    pub first_h: f64,
    pub last_error: f64,
    pub error_sq: f64,
    pub error_lag: f64,
}

/// Discounted least-squares sums of a line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorLine {
    pub at_h: f64,
    pub s0: f64,
    pub st: f64,
    pub stt: f64,
    pub sy: f64,
    pub sty: f64,
    pub syy: f64,
    pub points: i64,
}

/// A forecast spec crossing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorPrediction {
    pub at_ms: i64,
    pub crossing_ms: i64,
    pub earliest_ms: i64,
    pub latest_ms: Option<i64>,
    pub t_stat: f64,
    pub upper: bool,
}

/// An open anomaly episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorEpisode {
    pub severity: AnomalySeverity,
    pub predicted_only: bool,
    pub earliest_ms: Option<i64>,
    pub normal_in_a_row: i64,
    pub cohorts: Vec<String>,
}

/// The typical window spread of one metric on one model on one input partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorFleetSpread {
    pub log_mean: f64,
    pub windows: i64,
    pub contributors: i64,
}

/// A cohort an instrument last signalled it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CohortMembership {
    pub kind: CohortKind,
    pub value: String,
    pub at_ms: i64,
}
