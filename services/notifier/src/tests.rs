use super::*;
use seqmon_model::{decode, encode, CohortKind, InstrumentModel};
use seqmon_processor::transplant_state;

const SERIAL: &str = "VH00042";

fn anomaly(
    metric: &str,
    state: AnomalyState,
    severity: AnomalySeverity,
    t: i64,
    observed: f64,
) -> Anomaly {
    Anomaly {
        anomaly_id: format!("x{t}"),
        instrument_serial: SERIAL.into(),
        instrument_model: InstrumentModel::NEXTSEQ_2000,
        subsystem: Subsystem::FLUIDICS,
        metric: metric.into(),
        state,
        score: 6.0,
        severity,
        rule: "baseline_shift".into(),
        window_start_ms: t - 300_000,
        window_end_ms: t,
        observed_level: observed,
        baseline_level: 100.0,
        baseline_stddev: 2.0,
        slope_per_hour: -20.0,
        fraction_out_of_spec: 0.0,
        spec_low: Some(70.0),
        spec_high: Some(140.0),
        software_version: None,
        reagent_kit_lot: None,
        predicted_limit_ms: None,
        predicted_limit_earliest_ms: None,
        predicted_limit_latest_ms: None,
        flowcell_lot: None,
        cohort: None,
        run_phase: None,
    }
}

fn active(t: i64, severity: AnomalySeverity) -> Anomaly {
    anomaly(
        "fluidics_pressure_kpa",
        AnomalyState::ACTIVE,
        severity,
        t,
        80.0,
    )
}

fn cleared(metric: &str, t: i64) -> Anomaly {
    anomaly(
        metric,
        AnomalyState::CLEARED,
        AnomalySeverity::LOW,
        t,
        100.0,
    )
}

fn predicted(t: i64, earliest_h: i64, severity: AnomalySeverity) -> Anomaly {
    let mut a = anomaly(
        "fluidics_pressure_kpa",
        AnomalyState::PREDICTED,
        severity,
        t,
        120.0,
    );
    a.rule = "trend_to_limit".into();
    a.predicted_limit_earliest_ms = Some(t + earliest_h * HOUR_MS);
    a.predicted_limit_ms = Some(t + earliest_h * 2 * HOUR_MS);
    a
}

fn feature(t: i64, metric: &str, level: f64, phase: Option<RunPhase>) -> Feature {
    Feature {
        feature_id: format!("f{t}{metric}"),
        instrument_serial: SERIAL.into(),
        instrument_model: InstrumentModel::NEXTSEQ_2000,
        subsystem: Subsystem::FLUIDICS,
        metric: metric.into(),
        window_start_ms: t - 300_000,
        window_end_ms: t,
        sample_count: 5,
        level,
        slope_per_hour: 0.0,
        variability: 1.0,
        min: level,
        max: level,
        fraction_out_of_spec: 0.0,
        spec_low: None,
        spec_high: None,
        run_id: None,
        software_version: None,
        reagent_kit_lot: None,
        flowcell_lot: None,
        run_phase: phase,
    }
}

fn command(alert: &Alert, action: AlertCommandAction, at: i64) -> AlertCommand {
    AlertCommand {
        command_id: format!("cmd-{at}-{action:?}"),
        alert_id: alert.alert_id.clone(),
        instrument_serial: alert.instrument_serial.clone(),
        action,
        issued_by: "fse-17".into(),
        issued_at_ms: at,
        snooze_until_ms: None,
        resolution: None,
        assignee: None,
        comment: None,
        alert_sequence: None,
    }
}

/// What one input produced.
#[derive(Debug, Default)]
struct Out {
    alerts: Vec<Alert>,
    entries: Vec<MaintenanceEntry>,
    rejected: Option<DeadLetterReason>,
}

fn feed_bytes(n: &mut Notifier, bytes: &[u8]) -> Out {
    let env = Envelope {
        key: Some(SERIAL.as_bytes()),
        value: bytes,
        topic: TopicRole::Anomalies.spec().name,
        partition: 0,
        offset: 0,
        timestamp_ms: None,
        arrival_time_ms: None,
    };
    let mut out = Emitter::default();
    n.process(&env, &mut out).unwrap();
    let (recs, rejection, _) = out.take();
    Out {
        alerts: recs
            .iter()
            .filter(|e| e.role == TopicRole::Alerts)
            .map(|e| decode(&e.value).unwrap())
            .collect(),
        entries: recs
            .iter()
            .filter(|e| e.role == TopicRole::Maintenance)
            .map(|e| decode(&e.value).unwrap())
            .collect(),
        rejected: rejection.map(|r| r.reason),
    }
}

fn feed<T: seqmon_model::records::AvroRecord + serde::Serialize>(n: &mut Notifier, r: &T) -> Out {
    feed_bytes(n, &encode(r).unwrap())
}

/// A command, keyed like its alert (as the console writes it), at a record timestamp.
fn feed_cmd(n: &mut Notifier, c: &AlertCommand, partition: i32, timestamp_ms: Option<i64>) -> Out {
    let bytes = encode(c).unwrap();
    let env = Envelope {
        key: Some(c.instrument_serial.as_bytes()),
        value: &bytes,
        topic: TopicRole::AlertCommands.spec().name,
        partition,
        offset: 0,
        timestamp_ms,
        arrival_time_ms: None,
    };
    let mut out = Emitter::default();
    n.process(&env, &mut out).unwrap();
    let (recs, rejection, _) = out.take();
    Out {
        alerts: recs
            .iter()
            .filter(|e| e.role == TopicRole::Alerts)
            .map(|e| decode(&e.value).unwrap())
            .collect(),
        entries: Vec::new(),
        rejected: rejection.map(|r| r.reason),
    }
}

