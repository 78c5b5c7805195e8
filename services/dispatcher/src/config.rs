//! The dispatcher's settings. Each default is stated once, in its clap attribute; `validate`
//! checks them before any I/O; `load_files` reads the webhooks file (and its secrets) and the
//! inventory, failing with a message that names the setting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use seqmon_processor::ConfigError;
use seqmon_runtime::config::KafkaConnection;

use crate::webhook::{Endpoint, WebhooksFile};

/// Delivers alert transitions to Alertmanager and webhooks.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct DispatcherConfig {
    #[command(flatten)]
    pub kafka: KafkaConnection,
    /// Consumer group (default `<topic prefix>alert-dispatcher`).
    #[arg(long, env = "DISPATCHER_GROUP_ID")]
    pub group_id: Option<String>,
    /// Address of `/metrics` and `/healthz`.
    #[arg(long, env = "DISPATCHER_METRICS_ADDR", default_value = "0.0.0.0:9109")]
    pub metrics_addr: SocketAddr,
    /// Alertmanager base URL (repeat for each member of an Alertmanager cluster, as Prometheus
    /// is configured), e.g. `http://alertmanager:9093`. None: no Alertmanager.
    #[arg(
        long = "alertmanager-url",
        env = "DISPATCHER_ALERTMANAGER_URLS",
        value_delimiter = ','
    )]
    pub alertmanager_urls: Vec<String>,
    /// CA certificate (PEM) to verify an `https://` Alertmanager with, besides the public roots.
    #[arg(long, env = "DISPATCHER_ALERTMANAGER_CA_FILE")]
    pub alertmanager_ca_file: Option<PathBuf>,
    /// Seconds between re-posts of every firing alert to Alertmanager (each re-post sets
    /// `endsAt` four intervals ahead, so an alert no longer sent expires by itself).
    #[arg(long, env = "DISPATCHER_RESEND_INTERVAL_S", default_value_t = 60)]
    pub resend_interval_s: u64,
    /// Webhooks file (JSON: `{"webhooks": [{"name", "url", "secret_file", "filter", ...}]}`;
    /// see docs/alerting.md). None: no webhooks.
    #[arg(long, env = "DISPATCHER_WEBHOOKS_FILE")]
    pub webhooks_file: Option<PathBuf>,
    /// Inventory (JSON object: instrument serial → site), for the `site` label and filters.
    /// Instruments it does not list are of site `unknown`; fleet alerts of site `fleet`.
    #[arg(long, env = "DISPATCHER_INVENTORY_FILE")]
    pub inventory_file: Option<PathBuf>,
    /// Base URL of the service console, for the link in each alert (`<url>/alerts/<id>`).
    #[arg(long, env = "DISPATCHER_CONSOLE_URL")]
    pub console_url: Option<String>,
    /// First retry delay, ms (doubling per attempt, with full jitter).
    #[arg(long, env = "DISPATCHER_BACKOFF_BASE_MS", default_value_t = 500)]
    pub backoff_base_ms: u64,
    /// Longest retry delay, ms.
    #[arg(long, env = "DISPATCHER_BACKOFF_CAP_MS", default_value_t = 60_000)]
    pub backoff_cap_ms: u64,
    /// Failures in a row that open a receiver's circuit breaker.
    #[arg(long, env = "DISPATCHER_BREAKER_FAILURES", default_value_t = 5)]
    pub breaker_failures: u32,
    /// Seconds a receiver's open circuit waits before one probe.
    #[arg(long, env = "DISPATCHER_BREAKER_COOLDOWN_S", default_value_t = 30)]
    pub breaker_cooldown_s: u64,
    /// Deliveries in flight above which the consumer pauses (memory bound under an outage).
    #[arg(long, env = "DISPATCHER_MAX_IN_FLIGHT", default_value_t = 20_000)]
    pub max_in_flight: u64,
    /// Consumer session timeout, ms: how soon the group notices a dispatcher that died and gives
    /// its partitions to another (or to its own restart).
    #[arg(long, env = "DISPATCHER_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub session_timeout_ms: u64,
    /// Alerts per post to Alertmanager.
    #[arg(long, env = "DISPATCHER_ALERTMANAGER_BATCH", default_value_t = 500)]
    pub alertmanager_batch: usize,
    /// Seconds allowed for one Alertmanager request.
    #[arg(long, env = "DISPATCHER_ALERTMANAGER_TIMEOUT_S", default_value_t = 10)]
    pub alertmanager_timeout_s: u64,
}

