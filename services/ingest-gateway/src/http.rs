//! The HTTP API, on the mutual-TLS listener:
//!
//! `POST /v1/telemetry`, body a batch frame ([`seqmon_model::ingest`]), headers
//! `Content-Type: application/vnd.seqmon.telemetry-batch.v1` and `Idempotency-Key: <key>`
//! (1..=128 of `A-Z a-z 0-9 . _ : -`, unique per batch for the client; a retry reuses it).
//!
//! Answers are JSON: `{"reason": <code>, "records": n}` on success (200, reason `accepted` or
//! `duplicate`), `{"reason": <code>, "message": ...}` otherwise. Whether a client should retry
//! follows from the status: 409, 429 and 503 are retried (honouring `Retry-After`); 400, 404,
//! 405, 413, 415 and 422 are not (the request itself is wrong).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use seqmon_model::ingest::{self, FrameLimits};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::committer::{Job, Outcome, OwnedRecord};
use crate::ledger::{batch_key, body_digest, now_ms, Admission, Ledger, Receipt};
use crate::limiter::RateLimiter;
use crate::metrics::{GatewayMetrics, RequestAnswered};

/// The only write path.
pub const PATH: &str = "/v1/telemetry";
/// How far ahead of the gateway's clock a record's timestamp may be: the broker refuses records
/// more than an hour ahead (`log.message.timestamp.after.max.ms`), failing their transaction.
pub const MAX_FUTURE_SKEW_MS: i64 = 15 * 60 * 1000;
/// Header naming the batch.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Why a request was answered the way it was: the `reason` of the answer and the label of
/// `seqmon_requests_total{stage="ingest-gateway"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Written.
    Accepted,
    /// Written before under the same key; not written again.
    Duplicate,
    /// No such path.
    NotFound,
    /// Not a POST.
    MethodNotAllowed,
    /// Content-Type is not the batch frame's.
    UnsupportedMediaType,
    /// Idempotency-Key missing or malformed.
    BadIdempotencyKey,
    /// The body exceeds --max-body-bytes.
    TooLarge,
    /// The body is not a valid batch frame.
    BadFrame,
    /// The key was used for another body.
    IdempotencyKeyReused,
    /// The same batch is being written right now.
    InProgress,
    /// The client's rate limit is spent.
    RateLimited,
    /// The body did not arrive within the request timeout.
    Timeout,
    /// Kafka is not taking writes (transaction aborted, writer stopped).
    Unavailable,
    /// The gateway holds as many batches in memory as it may (--max-inflight-mib), or its
    /// writer's queue is full.
    Busy,
}

impl Reason {
    /// Every reason, for the counter's series to exist from start-up.
    pub const ALL: [Reason; 14] = [
        Reason::Accepted,
        Reason::Duplicate,
        Reason::NotFound,
        Reason::MethodNotAllowed,
        Reason::UnsupportedMediaType,
        Reason::BadIdempotencyKey,
        Reason::TooLarge,
        Reason::BadFrame,
        Reason::IdempotencyKeyReused,
        Reason::InProgress,
        Reason::RateLimited,
        Reason::Timeout,
        Reason::Unavailable,
        Reason::Busy,
    ];