/// Settings with no resolve hold, no minimum open time and no escalation: one anomaly, one step.
fn immediate() -> NotifierConfig {
    NotifierConfig {
        resolve_hold_minutes: 0,
        min_open_minutes: 0,
        escalate_after_minutes: vec![0, 0, 0, 0],
        ..Default::default()
    }
}

#[test]
fn defaults_validate_and_bad_settings_are_named() {
    NotifierConfig::default().validate().unwrap();
    let bad = NotifierConfig {
        escalate_after_minutes: vec![1, 2],
        ..Default::default()
    };
    let e = bad.validate().unwrap_err();
    assert!(e.setting.contains("escalate-after-minutes"), "{e:?}");
    let bad = NotifierConfig {
        visit_hours: 0,
        ..Default::default()
    };
    assert!(bad.validate().unwrap_err().setting.contains("visit-hours"));
}

#[test]
fn open_update_dedupe_and_resolve() {
    let mut n = Notifier::new(immediate());
    let o = feed(&mut n, &active(3_600_000, AnomalySeverity::MEDIUM));
    assert_eq!(o.alerts.len(), 1);
    let a = &o.alerts[0];
    assert_eq!(
        (a.action, a.transition, a.state, a.sequence),
        (
            AlertAction::OPEN,
            AlertTransition::OPENED,
            AlertState::OPEN,
            1
        )
    );
    assert_eq!(a.cause, TransitionCause::ANOMALY);
    assert_eq!(a.suspected_part, "pump seal or fluidics fitting (leak)");
    let ev = a.evidence.as_ref().unwrap();
    assert_eq!(
        (ev.observed, ev.baseline, ev.spec_low, ev.rule.as_str()),
        (80.0, 100.0, Some(70.0), "baseline_shift")
    );
    assert_eq!(o.entries.len(), 1);
    let m = &o.entries[0];
    assert_eq!(
        (m.priority, m.revision, m.status),
        (MaintenancePriority::P3, 1, MaintenanceStatus::OPEN)
    );
    // P3, due by the P3 horizon: a window's own slope (here steep) is not a forecast.
    assert_eq!(m.due_by_ms, 3_600_000 + 336 * HOUR_MS);
    assert!(m.visit.is_some() && m.evidence.is_some());
    // Same severity on another metric of the subsystem: folded in silently.
    let mut flow = active(3_900_000, AnomalySeverity::MEDIUM);
    flow.metric = "flow_rate_ul_min".into();
    flow.observed_level = 200.0;
    assert!(feed(&mut n, &flow).alerts.is_empty());
    let o = feed(&mut n, &active(4_200_000, AnomalySeverity::CRITICAL));
    assert_eq!(
        (o.alerts.len(), o.alerts[0].transition, o.alerts[0].sequence),
        (1, AlertTransition::WORSENED, 2)
    );
    assert_eq!(o.alerts[0].action, AlertAction::UPDATE);
    assert_eq!(
        (
            o.entries.len(),
            o.entries[0].priority,
            o.entries[0].revision
        ),
        (1, MaintenancePriority::P1, 2)
    );
    assert_eq!(o.entries[0].entry_id, m.entry_id, "one entry per part");
    let o = feed(&mut n, &cleared("fluidics_pressure_kpa", 5_000_000));
    assert!(o.alerts.is_empty(), "flow rate still active");
    let o = feed(&mut n, &cleared("flow_rate_ul_min", 5_300_000));
    assert_eq!(o.alerts[0].action, AlertAction::RESOLVE);
    assert_eq!(o.alerts[0].resolution, Some(Resolution::CLEARED));
    assert_eq!(o.alerts[0].anomaly_count, 3);
    // The entry stands while the fault may recur; with none for the re-open window, it is
    // cancelled: the anomaly cleared on its own.
    assert!(o.entries.is_empty());
    let o = feed(&mut n, &feature(5_300_000 + 23 * HOUR_MS, "x", 1.0, None));
    assert!(o.entries.is_empty());
    let o = feed(&mut n, &feature(5_300_000 + 25 * HOUR_MS, "x", 1.0, None));
    // Its visit (due 24 h after the CRITICAL anomaly) passed too: one revision says it all.
    assert_eq!(o.entries.len(), 1, "{:?}", o.entries);
    let last = &o.entries[0];
    assert_eq!(last.status, MaintenanceStatus::CANCELLED);
    assert_eq!(last.resolution, Some(Resolution::CLEARED));
    assert_eq!(last.revision, 3);
    assert!(o.alerts.is_empty(), "the alert is forgotten quietly");
}

#[test]
fn a_repair_showing_does_not_reopen_but_a_recurrence_does() {
    let mut n = Notifier::new(immediate());
    let t0 = 100 * HOUR_MS;
    let opened = feed(&mut n, &active(t0, AnomalySeverity::HIGH)).alerts[0].clone();
    let mut fixed = command(&opened, AlertCommandAction::RESOLVE, t0 + HOUR_MS);
    fixed.resolution = Some(Resolution::REPAIRED);
    feed(&mut n, &fixed);
    // Pressure back above the baseline learned while it leaked: further from the low limit.
    let mut better = active(t0 + 2 * HOUR_MS, AnomalySeverity::LOW);
    better.observed_level = 105.0;
    better.baseline_level = 90.0;
    let o = feed(&mut n, &better);
    assert!(o.alerts.is_empty() && o.entries.is_empty(), "{o:?}");
    // Falling towards the limit again: a recurrence.
    let o = feed(&mut n, &active(t0 + 3 * HOUR_MS, AnomalySeverity::MEDIUM));
    assert_eq!(o.alerts[0].transition, AlertTransition::REOPENED);
    assert_eq!(o.entries[0].status, MaintenanceStatus::OPEN);
}

