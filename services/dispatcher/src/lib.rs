//! Alert dispatcher: delivers the transitions on `alerts` where service teams already work,
//! Prometheus Alertmanager and signed HTTPS webhooks, without touching the Kafka transaction
//! loop of any stage (it is a consumer of its own, in its own process).
//!
//! Guarantees. Webhooks: at least once, with an idempotency key per event, so a receiver that
//! keeps the keys it saw gets each event once. An alert record's offset is committed only when
//! every webhook delivery it asked for is done (accepted, or written to `deadletter.analysis`
//! with reason `DELIVERY_FAILED`), so a crash, restart or rebalance redelivers what was not done
//! and skips nothing; deliveries of a generation before a rebalance no longer count. Alertmanager
//! is state, not a queue (see [`am`]): at every assignment the dispatcher rebuilds what should
//! fire for the partitions it owns from the `alerts` topic up to the committed offsets, posts
//! the current form of each changed alert until Alertmanager accepts it (a change during a post
//! keeps it dirty), and re-posts every firing alert each resend interval; so Alertmanager posts
//! never hold offsets back, and an Alertmanager that was down, restarted or lost a post is
//! whole again within an interval. A batch Alertmanager refuses (4xx) is halved until the one
//! alert it refuses is set aside and logged.
//!
//! Webhooks: see [`webhook`] for the body and the signature; retries with exponential backoff
//! and full jitter ([`retry`]); per-endpoint rate limit and circuit breaker (while the circuit
//! is open nothing is sent and no attempt counted; an event still undelivered `give_up_after_s`
//! after its first attempt is a dead letter, so an endpoint down for good costs time, bounded
//! memory); redirects are not followed; 400, 410, 413, 415 and 422 are final at once, every other
//! failure is retried. A slow or dead endpoint delays only itself: every receiver has its own
//! task and queue; above `--max-in-flight` unfinished deliveries the partitions pause (and resume
//! at half) while the consumer keeps being polled. Errors never carry a receiver's URL.
//!
//! Order. Alertmanager always gets the latest form of an alert (older records are ignored by
//! sequence number). A webhook endpoint gets events in order unless one is retried: retries do
//! not hold back later events, so a receiver orders by the alert's `sequence`. A new consumer
//! group starts at the beginning of `alerts` (every retained transition is delivered; set the
//! group's offsets to the end first to start a new deployment there).
//!
//! On failure. Bad configuration fails at start with the setting named (exit 2). An alert record
//! that does not decode becomes a dead letter (reason from the decoder). A dead letter that
//! cannot be written is retried until it is (its record is not committed meanwhile). Kafka
//! errors are logged and retried by the client; a restore that cannot finish in 300 s stops the
//! process (exit 1) for the orchestrator to restart it.

pub mod am;
pub mod config;
pub mod events;
pub mod offsets;
pub mod retry;
pub mod service;
pub mod webhook;
