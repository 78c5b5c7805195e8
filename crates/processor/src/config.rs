//! Configuration errors of a stage, and setting names derived from its clap arguments so that
//! no message spells a flag or an environment variable by hand.

use std::fmt;
use std::str::FromStr;

use clap::builder::Resettable;
use clap::{Args, Command, FromArgMatches};

/// A setting is invalid. Services exit with code 2 and this message at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {setting}: {message}")]
pub struct ConfigError {
    /// The setting as a user writes it: `--flag / ENV_VAR`.
    pub setting: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// An error naming the setting whose clap argument id (the struct field name) is `id` in the
    /// arguments `A`.
    pub fn of<A: Args>(id: &str, message: impl Into<String>) -> Self {
        ConfigError {
            setting: setting_name::<A>(id),
            message: message.into(),
        }
    }
}

/// A secret setting. `Debug` and `Display` print `***`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret read from a file or the environment.
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The secret value, for handing to the client that needs it only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// `--long-flag / ENV_VAR` of the argument with id `id` in `A` (the field name), from clap's own
/// definition; the id itself when `A` has no such argument (a programming error a test catches).
pub fn setting_name<A: Args>(id: &str) -> String {
    let cmd = A::augment_args(Command::new("settings"));
    let Some(arg) = cmd.get_arguments().find(|a| a.get_id().as_str() == id) else {
        return id.to_string();
    };
    let flag = arg
        .get_long()
        .map(|l| format!("--{l}"))
        .unwrap_or_else(|| id.to_string());
    match arg.get_env() {
        Some(env) => format!("{flag} / {}", env.to_string_lossy()),
        None => flag,
    }
}

/// The settings `A` with every field at the default its clap attribute states, ignoring the
/// environment: `impl Default` of a settings struct calls this, so each default is written once.
/// Panics if a field of `A` has no default (a programming error that the struct's own
/// `Default` test catches).
pub fn defaults<A: Args + FromArgMatches>() -> A {
    let cmd = A::augment_args(Command::new("defaults").no_binary_name(true))
        .mut_args(|a| a.env(Resettable::Reset));
    let matches = cmd
        .try_get_matches_from(std::iter::empty::<String>())
        .unwrap_or_else(|e| panic!("every setting needs a default: {e}"));
    A::from_arg_matches(&matches).unwrap_or_else(|e| panic!("defaults do not parse: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Example {
        /// A setting with an environment variable.
        #[arg(long, env = "EXAMPLE_WINDOW_MS", default_value_t = 5)]
        window_ms: u64,
        /// One without.
        #[arg(long = "other-name", default_value_t = 1)]
        other: u64,
    }

    #[test]
    fn names_come_from_the_clap_definition() {
        assert_eq!(
            setting_name::<Example>("window_ms"),
            "--window-ms / EXAMPLE_WINDOW_MS"
        );
        assert_eq!(setting_name::<Example>("other"), "--other-name");
        let d: Example = defaults();
        assert_eq!((d.window_ms, d.other), (5, 1));
        let e = ConfigError::of::<Example>("window_ms", "must be positive");
        assert_eq!(
            e.to_string(),
            "invalid configuration: --window-ms / EXAMPLE_WINDOW_MS: must be positive"
        );
    }
}