#[test]
fn a_flap_within_the_hold_is_silent_and_the_hold_resolves_later() {
    let mut n = Notifier::new(NotifierConfig {
        resolve_hold_minutes: 30,
        min_open_minutes: 30,
        ..Default::default()
    });
    let t0 = 100 * HOUR_MS;
    assert_eq!(
        feed(&mut n, &active(t0, AnomalySeverity::HIGH))
            .alerts
            .len(),
        1
    );
    // Clears after 10 minutes, recurs 10 minutes later: neither goes out.
    assert!(feed(
        &mut n,
        &cleared("fluidics_pressure_kpa", t0 + 10 * MINUTE_MS)
    )
    .alerts
    .is_empty());
    let o = feed(&mut n, &active(t0 + 20 * MINUTE_MS, AnomalySeverity::HIGH));
    assert!(o.alerts.is_empty() && o.entries.is_empty(), "{o:?}");
    // Clears again; features move the clock; 30 minutes later it resolves.
    assert!(feed(
        &mut n,
        &cleared("fluidics_pressure_kpa", t0 + 40 * MINUTE_MS)
    )
    .alerts
    .is_empty());
    let o = feed(
        &mut n,
        &feature(t0 + 60 * MINUTE_MS, "laser_power_mw", 1.0, None),
    );
    assert!(o.alerts.is_empty(), "the hold has not passed: {o:?}");
    let o = feed(
        &mut n,
        &feature(t0 + 71 * MINUTE_MS, "laser_power_mw", 1.0, None),
    );
    assert_eq!(o.alerts.len(), 1);
    assert_eq!(o.alerts[0].transition, AlertTransition::RESOLVED);
    // At the clock that passed the end of the hold (never before records already out).
    assert_eq!(o.alerts[0].event_time_ms, t0 + 71 * MINUTE_MS);
}

#[test]
fn acknowledge_snooze_assign_resolve_and_reopen() {
    let mut n = Notifier::new(immediate());
    let t0 = 100 * HOUR_MS;
    let opened = feed(&mut n, &active(t0, AnomalySeverity::HIGH)).alerts[0].clone();
    // Acknowledge.
    let mut ack = command(&opened, AlertCommandAction::ACKNOWLEDGE, t0 + MINUTE_MS);
    ack.comment = Some("on my way".into());
    let o = feed(&mut n, &ack);
    assert_eq!(o.rejected, None);
    let a = &o.alerts[0];
    assert_eq!(
        (a.state, a.transition, a.cause, a.sequence),
        (
            AlertState::ACKNOWLEDGED,
            AlertTransition::ACKNOWLEDGED,
            TransitionCause::COMMAND,
            2
        )
    );
    assert_eq!(a.actor.as_deref(), Some("fse-17"));
    assert_eq!(a.comment.as_deref(), Some("on my way"));
    assert_eq!(a.command_id.as_deref(), Some(ack.command_id.as_str()));
    // The same command again is a duplicate; a second acknowledgement is stale.
    assert_eq!(
        feed(&mut n, &ack).rejected,
        Some(DeadLetterReason::DUPLICATE_MESSAGE)
    );
    let again = command(&opened, AlertCommandAction::ACKNOWLEDGE, t0 + 2 * MINUTE_MS);
    assert_eq!(
        feed(&mut n, &again).rejected,
        Some(DeadLetterReason::STALE_TRANSITION)
    );
    // Assign.
    let mut assign = command(&opened, AlertCommandAction::ASSIGN, t0 + 3 * MINUTE_MS);
    assign.assignee = Some("fse-23".into());
    let o = feed(&mut n, &assign);
    assert_eq!(o.alerts[0].assignee.as_deref(), Some("fse-23"));
    assert_eq!(o.alerts[0].state, AlertState::ACKNOWLEDGED);
    // Snooze for two hours: the clock (features) ends it.
    let mut snooze = command(&opened, AlertCommandAction::SNOOZE, t0 + 4 * MINUTE_MS);
    snooze.snooze_until_ms = Some(t0 + 2 * HOUR_MS);
    let o = feed(&mut n, &snooze);
    assert_eq!(o.alerts[0].state, AlertState::SNOOZED);
    assert_eq!(o.alerts[0].snoozed_until_ms, Some(t0 + 2 * HOUR_MS));
    assert!(feed(&mut n, &feature(t0 + HOUR_MS, "x", 1.0, None))
        .alerts
        .is_empty());
    let o = feed(
        &mut n,
        &feature(t0 + 2 * HOUR_MS + MINUTE_MS, "x", 1.0, None),
    );
    assert_eq!(o.alerts.len(), 1);
    assert_eq!(
        (o.alerts[0].transition, o.alerts[0].cause, o.alerts[0].state),
        (
            AlertTransition::UNSNOOZED,
            TransitionCause::TIMER,
            AlertState::ACKNOWLEDGED
        )
    );
    // Resolve as repaired: the entry closes.
    let mut resolve = command(&opened, AlertCommandAction::RESOLVE, t0 + 3 * HOUR_MS);
    resolve.resolution = Some(Resolution::PART_REPLACED);
    let o = feed(&mut n, &resolve);
    assert_eq!(
        (
            o.alerts[0].state,
            o.alerts[0].resolution,
            o.alerts[0].action
        ),
        (
            AlertState::RESOLVED,
            Some(Resolution::PART_REPLACED),
            AlertAction::RESOLVE
        )
    );
    assert_eq!(o.entries.len(), 1);
    assert_eq!(o.entries[0].status, MaintenanceStatus::CLOSED);
    assert!(o.entries[0].visit.is_none());
    // Anything more on a resolved alert is stale.
    let late = command(&opened, AlertCommandAction::ACKNOWLEDGE, t0 + 4 * HOUR_MS);
    assert_eq!(
        feed(&mut n, &late).rejected,
        Some(DeadLetterReason::STALE_TRANSITION)
    );
    // It recurs within the re-open window: the same alert re-opens, the entry re-opens.
    let o = feed(&mut n, &active(t0 + 5 * HOUR_MS, AnomalySeverity::MEDIUM));
    let r = &o.alerts[0];
    assert_eq!(
        (
            r.alert_id.as_str(),
            r.transition,
            r.state,
            r.reopen_count,
            r.action
        ),
        (
            opened.alert_id.as_str(),
            AlertTransition::REOPENED,
            AlertState::OPEN,
            1,
            AlertAction::OPEN
        )
    );
    assert_eq!(r.acknowledged_by, None);
    assert_eq!(o.entries[0].status, MaintenanceStatus::OPEN);
    assert_eq!(
        o.entries[0].entry_id,
        format!("{SERIAL}:{}", opened.suspected_part)
    );
    // A command issued before the re-opening is stale.
    let mut old = command(&opened, AlertCommandAction::RESOLVE, t0 + 4 * HOUR_MS);
    old.command_id = "late-resolve".into();
    old.resolution = Some(Resolution::REPAIRED);
    assert_eq!(
        feed(&mut n, &old).rejected,
        Some(DeadLetterReason::STALE_TRANSITION)
    );
}

