//! No library code: the binaries in `src/bin/` are the five stage services
//! (`validator`, `privacy-enforcer`, `feature-extractor`, `anomaly-detector`, `notifier`).
