//! A client of the Confluent-compatible schema-registry REST API (Confluent Schema Registry,
//! Apicurio's `/apis/ccompat/v7`, Karapace), and what the pipeline does with it: publish every
//! schema version of the catalogue's topics, and load the registry ids back at start-up.
//!
//! Subjects follow the TopicNameStrategy: `<topic>-value`, the topic under the deployment prefix.
//! Only the topics [`offered`] are published or loaded: the analysis-side topics the stages
//! write. The sensitive topics carry sealed ciphertext (nothing an Avro reader can use) and the
//! state changelogs are the stages' own, so neither is offered.
//!
//! Guarantees. [`publish`] is idempotent: a version already under its subject is looked up, not
//! registered again; versions are registered oldest first, after the subject's compatibility is
//! set to BACKWARD (where the registry allows it: a refusal is reported, not fatal), so the
//! registry checks each new version the way `schemas/RELEASED` does. [`load`] reads every version
//! of every offered subject and matches each schema to the compiled-in schema store by
//! fingerprint; a schema that is none of ours is counted and skipped (its records then fail to
//! decode as `UNKNOWN_SCHEMA`, never misread).
//!
//! On failure. Every request has a timeout; an unreachable registry, an HTTP error status or an
//! answer that is not the API's JSON is a [`RegistryError`] naming the request (never a
//! password). Everything here runs at start-up or from `seqmon-admin`, never on the decode path.
//!
//! HTTP: hyper's HTTP/1 client connection over a tokio TCP stream, one connection per request,
//! on a current-thread runtime of its own in a scoped thread, so callers need no runtime (and may
//! be inside one). Plain `http://` only: no TLS client is compiled in; reach a TLS registry
//! through a local proxy (see docs/schema-registry.md).

use std::collections::HashMap;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{header, Method, Request, StatusCode};
use seqmon_model::schema_store::{store, RegistryIdError, RegistryIds, SCHEMA_FILES};
use seqmon_model::topics::{PrivacySide, TopicRole};

use crate::config::Secret;

/// The media type of the API's requests and answers.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// The compatibility level set on every subject this project publishes.
pub const COMPATIBILITY: &str = "BACKWARD";
/// Largest answer body read, bytes (a subject's schema with its JSON escaping is ~30 KB).
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Why a registry request failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The URL is not `http://host:port[/path]`.
    #[error("schema registry URL {0:?} is not http://host[:port][/path]")]
    BadUrl(String),
    /// An `https://` URL: no TLS client is compiled in.
    #[error("schema registry URL {0:?}: https is not supported (no TLS client is compiled in; see docs/schema-registry.md)")]
    HttpsUnsupported(String),
    /// No TCP connection, or the HTTP exchange broke off.
    #[error("{method} {url}: {message}")]
    Connection {
        method: Method,
        url: String,
        message: String,
    },
    /// No complete answer within the timeout.
    #[error("{method} {url}: no answer within {timeout:?}")]
    Timeout {
        method: Method,
        url: String,
        timeout: Duration,
    },
    /// The registry answered with an error status.
    #[error("{method} {url}: HTTP {status}{}: {message}", error_code.map(|c| format!(" (error_code {c})")).unwrap_or_default())]
    Status {
        method: Method,
        url: String,
        status: u16,
        error_code: Option<i64>,
        message: String,
    },
    /// A 2xx answer that is not the JSON the API specifies.
    #[error("{method} {url}: unexpected answer: {message}")]
    BadAnswer {
        method: Method,
        url: String,
        message: String,
    },
    /// The registry holds, under one id, a schema that conflicts with another answer.
    #[error(transparent)]
    Schema(#[from] RegistryIdError),
}

impl RegistryError {
    /// Whether the registry said "no such subject or version" (Confluent error codes 40401,
    /// 40402, 40403, or a bare 404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::Status { status: 404, .. })
    }
}

/// A schema-registry endpoint.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    host: String,
    port: u16,
    /// Path prefix without the trailing slash, e.g. `/apis/ccompat/v7` (empty for none).
    base_path: String,
    /// The `Authorization` header value for HTTP basic authentication.
    authorization: Option<Secret>,
    timeout: Duration,
}

