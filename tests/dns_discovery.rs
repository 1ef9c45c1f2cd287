//! DNS discovery end to end: the real binary asks a real nameserver on loopback whose records
//! change during the test, and the backends it finds follow them.
//!
//! A records carry no port, so the backends listen on distinct loopback addresses
//! (127.0.0.2, .3, .4; Linux routes all of 127/8 to `lo`) on one port, as the pods behind a
//! Kubernetes headless Service do.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use fulcrum_config::{Discovery, DnsName};

/// The name the pool's backends are found under.
const NAME: &str = "web.fulcrum.test";

/// Backends `b1`..`bn` on 127.0.0.2.. on one port.
async fn backends_on_one_port(n: u8) -> (u16, Vec<BackendServer>) {
    'port: for _ in 0..20 {
        let first = BackendServer::start(SocketAddr::from(([127, 0, 0, 2], 0)), "b1")
            .await
            .unwrap();
        let port = first.addr().port();
        let mut v = vec![first];
        for i in 1..n {
            let addr = SocketAddr::from(([127, 0, 0, 2 + i], port));
            match BackendServer::start(addr, format!("b{}", i + 1)).await {
                Ok(b) => v.push(b),
                Err(_) => continue 'port,
            }
        }
        return (port, v);
    }
    panic!("no port free on 127.0.0.2 to 127.0.0.{}", 1 + n);
}

fn ip(b: &BackendServer) -> Ipv4Addr {
    match b.addr().ip() {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => unreachable!("the backends listen on IPv4 loopback"),
    }
}

/// The backends `/api/pools` lists, by address.
async fn listed(f: &Fulcrum) -> Vec<String> {
    let mut addrs: Vec<String> = f
        .backends()
        .await
        .iter()
        .map(|b| b["addr"].as_str().unwrap().to_string())
        .collect();
    addrs.sort();
    addrs
}

async fn wait_for_backends(f: &Fulcrum, want: &[&BackendServer]) {
    let mut want: Vec<String> = want.iter().map(|b| b.addr().to_string()).collect();
    want.sort();
    let seen = eventually(Duration::from_secs(5), || async {
        listed(f).await == want && f.backends().await.iter().all(|b| b["healthy"] == true)
    })
    .await;
    assert!(
        seen.is_some(),
        "the pool never became {want:?}: {:?}\n{}",
        f.backends().await,
        f.log_tail()
    );
}

