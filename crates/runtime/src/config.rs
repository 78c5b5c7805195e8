//! Service configuration from flags and environment, validated before any I/O.
//!
//! Every field has a flag and an environment variable and states its default once, in its clap
//! attribute; `validate()` is pure and runs before a socket is opened, so a bad setting stops the
//! service at start-up with a message naming it (the name is derived from the clap definition).
//! Secrets are wrapped in [`Secret`], whose `Debug` never prints them.

use clap::{Args, ValueEnum};
use rdkafka::ClientConfig;
use seqmon_model::topics::TopicRole;
pub use seqmon_processor::config::Secret;
use seqmon_processor::ConfigError;

/// Why a librdkafka setting would weaken TLS (certificate or host-name verification off), if it
/// would: such settings are refused wherever they come from.
fn weakens_tls(key: &str, value: &str) -> Option<String> {
    let (k, v) = (key.trim(), value.trim().to_ascii_lowercase());
    match k {
        "enable.ssl.certificate.verification" if v == "false" || v == "0" => {
            Some(format!("{k}={v} turns certificate verification off"))
        }
        "ssl.endpoint.identification.algorithm" if v == "none" || v.is_empty() => {
            Some(format!("{k}={v} turns host-name verification off"))
        }
        _ => None,
    }
}

/// Kafka security protocol. Kafka's own spellings (`SASL_SSL`, `SSL`, ...) are accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SecurityProtocol {
    /// No TLS, no authentication (local tests only).
    #[value(alias = "PLAINTEXT")]
    Plaintext,
    /// TLS, optionally with a client certificate.
    #[value(alias = "SSL")]
    Ssl,
    /// SASL authentication without TLS.
    #[value(alias = "SASL_PLAINTEXT", alias = "sasl_plaintext")]
    SaslPlaintext,
    /// SASL authentication over TLS.
    #[value(alias = "SASL_SSL", alias = "sasl_ssl")]
    SaslSsl,
}

impl SecurityProtocol {
    fn as_librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }
    fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
    fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// Connection settings shared by every Kafka client of the project.