#[test]
fn bad_commands_are_dead_letters_and_change_nothing() {
    let mut n = Notifier::new(immediate());
    let t0 = 100 * HOUR_MS;
    let opened = feed(&mut n, &active(t0, AnomalySeverity::HIGH)).alerts[0].clone();
    let before = n.snapshot(SERIAL).unwrap();
    let mut unknown = command(&opened, AlertCommandAction::ACKNOWLEDGE, t0);
    unknown.alert_id = format!("{SERIAL}:optics:1");
    assert_eq!(
        feed(&mut n, &unknown).rejected,
        Some(DeadLetterReason::UNKNOWN_ALERT)
    );
    let mut wrong_key = command(&opened, AlertCommandAction::ACKNOWLEDGE, t0);
    wrong_key.instrument_serial = "OTHER".into();
    assert_eq!(
        feed(&mut n, &wrong_key).rejected,
        Some(DeadLetterReason::INVALID_COMMAND)
    );
    let mut past = command(&opened, AlertCommandAction::SNOOZE, t0);
    past.snooze_until_ms = Some(t0 - 1);
    assert_eq!(
        feed(&mut n, &past).rejected,
        Some(DeadLetterReason::INVALID_COMMAND)
    );
    let mut forever = command(&opened, AlertCommandAction::SNOOZE, t0);
    forever.snooze_until_ms = Some(t0 + 10_000 * HOUR_MS);
    assert_eq!(
        feed(&mut n, &forever).rejected,
        Some(DeadLetterReason::INVALID_COMMAND)
    );
    let no_resolution = command(&opened, AlertCommandAction::RESOLVE, t0);
    assert_eq!(
        feed(&mut n, &no_resolution).rejected,
        Some(DeadLetterReason::INVALID_COMMAND)
    );
    let mut cleared_by_hand = command(&opened, AlertCommandAction::RESOLVE, t0);
    cleared_by_hand.resolution = Some(Resolution::CLEARED);
    assert_eq!(
        feed(&mut n, &cleared_by_hand).rejected,
        Some(DeadLetterReason::INVALID_COMMAND)
    );
    let mut nobody = command(&opened, AlertCommandAction::ASSIGN, t0);
    nobody.assignee = Some("  ".into());
    assert_eq!(
        feed(&mut n, &nobody).rejected,
        Some(DeadLetterReason::INVALID_COMMAND)
    );
    let mut essay = command(&opened, AlertCommandAction::ACKNOWLEDGE, t0);
    essay.comment = Some("x".repeat(1001));
    assert_eq!(
        feed(&mut n, &essay).rejected,
        Some(DeadLetterReason::INVALID_COMMAND)
    );
    let mut anonymous = command(&opened, AlertCommandAction::ACKNOWLEDGE, t0);
    anonymous.issued_by = String::new();
    assert_eq!(
        feed(&mut n, &anonymous).rejected,
        Some(DeadLetterReason::INVALID_COMMAND)
    );
    // Bytes that are no command at all.
    assert_eq!(
        feed_bytes(&mut n, b"\xc3\x01\x00\x01\x02\x03\x04\x05\x06\x07garbage").rejected,
        Some(DeadLetterReason::UNKNOWN_SCHEMA)
    );
    assert!(feed_bytes(&mut n, b"{}").rejected.is_some());
    // A record of another type on an input.
    let dl = seqmon_model::DeadLetter {
        stage: "x".into(),
        reason: DeadLetterReason::UNKNOWN,
        detail: String::new(),
        source_topic: String::new(),
        source_partition: 0,
        source_offset: 0,
        source_key: None,
        source_timestamp_ms: None,
        original_bytes: Vec::new(),
    };
    assert_eq!(
        feed(&mut n, &dl).rejected,
        Some(DeadLetterReason::WRONG_SCHEMA)
    );
    // A NaN anomaly is refused, not kept.
    let mut nan = active(t0 + MINUTE_MS, AnomalySeverity::CRITICAL);
    nan.observed_level = f64::NAN;
    assert_eq!(
        feed(&mut n, &nan).rejected,
        Some(DeadLetterReason::OUT_OF_RANGE)
    );
    assert_eq!(n.snapshot(SERIAL).unwrap(), before, "nothing changed");
}

