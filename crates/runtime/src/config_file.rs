//! Settings from a TOML file and from secret files, beneath flags and the environment.
//!
//! Precedence, highest first: command-line flag, environment variable, `<VAR>_FILE` (the
//! variable's value read from a file, e.g. a Kubernetes Secret or a systemd credential), the TOML
//! file, the default. The file's keys are the flags' long names with `_` for `-`
//! (`poll_interval_s = 30` for `--poll-interval-s`); a list becomes a comma-separated value.
//! Only settings that have an environment variable can come from the file (a setting that is a
//! command-line flag only is refused, as is an unknown key or one given twice). Secrets (the
//! settings whose values clap hides) may instead be read from a file: `<VAR>_FILE` in the
//! environment, `<key>_file` in the TOML file; other settings may not, so a path setting can
//! never be filled with a file's content and echoed in an error. Both layers are applied by
//! setting the environment variables clap reads, before it parses, and only where the variable
//! is unset. Values are never logged, and a TOML syntax error names its line, not its text.
//! `config` (the path of the file itself) is taken from neither layer.

use std::path::Path;

use crate::error::RuntimeError;

/// Suffix of an environment variable naming a file that holds the variable's value.
pub const FILE_SUFFIX: &str = "_FILE";

/// Fills unset environment variables of `cmd`'s arguments from `<VAR>_FILE` files, then from the
/// TOML file at `config` (if any). Returns the keys taken from the file, for the start-up log.
/// Build the command that parses again afterwards: clap reads the environment when a command is
/// built.
pub fn apply(cmd: &clap::Command, config: Option<&Path>) -> Result<Vec<String>, RuntimeError> {
    let settings = settings(cmd);
    for s in settings.iter().filter(|s| s.secret && s.key != "config") {
        let file_var = format!("{}{FILE_SUFFIX}", s.env);
        if std::env::var_os(&s.env).is_none() {
            if let Some(path) = std::env::var_os(&file_var) {
                let value = read_secret(Path::new(&path), &file_var)?;
                std::env::set_var(&s.env, value);
            }
        }
    }
    let Some(config) = config else {
        return Ok(Vec::new());
    };
    let setting = |message: String| RuntimeError::Config {
        setting: format!("--config {}", config.display()),
        message,
    };
    let text = std::fs::read_to_string(config).map_err(|e| setting(format!("cannot read: {e}")))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        // toml's own message quotes the offending line, which may hold a secret.
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
        setting(match line {
            Some(line) => format!("not TOML at line {line}: {}", e.message()),
            None => format!("not TOML: {}", e.message()),
        })
    })?;
    let mut applied = Vec::new();
    let mut planned = Vec::new();
    for (key, value) in &table {
        let (name, from_file) = match key.strip_suffix("_file") {
            Some(base) if settings.iter().any(|s| s.key == base) => (base, true),
            _ => (key.as_str(), false),
        };
        if from_file && table.contains_key(name) {
            return Err(setting(format!(
                "`{name}` is given twice (also as `{key}`)"
            )));
        }
        let Some(s) = settings.iter().find(|s| s.key == name && s.key != "config") else {
            let known = cmd
                .get_arguments()
                .any(|a| a.get_long().is_some_and(|l| l.replace('-', "_") == name));
            return Err(setting(if known {
                format!("`{key}` is a command-line flag only, not a file setting")
            } else {
                format!("`{key}` is not a setting (keys are the flags' long names with _ for -)")
            }));
        };
        if from_file && !s.secret {
            return Err(setting(format!(
                "`{key}`: only secrets are read from files; `{name}` takes its value here"
            )));
        }
        if std::env::var_os(&s.env).is_some() {
            continue;
        }
        let text = scalar_or_list(value).ok_or_else(|| {
            setting(format!(
                "`{key}`: a string, number, boolean or list of them"
            ))
        })?;
        let text = if from_file {
            read_secret(Path::new(&text), &format!("{key} in {}", config.display()))?
        } else {
            text
        };
        planned.push((s.env.as_str(), text, key.clone()));
    }
    // Only once every key is known good: a bad file changes nothing.
    for (env, text, key) in planned {
        std::env::set_var(env, text);
        applied.push(key);
    }
    Ok(applied)
}

/// An argument that can come from the environment: its file key and variable, and whether it
/// is a secret (clap hides its value).
struct Setting {
    key: String,
    env: String,
    secret: bool,
}

