//! The ingest gateway on a real broker, reached the way a lab reaches it: collector → HTTP
//! CONNECT proxy (a tiny one, written here) → gateway (mutual TLS) → `telemetry.raw`.
//!
//! - The collector's run goes through the proxy while the gateway is killed (-9) and restarted
//!   mid-run: every record arrives exactly once (by message id), sealed under the ring.
//! - The API: a retried batch is written once (also after a restart, from the receipts on the
//!   changelog), a reused key with another body is refused, bad frames, sizes, media types and
//!   keys get their typed answers, the rate limit answers 429, and clients without a valid
//!   certificate (none, expired, another CA) do not get past the handshake.
//! - A collector that cannot reach the gateway keeps its batches spooled and sends them later.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use seqmon_integration_tests::gateway::{frame, post, reason, start_gateway, Proxy, Setup};
use seqmon_integration_tests::{bin, bootstrap, read_committed, wait_until};
use seqmon_model::topics::TopicRole;
use seqmon_model::{decode, Telemetry};
use seqmon_runtime::envelope::{KeyRing, HEADER};

/// Message ids of the raw topic's committed records, opened with the ring.
fn raw_message_ids(prefix: &str, ring: &KeyRing) -> Vec<String> {
    read_committed(&TopicRole::Raw.topic(prefix))
        .iter()
        .map(|r| {
            let header = r
                .headers
                .iter()
                .find(|(k, _)| k == HEADER)
                .map(|(_, v)| v.as_slice());
            let opened = ring
                .open(TopicRole::Raw, r.key.as_bytes(), header, &r.value)
                .expect("raw records are sealed by the gateway");
            decode::<Telemetry>(&opened).unwrap().message_id
        })
        .collect()
}