#[derive(Debug, Clone, Args)]
pub struct KafkaConnection {
    /// Kafka bootstrap servers, host:port[,host:port...].
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:19092"
    )]
    pub bootstrap_servers: String,
    /// Prefix of every topic name, e.g. `prod.` (empty for none).
    #[arg(long, env = "SEQMON_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    /// Security protocol.
    #[arg(
        long,
        env = "KAFKA_SECURITY_PROTOCOL",
        value_enum,
        default_value = "plaintext"
    )]
    pub security_protocol: SecurityProtocol,
    /// CA certificate file (PEM) to verify brokers with.
    #[arg(long, env = "KAFKA_SSL_CA_LOCATION")]
    pub ssl_ca_location: Option<String>,
    /// Client certificate file (PEM), for mutual TLS.
    #[arg(long, env = "KAFKA_SSL_CERTIFICATE_LOCATION")]
    pub ssl_certificate_location: Option<String>,
    /// Client private key file (PEM), for mutual TLS.
    #[arg(long, env = "KAFKA_SSL_KEY_LOCATION")]
    pub ssl_key_location: Option<String>,
    /// Password of the client private key.
    #[arg(long, env = "KAFKA_SSL_KEY_PASSWORD", hide_env_values = true)]
    pub ssl_key_password: Option<Secret>,
    /// SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(long, env = "KAFKA_SASL_MECHANISM")]
    pub sasl_mechanism: Option<String>,
    /// SASL user name.
    #[arg(long, env = "KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,
    /// SASL password.
    #[arg(long, env = "KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub sasl_password: Option<Secret>,
    /// Extra librdkafka settings, key=value, comma-separated; applied last. Values are never
    /// printed; settings that turn TLS verification off are refused.
    #[arg(
        long = "kafka-option",
        env = "KAFKA_OPTIONS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub kafka_options: Vec<Secret>,
    /// A librdkafka client properties file (`key=value` lines, `#` comments), e.g. one of
    /// `.cache/kafka/secure/<principal>.properties` written by the secure test broker or a
    /// mounted Secret. Applied after the flags above and before --kafka-option; its values
    /// (passwords included) are never printed.
    #[arg(long, env = "KAFKA_PROPERTIES_FILE")]
    pub properties_file: Option<std::path::PathBuf>,
    /// The properties read from --properties-file by [`KafkaConnection::load_files`].
    #[arg(skip)]
    pub file_properties: Vec<(String, Secret)>,
    /// Folder of AES-256 keys (`<key id>.key`, 64 hex digits each, e.g. a mounted Secret) that
    /// seal and open records on the sensitive topics (encryption at rest). Unset: records on
    /// the sensitive topics are not sealed (local tests only).
    #[arg(long, env = "SEQMON_ENCRYPTION_KEYS_DIR")]
    pub encryption_keys_dir: Option<std::path::PathBuf>,
    /// Id of the key that seals new records (a file `<id>.key` in --encryption-keys-dir); the
    /// other keys still open what they sealed (rotation).
    #[arg(long, env = "SEQMON_ENCRYPTION_ACTIVE_KEY")]
    pub encryption_active_key: Option<String>,
    /// The key ring read by [`KafkaConnection::load_files`].
    #[arg(skip)]
    pub key_ring: Option<crate::envelope::KeyRing>,
    /// How long the start-up connection check waits for the cluster, milliseconds; a wrong CA,
    /// an expired certificate or bad credentials stop the program then, with the reason.
    #[arg(long, env = "KAFKA_CONNECT_TIMEOUT_MS", default_value_t = 30_000)]
    pub connect_timeout_ms: u64,
    /// Schema registry with the Confluent-compatible REST API, `http://host:port[/path]` (for
    /// Apicurio: `.../apis/ccompat/v7`). When set, the registry ids of the catalogue's schemas
    /// are loaded at start-up, so records in the Confluent framing (magic byte 0 and a schema
    /// id) are read like the single-object encoding; unset, such records are dead letters
    /// UNKNOWN_SCHEMA. See docs/schema-registry.md.
    #[arg(long, env = "SEQMON_SCHEMA_REGISTRY_URL")]
    pub schema_registry_url: Option<String>,
    /// User name for HTTP basic authentication to the schema registry.
    #[arg(long, env = "SEQMON_SCHEMA_REGISTRY_USERNAME")]
    pub schema_registry_username: Option<String>,
    /// Password for HTTP basic authentication to the schema registry.
    #[arg(long, env = "SEQMON_SCHEMA_REGISTRY_PASSWORD", hide_env_values = true)]
    pub schema_registry_password: Option<Secret>,
    /// The registry ids read by [`KafkaConnection::load_files`] from --schema-registry-url.
    #[arg(skip)]
    pub schema_registry: Option<std::sync::Arc<crate::schema_registry::LoadedRegistry>>,
}