    /// The reason code.
    pub fn code(self) -> &'static str {
        match self {
            Reason::Accepted => "accepted",
            Reason::Duplicate => "duplicate",
            Reason::NotFound => "not_found",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::UnsupportedMediaType => "unsupported_media_type",
            Reason::BadIdempotencyKey => "bad_idempotency_key",
            Reason::TooLarge => "too_large",
            Reason::BadFrame => "bad_frame",
            Reason::IdempotencyKeyReused => "idempotency_key_reused",
            Reason::InProgress => "in_progress",
            Reason::RateLimited => "rate_limited",
            Reason::Timeout => "timeout",
            Reason::Unavailable => "unavailable",
            Reason::Busy => "busy",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Reason::Accepted | Reason::Duplicate => StatusCode::OK,
            Reason::NotFound => StatusCode::NOT_FOUND,
            Reason::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Reason::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Reason::BadIdempotencyKey | Reason::BadFrame => StatusCode::BAD_REQUEST,
            Reason::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reason::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Reason::InProgress => StatusCode::CONFLICT,
            Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Reason::Timeout => StatusCode::REQUEST_TIMEOUT,
            Reason::Unavailable | Reason::Busy => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whether the same request may succeed later.
    pub fn retriable(self) -> bool {
        matches!(
            self,
            Reason::InProgress
                | Reason::RateLimited
                | Reason::Timeout
                | Reason::Unavailable
                | Reason::Busy
        )
    }
}

/// What every request handler shares.
pub struct Gateway {
    /// Most records per batch (--max-records-per-batch).
    pub max_records: u32,
    /// Largest record value, bytes (--max-record-bytes).
    pub max_value_bytes: u32,
    pub max_body_bytes: u64,
    pub request_timeout: Duration,
    pub limiter: Mutex<RateLimiter>,
    pub ledger: Arc<Mutex<Ledger>>,
    pub jobs: mpsc::Sender<Job>,
    /// Bytes of request bodies and batches held in memory, in KiB permits: a body is read only
    /// with permits for its size, which go back when its batch is written or refused.
    pub memory: Arc<Semaphore>,
    pub metrics: GatewayMetrics,
}

struct Answer {
    reason: Reason,
    records: u32,
    message: String,
    retry_after: Option<Duration>,
}

impl Answer {
    fn ok(reason: Reason, records: u32) -> Self {
        Self {
            reason,
            records,
            message: String::new(),
            retry_after: None,
        }
    }
    fn no(reason: Reason, message: impl Into<String>) -> Self {
        let retry_after = match reason {
            Reason::InProgress | Reason::Unavailable | Reason::Busy => Some(Duration::from_secs(1)),
            _ => None,
        };
        Self {
            reason,
            records: 0,
            message: message.into(),
            retry_after,
        }
    }
}

fn valid_idempotency_key(k: &str) -> bool {
    (1..=128).contains(&k.len())
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// Reads a body of at most `max` bytes within `timeout`. A larger one is read on and discarded
/// up to four times the limit, so the client has sent its body and sees the 413 rather than a
/// broken pipe; beyond that the connection is dropped.
async fn read_body(
    mut body: Incoming,
    declared: Option<u64>,
    max: u64,
    timeout: Duration,
) -> Result<Bytes, Reason> {
    let read = async move {
        let too_large = declared.is_some_and(|n| n > max);
        if too_large && declared.is_some_and(|n| n > max.saturating_mul(4)) {
            return Err(Reason::TooLarge);
        }
        let mut kept = Vec::with_capacity(declared.unwrap_or(0).min(max) as usize);
        let mut seen = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| Reason::BadFrame)?;
            if let Some(data) = frame.data_ref() {
                seen += data.len() as u64;
                if seen > max.saturating_mul(4) {
                    return Err(Reason::TooLarge);
                }
                if seen <= max && !too_large {
                    kept.extend_from_slice(data);
                }
            }
        }
        if too_large || seen > max {
            return Err(Reason::TooLarge);
        }
        Ok(Bytes::from(kept))
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(Reason::Timeout))
}