#[test]
fn the_api_writes_each_batch_once_and_answers_bad_requests_with_a_reason() {
    let Setup {
        prefix,
        dir,
        pki,
        keys,
        ring,
    } = Setup::new("gwapi", 0x21);
    let mut gw = start_gateway(
        &prefix,
        &pki,
        &keys,
        &["--bootstrap-servers", &bootstrap()],
        &[
            "--rate-limit-per-s",
            "1",
            "--rate-limit-burst",
            "12",
            "--max-body-bytes",
            "65536",
        ],
    );
    let site_a = pki.client(Some("site-a"));

    let batch = frame("api", 5);
    assert_eq!(
        reason(&post(&site_a, gw.port, Some("k-1"), batch.clone()).unwrap()),
        (200, "accepted".into())
    );
    let again = post(&site_a, gw.port, Some("k-1"), batch.clone()).unwrap();
    assert_eq!(reason(&again), (200, "duplicate".into()));
    assert_eq!(again.1["records"], 5);
    assert_eq!(
        reason(&post(&site_a, gw.port, Some("k-1"), frame("other", 2)).unwrap()),
        (422, "idempotency_key_reused".into())
    );
    // Another site's key space is its own.
    let site_b = pki.client(Some("site-b"));
    assert_eq!(
        reason(&post(&site_b, gw.port, Some("k-1"), frame("b", 1)).unwrap()),
        (200, "accepted".into())
    );

    // Typed refusals.
    assert_eq!(
        reason(&post(&site_a, gw.port, None, batch.clone()).unwrap()),
        (400, "bad_idempotency_key".into())
    );
    assert_eq!(
        reason(&post(&site_a, gw.port, Some("k 2"), batch.clone()).unwrap()),
        (400, "bad_idempotency_key".into())
    );
    let bad = post(
        &site_a,
        gw.port,
        Some("k-3"),
        b"SQB1\x00\x00\x00\x01garbage".to_vec(),
    )
    .unwrap();
    assert_eq!(reason(&bad), (400, "bad_frame".into()));
    // A record the broker would refuse (two hours ahead) is refused here, before Kafka, so it
    // cannot fail a transaction other sites' batches share.
    let mut ahead = seqmon_model::ingest::begin(1);
    let value = seqmon_model::encode(&seqmon_integration_tests::gateway::sample()).unwrap();
    seqmon_model::ingest::push(
        &mut ahead,
        "M00001",
        seqmon_integration_tests::now_ms() + 7_200_000,
        &value,
    );
    let answer = post(&site_a, gw.port, Some("k-ahead"), ahead).unwrap();
    assert_eq!(reason(&answer), (400, "bad_frame".into()), "{answer:?}");
    assert_eq!(
        reason(&post(&site_a, gw.port, Some("k-4"), vec![0u8; 70_000]).unwrap()),
        (413, "too_large".into())
    );
    let wrong_type = site_a
        .post(format!("https://127.0.0.1:{}/v1/telemetry", gw.port))
        .header("idempotency-key", "k-5")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(wrong_type.status().as_u16(), 415);
    let get = site_a
        .get(format!("https://127.0.0.1:{}/v1/telemetry", gw.port))
        .send()
        .unwrap();
    assert_eq!(get.status().as_u16(), 405);

    // Certificates: none, expired, or from another CA never reach the API.
    for who in [None, Some("expired"), Some("stranger")] {
        let refused = post(&pki.client(who), gw.port, Some("k-6"), batch.clone());
        assert!(refused.is_err(), "{who:?} got an answer: {refused:?}");
    }

    // Every request costs a token, refused ones too: site-b's burst of 12 (it made one
    // request) is spent well before 1/s refills it.
    let mut limited = None;
    for _ in 0..30 {
        let a = site_b
            .get(format!("https://127.0.0.1:{}/v1/telemetry", gw.port))
            .send()
            .unwrap();
        if a.status().as_u16() == 429 {
            limited = Some(a);
            break;
        }
    }
    let limited = limited.expect("rate limited");
    assert!(limited.headers().get("retry-after").is_some());

    // kill -9 and restart: the receipt comes back from the changelog.
    gw.service.kill9();
    gw.service.restart();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        reason(&post(&site_a, gw.port, Some("k-1"), batch).unwrap()),
        (200, "duplicate".into())
    );

    let mut ids = raw_message_ids(&prefix, &ring);
    ids.sort();
    let mut expected: Vec<String> = (0..5).map(|i| format!("api-{i}")).collect();
    expected.push("b-0".into());
    expected.sort();
    assert_eq!(ids, expected, "each accepted batch exactly once");
    let m = gw.service.metrics();
    assert!(
        m.get("seqmon_requests_total{reason=\"duplicate\"}")
            .copied()
            .unwrap_or(0.0)
            >= 1.0,
        "{m:?}"
    );
    assert!(
        m.get("seqmon_tls_handshake_failures_total")
            .copied()
            .unwrap_or(0.0)
            == 0.0,
        "a fresh process"
    );
    // Receipts on the changelog name neither site nor key.
    for r in read_committed(&TopicRole::ChangelogIngestGateway.topic(&prefix)) {
        assert!(
            r.headers.iter().any(|(k, _)| k == HEADER),
            "receipts are sealed"
        );
        assert!(!r.key.contains("site-a") && !r.key.contains("k-1"));
    }
    assert_eq!(
        gw.service.terminate().code(),
        Some(0),
        "{}",
        gw.service.log_text()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn collector(args: &[&str], proxy: Option<u16>, log: &Path) -> Command {
    let mut c = Command::new(bin("collector"));
    c.args(args)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(log).unwrap());
    if let Some(p) = proxy {
        c.env("HTTPS_PROXY", format!("http://127.0.0.1:{p}"));
    }
    c
}