impl KafkaConnection {
    /// Checks the settings without touching the network or the file system.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |id: &str, message: String| Err(ConfigError::of::<Self>(id, message));
        if self.bootstrap_servers.trim().is_empty() {
            return bad("bootstrap_servers", "is empty".into());
        }
        for server in self.bootstrap_servers.split(',') {
            let server = server.trim();
            let port = server
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            match port {
                Some((host, Ok(p))) if !host.is_empty() && p > 0 => {}
                _ => return bad("bootstrap_servers", format!("{server:?} is not host:port")),
            }
        }
        if self
            .topic_prefix
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || "._-".contains(c)))
        {
            return bad(
                "topic_prefix",
                "may hold only letters, digits, '.', '_' and '-'".into(),
            );
        }
        let tls_files = [
            &self.ssl_ca_location,
            &self.ssl_certificate_location,
            &self.ssl_key_location,
        ];
        if !self.security_protocol.uses_tls() && tls_files.iter().any(|f| f.is_some()) {
            return bad(
                "security_protocol",
                "TLS files are set but the protocol does not use TLS (use ssl or sasl_ssl)".into(),
            );
        }
        if self.ssl_certificate_location.is_some() != self.ssl_key_location.is_some() {
            return bad(
                "ssl_key_location",
                "a client certificate and its key go together".into(),
            );
        }
        if self.security_protocol.uses_sasl() {
            match self.sasl_mechanism.as_deref() {
                Some("PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") => {}
                other => {
                    return bad(
                        "sasl_mechanism",
                        format!("{other:?} is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
                    )
                }
            }
            if self.sasl_username.as_deref().is_none_or(str::is_empty)
                || self.sasl_password.is_none()
            {
                return bad(
                    "sasl_username",
                    "SASL needs a user name and a password".into(),
                );
            }
        } else if self.sasl_mechanism.is_some() {
            return bad(
                "security_protocol",
                "a SASL mechanism is set but the protocol does not use SASL".into(),
            );
        }
        for opt in &self.kafka_options {
            let Some((k, v)) = opt.expose().split_once('=') else {
                return bad("kafka_options", "an entry is not key=value".into());
            };
            if let Some(why) = weakens_tls(k, v) {
                return bad("kafka_options", why);
            }
        }
        if !(500..=600_000).contains(&self.connect_timeout_ms) {
            return bad("connect_timeout_ms", "must be 500..=600000".into());
        }
        if self.encryption_keys_dir.is_some() != self.encryption_active_key.is_some() {
            return bad(
                "encryption_active_key",
                "encryption needs both a keys folder and the id of the active key".into(),
            );
        }
        if let Some(url) = &self.schema_registry_url {
            if let Err(e) = self.registry_client(url) {
                return bad("schema_registry_url", e.to_string());
            }
        }
        if self.schema_registry_password.is_some() && self.schema_registry_username.is_none() {
            return bad(
                "schema_registry_username",
                "a schema registry password is set without a user name".into(),
            );
        }
        if self.schema_registry_username.is_some() && self.schema_registry_url.is_none() {
            return bad(
                "schema_registry_url",
                "schema registry credentials are set without a registry URL".into(),
            );
        }
        Ok(())
    }

    /// A client of the schema registry at `url` with these settings' credentials.
    pub fn registry_client(
        &self,
        url: &str,
    ) -> Result<crate::schema_registry::RegistryClient, crate::schema_registry::RegistryError> {
        let password = Secret::default();
        let user = self.schema_registry_username.as_deref().map(|name| {
            (
                name,
                self.schema_registry_password.as_ref().unwrap_or(&password),
            )
        });
        crate::schema_registry::RegistryClient::new(url, user, self.connect_timeout())
    }

    /// Loads the registry ids of the catalogue's schemas from --schema-registry-url (once, at
    /// start-up) and installs them for every decoder of the process.
    fn load_schema_registry(&mut self) -> Result<(), ConfigError> {
        let Some(url) = self.schema_registry_url.clone() else {
            return Ok(());
        };
        let bad = |message: String| ConfigError::of::<Self>("schema_registry_url", message);
        let client = self.registry_client(&url).map_err(|e| bad(e.to_string()))?;
        let prefix = self.topic_prefix.clone();
        let loaded = client
            .run(crate::schema_registry::load(&client, &prefix))
            .map_err(|e| bad(format!("cannot load the schema ids: {e}")))?;
        seqmon_model::schema_store::install_registry_ids(loaded.ids.clone()).map_err(|_| {
            bad("another registry's ids are already installed in this process".into())
        })?;
        tracing::info!(
            registry = %loaded.url,
            ids = loaded.ids.len(),
            subjects = loaded.subjects.len(),
            foreign = loaded.foreign,
            "schema registry ids loaded"
        );
        self.schema_registry = Some(std::sync::Arc::new(loaded));
        Ok(())
    }

    /// Reads the files the settings name (once, at start-up, before any client is created):
    /// --properties-file and the encryption key ring; and, with --schema-registry-url, the
    /// registry ids of the catalogue's schemas. A missing or malformed file, or a registry that
    /// cannot be read, is a configuration error naming the setting (and the line), never the
    /// secret.
    pub fn load_files(&mut self) -> Result<(), ConfigError> {
        self.load_properties_file()?;
        self.load_schema_registry()?;
        if let (Some(dir), Some(active)) = (&self.encryption_keys_dir, &self.encryption_active_key)
        {
            self.key_ring = Some(
                crate::envelope::KeyRing::from_dir(dir, active)
                    .map_err(|e| ConfigError::of::<Self>("encryption_keys_dir", e.to_string()))?,
            );
        }
        Ok(())
    }

    fn load_properties_file(&mut self) -> Result<(), ConfigError> {
        let Some(path) = &self.properties_file else {
            return Ok(());
        };
        let bad = |message: String| ConfigError::of::<Self>("properties_file", message);
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        self.file_properties.clear();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(bad(format!(
                    "{} line {}: not key=value",
                    path.display(),
                    i + 1
                )));
            };
            if let Some(why) = weakens_tls(k, v) {
                return Err(bad(format!("{} line {}: {why}", path.display(), i + 1)));
            }
            self.file_properties
                .push((k.trim().to_string(), v.trim().parse().unwrap_or_default()));
        }
        Ok(())
    }

    /// The start-up connection check's timeout.
    pub fn connect_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.connect_timeout_ms)
    }

    /// Full topic name of a catalogue role.
    pub fn topic(&self, role: TopicRole) -> String {
        role.topic(&self.topic_prefix)
    }

    /// A librdkafka configuration with connection and security settings applied.
    pub fn client_config(&self) -> ClientConfig {
        self.config_with(&[])
    }

    /// [`client_config`](Self::client_config) for a producer: records are partitioned as
    /// Kafka's Java client does (murmur2 of the key; keyless records spread at random), not by
    /// librdkafka's default (CRC32), so a Java producer feeding the same topic sends an
    /// instrument to the same partition and co-partitioned topics stay aligned. `--kafka-option
    /// partitioner=…` still overrides it.
    pub fn producer_config(&self) -> ClientConfig {
        self.config_with(&[("partitioner", JAVA_COMPATIBLE_PARTITIONER)])
    }

    /// The connection's settings, then `defaults`, then the properties file and options (which
    /// may override both).
    fn config_with(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        c.set("security.protocol", self.security_protocol.as_librdkafka());
        let optional = [
            ("ssl.ca.location", self.ssl_ca_location.as_deref()),
            (
                "ssl.certificate.location",
                self.ssl_certificate_location.as_deref(),
            ),
            ("ssl.key.location", self.ssl_key_location.as_deref()),
            (
                "ssl.key.password",
                self.ssl_key_password.as_ref().map(Secret::expose),
            ),
            ("sasl.mechanisms", self.sasl_mechanism.as_deref()),
            ("sasl.username", self.sasl_username.as_deref()),
            (
                "sasl.password",
                self.sasl_password.as_ref().map(Secret::expose),
            ),
        ];
        for (k, v) in optional {
            if let Some(v) = v {
                c.set(k, v);
            }
        }
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in &self.file_properties {
            c.set(k, v.expose());
        }
        for opt in &self.kafka_options {
            if let Some((k, v)) = opt.expose().split_once('=') {
                c.set(k.trim(), v.trim());
            }
        }
        c
    }
}

