//! The binaries in `src/bin/` are the stage services (`validator`, `privacy-enforcer`,
//! `feature-extractor`, `anomaly-detector`, `cohort-analyzer`, `notifier`). The library holds
//! what a binary reads besides its settings and what another tool must build the same way: the
//! privacy enforcer's key and templates (used by `seqmon-admin replay`).

use seqmon_privacy::pseudonym::PseudonymKey;
use seqmon_privacy::template::TemplateCatalogue;
use seqmon_privacy_enforcer::{PrivacyConfig, PrivacyEnforcer};
use seqmon_runtime::processor::config::setting_name;
use seqmon_runtime::RuntimeError;

fn bad(id: &str, message: String) -> RuntimeError {
    RuntimeError::Config {
        setting: setting_name::<PrivacyConfig>(id),
        message,
    }
}

/// The privacy enforcer as its service builds it: the pseudonym key (never the public demo
/// key) and the operator's templates, from its settings. `seqmon-admin replay` builds it here
/// too, so a replay pseudonymises as production does.
pub fn build_privacy_enforcer(cfg: &PrivacyConfig) -> Result<PrivacyEnforcer, RuntimeError> {
    cfg.validate()?;
    let hex = match (&cfg.pseudonym_key, &cfg.pseudonym_key_file) {
        (Some(k), _) => k.expose().to_string(),
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
            bad(
                "pseudonym_key_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?,
        (None, None) => return Err(bad("pseudonym_key_file", "is required".into())),
    };
    if seqmon_privacy_enforcer::is_demo_key(&hex) {
        return Err(bad(
            "pseudonym_key_file",
            "holds the public demo key; generate one (e.g. openssl rand -hex 32)".into(),
        ));
    }
    let key = PseudonymKey::from_hex(&hex).map_err(|e| bad("pseudonym_key_file", e.to_string()))?;
    let mut templates = TemplateCatalogue::builtin();
    if let Some(path) = &cfg.log_templates_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            bad(
                "log_templates_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let extra = TemplateCatalogue::parse(&text)
            .map_err(|e| bad("log_templates_file", format!("{}: {e}", path.display())))?;
        let added = extra.len();
        templates
            .extend(extra)
            .map_err(|e| bad("log_templates_file", format!("{}: {e}", path.display())))?;
        tracing::info!(
            added,
            total = templates.len(),
            "operator log templates loaded"
        );
    }
    Ok(PrivacyEnforcer::new(cfg.clone(), key, templates))
}