impl Gateway {
    /// Answers one request from `client` (the identity of its certificate).
    pub async fn handle(
        self: Arc<Self>,
        client: Arc<str>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let answer = self.answer(&client, req).await;
        RequestAnswered {
            client: &client,
            reason: answer.reason,
            records: answer.records,
            message: &answer.message,
        }
        .emit(&self.metrics);
        let body = if answer.reason.status() == StatusCode::OK {
            serde_json::json!({"reason": answer.reason.code(), "records": answer.records})
        } else {
            serde_json::json!({"reason": answer.reason.code(), "message": answer.message})
        };
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() = answer.reason.status();
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(after) = answer.retry_after {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(RETRY_AFTER, v);
            }
        }
        Ok(resp)
    }

    async fn answer(&self, client: &str, req: Request<Incoming>) -> Answer {
        // Every request costs a token, a malformed one too: the limit bounds all work a
        // client can cause.
        let limited = self
            .limiter
            .lock()
            .map(|mut l| l.check(client, Instant::now()))
            .unwrap_or(Ok(()));
        if let Err(wait) = limited {
            let mut a = Answer::no(Reason::RateLimited, "request rate limit reached");
            a.retry_after = Some(wait);
            return a;
        }
        if req.uri().path() != PATH {
            return Answer::no(Reason::NotFound, format!("the only path is POST {PATH}"));
        }
        if req.method() != Method::POST {
            return Answer::no(Reason::MethodNotAllowed, "use POST");
        }
        let media = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if media != Some(ingest::CONTENT_TYPE) {
            return Answer::no(
                Reason::UnsupportedMediaType,
                format!("Content-Type must be {}", ingest::CONTENT_TYPE),
            );
        }
        // Exactly one key: with two, which one a retry would carry is anybody's guess.
        let mut keys = req.headers().get_all(IDEMPOTENCY_KEY).iter();
        let key = match (keys.next().map(|v| v.to_str()), keys.next()) {
            (Some(Ok(k)), None) if valid_idempotency_key(k) => k.to_string(),
            _ => {
                return Answer::no(
                    Reason::BadIdempotencyKey,
                    "one Idempotency-Key of 1..=128 of A-Z a-z 0-9 . _ : -",
                )
            }
        };
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // Memory for the body before it is read: a flood of large bodies meets 503, not an
        // out-of-memory kill.
        let kib = declared
            .unwrap_or(self.max_body_bytes)
            .min(self.max_body_bytes)
            .div_ceil(1024)
            .max(1);
        let Ok(memory) = self
            .memory
            .clone()
            .try_acquire_many_owned(u32::try_from(kib).unwrap_or(u32::MAX))
        else {
            return Answer::no(Reason::Busy, "too many batches in flight; retry");
        };
        let body = match read_body(
            req.into_body(),
            declared,
            self.max_body_bytes,
            self.request_timeout,
        )
        .await
        {
            Ok(b) => b,
            Err(reason) => {
                let message = match reason {
                    Reason::TooLarge => format!("body larger than {} bytes", self.max_body_bytes),
                    Reason::Timeout => "body not received in time".to_string(),
                    _ => "body not read".to_string(),
                };
                return Answer::no(reason, message);
            }
        };
        let limits = FrameLimits {
            max_records: self.max_records,
            max_value_bytes: self.max_value_bytes,
            latest_timestamp_ms: now_ms() + MAX_FUTURE_SKEW_MS,
        };
        let records = match ingest::decode(&body, limits) {
            Ok(r) => r,
            Err(e) => return Answer::no(Reason::BadFrame, e.to_string()),
        };
        let count = records.len() as u32;
        let bkey = batch_key(client, &key);
        let digest = body_digest(&body);
        let admission = match self.ledger.lock() {
            Ok(mut l) => l.admit(bkey, digest, now_ms()),
            Err(_) => return Answer::no(Reason::Unavailable, "ledger unavailable"),
        };
        match admission {
            Admission::New => {}
            Admission::Duplicate(r) => return Answer::ok(Reason::Duplicate, r.records),
            Admission::KeyReused => {
                return Answer::no(
                    Reason::IdempotencyKeyReused,
                    "this Idempotency-Key was used for another body",
                )
            }
            Admission::InFlight => {
                return Answer::no(Reason::InProgress, "this batch is being written; retry")
            }
        }
        // From here the batch is in flight: only the writer releases it, once the outcome is
        // known, whether or not this request is still waiting.
        let (reply, outcome) = oneshot::channel();
        let job = Job {
            key: bkey,
            receipt: Receipt {
                digest,
                records: count,
                committed_ms: now_ms(),
            },
            records: records
                .into_iter()
                .map(|r| OwnedRecord {
                    key: r.key.to_string(),
                    timestamp_ms: r.timestamp_ms,
                    value: r.value.to_vec(),
                })
                .collect(),
            reply,
            _memory: memory,
        };
        drop(body);
        if let Err(e) = self.jobs.try_send(job) {
            let (job, answer) = match e {
                mpsc::error::TrySendError::Full(job) => (
                    job,
                    Answer::no(Reason::Busy, "the writer's queue is full; retry"),
                ),
                mpsc::error::TrySendError::Closed(job) => (
                    job,
                    Answer::no(Reason::Unavailable, "the Kafka writer has stopped"),
                ),
            };
            if let Ok(mut l) = self.ledger.lock() {
                l.released(&job.key);
            }
            return answer;
        }
        match outcome.await {
            Ok(Outcome::Committed) => Answer::ok(Reason::Accepted, count),
            Ok(Outcome::Unavailable) | Err(_) => Answer::no(
                Reason::Unavailable,
                "not written (Kafka unavailable); retry",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_a_closed_alphabet() {
        assert!(valid_idempotency_key("a1b2c3-00000042"));
        assert!(valid_idempotency_key("site.x:run_1-7"));
        for bad in [
            "",
            "a b",
            "a/b",
            "ä",
            &"x".repeat(129),
            "a\r\nX-Injected: 1",
        ] {
            assert!(!valid_idempotency_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn retriable_answers_are_the_transient_ones() {
        for r in [
            Reason::InProgress,
            Reason::RateLimited,
            Reason::Timeout,
            Reason::Unavailable,
        ] {
            assert!(r.retriable());
            assert!(r.status().is_client_error() || r.status().is_server_error());
        }
        for r in [
            Reason::BadFrame,
            Reason::TooLarge,
            Reason::IdempotencyKeyReused,
            Reason::BadIdempotencyKey,
        ] {
            assert!(!r.retriable());
        }
    }
}
