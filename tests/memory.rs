//! Memory given back after a burst of held request heads, through the real binary and raw
//! sockets: the resident set falls back near where it was once the connections are gone.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fulcrum_config::ClientLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connections in the burst, and the bytes of unfinished head each sends (below the 64 KiB
/// head limit, so each is answered 408 when the header timeout runs out).
const CONNECTIONS: usize = 300;
const HEAD_BYTES: usize = 60_000;

/// The process's resident set in bytes, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb * 1024
}

/// An unfinished request head of about `bytes`: header lines of 1000 bytes, no blank line.
fn unfinished_head(bytes: usize) -> Vec<u8> {
    let mut head = b"GET /hold HTTP/1.1\r\nHost: x\r\n".to_vec();
    let line = format!("X-Hold: {}\r\n", "a".repeat(1000));
    while head.len() + line.len() <= bytes {
        head.extend_from_slice(line.as_bytes());
    }
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_held_by_unfinished_heads_is_given_back_after_they_close() {
    let b = backends(1).await;
    let pool = web_pool(Algorithm::RoundRobin, &[&b[0]]);
    let f = Fulcrum::start(move |p, a| {
        let mut config = fulcrum_lab::harness::single_pool(p, a, pool);
        config.server.limits = ClientLimits {
            header_timeout: Duration::from_secs(3),
            ..ClientLimits::default()
        };
        config
    })
    .await;
    // Some ordinary traffic first, so that the resting level includes a served request's
    // allocations.
    for _ in 0..20 {
        fulcrum_lab::harness::get(f.proxy, "/").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_bytes(f.pid());

    let head = unfinished_head(HEAD_BYTES);
    let mut held = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let mut s = TcpStream::connect(f.proxy).await.unwrap();
        s.write_all(&head).await.unwrap();
        held.push(s);
    }
    // Every head is read (and buffered) well before the header timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let peak = rss_bytes(f.pid());
    let mut answered = 0;
    for mut s in held {
        let mut answer = [0u8; 12];
        if tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut answer))
            .await
            .is_ok_and(|r| r.is_ok())
            && &answer == b"HTTP/1.1 408"
        {
            answered += 1;
        }
    }
    assert_eq!(answered, CONNECTIONS, "every held head gets 408");
    let grown = peak.saturating_sub(before);
    assert!(
        grown >= 10 << 20,
        "the held heads should have grown the resident set: {before} -> {peak} bytes"
    );

    // The housekeeping looks once a second and collects once the connections stopped falling.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut after = rss_bytes(f.pid());
    while after > before + grown / 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = rss_bytes(f.pid());
    }
    assert!(
        after <= before + grown / 5,
        "resident set {} MB before, {} MB with the heads held, still {} MB after they closed",
        before >> 20,
        peak >> 20,
        after >> 20
    );
    // Counted once the collection on every worker has finished.
    let mut releases = metric(&f, "fulcrum_memory_releases_total").await;
    while releases < 1.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        releases = metric(&f, "fulcrum_memory_releases_total").await;
    }
    assert!(releases >= 1.0, "no collection counted");
}
