//! The ACL matrix (`seqmon_model::acl::STAGE_TOPICS`) says what each stage reads and writes; the
//! processors say it too. They must agree, or a stage would be refused by the broker (missing
//! ACL) or hold more access than it uses (extra ACL).

use seqmon_model::acl::{Principal, STAGE_TOPICS};
use seqmon_model::topics::TopicRole;
use seqmon_runtime::Processor;

fn declared(p: &dyn Processor) -> (Vec<TopicRole>, Vec<TopicRole>) {
    let mut reads = vec![p.input_role()];
    reads.extend_from_slice(p.side_input_roles());
    let mut writes: Vec<TopicRole> = p.output_roles().to_vec();
    writes.push(p.dead_letter_role());
    if let Some(c) = p.changelog_role() {
        reads.push(c);
        writes.push(c);
    }
    reads.sort();
    writes.sort();
    (reads, writes)
}

#[test]
fn every_stage_principal_has_exactly_the_topics_its_processor_uses() {
    let processors: Vec<(Principal, Box<dyn Processor>)> = vec![
        (
            Principal::Validator,
            Box::new(seqmon_validator::Validator::default()),
        ),
        (
            Principal::PrivacyEnforcer,
            Box::new(seqmon_privacy_enforcer::PrivacyEnforcer::default()),
        ),
        (
            Principal::FeatureExtractor,
            Box::new(seqmon_feature_extractor::FeatureExtractor::default()),
        ),
        (
            Principal::AnomalyDetector,
            Box::new(seqmon_anomaly_detector::AnomalyDetector::default()),
        ),
        (
            Principal::CohortAnalyzer,
            Box::new(seqmon_cohort_analyzer::CohortAnalyzer::default()),
        ),
        (
            Principal::Notifier,
            Box::new(seqmon_notifier::Notifier::default()),
        ),
    ];
    assert_eq!(processors.len(), STAGE_TOPICS.len());
    for (principal, p) in &processors {
        assert_eq!(principal.name(), p.stage());
        let t = principal.topics();
        let mut reads = t.reads.to_vec();
        let mut writes = t.writes.to_vec();
        reads.sort();
        writes.sort();
        assert_eq!((reads, writes), declared(p.as_ref()), "{}", p.stage());
    }
}