fn settings(cmd: &clap::Command) -> Vec<Setting> {
    cmd.get_arguments()
        .filter_map(|a| {
            Some(Setting {
                key: a.get_long()?.replace('-', "_"),
                env: a.get_env()?.to_str()?.to_string(),
                secret: a.is_hide_env_values_set(),
            })
        })
        .collect()
}

fn scalar_or_list(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .map(|v| match v {
                toml::Value::Array(_) | toml::Value::Table(_) => None,
                v => scalar_or_list(v),
            })
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        toml::Value::Datetime(_) | toml::Value::Table(_) => None,
    }
}

/// A secret file's content without trailing whitespace (the line break `echo secret > file`
/// adds, a CR from an editor).
fn read_secret(path: &Path, setting: &str) -> Result<String, RuntimeError> {
    let text = std::fs::read_to_string(path).map_err(|e| RuntimeError::Config {
        setting: setting.to_string(),
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    Ok(text.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// Each test uses variables of its own: the environment is shared by the test threads.
    #[derive(Debug, Parser)]
    struct Cli {
        #[arg(long, env = "CFT_POLL_S", default_value_t = 30)]
        poll_s: u64,
        #[arg(long, env = "CFT_NAME", default_value = "default")]
        name: String,
        #[arg(long, env = "CFT_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[arg(long, env = "CFT_OPTIONS", value_delimiter = ',')]
        options: Vec<String>,
        #[arg(long)]
        once: bool,
    }

    /// As [`Cli`], with variables no other test sets.
    #[derive(Debug, Parser)]
    struct Other {
        #[arg(long, env = "CFO_POLL_S", default_value_t = 30)]
        poll_s: u64,
        #[arg(long, env = "CFO_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[arg(long, env = "CFO_KEY_PATH")]
        key_path: Option<String>,
        #[arg(long)]
        once: bool,
    }

    fn dir(test: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("cfg-file-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn flags_beat_the_environment_which_beats_secret_files_which_beat_the_file() {
        let d = dir("layers");
        std::fs::write(d.join("password"), "s3cret\n").unwrap();
        let config = d.join("c.toml");
        std::fs::write(
            &config,
            "poll_s = 5\nname = \"from-file\"\noptions = [\"a=1\", \"b=2\"]\n",
        )
        .unwrap();
        std::env::set_var("CFT_NAME", "from-env");
        std::env::set_var("CFT_PASSWORD_FILE", d.join("password"));
        let applied = apply(&Cli::command(), Some(&config)).unwrap();
        assert_eq!(applied, ["options", "poll_s"]);
        let cli = Cli::parse_from(["t", "--poll-s", "7"]);
        assert_eq!(cli.poll_s, 7, "the flag wins");
        assert_eq!(cli.name, "from-env", "the environment beats the file");
        assert_eq!(
            cli.password.as_deref(),
            Some("s3cret"),
            "from its _FILE, no newline"
        );
        assert_eq!(cli.options, ["a=1", "b=2"]);
    }

    #[test]
    fn unknown_keys_flag_only_settings_and_unreadable_files_are_named() {
        let d = dir("bad");
        let cases = [
            ("pol_s = 5\n", "`pol_s` is not a setting"),
            ("once = true\n", "`once` is a command-line flag only"),
            ("poll_s = { a = 1 }\n", "`poll_s`: a string, number"),
            ("poll_s = \npassword = \"hunter2\"\n", "not TOML at line 1"),
            (
                "key_path_file = \"/etc/x\"\n",
                "only secrets are read from files",
            ),
            (
                "password = \"a\"\npassword_file = \"/etc/x\"\n",
                "`password` is given twice",
            ),
            (
                "password_file = \"/nonexistent/x\"\n",
                "cannot read /nonexistent/x",
            ),
        ];
        for (text, expected) in cases {
            let config = d.join("c.toml");
            std::fs::write(&config, text).unwrap();
            let e = apply(&Other::command(), Some(&config))
                .unwrap_err()
                .to_string();
            assert!(e.contains(expected), "{text:?}: {e}");
            assert!(!e.contains("hunter2"), "a secret in an error: {e}");
        }
        let missing = apply(&Other::command(), Some(&d.join("none.toml"))).unwrap_err();
        assert!(missing.to_string().contains("--config"), "{missing}");
    }
}
