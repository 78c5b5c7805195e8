//! Alert dispatcher: delivers the transitions on `alerts` where service teams already work,
//! Prometheus Alertmanager and signed HTTPS webhooks, without touching the Kafka transaction
//! loop of any stage (it is a consumer of its own, in its own process).
//!
//! Guarantees. At least once to every receiver, with an idempotency key per event, so a
//! receiver that keeps the keys it saw gets each event once: an alert record's offset is
//! committed only when every delivery it asked for is done (accepted, or written to
//! `deadletter.analysis` with reason `DELIVERY_FAILED` after the endpoint's attempts), so a
//! crash or restart redelivers what was not done and skips nothing. Alertmanager gets the
//! current form of each changed alert until it accepts it, and every firing alert again each
//! resend interval (see [`am`]); at start the dispatcher rebuilds what should be firing from
//! the `alerts` topic up to its committed offsets and posts it, so an Alertmanager that lost its
//! memory while we were down is whole again. Webhooks: see [`webhook`] for the body and the
//! signature; retries with exponential backoff and full jitter ([`retry`]); per-endpoint rate
//! limit and circuit breaker (an open circuit sends nothing and counts as a failed attempt, so
//! an endpoint down for good fills the dead-letter topic after its attempts, never the memory);
//! a 4xx answer other than 408 and 429 is final at once. A slow or dead endpoint delays only
//! itself: every receiver has its own task and queue; above `--max-in-flight` unfinished
//! deliveries the consumer pauses (and resumes at half), which bounds memory.
//!
//! Order. Alertmanager always gets the latest form of an alert (older records, e.g. redelivered
//! after a restart, are ignored by sequence number). A webhook endpoint gets events in order
//! unless one is retried: retries do not hold back later events, so a receiver orders by the
//! alert's `sequence`.
//!
//! On failure. Bad configuration fails at start with the setting named (exit 2). An alert record
//! that does not decode becomes a dead letter (reason from the decoder). A dead letter that
//! cannot be written is retried until it is (its record is not committed meanwhile). Kafka
//! errors are logged and retried by the client; the process exits 1 only on a fatal consumer
//! error, for the orchestrator to restart it.

pub mod am;
pub mod config;
pub mod events;
pub mod offsets;
pub mod retry;
pub mod service;
pub mod webhook;