impl DispatcherConfig {
    /// Checks the settings (no I/O).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        let fail = |id: &str, msg: String| Err(ConfigError::of::<Self>(id, msg));
        for u in &self.alertmanager_urls {
            // Alertmanager inside the cluster is often plain http (its own network policy).
            let parsed = reqwest::Url::parse(u).map_err(|e| e.to_string());
            let ok = parsed.as_ref().is_ok_and(|p| {
                matches!(p.scheme(), "http" | "https")
                    && p.host_str().is_some_and(|h| !h.is_empty())
                    && p.username().is_empty()
                    && p.password().is_none()
            });
            if !ok {
                return fail(
                    "alertmanager_urls",
                    format!(
                        "{u:?} is not an http:// or https:// URL with a host and no credentials"
                    ),
                );
            }
        }
        if self.alertmanager_urls.is_empty() && self.webhooks_file.is_none() {
            return fail(
                "alertmanager_urls",
                "no receiver: set --alertmanager-url and/or --webhooks-file".into(),
            );
        }
        if !(5..=3600).contains(&self.resend_interval_s) {
            return fail("resend_interval_s", "must be 5 to 3600 seconds".into());
        }
        if self.backoff_base_ms == 0 || self.backoff_cap_ms < self.backoff_base_ms {
            return fail(
                "backoff_cap_ms",
                "base must be positive and the cap at least the base".into(),
            );
        }
        if self.breaker_failures == 0 || self.breaker_cooldown_s == 0 {
            return fail(
                "breaker_failures",
                "failures and cooldown must be positive".into(),
            );
        }
        if self.max_in_flight < 10 {
            return fail("max_in_flight", "must be at least 10".into());
        }
        if !(6_000..=300_000).contains(&self.session_timeout_ms) {
            return fail("session_timeout_ms", "must be 6000 to 300000 ms".into());
        }
        if !(1..=10_000).contains(&self.alertmanager_batch) {
            return fail("alertmanager_batch", "must be 1 to 10000".into());
        }
        if !(1..=300).contains(&self.alertmanager_timeout_s) {
            return fail("alertmanager_timeout_s", "must be 1 to 300 seconds".into());
        }
        Ok(())
    }

    /// The consumer group.
    pub fn group(&self) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("{}alert-dispatcher", self.kafka.topic_prefix))
    }

    /// Reads the webhooks file (each endpoint checked, its secret loaded) and the inventory.
    pub fn load_files(&self) -> Result<(Vec<Endpoint>, BTreeMap<String, String>), ConfigError> {
        let webhooks = match &self.webhooks_file {
            None => Vec::new(),
            Some(path) => {
                let bad = |m: String| ConfigError::of::<Self>("webhooks_file", m);
                let text = std::fs::read_to_string(path)
                    .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
                let file: WebhooksFile = serde_json::from_str(&text)
                    .map_err(|e| bad(format!("{}: {e}", path.display())))?;
                let mut names = std::collections::BTreeSet::new();
                let mut out = Vec::new();
                for mut e in file.webhooks {
                    e.validate().map_err(bad)?;
                    if !names.insert(e.name.clone()) {
                        return Err(bad(format!("webhook name {:?} appears twice", e.name)));
                    }
                    e.load_secret().map_err(bad)?;
                    out.push(e);
                }
                out
            }
        };
        let inventory = match &self.inventory_file {
            None => BTreeMap::new(),
            Some(path) => {
                let bad = |m: String| ConfigError::of::<Self>("inventory_file", m);
                let text = std::fs::read_to_string(path)
                    .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
                serde_json::from_str(&text).map_err(|e| {
                    bad(format!(
                        "{}: expected a JSON object of serial → site: {e}",
                        path.display()
                    ))
                })?
            }
        };
        Ok((webhooks, inventory))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> DispatcherConfig {
        DispatcherConfig::try_parse_from(
            std::iter::once("alert-dispatcher").chain(args.iter().copied()),
        )
        .unwrap()
    }

    #[test]
    fn a_receiver_is_required_and_bad_settings_are_named() {
        let e = cfg(&[]).validate().unwrap_err();
        assert!(e.setting.contains("--alertmanager-url"), "{e:?}");
        assert!(cfg(&["--alertmanager-url", "http://127.0.0.1:9093"])
            .validate()
            .is_ok());
        let e = cfg(&["--alertmanager-url", "am:9093"])
            .validate()
            .unwrap_err();
        assert!(e.message.contains("am:9093"));
        let e = cfg(&[
            "--alertmanager-url",
            "http://am:9093",
            "--resend-interval-s",
            "1",
        ])
        .validate()
        .unwrap_err();
        assert!(e.setting.contains("--resend-interval-s"));
    }

    #[test]
    fn files_are_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("dispatcher-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
        let hooks = dir.join("hooks.json");
        std::fs::write(
            &hooks,
            format!(
                r#"{{"webhooks":[{{"name":"fse","url":"https://h.example/x","secret_file":"{}"}}]}}"#,
                secret.display()
            ),
        )
        .unwrap();
        let inv = dir.join("inventory.json");
        std::fs::write(&inv, r#"{"A00123":"emea-1"}"#).unwrap();
        let c = cfg(&[
            "--webhooks-file",
            hooks.to_str().unwrap(),
            "--inventory-file",
            inv.to_str().unwrap(),
        ]);
        c.validate().unwrap();
        let (w, i) = c.load_files().unwrap();
        assert_eq!((w.len(), i["A00123"].as_str()), (1, "emea-1"));
        assert_eq!(w[0].secret.expose().len(), 32);
        std::fs::write(&secret, "short\n").unwrap();
        let e = c.load_files().unwrap_err();
        assert!(
            e.setting.contains("--webhooks-file") && e.message.contains("32"),
            "{e:?}"
        );
        std::fs::write(&inv, r#"["A00123"]"#).unwrap();
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
        assert!(c
            .load_files()
            .unwrap_err()
            .setting
            .contains("--inventory-file"));
    }
}
