//! The packaged collector's settings, through its own binary: a TOML file beneath environment
//! variables and flags, secrets from `*_FILE` files, and `collector validate`, which checks
//! everything a start would (files it names, directories, certificates) without sending or
//! creating anything, and names the first bad setting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use seqmon_integration_tests::gateway::Pki;
use seqmon_integration_tests::*;

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_prefix(test).trim_end_matches('.'));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `collector ARGS` with only `env` set among the collector's and Kafka's variables.
fn collector(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin("collector"));
    for (k, _) in std::env::vars() {
        if k.starts_with("COLLECTOR_") || k.starts_with("KAFKA_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).envs(env.iter().copied()).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn validate_accepts_a_site_configuration_and_names_what_is_wrong() {
    let dir = scratch("collector-validate");
    let pki = Pki::make(&dir.join("pki"));
    let runs = dir.join("runs");
    std::fs::create_dir_all(&runs).unwrap();
    let state = dir.join("var");
    let good = format!(
        "watch = {runs:?}\nstate_dir = {state:?}\nspool_dir = {spool:?}\npoll_interval_s = 15\n\
         to = \"https://ingest.example:8443\"\ngateway_ca = {ca:?}\nclient_cert = {cert:?}\n\
         client_key = {key:?}\n",
        state = state.join("state"),
        spool = state.join("spool"),
        ca = pki.path("ca.pem"),
        cert = pki.path("site-a.pem"),
        key = pki.path("site-a-key.pem"),
    );
    let config = write(&dir, "collector.toml", &good);
    let ok = collector(&["validate", "--config", &config], &[]);
    assert!(ok.status.success(), "{}", text(&ok));
    let out = text(&ok);
    assert!(out.contains("configuration valid"), "{out}");
    assert!(out.contains("every 15 s"), "{out}");
    assert!(
        out.contains("https://ingest.example:8443/v1/telemetry"),
        "{out}"
    );
    // Validating creates nothing.
    assert!(!state.exists(), "validate created {}", state.display());

    // Each fault, alone, is refused with exit 2 and the setting's name.
    let faults = [
        (
            "poll_interval_s = 15",
            "poll_interval_s = 0",
            "--poll-interval-s",
        ),
        ("client_key = ", "#client_key = ", "--client-key"),
    ];
    for (from, to, setting) in faults {
        let config = write(&dir, "bad.toml", &good.replace(from, to));
        let bad = collector(&["validate", "--config", &config], &[]);
        assert_eq!(bad.status.code(), Some(2), "{from} -> {to}: {}", text(&bad));
        assert!(text(&bad).contains(setting), "{setting}: {}", text(&bad));
    }
    let cases: Vec<(String, &str)> = vec![
        (good.clone() + "polling = 3\n", "`polling` is not a setting"),
        (
            good.clone() + "once = true\n",
            "`once` is a command-line flag only",
        ),
        (
            good.replace(&format!("{:?}", state.join("state")), "\"relative/state\""),
            "--state-dir",
        ),
        (
            good.replace(&format!("{:?}", runs), "\"/nonexistent/runs\""),
            "--watch",
        ),
        (
            good.replace(
                &format!("{:?}", pki.path("site-a.pem")),
                &format!("{:?}", pki.path("ca-missing.pem")),
            ),
            "--client-cert",
        ),
        (
            good.replace("https://", "http://"),
            "plain http:// is refused",
        ),
    ];
    for (body, expected) in cases {
        let config = write(&dir, "bad.toml", &body);
        let bad = collector(&["validate", "--config", &config], &[]);
        assert_eq!(bad.status.code(), Some(2), "{expected}: {}", text(&bad));
        assert!(text(&bad).contains(expected), "{expected}: {}", text(&bad));
    }
}

#[test]
fn flags_and_environment_override_the_file_and_secrets_come_from_files() {
    let dir = scratch("collector-layers");
    let runs = dir.join("runs");
    std::fs::create_dir_all(&runs).unwrap();
    let config = write(
        &dir,
        "collector.toml",
        &format!(
            "watch = {runs:?}\nstate_dir = {:?}\npoll_interval_s = 0\nto = \"kafka\"\n\
             bootstrap_servers = \"broker.example:9093\"\nsecurity_protocol = \"sasl-ssl\"\n\
             sasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"site-7\"\n",
            dir.join("state")
        ),
    );
    // poll_interval_s = 0 in the file: refused...
    let refused = collector(&["validate", "--config", &config], &[]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("--poll-interval-s"));
    // ...unless the environment or a flag says otherwise; the SASL password is still missing.
    let env = [("COLLECTOR_POLL_INTERVAL_S", "20")];
    let no_password = collector(&["validate", "--config", &config], &env);
    assert_eq!(no_password.status.code(), Some(2), "{}", text(&no_password));
    assert!(
        text(&no_password).contains("SASL needs a user name and a password"),
        "{}",
        text(&no_password)
    );
    // The password from a file (a Kubernetes Secret or systemd credential), never printed.
    let secret = write(&dir, "password", "pa55-word\n");
    let ok = collector(
        &["validate", "--config", &config, "--poll-interval-s", "45"],
        &[("KAFKA_SASL_PASSWORD_FILE", &secret)],
    );
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(
        text(&ok).contains("every 45 s"),
        "the flag wins: {}",
        text(&ok)
    );
    assert!(text(&ok).contains("broker.example:9093"));
    assert!(!text(&ok).contains("pa55-word"), "the secret was printed");
    // The same password as a key of the file.
    let with_key =
        std::fs::read_to_string(&config).unwrap() + &format!("sasl_password_file = {secret:?}\n");
    let config2 = write(&dir, "collector2.toml", &with_key);
    let ok = collector(&["validate", "--config", &config2], &env);
    assert!(ok.status.success(), "{}", text(&ok));
}
