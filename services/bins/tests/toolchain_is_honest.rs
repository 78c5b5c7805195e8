//! The Rust toolchain the project claims is one that builds it, and the image's bases are pinned
//! by digest: the workspace's `rust-version` and the Dockerfile's build image are at least the
//! newest `rust-version` among the crates Cargo.lock pins for this platform (a lock file that moved on to crates
//! needing a newer compiler would otherwise break the image, as uuid 1.29 once did). Reads `cargo metadata --locked --offline`, so the
//! lock file itself must be current. clippy's `incompatible_msrv` lint (on in `make lint`)
//! checks the other half: our own code uses no std API newer than the workspace's rust-version.

use std::path::PathBuf;
use std::process::Command;

fn version(text: &str) -> (u32, u32, u32) {
    let mut parts = text
        .trim()
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_declared_toolchains_build_every_locked_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The crates built for this machine's platform (the image builds for Linux too): without the
    // filter, cargo needs every platform's crates (android_system_properties, ...) downloaded,
    // which a fresh machine's `cargo build` never does, and `--offline` then fails.
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let host = String::from_utf8(
        Command::new(rustc)
            .arg("-vV")
            .output()
            .expect("rustc runs")
            .stdout,
    )
    .expect("rustc -vV is text")
    .lines()
    .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
    .expect("rustc -vV names the host");
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata --locked failed (is Cargo.lock current?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let (needed, by) = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| {
            let v = p["rust_version"].as_str()?;
            Some((version(v), format!("{} {}", p["name"], p["version"])))
        })
        .max()
        .expect("some crate states a rust-version");

    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    let declared = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version = "))
        .map(|v| version(v.trim_matches('"')))
        .expect("the workspace states a rust-version");
    assert!(
        declared >= needed,
        "workspace rust-version {declared:?} is older than {needed:?}, which {by} needs"
    );

    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let image = dockerfile
        .lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix("FROM rust:")?;
            Some(version(rest.split(['-', ' ', '@']).next()?))
        })
        .expect("the Dockerfile builds FROM rust:<version>");
    assert!(
        image >= needed,
        "the Dockerfile builds with Rust {image:?}, older than {needed:?}, which {by} needs"
    );
    // Every base image by digest: a tag can move under us.
    for from in dockerfile
        .lines()
        .filter(|l| l.trim_start().starts_with("FROM "))
    {
        let digest = from
            .split_whitespace()
            .nth(1)
            .and_then(|image| image.split_once("@sha256:"))
            .map(|(_, d)| d);
        assert!(
            digest.is_some_and(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit())),
            "not pinned by digest: {from}"
        );
    }
}