#[test]
fn an_unacknowledged_alert_escalates_until_acknowledged() {
    let mut n = Notifier::new(NotifierConfig {
        escalate_after_minutes: vec![0, 0, 60, 15],
        max_escalations: 2,
        ..Default::default()
    });
    let t0 = 100 * HOUR_MS;
    let opened = feed(&mut n, &active(t0, AnomalySeverity::HIGH)).alerts[0].clone();
    assert!(feed(&mut n, &feature(t0 + 59 * MINUTE_MS, "x", 1.0, None))
        .alerts
        .is_empty());
    let o = feed(&mut n, &feature(t0 + 61 * MINUTE_MS, "x", 1.0, None));
    assert_eq!(
        (
            o.alerts[0].transition,
            o.alerts[0].escalation_level,
            o.alerts[0].cause
        ),
        (AlertTransition::ESCALATED, 1, TransitionCause::TIMER)
    );
    // Worse now: escalation comes sooner (CRITICAL: every 15 minutes from the opening).
    feed(
        &mut n,
        &active(t0 + 62 * MINUTE_MS, AnomalySeverity::CRITICAL),
    );
    let o = feed(&mut n, &feature(t0 + 5 * HOUR_MS, "x", 1.0, None));
    assert_eq!(o.alerts.len(), 1, "at most max_escalations: {o:?}");
    assert_eq!(o.alerts[0].escalation_level, 2);
    // Acknowledged: no more.
    feed(
        &mut n,
        &command(&opened, AlertCommandAction::ACKNOWLEDGE, t0 + 6 * HOUR_MS),
    );
    assert!(feed(&mut n, &feature(t0 + 20 * HOUR_MS, "x", 1.0, None))
        .alerts
        .is_empty());
}

#[test]
fn a_worsening_ends_a_snooze() {
    let mut n = Notifier::new(immediate());
    let t0 = 100 * HOUR_MS;
    let opened = feed(&mut n, &active(t0, AnomalySeverity::MEDIUM)).alerts[0].clone();
    let mut snooze = command(&opened, AlertCommandAction::SNOOZE, t0 + MINUTE_MS);
    snooze.snooze_until_ms = Some(t0 + 48 * HOUR_MS);
    feed(&mut n, &snooze);
    let o = feed(&mut n, &active(t0 + HOUR_MS, AnomalySeverity::CRITICAL));
    assert_eq!(
        (
            o.alerts[0].transition,
            o.alerts[0].state,
            o.alerts[0].snoozed_until_ms
        ),
        (AlertTransition::WORSENED, AlertState::OPEN, None)
    );
}

#[test]
fn a_phase_series_clearing_leaves_the_sequencing_one_open() {
    let mut n = Notifier::new(immediate());
    let in_phase = |state, t, phase| {
        let mut a = anomaly(
            "fluidics_pressure_kpa",
            state,
            AnomalySeverity::HIGH,
            t,
            90.0,
        );
        a.run_phase = phase;
        a
    };
    let o = feed(&mut n, &in_phase(AnomalyState::ACTIVE, 10, None));
    assert_eq!(o.alerts[0].action, AlertAction::OPEN);
    let o = feed(
        &mut n,
        &in_phase(AnomalyState::ACTIVE, 20, Some(RunPhase::IDLE)),
    );
    assert!(o.alerts.is_empty(), "the same alert");
    let o = feed(
        &mut n,
        &in_phase(AnomalyState::CLEARED, 30, Some(RunPhase::IDLE)),
    );
    assert!(
        o.alerts.is_empty(),
        "the sequencing series still stands: {o:?}"
    );
    let o = feed(&mut n, &in_phase(AnomalyState::CLEARED, 40, None));
    assert_eq!(o.alerts[0].action, AlertAction::RESOLVE);
}

#[test]
fn a_fleet_anomaly_is_one_alert_naming_the_lot_with_no_visit() {
    use seqmon_model::CohortEvidence;
    let mut n = Notifier::new(immediate());
    let fleet = |state: AnomalyState, deviating: i32, t: i64| {
        let mut a = anomaly("pct_q30", state, AnomalySeverity::HIGH, t, 70.0);
        a.instrument_serial = CohortKind::REAGENT_KIT_LOT.key("SBS-20991");
        a.subsystem = Subsystem::CHEMISTRY;
        a.cohort = Some(CohortEvidence {
            kind: CohortKind::REAGENT_KIT_LOT,
            value: "SBS-20991".into(),
            members: 6,
            deviating,
            instruments: (0..deviating).map(|i| format!("A0010{i}")).collect(),
        });
        a
    };
    let o = feed(&mut n, &fleet(AnomalyState::ACTIVE, 3, 1000));
    assert_eq!((o.alerts.len(), o.alerts[0].action), (1, AlertAction::OPEN));
    assert!(o.entries.is_empty(), "a lot is recalled, not visited");
    let a = &o.alerts[0];
    assert_eq!(a.suspected_part, "reagent kit lot SBS-20991");
    assert!(Part::ReagentLot.named_by(&a.suspected_part));
    assert!(a.title.contains("3 of 6 instruments"), "{}", a.title);
    assert!(a.covers("A00102") && !a.covers("A00105"));
    // More members: the same alert, updated with the new list.
    let o2 = feed(&mut n, &fleet(AnomalyState::ACTIVE, 5, 2000));
    assert_eq!(
        (o2.alerts.len(), o2.alerts[0].action),
        (1, AlertAction::UPDATE)
    );
    assert_eq!(o2.alerts[0].alert_id, a.alert_id);
    assert!(o2.entries.is_empty() && o2.alerts[0].covers("A00104"));
    // A command on a fleet alert is keyed by the cohort.
    let ack = command(&o2.alerts[0], AlertCommandAction::ACKNOWLEDGE, 2500);
    assert_eq!(ack.instrument_serial, "reagent_kit_lot:SBS-20991");
    assert_eq!(
        feed(&mut n, &ack).rejected,
        Some(DeadLetterReason::INVALID_COMMAND),
        "keyed by the instrument, not the cohort"
    );
    assert_eq!(
        feed_cmd(&mut n, &ack, 0, None).alerts[0].state,
        AlertState::ACKNOWLEDGED
    );
    // The cohort clears as a whole, whichever metric named it.
    let mut cleared = fleet(AnomalyState::CLEARED, 0, 3000);
    cleared.metric = "cohort".into();
    let o3 = feed(&mut n, &cleared);
    assert_eq!(
        (o3.alerts.len(), o3.alerts[0].action),
        (1, AlertAction::RESOLVE)
    );
}