#[test]
fn collector_through_a_proxy_exactly_once_across_a_gateway_kill() {
    let Setup {
        prefix,
        dir,
        pki,
        keys,
        ring,
    } = Setup::new("gwe2e", 0x31);
    let folders = seqmon_collector::sample_run_folders();
    let folder = folders
        .iter()
        .max_by_key(|f| {
            std::fs::read_dir(f.join("InterOp"))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .expect("sample run folders");
    let folder = folder.to_str().unwrap();

    // The records the collector makes of the folder, by message id.
    let reference = dir.join("reference.jsonl");
    let st = collector(
        &[
            "--run-folder",
            folder,
            "--consent-override",
            "opted-in",
            "--to",
            "file",
            "--output",
            reference.to_str().unwrap(),
        ],
        None,
        &dir.join("ref.log"),
    )
    .status()
    .unwrap();
    assert!(st.success());
    let mut expected: Vec<String> = std::fs::read_to_string(&reference)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["message_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    expected.sort();
    assert!(expected.len() >= 40, "{} records", expected.len());

    // Throttled to 4 batches/s so the kill lands mid-run.
    let mut gw = start_gateway(
        &prefix,
        &pki,
        &keys,
        &["--bootstrap-servers", &bootstrap()],
        &["--rate-limit-per-s", "4", "--rate-limit-burst", "2"],
    );
    let proxy = Proxy::start();
    let spool = dir.join("spool");
    let per_batch = (expected.len() / 20).max(1).to_string();
    let url = format!("https://127.0.0.1:{}", gw.port);
    let (ca, cert, key) = (
        pki.path("ca.pem").to_str().unwrap().to_string(),
        pki.path("site-a.pem").to_str().unwrap().to_string(),
        pki.path("site-a-key.pem").to_str().unwrap().to_string(),
    );
    let args = [
        "--run-folder",
        folder,
        "--consent-override",
        "opted-in",
        "--to",
        &url,
        "--gateway-ca",
        &ca,
        "--client-cert",
        &cert,
        "--client-key",
        &key,
        "--spool-dir",
        spool.to_str().unwrap(),
        "--batch-records",
        &per_batch,
        "--request-timeout-s",
        "10",
        "--send-timeout-s",
        "180",
    ];
    let log = dir.join("collector.log");
    let mut run = collector(&args, Some(proxy.port), &log).spawn().unwrap();
    let raw = TopicRole::Raw.topic(&prefix);
    assert!(
        wait_until(Duration::from_secs(60), || !read_committed(&raw).is_empty()),
        "nothing arrived; collector log:\n{}\ngateway log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        gw.service.log_text()
    );
    gw.service.kill9();
    let during = read_committed(&raw).len();
    std::thread::sleep(Duration::from_secs(3));
    gw.service.restart();
    let status = run.wait().unwrap();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.success(),
        "collector failed: {log_text}\ngateway log:\n{}",
        gw.service.log_text()
    );
    assert!(
        during < expected.len(),
        "the kill landed after the last batch ({during} records)"
    );
    assert!(
        log_text.contains("will retry"),
        "the collector saw the gateway go: {log_text}"
    );
    assert!(
        proxy.tunnels.load(Ordering::SeqCst) >= 2,
        "the collector went through the proxy"
    );

    let mut got = raw_message_ids(&prefix, &ring);
    got.sort();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &got {
        *counts.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "written more than once: {twice:?}");
    assert_eq!(got, expected, "every record exactly once");
    assert!(
        std::fs::read_dir(&spool)
            .unwrap()
            .filter_map(|e| e.ok())
            .all(|e| !e.file_name().to_string_lossy().ends_with(".batch")),
        "spool drained"
    );

    // Offline: the gateway is gone, so the batches stay spooled and the run says so ...
    assert_eq!(gw.service.terminate().code(), Some(0));
    let offline_log = dir.join("offline.log");
    let mut offline_args = args.to_vec();
    let at = offline_args
        .iter()
        .position(|a| *a == "--send-timeout-s")
        .unwrap();
    offline_args[at + 1] = "2";
    let st = collector(&offline_args, Some(proxy.port), &offline_log)
        .status()
        .unwrap();
    assert!(!st.success());
    let text = std::fs::read_to_string(&offline_log).unwrap();
    assert!(text.contains("stay in --spool-dir"), "{text}");
    // ... and go out on the next run (a watch of an empty folder, once), still exactly once
    // downstream of the validator: the gateway writes what it is sent, and the same run's
    // records collected again carry the same message ids.
    let gw2 = start_gateway(
        &prefix,
        &pki,
        &keys,
        &["--bootstrap-servers", &bootstrap()],
        &[],
    );
    let url2 = format!("https://127.0.0.1:{}", gw2.port);
    let tunnels_before = proxy.tunnels.load(Ordering::SeqCst);
    let empty = dir.join("watch");
    std::fs::create_dir_all(&empty).unwrap();
    let st = collector(
        &[
            "--watch",
            empty.to_str().unwrap(),
            "--once",
            "--state-dir",
            dir.join("state").to_str().unwrap(),
            "--to",
            &url2,
            "--gateway-ca",
            &ca,
            "--client-cert",
            &cert,
            "--client-key",
            &key,
            "--spool-dir",
            spool.to_str().unwrap(),
        ],
        Some(proxy.port),
        &dir.join("later.log"),
    )
    // NO_PROXY names the gateway: this run goes direct, past the proxy.
    .env("NO_PROXY", "127.0.0.1")
    .status()
    .unwrap();
    assert!(
        st.success(),
        "{}",
        std::fs::read_to_string(dir.join("later.log")).unwrap_or_default()
    );
    assert_eq!(raw_message_ids(&prefix, &ring).len(), 2 * expected.len());
    assert_eq!(
        proxy.tunnels.load(Ordering::SeqCst),
        tunnels_before,
        "NO_PROXY was not honoured"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
