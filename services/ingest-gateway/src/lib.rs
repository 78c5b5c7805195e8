//! The ingest gateway: collectors behind lab firewalls and HTTP proxies POST batches of raw
//! telemetry over HTTPS (mutual TLS, one certificate per site); the gateway checks the framing
//! and writes each batch to `telemetry.raw` exactly once.
//!
//! Guarantees:
//! - **Exactly once per (client, idempotency key).** A batch's records and its receipt (the
//!   SHA-256 of client identity and idempotency key, with the body's digest) are produced in
//!   one Kafka transaction; the gateway answers 200 only after the commit. A retried POST whose
//!   receipt is known answers 200 `duplicate` and writes nothing; one that arrives while the
//!   first is still being committed answers 409 (retry later). Receipts are read back from the
//!   changelog at start-up (read committed), so a restart forgets nothing within the window.
//! - **Nothing is half-written.** A failed transaction is aborted and answered 503: the client
//!   retries the same batch under the same key. A fatal producer error (fenced by another
//!   instance with the same transactional id) stops the gateway; the broker aborts whatever was
//!   open.
//! - **Bad input gets a typed answer**, never a crash: every refusal is a [`http::Rejection`]
//!   with a status, a reason code and a message, counted by reason.
//! - Collectors hold no encryption key: the gateway seals every record for the sensitive topics
//!   with the deployment's key ring.
//!
//! Known limit: idempotency is exact per gateway instance (and across its restarts). Two
//! replicas behind one load balancer share receipts only through the changelog at start-up, so
//! a retry that reaches another replica while the first is still committing could be written
//! twice; run one replica per site (sticky routing by client certificate) or one replica.

pub mod committer;
pub mod config;
pub mod http;
pub mod ledger;
pub mod limiter;
pub mod metrics;
pub mod tls;