#[test]
fn a_forecast_schedules_before_the_crossing_and_updates_one_entry() {
    let mut n = Notifier::new(immediate());
    let t0 = 100 * HOUR_MS;
    let o = feed(&mut n, &predicted(t0, 200, AnomalySeverity::LOW));
    let a = &o.alerts[0];
    assert_eq!(
        (a.action, a.state, a.transition, a.cause),
        (
            AlertAction::OPEN,
            AlertState::PREDICTED,
            AlertTransition::PREDICTED,
            TransitionCause::FORECAST
        )
    );
    assert!(a.title.contains("forecast to leave spec"), "{}", a.title);
    let ev = a.evidence.as_ref().unwrap();
    assert_eq!(ev.predicted_limit_earliest_ms, Some(t0 + 200 * HOUR_MS));
    assert_eq!(ev.predicted_limit_ms, Some(t0 + 400 * HOUR_MS));
    assert_eq!(a.suspected_part, "fluidics line or valve (clog)");
    let m = &o.entries;
    assert_eq!(m.len(), 1);
    // 200 h left: P3, due 24 h before the earliest crossing.
    assert_eq!(m[0].priority, MaintenancePriority::P3);
    assert_eq!(m[0].due_by_ms, t0 + 176 * HOUR_MS);
    assert_eq!(m[0].predicted_limit_ms, Some(t0 + 400 * HOUR_MS));
    assert_eq!(m[0].predicted_limit_earliest_ms, Some(t0 + 200 * HOUR_MS));
    // No run history: the visit is the latest that still meets the due date.
    let v = m[0].visit.as_ref().unwrap();
    assert_eq!(
        (v.basis, v.end_ms),
        (VisitBasis::NO_RUN_HISTORY, m[0].due_by_ms)
    );
    // Closer: the same entry, earlier and more urgent.
    let t1 = t0 + 10 * HOUR_MS;
    let o2 = feed(&mut n, &predicted(t1, 30, AnomalySeverity::MEDIUM));
    assert_eq!(o2.entries.len(), 1);
    assert_eq!(o2.entries[0].entry_id, m[0].entry_id);
    assert_eq!(o2.entries[0].revision, 2);
    assert_eq!(o2.entries[0].priority, MaintenancePriority::P1);
    // 30 h left: the margin is capped at half the time left, never after the crossing.
    assert_eq!(o2.entries[0].due_by_ms, t1 + 15 * HOUR_MS);
    // The limit is crossed now: the predicted alert opens.
    let mut now_active = predicted(t1 + 2 * HOUR_MS, 20, AnomalySeverity::HIGH);
    now_active.state = AnomalyState::ACTIVE;
    now_active.severity = AnomalySeverity::CRITICAL;
    let o4 = feed(&mut n, &now_active);
    assert_eq!(
        (
            o4.alerts[0].transition,
            o4.alerts[0].state,
            o4.alerts[0].action
        ),
        (
            AlertTransition::OPENED,
            AlertState::OPEN,
            AlertAction::UPDATE
        )
    );
    assert_eq!(o4.entries.len(), 1);
    assert!(
        o4.entries[0].due_by_ms <= t1 + 22 * HOUR_MS,
        "{:?}",
        o4.entries
    );
    // The same forecast again: nothing new.
    let o3 = feed(
        &mut n,
        &predicted(t1 + HOUR_MS, 29, AnomalySeverity::MEDIUM),
    );
    assert!(o3.alerts.is_empty() && o3.entries.is_empty(), "{o3:?}");
}

#[test]
fn parts_due_close_together_share_a_visit_between_runs() {
    let mut n = Notifier::new(immediate());
    // Runs of 2 h with 30 min idle, learned from features.
    let cycle = |t: i64| {
        if t.rem_euclid(150 * MINUTE_MS) < 120 * MINUTE_MS {
            RunPhase::SEQUENCING
        } else {
            RunPhase::IDLE
        }
    };
    let t0 = 1000 * HOUR_MS;
    let mut t = t0;
    while t < t0 + 12 * HOUR_MS {
        feed(&mut n, &feature(t, "laser_power_mw", 80.0, Some(cycle(t))));
        t += 5 * MINUTE_MS;
    }
    let now = t;
    // A leak (HIGH: P2, due in 48 h) and a pump wear forecast falling due 3 days later.
    let leak = feed(&mut n, &active(now, AnomalySeverity::HIGH));
    let v1 = leak.entries[0].visit.clone().unwrap();
    assert_eq!(v1.basis, VisitBasis::BETWEEN_RUNS);
    assert_eq!(cycle(v1.start_ms + 5 * MINUTE_MS), RunPhase::IDLE, "{v1:?}");
    assert!(v1.end_ms <= leak.entries[0].due_by_ms);
    let mut wear = predicted(now + MINUTE_MS, 120, AnomalySeverity::LOW);
    wear.subsystem = Subsystem::MECHANICAL;
    wear.metric = "stage_position_error_um".into();
    wear.observed_level = 5.0;
    wear.baseline_level = 1.0;
    let o = feed(&mut n, &wear);
    // Both entries go out: the new one, and the leak's, whose visit now lists two parts.
    assert_eq!(o.entries.len(), 2, "{o:?}");
    for e in &o.entries {
        let v = e.visit.clone().unwrap();
        assert_eq!(v.visit_id, v1.visit_id, "grouped into the leak's visit");
        assert_eq!(v.parts.len(), 2);
        assert_eq!(v.start_ms, v1.start_ms);
    }
    // A part due a month out gets a visit of its own.
    let mut far = predicted(now + 2 * MINUTE_MS, 800, AnomalySeverity::LOW);
    far.subsystem = Subsystem::OPTICAL;
    far.metric = "laser_power_mw".into();
    far.observed_level = 70.0;
    let o = feed(&mut n, &far);
    let v3 = o.entries[0].visit.clone().unwrap();
    assert_ne!(v3.visit_id, v1.visit_id);
    assert_eq!(v3.parts.len(), 1);
}

