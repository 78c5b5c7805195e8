//! No library code: the binaries in `src/bin/` are the stage services
//! (`validator`, `privacy-enforcer`, `feature-extractor`, `anomaly-detector`, `cohort-analyzer`,
//! `notifier`).