/// librdkafka's name for the partitioner of Kafka's Java client (`murmur2` of the key, positive,
/// modulo the partition count; random for a record without a key).
pub const JAVA_COMPATIBLE_PARTITIONER: &str = "murmur2_random";

/// Default of `--max-input-record-bytes`: 320 KiB (the validator passes at most 256 KiB).
pub const DEFAULT_MAX_INPUT_RECORD_BYTES: usize = 327_680;

/// Settings of the exactly-once Kafka runner.
#[derive(Debug, Clone, Args)]
pub struct RunnerConfig {
    #[command(flatten)]
    pub kafka: KafkaConnection,
    /// Consumer group id (default: the topic prefix and the stage name, which the stage's
    /// group ACL covers; see `seqmon-admin acls`).
    #[arg(long, env = "SEQMON_GROUP_ID")]
    pub group_id: Option<String>,
    /// Transactional id of this instance; keep it stable across restarts of the same instance
    /// (default: topic prefix, stage name and host name) so a restart fences its predecessor.
    /// It must start with the topic prefix and the stage name for the stage's ACLs to allow it.
    #[arg(long, env = "SEQMON_TRANSACTIONAL_ID")]
    pub transactional_id: Option<String>,
    /// Most input records per transaction (bounds in-flight work).
    #[arg(long, env = "SEQMON_BATCH_MAX_RECORDS", default_value_t = 5000)]
    pub batch_max_records: usize,
    /// Longest wait to fill a batch, milliseconds.
    #[arg(long, env = "SEQMON_BATCH_MAX_WAIT_MS", default_value_t = 100)]
    pub batch_max_wait_ms: u64,
    /// Least time between the starts of two transactions, milliseconds. A batch closes as soon
    /// as the records already fetched are taken, but not before this: 0 commits as often as
    /// transactions complete (lowest latency, most broker work per record); more bounds the
    /// transactions per second the broker must coordinate. Either way batches grow with load
    /// instead of every record waiting out --batch-max-wait-ms.
    #[arg(long, env = "SEQMON_BATCH_LINGER_MS", default_value_t = 0)]
    pub batch_linger_ms: u64,
    /// Longest time the broker may hold a fetch that has no data yet, milliseconds
    /// (librdkafka's fetch.wait.max.ms). Bounds the delay a committed record waits to be fetched.
    #[arg(long, env = "SEQMON_FETCH_WAIT_MAX_MS", default_value_t = 10)]
    pub fetch_wait_max_ms: u64,
    /// Transaction timeout, milliseconds (the broker caps it at transaction.max.timeout.ms).
    #[arg(long, env = "SEQMON_TRANSACTION_TIMEOUT_MS", default_value_t = 60_000)]
    pub transaction_timeout_ms: u64,
    /// Consumer group session timeout, milliseconds: how long the group waits for a silent
    /// instance before giving its partitions to another.
    #[arg(long, env = "SEQMON_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub session_timeout_ms: u64,
    /// Static group membership: the instance joins as its transactional id
    /// (`group.instance.id`), so a restarted instance takes its partitions back at once, with no
    /// rebalance of the others; an instance that stops for good frees them after the session
    /// timeout (static members do not leave the group on shutdown).
    #[arg(long, env = "SEQMON_STATIC_MEMBERSHIP", default_value_t = true, action = clap::ArgAction::Set)]
    pub static_membership: bool,
    /// Consumer group heartbeat interval, milliseconds (well below the session timeout).
    #[arg(long, env = "SEQMON_HEARTBEAT_INTERVAL_MS", default_value_t = 1_000)]
    pub heartbeat_interval_ms: u64,
    /// Longest time to rebuild state from the changelog after an assignment, milliseconds;
    /// past it the restore counts as failed (the partitions wait, it is tried again with
    /// backoff) rather than run on partial state.
    #[arg(long, env = "SEQMON_RESTORE_TIMEOUT_MS", default_value_t = 120_000)]
    pub restore_timeout_ms: u64,
    /// Transactions aborted in a row after which the stage stops with an error instead of
    /// redoing the same batch forever (an error retrying cannot fix, reported as one, and a
    /// restart a supervisor shows). Each redo restores state, so a burst of broker trouble
    /// stays well below it.
    #[arg(long, env = "SEQMON_MAX_CONSECUTIVE_ABORTS", default_value_t = 20)]
    pub max_consecutive_aborts: u32,
    /// Largest input record a stage takes, bytes; a larger one is a dead letter TOO_LARGE
    /// before it is decoded. The validator lets at most 256 KiB through (its
    /// --max-record-bytes), and nothing a stage writes is larger, so anything bigger on a
    /// topic was not written by the pipeline: bounded here, it cannot grow state or outputs.
    #[arg(long, env = "SEQMON_MAX_INPUT_RECORD_BYTES", default_value_t = DEFAULT_MAX_INPUT_RECORD_BYTES)]
    pub max_input_record_bytes: usize,
    /// Timeout of single broker requests (transaction steps, committed offsets, seeks,
    /// watermarks), milliseconds; capped by the transaction timeout.
    #[arg(long, env = "SEQMON_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// Address of the Prometheus /metrics, /healthz and /readyz endpoint; empty to disable.
    #[arg(long, env = "SEQMON_METRICS_ADDR", default_value = "0.0.0.0:9100")]
    pub metrics_addr: String,
    /// Most records of consumer lag (summed over the owned input partitions) at which /readyz
    /// still answers 200: well above the lag of a stage keeping up (a batch or two), well below
    /// a large fleet's minute of input.
    #[arg(long, env = "SEQMON_READY_MAX_LAG_RECORDS", default_value_t = 50_000)]
    pub ready_max_lag_records: i64,
    /// Output topics, by role (`features`, `anomalies`, `alerts`, `sanitized`, ...;
    /// comma-separated), that this stage writes in the Confluent framing (magic byte 0 and the
    /// schema-registry id) instead of the single-object encoding, for Kafka Connect, ksqlDB and
    /// kcat. Needs --schema-registry-url with every schema version of those topics published
    /// (`seqmon-admin schemas publish`). Roles the stage does not write are ignored; sensitive
    /// topics and state changelogs are refused.
    #[arg(long, env = "SEQMON_CONFLUENT_FRAMING_TOPICS", value_delimiter = ',')]
    pub confluent_framing_topics: Vec<TopicRole>,
}

