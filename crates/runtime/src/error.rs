//! Errors of the runtime, each classified so the caller knows what to do with it.

use seqmon_processor::{ConfigError, StageError};

/// What to do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The input is bad: dead-letter it and go on. (Handled inside the runtime.)
    BadData,
    /// Something outside failed (broker, network): retry with backoff.
    External,
    /// A bug, a fatal broker answer, or bad configuration: stop with a clear message.
    Internal,
}

/// Runtime failure.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A setting is invalid. The message names it.
    #[error("invalid configuration: {setting}: {message}")]
    Config { setting: String, message: String },
    /// The Kafka client failed.
    #[error("kafka {operation} failed: {source}")]
    Kafka {
        operation: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Reading or writing a file or socket failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The stage failed internally.
    #[error(transparent)]
    Stage(#[from] StageError),
    /// Another internal failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ConfigError> for RuntimeError {
    fn from(e: ConfigError) -> Self {
        RuntimeError::Config {
            setting: e.setting,
            message: e.message,
        }
    }
}

impl RuntimeError {
    /// How to treat this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            RuntimeError::Kafka { source, .. } => {
                let fatal =
                    matches!(source, rdkafka::error::KafkaError::Transaction(e) if e.is_fatal());
                if fatal {
                    ErrorClass::Internal
                } else {
                    ErrorClass::External
                }
            }
            RuntimeError::Io { .. } => ErrorClass::External,
            RuntimeError::Config { .. } | RuntimeError::Stage(_) | RuntimeError::Internal(_) => {
                ErrorClass::Internal
            }
        }
    }

    /// Shorthand for a Kafka error.
    pub fn kafka(
        operation: &'static str,
    ) -> impl FnOnce(rdkafka::error::KafkaError) -> RuntimeError {
        move |source| RuntimeError::Kafka { operation, source }
    }
}