#[test]
fn state_survives_a_restore_with_its_timers() {
    let mut n = Notifier::new(NotifierConfig {
        escalate_after_minutes: vec![0, 0, 60, 60],
        ..Default::default()
    });
    let t0 = 100 * HOUR_MS;
    let opened = feed(&mut n, &active(t0, AnomalySeverity::HIGH)).alerts[0].clone();
    feed(
        &mut n,
        &feature(t0 + MINUTE_MS, "fluidics_pressure_kpa", 81.0, None),
    );
    let mut m = Notifier::new(n.cfg.clone());
    transplant_state(&n, &mut m).unwrap();
    assert_eq!(m.snapshot(SERIAL).unwrap(), n.snapshot(SERIAL).unwrap());
    let o = feed(&mut m, &feature(t0 + 2 * HOUR_MS, "x", 1.0, None));
    assert_eq!(o.alerts[0].transition, AlertTransition::ESCALATED);
    assert_eq!(o.alerts[0].alert_id, opened.alert_id);
    assert_eq!(o.alerts[0].sequence, 2);
    let recent = &o.alerts[0].evidence.as_ref().unwrap().recent;
    assert_eq!(
        recent.len(),
        2,
        "the anomaly's level and the feature's: {recent:?}"
    );
}

#[test]
fn a_book_naming_a_model_added_in_2026_12_is_written_as_format_3_and_read_back() {
    let t0 = 100 * HOUR_MS;
    let record = |n: &Notifier| StateRecord {
        key: SERIAL.into(),
        value: n.snapshot(SERIAL).unwrap(),
    };
    let mut old = Notifier::new(immediate());
    feed(&mut old, &active(t0, AnomalySeverity::HIGH));
    assert_eq!(old.state_record_format(&record(&old)), 2);
    let mut n = Notifier::new(immediate());
    let mut a = active(t0, AnomalySeverity::HIGH);
    a.instrument_model = InstrumentModel::NOVASEQ_X;
    feed(&mut n, &a);
    // A build before 2026-12 (formats 1 and 2) stops its restore at this record instead of
    // quarantining the book; this build reads it.
    assert_eq!(n.state_record_format(&record(&n)), 3);
    assert!(n.reads_state_format(3));
    let mut m = Notifier::new(n.cfg.clone());
    transplant_state(&n, &mut m).unwrap();
    assert_eq!(m.snapshot(SERIAL).unwrap(), n.snapshot(SERIAL).unwrap());
}

#[test]
fn layout_one_state_is_still_read() {
    let legacy = br#"[["FLUIDICS",{"alert_id":"VH00042:fluidics:10","opened_at_ms":10,"severity":"HIGH","score":6.0,"anomaly_count":2,"active_metrics":["fluidics_pressure_kpa"],"suspected_part":"pump seal or fluidics fitting (leak)","priority":"P2","due_by_ms":99}]]"#;
    let mut n = Notifier::new(immediate());
    assert!(n.reads_state_format(1) && n.reads_state_format(2) && !n.reads_state_format(4));
    n.restore(SERIAL, legacy).unwrap();
    let o = feed(&mut n, &cleared("fluidics_pressure_kpa", 20));
    assert_eq!(o.alerts[0].alert_id, "VH00042:fluidics:10");
    assert_eq!(o.alerts[0].transition, AlertTransition::RESOLVED);
}

#[test]
fn commands_must_arrive_as_their_alert_does_and_name_the_record_they_answer() {
    let mut n = Notifier::new(immediate());
    let t0 = 100 * HOUR_MS;
    let opened = feed(&mut n, &active(t0, AnomalySeverity::HIGH)).alerts[0].clone();
    let ack = command(&opened, AlertCommandAction::ACKNOWLEDGE, t0);
    // Another partition than the alert's records: a producer with another partitioner.
    assert_eq!(
        feed_cmd(&mut n, &ack, 3, None).rejected,
        Some(DeadLetterReason::INVALID_COMMAND)
    );
    // A time far from the record's own.
    assert_eq!(
        feed_cmd(&mut n, &ack, 0, Some(t0 + 2 * HOUR_MS)).rejected,
        Some(DeadLetterReason::INVALID_COMMAND)
    );
    // Control characters in a handle.
    let mut escape = ack.clone();
    escape.issued_by = "fse\u{1b}[2J".into();
    assert_eq!(
        feed_cmd(&mut n, &escape, 0, None).rejected,
        Some(DeadLetterReason::INVALID_COMMAND)
    );
    // A record the alert has not reached.
    let mut ahead = ack.clone();
    ahead.alert_sequence = Some(9);
    assert_eq!(
        feed_cmd(&mut n, &ahead, 0, None).rejected,
        Some(DeadLetterReason::INVALID_COMMAND)
    );
    // Answering record #1: applied.
    let mut fine = ack.clone();
    fine.alert_sequence = Some(1);
    assert_eq!(
        feed_cmd(&mut n, &fine, 0, Some(t0)).alerts[0].state,
        AlertState::ACKNOWLEDGED
    );
    // It clears, resolves (hold 0), re-opens: a command answering the old episode is stale
    // whatever its time says.
    feed(&mut n, &cleared("fluidics_pressure_kpa", t0 + HOUR_MS));
    let r = feed(&mut n, &active(t0 + 2 * HOUR_MS, AnomalySeverity::HIGH)).alerts[0].clone();
    assert_eq!(r.transition, AlertTransition::REOPENED);
    let mut late = command(&opened, AlertCommandAction::RESOLVE, t0 + 3 * HOUR_MS);
    late.resolution = Some(Resolution::FALSE_ALARM);
    late.alert_sequence = Some(2);
    assert_eq!(
        feed_cmd(&mut n, &late, 0, None).rejected,
        Some(DeadLetterReason::STALE_TRANSITION)
    );
    late.alert_sequence = Some(r.sequence);
    assert_eq!(feed_cmd(&mut n, &late, 0, None).rejected, None);
}

