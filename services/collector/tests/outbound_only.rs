//! The collector opens no listening socket: instruments open no inbound ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

/// Inodes of the TCP/UDP sockets in LISTEN state (or bound UDP) on this machine.
fn listening_inodes() -> HashSet<String> {
    let mut out = HashSet::new();
    for (file, listen_state) in [
        ("/proc/net/tcp", "0A"),
        ("/proc/net/tcp6", "0A"),
        ("/proc/net/udp", "07"),
        ("/proc/net/udp6", "07"),
    ] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && cols[3] == listen_state {
                out.insert(cols[9].to_string());
            }
        }
    }
    out
}

/// Socket inodes held by a process.
fn socket_inodes(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .filter_map(|l| {
            l.strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn the_check_sees_a_listening_socket_when_there_is_one() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listening = listening_inodes();
    assert!(socket_inodes(std::process::id())
        .iter()
        .any(|s| listening.contains(s)));
    drop(listener);
}

#[test]
fn the_watching_collector_has_no_listening_socket() {
    let runs = seqmon_collector::sample_runs_dir();
    let state = std::env::temp_dir().join(format!("outbound-only-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_collector"))
        .arg("--watch")
        .arg(&runs)
        .arg("--state-dir")
        .arg(&state)
        .args(["--poll-interval-s", "60", "--output", "/dev/null"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the watcher keeps running"
    );
    let sockets = socket_inodes(child.id());
    let listening = listening_inodes();
    assert!(
        sockets.iter().all(|s| !listening.contains(s)),
        "collector listens on a socket"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM stops the watcher cleanly: {status}"
    );
    assert!(
        std::fs::read_dir(&state).unwrap().count() >= 5,
        "its position is on disk"
    );
    std::fs::remove_dir_all(&state).unwrap();
}