impl RunnerConfig {
    /// Checks the settings without touching the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        let bad = |id: &str, message: &str| Err(ConfigError::of::<Self>(id, message));
        if self.batch_max_records == 0 || self.batch_max_records > 100_000 {
            return bad("batch_max_records", "must be 1..=100000");
        }
        if self.batch_linger_ms > self.batch_max_wait_ms {
            return bad("batch_linger_ms", "must not exceed --batch-max-wait-ms");
        }
        if self.fetch_wait_max_ms == 0 || self.fetch_wait_max_ms > 10_000 {
            return bad("fetch_wait_max_ms", "must be 1..=10000");
        }
        if self.batch_max_wait_ms == 0 || self.batch_max_wait_ms > 60_000 {
            return bad("batch_max_wait_ms", "must be 1..=60000");
        }
        if !(1_000..=900_000).contains(&self.transaction_timeout_ms) {
            return bad("transaction_timeout_ms", "must be 1000..=900000");
        }
        // Kafka's group coordinator accepts 6 s..5 min by default.
        if !(6_000..=300_000).contains(&self.session_timeout_ms) {
            return bad("session_timeout_ms", "must be 6000..=300000");
        }
        if self.heartbeat_interval_ms == 0
            || self.heartbeat_interval_ms * 3 > self.session_timeout_ms
        {
            return bad(
                "heartbeat_interval_ms",
                "must be positive and at most a third of --session-timeout-ms",
            );
        }
        if !(1024..=100_000_000).contains(&self.max_input_record_bytes) {
            return bad("max_input_record_bytes", "must be 1024..=100000000");
        }
        if self.max_consecutive_aborts == 0 {
            return bad("max_consecutive_aborts", "must be positive");
        }
        if !(1_000..=3_600_000).contains(&self.restore_timeout_ms) {
            return bad("restore_timeout_ms", "must be 1000..=3600000");
        }
        if !(100..=300_000).contains(&self.request_timeout_ms) {
            return bad("request_timeout_ms", "must be 100..=300000");
        }
        if self.ready_max_lag_records < 0 {
            return bad("ready_max_lag_records", "must not be negative");
        }
        if self.group_id.as_deref().is_some_and(str::is_empty) {
            return bad("group_id", "is empty");
        }
        if !self.metrics_addr.is_empty()
            && self.metrics_addr.parse::<std::net::SocketAddr>().is_err()
        {
            return bad("metrics_addr", "is not ip:port");
        }
        for role in &self.confluent_framing_topics {
            if let Some(why) = crate::schema_registry::not_offered_reason(*role) {
                return Err(ConfigError::of::<Self>(
                    "confluent_framing_topics",
                    format!("{role} {why}: not offered in the Confluent framing"),
                ));
            }
        }
        if !self.confluent_framing_topics.is_empty() && self.kafka.schema_registry_url.is_none() {
            return bad(
                "confluent_framing_topics",
                "needs --schema-registry-url (the framing carries the registry's schema ids)",
            );
        }
        Ok(())
    }

    /// Per output topic written in the Confluent framing: our schema version → registry id.
    /// Needs the registry loaded ([`KafkaConnection::load_files`]); a version of such a topic's
    /// record type that the registry does not hold is a configuration error naming
    /// --confluent-framing-topics.
    pub fn confluent_ids(
        &self,
    ) -> Result<
        std::collections::HashMap<TopicRole, std::collections::HashMap<u32, u32>>,
        ConfigError,
    > {
        let mut out = std::collections::HashMap::new();
        if self.confluent_framing_topics.is_empty() {
            return Ok(out);
        }
        let bad = |message: String| ConfigError::of::<Self>("confluent_framing_topics", message);
        let loaded = self
            .kafka
            .schema_registry
            .as_ref()
            .ok_or_else(|| bad("the schema registry's ids are not loaded".into()))?;
        for role in &self.confluent_framing_topics {
            let ids = crate::schema_registry::writer_ids(loaded, *role)
                .map_err(|why| bad(format!("{role}: {why}")))?;
            out.insert(*role, ids);
        }
        Ok(out)
    }

    /// The consumer group of `stage`: --group-id, else the topic prefix and the stage name (the
    /// restore consumer uses this with `-restore`; both fall under the stage's group ACL).
    pub fn group_id(&self, stage: &str) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("{}{stage}", self.kafka.topic_prefix))
    }

    /// Timeout of one broker request: the request timeout, within the transaction timeout.
    pub fn request_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.request_timeout_ms.min(self.transaction_timeout_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        runner: RunnerConfig,
    }

    fn parse(args: &[&str]) -> RunnerConfig {
        let mut all = vec!["x"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("parses").runner
    }

    #[test]
    fn defaults_are_valid() {
        parse(&[]).validate().expect("valid");
    }

    #[test]
    fn producers_partition_as_the_java_client_unless_told_otherwise() {
        let cfg = parse(&[]);
        assert_eq!(
            cfg.kafka.producer_config().get("partitioner"),
            Some(JAVA_COMPATIBLE_PARTITIONER)
        );
        // Consumers get no producer property (librdkafka would warn about it).
        assert_eq!(cfg.kafka.client_config().get("partitioner"), None);
        let told = parse(&["--kafka-option", "partitioner=consistent_random"]);
        assert_eq!(
            told.kafka.producer_config().get("partitioner"),
            Some("consistent_random")
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--bootstrap-servers", "localhost"],
                "KAFKA_BOOTSTRAP_SERVERS",
            ),
            (&["--batch-max-records", "0"], "SEQMON_BATCH_MAX_RECORDS"),
            (&["--ssl-ca-location", "/ca.pem"], "KAFKA_SECURITY_PROTOCOL"),
            (
                &[
                    "--security-protocol",
                    "sasl-ssl",
                    "--sasl-mechanism",
                    "PLAIN",
                ],
                "KAFKA_SASL_USERNAME",
            ),
            (
                &[
                    "--security-protocol",
                    "ssl",
                    "--ssl-certificate-location",
                    "/c.pem",
                ],
                "KAFKA_SSL_KEY_LOCATION",
            ),
            (&["--kafka-option", "acks"], "KAFKA_OPTIONS"),
            (
                &[
                    "--kafka-option",
                    "enable.ssl.certificate.verification=false",
                ],
                "KAFKA_OPTIONS",
            ),
            (&["--metrics-addr", "nowhere"], "SEQMON_METRICS_ADDR"),
            (&["--topic-prefix", "a b"], "SEQMON_TOPIC_PREFIX"),
            (
                &["--session-timeout-ms", "100"],
                "SEQMON_SESSION_TIMEOUT_MS",
            ),
            (
                &["--heartbeat-interval-ms", "9000"],
                "--heartbeat-interval-ms / SEQMON_HEARTBEAT_INTERVAL_MS",
            ),
            (&["--restore-timeout-ms", "0"], "SEQMON_RESTORE_TIMEOUT_MS"),
        ];
        for (args, setting) in cases {
            let err = parse(args).validate().expect_err("invalid").to_string();
            assert!(err.contains(setting), "{args:?}: {err}");
        }
    }

    #[test]
    fn a_properties_file_is_applied_and_its_secrets_never_print() {
        let dir = std::env::temp_dir().join(format!("seqmon-props-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("validator.properties");
        std::fs::write(
            &path,
            "# written by the secure test broker\nsecurity.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\nsasl.username=validator\nsasl.password=s3cr3t-value\n",
        )
        .unwrap();
        let mut c = parse(&["--properties-file", path.to_str().unwrap()]);
        c.validate().unwrap();
        c.kafka.load_files().unwrap();
        let cc = c.kafka.client_config();
        assert_eq!(cc.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(cc.get("sasl.password"), Some("s3cr3t-value"));
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
        std::fs::write(&path, "not a property\n").unwrap();
        let err = c.kafka.load_files().unwrap_err().to_string();
        assert!(
            err.contains("KAFKA_PROPERTIES_FILE") && err.contains("line 1"),
            "{err}"
        );
        let mut missing = parse(&["--properties-file", "/nonexistent/x.properties"]);
        assert!(missing.kafka.load_files().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kafka_spellings_of_the_security_protocol_are_accepted() {
        for (spelling, protocol) in [
            ("SASL_SSL", SecurityProtocol::SaslSsl),
            ("sasl_ssl", SecurityProtocol::SaslSsl),
            ("sasl-ssl", SecurityProtocol::SaslSsl),
            ("SSL", SecurityProtocol::Ssl),
            ("SASL_PLAINTEXT", SecurityProtocol::SaslPlaintext),
            ("PLAINTEXT", SecurityProtocol::Plaintext),
        ] {
            let c = parse(&["--security-protocol", spelling]);
            assert_eq!(c.kafka.security_protocol, protocol, "{spelling}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let c = parse(&[
            "--security-protocol",
            "sasl-ssl",
            "--sasl-mechanism",
            "PLAIN",
            "--sasl-username",
            "u",
            "--sasl-password",
            "hunter2",
        ]);
        c.validate().expect("valid");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(
            c.kafka.client_config().get("sasl.password"),
            Some("hunter2")
        );
    }
}