#[test]
fn a_repair_can_be_recorded_after_the_alert_cleared_on_its_own() {
    let mut n = Notifier::new(immediate());
    let t0 = 100 * HOUR_MS;
    let opened = feed(&mut n, &active(t0, AnomalySeverity::HIGH)).alerts[0].clone();
    let o = feed(&mut n, &cleared("fluidics_pressure_kpa", t0 + HOUR_MS));
    assert_eq!(o.alerts[0].resolution, Some(Resolution::CLEARED));
    let mut fixed = command(&opened, AlertCommandAction::RESOLVE, t0 + 2 * HOUR_MS);
    fixed.resolution = Some(Resolution::PART_REPLACED);
    let o = feed_cmd(&mut n, &fixed, 0, None);
    assert_eq!(o.rejected, None);
    assert_eq!(o.alerts[0].resolution, Some(Resolution::PART_REPLACED));
    // The entry closed as done; the repair then shows as an improvement: no re-open.
    let book = &n.books[SERIAL];
    assert_eq!(
        book.entries.values().next().unwrap().status,
        MaintenanceStatus::CLOSED
    );
    let mut better = active(t0 + 3 * HOUR_MS, AnomalySeverity::MEDIUM);
    better.observed_level = 105.0;
    assert!(feed(&mut n, &better).alerts.is_empty());
    // A false alarm is not recorded on a cleared alert: it is over already.
    let mut other = command(&opened, AlertCommandAction::RESOLVE, t0 + 4 * HOUR_MS);
    other.command_id = "other".into();
    other.resolution = Some(Resolution::FALSE_ALARM);
    assert_eq!(
        feed_cmd(&mut n, &other, 0, None).rejected,
        Some(DeadLetterReason::STALE_TRANSITION)
    );
}

#[test]
fn a_forecast_come_true_while_snoozed_opens_where_the_snooze_returns() {
    let mut n = Notifier::new(NotifierConfig {
        escalate_after_minutes: vec![0, 60, 60, 60],
        ..immediate()
    });
    let t0 = 100 * HOUR_MS;
    let p = feed(&mut n, &predicted(t0, 100, AnomalySeverity::MEDIUM)).alerts[0].clone();
    let mut snooze = command(&p, AlertCommandAction::SNOOZE, t0 + MINUTE_MS);
    snooze.snooze_until_ms = Some(t0 + 5 * HOUR_MS);
    feed_cmd(&mut n, &snooze, 0, None);
    let mut now_active = predicted(t0 + HOUR_MS, 90, AnomalySeverity::MEDIUM);
    now_active.state = AnomalyState::ACTIVE;
    let o = feed(&mut n, &now_active);
    assert_eq!(
        (o.alerts[0].transition, o.alerts[0].state),
        (AlertTransition::OPENED, AlertState::SNOOZED)
    );
    let o = feed(
        &mut n,
        &feature(t0 + 5 * HOUR_MS + MINUTE_MS, "x", 1.0, None),
    );
    assert_eq!(o.alerts[0].transition, AlertTransition::UNSNOOZED);
    assert_eq!(o.alerts[0].state, AlertState::OPEN, "not back to PREDICTED");
    // Escalation counts from the snooze's end, one at a time, never backdated.
    let o = feed(&mut n, &feature(t0 + 9 * HOUR_MS, "x", 1.0, None));
    assert_eq!(o.alerts.len(), 1);
    assert_eq!(o.alerts[0].escalation_level, 1);
    assert_eq!(o.alerts[0].event_time_ms, t0 + 9 * HOUR_MS);
}

#[test]
fn the_clock_is_state_and_closed_entries_are_forgotten_with_rising_revisions() {
    let mut n = Notifier::new(NotifierConfig {
        closed_retention_hours: 48,
        ..immediate()
    });
    let t0 = 100 * HOUR_MS;
    let opened = feed(&mut n, &active(t0, AnomalySeverity::HIGH)).alerts[0].clone();
    assert!(n.state_keys().contains(&"~clock/0".to_string()));
    let mut fixed = command(&opened, AlertCommandAction::RESOLVE, t0 + HOUR_MS);
    fixed.resolution = Some(Resolution::REPAIRED);
    feed_cmd(&mut n, &fixed, 0, None);
    let rev = n.books[SERIAL].revisions;
    // A restore brings the clock back with the books.
    let mut m = Notifier::new(n.cfg.clone());
    transplant_state(&n, &mut m).unwrap();
    assert_eq!(m.clock(0), n.clock(0));
    feed(&mut m, &feature(t0 + 60 * HOUR_MS, "x", 1.0, None));
    assert!(
        m.books[SERIAL].entries.is_empty(),
        "closed work forgotten after 48 h"
    );
    let o = feed(&mut m, &active(t0 + 61 * HOUR_MS, AnomalySeverity::HIGH));
    assert!(
        o.entries[0].revision > rev,
        "a new life of the entry, still a higher revision"
    );
}
