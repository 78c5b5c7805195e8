//! The entry point every service binary shares: `<service> kafka ...` or `<service> file ...`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::config::RunnerConfig;
use crate::driver::Driver;
use crate::error::RuntimeError;
use crate::file::{run_file, FileArgs};
use crate::kafka::run_kafka;
use crate::processor::Processor;

/// Command line of a stage service.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli<A: Args> {
    #[command(subcommand)]
    mode: Mode<A>,
}

#[derive(Debug, Subcommand)]
enum Mode<A: Args> {
    /// Run as an exactly-once Kafka service.
    Kafka {
        #[command(flatten)]
        runner: Box<RunnerConfig>,
        #[command(flatten)]
        stage: A,
    },
    /// Read JSON lines from a file or stdin, write JSON lines: same logic, no cluster.
    File {
        #[command(flatten)]
        file: FileArgs,
        #[command(flatten)]
        stage: A,
    },
}

/// Sets up logging: `RUST_LOG` filter (default info), JSON lines when `SEQMON_LOG_FORMAT=json`.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("SEQMON_LOG_FORMAT").as_deref() == Ok("json") {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

/// Parses the command line, validates the configuration, builds the processor with `build`
/// (which validates the stage's own settings) and runs it. Exit code 2 for bad configuration,
/// 1 for a runtime failure.
pub fn service_main<A, P>(build: impl FnOnce(&A) -> Result<P, RuntimeError>) -> ExitCode
where
    A: Args + std::fmt::Debug,
    P: Processor + 'static,
{
    init_logging();
    let cli = Cli::<A>::parse();
    let result = match cli.mode {
        Mode::Kafka { mut runner, stage } => runner
            .validate()
            .and_then(|()| runner.kafka.load_files())
            .map_err(RuntimeError::from)
            .and_then(|()| build(&stage))
            .and_then(|p| run_kafka_service(Box::new(p), &runner)),
        Mode::File { file, stage } => build(&stage).and_then(|p| {
            let mut driver = Driver::new(Box::new(p));
            let summary = run_file(&mut driver, &file)?;
            tracing::info!(lines = summary.lines, written = ?summary.written, "file mode finished");
            Ok(())
        }),
    };
    exit_code(result)
}

/// The process exit code of a binary's result: 0, 2 for bad configuration (the message names the
/// setting), 1 for any other failure (logged with its class).
pub fn exit_code(result: Result<(), RuntimeError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ RuntimeError::Config { .. }) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            tracing::error!(error = %e, class = ?e.class(), "stopped");
            ExitCode::FAILURE
        }
    }
}

/// Runs a processor in Kafka mode with the metrics endpoint and SIGTERM/SIGINT handling.
pub fn run_kafka_service(
    processor: Box<dyn Processor>,
    runner: &RunnerConfig,
) -> Result<(), RuntimeError> {
    // Before any broker I/O: every output written in the Confluent framing has its ids.
    runner.confluent_ids()?;
    crate::kafka::preflight(&runner.kafka, runner.kafka.connect_timeout())?;
    let driver = Driver::new(processor);
    let shutdown = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| RuntimeError::Io {
            context: "cannot start the tokio runtime".into(),
            source,
        })?;
    let flag = shutdown.clone();
    let metrics = driver.metrics.clone();
    let addr = if runner.metrics_addr.is_empty() {
        None
    } else {
        runner.metrics_addr.parse().ok()
    };
    let background = std::thread::Builder::new()
        .name("signals-metrics".into())
        .spawn(move || {
            rt.block_on(async move {
                if let Some(addr) = addr {
                    tokio::spawn(async move {
                        if let Err(e) = crate::metrics::serve(addr, metrics).await {
                            tracing::error!(%addr, error = %e, "metrics endpoint failed");
                        }
                    });
                }
                wait_for_signal().await;
                tracing::info!("shutdown requested; finishing the current transaction");
                flag.store(true, Ordering::SeqCst);
            })
        })
        .map_err(|source| RuntimeError::Io {
            context: "cannot start the signal thread".into(),
            source,
        })?;
    let result = run_kafka(driver, runner, shutdown);
    drop(background);
    result
}

/// A flag set when SIGTERM or SIGINT arrives, for loops outside the Kafka runner (the collector).
pub fn shutdown_flag() -> Result<Arc<AtomicBool>, RuntimeError> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| RuntimeError::Io {
            context: "cannot start the tokio runtime".into(),
            source,
        })?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(wait_for_signal());
            set.store(true, Ordering::SeqCst);
        })
        .map_err(|source| RuntimeError::Io {
            context: "cannot start the signal thread".into(),
            source,
        })?;
    Ok(flag)
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