async fn lookups(f: &Fulcrum, result: &str) -> f64 {
    metric(
        f,
        &format!("fulcrum_dns_lookups_total{{pool=\"web\",result=\"{result}\"}}"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_follow_the_records_and_outlive_the_nameserver() {
    let (port, b) = backends_on_one_port(3).await;
    let mut dns = Nameserver::start().await;
    dns.set(NAME, &[ip(&b[0]), ip(&b[1])]);

    let mut pool = web_pool(Algorithm::WeightedRoundRobin, &[]);
    pool.slow_start = Duration::from_millis(3000);
    pool.discovery = Discovery::Dns {
        refresh: Duration::from_millis(200),
        names: vec![DnsName {
            host: NAME.to_string(),
            port,
            weight: 1,
        }],
    };
    let resolver = dns.addr;
    let f = Fulcrum::start(move |p, a| {
        let mut config = single_pool(p, a, pool);
        config.server.dns_resolver = Some(resolver);
        config
    })
    .await;

    // Two addresses: both backends, both serving, both shown as found by DNS.
    wait_for_backends(&f, &[&b[0], &b[1]]).await;
    let pools = f.pools().await;
    assert_eq!(pools["pools"][0]["discovery"], "dns", "{pools}");
    for backend in f.backends().await {
        assert_eq!(backend["dns_name"], format!("{NAME}:{port}"), "{backend}");
    }
    let counts = tally(&f, 100).await;
    assert_eq!(counts.get("b1"), Some(&50), "{counts:?}");
    assert_eq!(counts.get("b2"), Some(&50), "{counts:?}");
    assert!(lookups(&f, "ok").await >= 1.0);

    // A third address: added through the reload path, so it starts slowly.
    dns.set(NAME, &[ip(&b[0]), ip(&b[1]), ip(&b[2])]);
    wait_for_backends(&f, &[&b[0], &b[1], &b[2]]).await;
    let added = f
        .backends()
        .await
        .into_iter()
        .find(|x| x["addr"] == b[2].addr().to_string())
        .unwrap();
    assert_eq!(added["slow_start"], true, "{added}");
    let early = tally(&f, 150).await;
    let early_b3 = early.get("b3").copied().unwrap_or(0);
    assert!(early_b3 < 40, "at the start of its ramp b3 took {early:?}");
    let ramped = eventually(Duration::from_secs(6), || async {
        f.backends().await.iter().all(|x| x["slow_start"] == false)
    })
    .await;
    assert!(ramped.is_some(), "{:?}", f.backends().await);
    let full = tally(&f, 150).await;
    assert_eq!(full.get("b3"), Some(&50), "{full:?}");

    // One address gone: the backend drains. A request it holds finishes; it gets no new one.
    let slow = tokio::spawn({
        let proxy = f.proxy;
        async move {
            let mut answered = Vec::new();
            let mut tasks = Vec::new();
            for _ in 0..6 {
                tasks.push(tokio::spawn(async move {
                    let mut c = Conn::open(proxy).await.unwrap();
                    c.send("GET", "/?delay_ms=3000", &[], b"").await.unwrap()
                }));
            }
            for t in tasks {
                answered.push(t.await.unwrap());
            }
            answered
        }
    });
    let b1_base = b[0].requests();
    let base: u64 = b.iter().map(BackendServer::requests).sum();
    // All six held, spread over the three backends (two each in weighted round robin), and
    // arrived there: the proxy counts a request in flight before the backend has read it.
    // Each is held 3 s, long enough for a loaded machine to see all six at once.
    let held = eventually(Duration::from_secs(2), || async {
        let in_flight: u64 = f
            .backends()
            .await
            .iter()
            .map(|x| x["in_flight"].as_u64().unwrap())
            .sum();
        let arrived = b.iter().map(BackendServer::requests).sum::<u64>() - base;
        in_flight == 6 && arrived == 6
    })
    .await;
    assert!(held.is_some(), "{:?}", f.backends().await);
    let b1_before = b[0].requests();
    assert!(b1_before > b1_base, "no slow request reached b1");
    dns.set(NAME, &[ip(&b[1]), ip(&b[2])]);
    wait_for_backends(&f, &[&b[1], &b[2]]).await;
    let after = tally(&f, 100).await;
    assert_eq!(after.get("b1"), None, "{after:?}");
    for r in slow.await.unwrap() {
        assert_eq!(
            r.status, 200,
            "a request held by a removed backend was lost: {r:?}"
        );
    }
    assert_eq!(
        b[0].requests(),
        b1_before,
        "b1 got new requests after DNS dropped it"
    );

    // The nameserver goes away: the last good set stays, errors are counted, traffic flows.
    let errors_before = lookups(&f, "error").await;
    dns.stop().await;
    let counted = eventually(Duration::from_secs(10), || async {
        lookups(&f, "error").await >= errors_before + 2.0
    })
    .await;
    assert!(
        counted.is_some(),
        "no failed lookup counted\n{}",
        f.log_tail()
    );
    assert_eq!(
        listed(&f).await,
        {
            let mut v = vec![b[1].addr().to_string(), b[2].addr().to_string()];
            v.sort();
            v
        },
        "the pool changed without a good answer"
    );
    let still = tally(&f, 100).await;
    assert_eq!(still.get("b2"), Some(&50), "{still:?}");
    assert_eq!(still.get("b3"), Some(&50), "{still:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_without_addresses_keeps_the_last_good_set() {
    let (port, b) = backends_on_one_port(2).await;
    let dns = Nameserver::start().await;
    dns.set(NAME, &[ip(&b[0]), ip(&b[1])]);
    let mut pool = web_pool(Algorithm::RoundRobin, &[]);
    pool.discovery = Discovery::Dns {
        refresh: Duration::from_millis(100),
        names: vec![DnsName {
            host: NAME.to_string(),
            port,
            weight: 1,
        }],
    };
    let resolver = dns.addr;
    let f = Fulcrum::start(move |p, a| {
        let mut config = single_pool(p, a, pool);
        config.server.dns_resolver = Some(resolver);
        config
    })
    .await;
    wait_for_backends(&f, &[&b[0], &b[1]]).await;

    // NXDOMAIN (a Service deleted, or a DNS glitch): counted as empty, nothing removed.
    dns.clear();
    let before = lookups(&f, "empty").await;
    let counted = eventually(Duration::from_secs(5), || async {
        lookups(&f, "empty").await >= before + 2.0
    })
    .await;
    assert!(counted.is_some(), "{}", f.log_tail());
    assert_eq!(listed(&f).await.len(), 2);
    let counts = tally(&f, 20).await;
    assert_eq!(counts.len(), 2, "{counts:?}");
    let r = get(f.admin, "/readyz").await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
}
