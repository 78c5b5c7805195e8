//! `alert-dispatcher`: delivers alert transitions to Alertmanager and signed webhooks. See the
//! library's header for the guarantees. Exit code 2 for bad configuration (named), 1 for a
//! runtime failure.

use std::process::ExitCode;

use clap::Parser;
use seqmon_dispatcher::config::DispatcherConfig;
use seqmon_dispatcher::events::DispatcherMetrics;
use seqmon_runtime::metrics::{Answer, LIVENESS_SILENCE_SECS};
use seqmon_runtime::RuntimeError;

fn main() -> ExitCode {
    seqmon_runtime::service::init_logging();
    seqmon_runtime::service::exit_code(run(DispatcherConfig::parse()))
}

fn run(mut cfg: DispatcherConfig) -> Result<(), RuntimeError> {
    cfg.validate()?;
    cfg.kafka.load_files()?;
    seqmon_runtime::kafka::preflight(&cfg.kafka, cfg.kafka.connect_timeout())?;
    let metrics = DispatcherMetrics::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| RuntimeError::Io {
            context: "cannot start the tokio runtime".into(),
            source,
        })?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.metrics_addr)
            .await
            .map_err(|source| RuntimeError::Io {
                context: format!("cannot listen on --metrics-addr {}", cfg.metrics_addr),
                source,
            })?;
        let m = metrics.clone();
        tokio::spawn(seqmon_runtime::metrics::serve_listener_with(
            listener,
            move |path| match path {
                "/metrics" => Answer::Ok(m.render()),
                "/healthz" => {
                    let age = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs() as i64)
                        .unwrap_or(0)
                        - m.heartbeat.get();
                    if age <= LIVENESS_SILENCE_SECS {
                        Answer::Ok("ok\n".into())
                    } else {
                        Answer::Unavailable(format!("dispatch loop silent for {age} s\n"))
                    }
                }
                // Ready once it owns partitions of `alerts` (or joined with none to own).
                "/readyz" => Answer::health(m.ready.get() == 1, "joined and rebuilt\n".into()),
                _ => Answer::NotFound,
            },
        ));
        seqmon_dispatcher::service::run(cfg, metrics).await
    })
}