/// One schema version under a subject, as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The subject's version number (the registry's, not ours).
    pub version: u32,
    /// The registry-wide schema id (what the Confluent framing carries).
    pub id: u32,
    /// The schema text as the registry returns it.
    pub schema: String,
}

impl RegistryClient {
    /// A client of the registry at `url` (`http://host[:port][/path]`), with HTTP basic
    /// authentication when `user` is given.
    pub fn new(
        url: &str,
        user: Option<(&str, &Secret)>,
        timeout: Duration,
    ) -> Result<Self, RegistryError> {
        let (host, port, base_path) = parse_url(url)?;
        let authorization = user.map(|(name, password)| {
            Secret::new(format!(
                "Basic {}",
                base64(format!("{name}:{}", password.expose()).as_bytes())
            ))
        });
        Ok(RegistryClient {
            host,
            port,
            base_path,
            authorization,
            timeout,
        })
    }

    /// The base URL, for messages (it never holds credentials).
    pub fn url(&self) -> String {
        format!("http://{}:{}{}", self.host, self.port, self.base_path)
    }

    /// Runs `work` on a current-thread runtime of its own, in a scoped thread so that it works
    /// whether or not the caller is inside a runtime.
    pub fn run<T: Send>(
        &self,
        work: impl std::future::Future<Output = Result<T, RegistryError>> + Send,
    ) -> Result<T, RegistryError> {
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| RegistryError::Connection {
                        method: Method::GET,
                        url: self.url(),
                        message: format!("cannot start an I/O runtime: {e}"),
                    })?;
                rt.block_on(work)
            })
            .join()
            .unwrap_or_else(|_| {
                Err(RegistryError::Connection {
                    method: Method::GET,
                    url: self.url(),
                    message: "the registry client's thread panicked".into(),
                })
            })
        })
    }

    /// One request; the answer's JSON on a 2xx status, else a [`RegistryError`].
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, RegistryError> {
        let url = format!("{}{path}", self.url());
        match tokio::time::timeout(self.timeout, self.exchange(&method, path, &url, body)).await {
            Ok(result) => result,
            Err(_) => Err(RegistryError::Timeout {
                method,
                url,
                timeout: self.timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        method: &Method,
        path: &str,
        url: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, RegistryError> {
        let broken = |message: String| RegistryError::Connection {
            method: method.clone(),
            url: url.to_string(),
            message,
        };
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| broken(format!("cannot connect: {e}")))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| broken(e.to_string()))?;
        // The connection task ends when the answer is read and the sender dropped.
        let driver = tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base_path))
            .header(header::HOST, format!("{}:{}", self.host, self.port))
            .header(
                header::ACCEPT,
                format!("{CONTENT_TYPE}, application/json;q=0.9"),
            );
        if let Some(auth) = &self.authorization {
            request = request.header(header::AUTHORIZATION, auth.expose());
        }
        let payload = match &body {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, CONTENT_TYPE);
                Bytes::from(json.to_string())
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .map_err(|e| broken(format!("cannot build the request: {e}")))?;
        let answer = sender
            .send_request(request)
            .await
            .map_err(|e| broken(e.to_string()))?;
        let status = answer.status();
        let bytes = Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| broken(format!("reading the answer: {e}")))?
            .to_bytes();
        drop(sender);
        driver.abort();
        let json: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
        if !status.is_success() {
            let field = |k: &str| json.as_ref().and_then(|j| j.get(k).cloned());
            return Err(RegistryError::Status {
                method: method.clone(),
                url: url.to_string(),
                status: status.as_u16(),
                error_code: field("error_code").and_then(|c| c.as_i64()),
                message: field("message")
                    .and_then(|m| m.as_str().map(str::to_string))
                    .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string()),
            });
        }
        if status == StatusCode::NO_CONTENT {
            return Ok(serde_json::Value::Null);
        }
        json.ok_or_else(|| RegistryError::BadAnswer {
            method: method.clone(),
            url: url.to_string(),
            message: format!("{} bytes that are not JSON", bytes.len()),
        })
    }

    fn bad_answer(&self, method: Method, path: &str, message: &str) -> RegistryError {
        RegistryError::BadAnswer {
            method,
            url: format!("{}{path}", self.url()),
            message: message.to_string(),
        }
    }

    /// Every subject (`GET /subjects`).
    pub async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        let path = "/subjects";
        let json = self.request(Method::GET, path, None).await?;
        json.as_array()
            .and_then(|a| {
                a.iter()
                    .map(|s| s.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| self.bad_answer(Method::GET, path, "not an array of subject names"))
    }

    /// A subject's version numbers (`GET /subjects/{s}/versions`); `None` for no such subject.
    pub async fn versions(&self, subject: &str) -> Result<Option<Vec<u32>>, RegistryError> {
        let path = format!("/subjects/{subject}/versions");
        match self.request(Method::GET, &path, None).await {
            Ok(json) => json
                .as_array()
                .and_then(|a| a.iter().map(as_u32).collect::<Option<Vec<_>>>())
                .map(Some)
                .ok_or_else(|| self.bad_answer(Method::GET, &path, "not an array of versions")),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One version of a subject (`GET /subjects/{s}/versions/{v}`).
    pub async fn version(&self, subject: &str, version: u32) -> Result<Registered, RegistryError> {
        let path = format!("/subjects/{subject}/versions/{version}");
        let json = self.request(Method::GET, &path, None).await?;
        registered(&json).ok_or_else(|| {
            self.bad_answer(
                Method::GET,
                &path,
                "no id, version and schema in the answer",
            )
        })
    }

    /// The version of `subject` that is `schema`, if registered (`POST /subjects/{s}`).
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Option<Registered>, RegistryError> {
        let path = format!("/subjects/{subject}");
        let body = serde_json::json!({ "schema": schema });
        match self.request(Method::POST, &path, Some(body)).await {
            Ok(json) => registered(&json).map(Some).ok_or_else(|| {
                self.bad_answer(
                    Method::POST,
                    &path,
                    "no id, version and schema in the answer",
                )
            }),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Registers `schema` under `subject` (`POST /subjects/{s}/versions`); the schema id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let path = format!("/subjects/{subject}/versions");
        let body = serde_json::json!({ "schema": schema, "schemaType": "AVRO" });
        let json = self.request(Method::POST, &path, Some(body)).await?;
        json.get("id")
            .and_then(as_u32)
            .ok_or_else(|| self.bad_answer(Method::POST, &path, "no id in the answer"))
    }

    /// Sets a subject's compatibility level (`PUT /config/{s}`).
    pub async fn set_compatibility(&self, subject: &str, level: &str) -> Result<(), RegistryError> {
        let path = format!("/config/{subject}");
        let body = serde_json::json!({ "compatibility": level });
        self.request(Method::PUT, &path, Some(body)).await.map(drop)
    }

    /// A subject's own compatibility level (`GET /config/{s}`), `None` when it has none.
    pub async fn compatibility(&self, subject: &str) -> Result<Option<String>, RegistryError> {
        let path = format!("/config/{subject}");
        match self.request(Method::GET, &path, None).await {
            Ok(json) => Ok(json
                .get("compatibilityLevel")
                .or_else(|| json.get("compatibility"))
                .and_then(|c| c.as_str())
                .map(str::to_string)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn as_u32(v: &serde_json::Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

fn registered(json: &serde_json::Value) -> Option<Registered> {
    Some(Registered {
        version: json.get("version").and_then(as_u32)?,
        id: json.get("id").and_then(as_u32)?,
        schema: json.get("schema")?.as_str()?.to_string(),
    })
}

/// Splits `http://host[:port][/path]`; the port defaults to 80.
fn parse_url(url: &str) -> Result<(String, u16, String), RegistryError> {
    let bad = || RegistryError::BadUrl(url.to_string());
    if url.starts_with("https://") {
        return Err(RegistryError::HttpsUnsupported(url.to_string()));
    }
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.contains('@') || path.contains(['?', '#', ' ']) {
        return Err(bad());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port, path.to_string()))
}

/// Standard base64 with padding (RFC 4648), for the basic-auth header.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Whether a topic's records may be published to a registry and written in the Confluent
/// framing: analysis-side topics other than state changelogs.
pub fn offered(role: TopicRole) -> bool {
    let spec = role.spec();
    spec.side == PrivacySide::Analysis && spec.schema != "state_snapshot"
}

/// Why a topic is not offered, for configuration errors.
pub fn not_offered_reason(role: TopicRole) -> Option<&'static str> {
    let spec = role.spec();
    if spec.side == PrivacySide::Sensitive {
        Some("is a sensitive topic: its records are sealed ciphertext, not Avro")
    } else if spec.schema == "state_snapshot" {
        Some("is a state changelog, read only by its own stage")
    } else {
        None
    }
}

/// The subject of a topic's record values (TopicNameStrategy).
pub fn subject(prefix: &str, role: TopicRole) -> String {
    format!("{}-value", role.topic(prefix))
}

/// The schema text of every version of a record type, oldest first.
fn schema_versions(name: &str) -> Vec<(u32, &'static str)> {
    let mut v: Vec<(u32, &'static str)> = SCHEMA_FILES
        .iter()
        .filter(|(n, _, _)| *n == name)
        .map(|(_, version, text)| (*version, *text))
        .collect();
    v.sort_by_key(|(version, _)| *version);
    v
}

/// One schema version under its subject, after [`publish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub subject: String,
    /// Record type and our version (`schemas/<name>/v<N>.avsc`).
    pub schema_name: &'static str,
    pub schema_version: u32,
    /// The subject's version in the registry.
    pub registry_version: u32,
    /// The registry-wide schema id.
    pub id: u32,
    /// Registered by this run (false: it was there already).
    pub new: bool,
}

/// What [`publish`] did for one subject.
#[derive(Debug, Clone)]
pub struct PublishedSubject {
    pub subject: String,
    /// The compatibility level set, or why the registry refused to set it.
    pub compatibility: Result<&'static str, String>,
    pub versions: Vec<Published>,
}

/// Registers every schema version of every offered topic under `<prefix><topic>-value`, oldest
/// first, after setting the subject's compatibility to BACKWARD. Idempotent.
pub async fn publish(
    client: &RegistryClient,
    prefix: &str,
) -> Result<Vec<PublishedSubject>, RegistryError> {
    let mut out = Vec::new();
    for role in TopicRole::ALL.into_iter().filter(|r| offered(*r)) {
        let subject = subject(prefix, role);
        let compatibility = match client.set_compatibility(&subject, COMPATIBILITY).await {
            Ok(()) => Ok(COMPATIBILITY),
            // A registry that does not allow per-subject configuration says so with a 4xx.
            Err(RegistryError::Status {
                status: 400..=499,
                message,
                ..
            }) => Err(message),
            Err(e) => return Err(e),
        };
        let mut versions = Vec::new();
        for (version, text) in schema_versions(role.spec().schema) {
            let (found, new) = match client.lookup(&subject, text).await? {
                Some(r) => (r, false),
                None => {
                    client.register(&subject, text).await?;
                    let r = client.lookup(&subject, text).await?.ok_or_else(|| {
                        client.bad_answer(
                            Method::POST,
                            &format!("/subjects/{subject}"),
                            "a schema just registered is not found",
                        )
                    })?;
                    (r, true)
                }
            };
            versions.push(Published {
                subject: subject.clone(),
                schema_name: role.spec().schema,
                schema_version: version,
                registry_version: found.version,
                id: found.id,
                new,
            });
        }
        out.push(PublishedSubject {
            subject,
            compatibility,
            versions,
        });
    }
    Ok(out)
}

/// The registry's ids of our schemas, read at start-up: what readers resolve the Confluent
/// framing with, and the ids writers put in it.
#[derive(Debug, Clone, Default)]
pub struct LoadedRegistry {
    /// Where it was loaded from.
    pub url: String,
    /// Every id of an offered subject that is one of our schema versions.
    pub ids: RegistryIds,
    /// Per offered topic: our schema version → its id under the topic's subject.
    pub subjects: HashMap<TopicRole, HashMap<u32, u32>>,
    /// Registry schemas under offered subjects that are none of ours (skipped).
    pub foreign: usize,
}

/// Reads every version of every offered subject under `prefix` (a subject not there is
/// skipped) and matches each to the schema store.
pub async fn load(client: &RegistryClient, prefix: &str) -> Result<LoadedRegistry, RegistryError> {
    let mut loaded = LoadedRegistry {
        url: client.url(),
        ..Default::default()
    };
    for role in TopicRole::ALL.into_iter().filter(|r| offered(*r)) {
        let subject = subject(prefix, role);
        let Some(versions) = client.versions(&subject).await? else {
            continue;
        };
        let mut by_version = HashMap::new();
        for v in versions {
            let r = client.version(&subject, v).await?;
            match loaded.ids.add(r.id, &r.schema) {
                Ok(entry) if entry.name == role.spec().schema => {
                    by_version.insert(entry.version, r.id);
                }
                // Ours but of another record type (a subject edited by hand): readable by id,
                // never written to this topic.
                Ok(_) => loaded.foreign += 1,
                Err(RegistryIdError::NotOurs { .. } | RegistryIdError::Unparsable { .. }) => {
                    loaded.foreign += 1
                }
                Err(e) => return Err(e.into()),
            }
        }
        loaded.subjects.insert(role, by_version);
    }
    Ok(loaded)
}

/// The ids a writer needs to write `role` in the Confluent framing: every version of the topic's
/// record type (a stage may write an older version while older readers run), or which are
/// missing.
pub fn writer_ids(loaded: &LoadedRegistry, role: TopicRole) -> Result<HashMap<u32, u32>, String> {
    let name = role.spec().schema;
    let have = loaded.subjects.get(&role).cloned().unwrap_or_default();
    let missing: Vec<String> = store()
        .entries()
        .iter()
        .filter(|e| e.name == name && !have.contains_key(&e.version))
        .map(|e| format!("v{}", e.version))
        .collect();
    if missing.is_empty() {
        Ok(have)
    } else {
        Err(format!(
            "{name} {} not registered in {} (run `seqmon-admin schemas publish`)",
            missing.join(", "),
            loaded.url
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_or_refused() {
        assert_eq!(
            parse_url("http://127.0.0.1:8081").unwrap(),
            ("127.0.0.1".into(), 8081, String::new())
        );
        assert_eq!(
            parse_url("http://registry/apis/ccompat/v7/").unwrap(),
            ("registry".into(), 80, "/apis/ccompat/v7".into())
        );
        assert_eq!(
            parse_url("http://[::1]:8081/x").unwrap(),
            ("::1".into(), 8081, "/x".into())
        );
        for bad in [
            "https://r:8081",
            "r:8081",
            "http://",
            "http://:80",
            "http://u:p@r:8081",
            "http://r:0",
            "http://r:x",
            "http://r/a?b",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn basic_auth_is_base64_and_never_printed() {
        // RFC 7617's example.
        assert_eq!(
            base64(b"Aladdin:open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        let c = RegistryClient::new(
            "http://r:1",
            Some(("u", &Secret::new("hunter2".into()))),
            Duration::from_secs(1),
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("dTpodW50ZXIy"),
            "{shown}"
        );
    }

    #[test]
    fn only_analysis_topics_other_than_changelogs_are_offered() {
        assert!(offered(TopicRole::Features));
        assert!(offered(TopicRole::Alerts));
        assert!(offered(TopicRole::Sanitized));
        assert!(offered(TopicRole::DeadLetters));
        for role in [
            TopicRole::Raw,
            TopicRole::Validated,
            TopicRole::DeadLettersSensitive,
            TopicRole::ChangelogValidator,
            TopicRole::ChangelogNotifier,
        ] {
            assert!(!offered(role), "{role}");
            assert!(not_offered_reason(role).is_some());
        }
        assert_eq!(subject("p.", TopicRole::Features), "p.features-value");
        let versions = schema_versions("telemetry");
        assert!(versions.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
