//! The collector produces a real run folder's telemetry to the raw topic on a real broker, and
//! the validator accepts every record (historic runs need a wide maximum age).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use seqmon_integration_tests::*;
use seqmon_model::{decode, Telemetry};

#[test]
fn a_run_folder_reaches_the_raw_topic_and_passes_the_validator() {
    let prefix = unique_prefix("collector");
    create_topics(&prefix, 3);
    let folder = seqmon_collector::sample_runs_dir().join("miseq-2013-04-two-index");
    let status = Command::new(bin("collector"))
        .args([
            "--to",
            "kafka",
            "--bootstrap-servers",
            &bootstrap(),
            "--topic-prefix",
            &prefix,
        ])
        .arg("--run-folder")
        .arg(&folder)
        .status()
        .unwrap();
    assert!(status.success());
    let raw = read_committed(&format!("{prefix}telemetry.raw"));
    let expected = seqmon_collector::collect::collect_run(&folder, None, 0)
        .unwrap()
        .records
        .len();
    assert_eq!(raw.len(), expected);
    for r in &raw {
        let t: Telemetry = decode(&r.value).unwrap();
        assert_eq!(r.key, t.instrument_serial);
    }
    let validator = Service::start("validator", &prefix, &["--max-age-ms", "9000000000000"]);
    assert!(
        wait_until(Duration::from_secs(60), || metric_sum(
            &validator.metrics(),
            "seqmon_accepted_records_total"
        ) == expected as f64),
        "validator accepted {:?} of {expected}",
        validator.metrics().get("seqmon_accepted_records_total")
    );
    assert_eq!(
        metric_sum(&validator.metrics(), "seqmon_dead_letter_records_total"),
        0.0
    );
}
