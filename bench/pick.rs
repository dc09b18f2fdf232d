//! `cargo bench --bench pick`: what choosing a server costs a request, for every algorithm, with 100 servers.
//!
//! Each measurement is one `Balancer::pick` on the published snapshot, the way a data-plane thread makes it
//! (including the `Arc` it hands out and drops); the hashing algorithms also hash a typical key, as the
//! client side does when it reads the request head. Two loads: idle (no request in flight anywhere) and busy
//! (every server carrying 1 to 8 requests, uneven), since leastconn and random read the load.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use shoal::balance::{key_hash, Affinity, Backend, BackendSet, Balancer, InFlight, Options, Pool, ServerState};
use shoal::config::value::{backend, Balance};

const SERVERS: usize = 100;

/// Servers with response times already measured (as latency-aware balancing would have them).
fn servers() -> Vec<Arc<Backend>> {
    let pool = Pool::new(2);
    (0..SERVERS)
        .map(|i| {
            let server = Backend::new(&backend(&format!("node{i}=10.0.{}.{}:8080", i / 250, i % 250)).unwrap(), &pool);
            server.record_latency(500 + i as u64 * 37);
            Arc::new(server)
        })
        .collect()
}

/// Requests held in flight on every server, unevenly, for as long as the guard lives.
fn busy(servers: &[Arc<Backend>]) -> Vec<InFlight> {
    servers.iter().enumerate().flat_map(|(i, s)| (0..1 + (i * 7) % 8).map(|_| s.clone().enter())).collect()
}

fn algorithms() -> Vec<(&'static str, Balance, Options)> {
    let plain = Options::default();
    vec![
        ("roundrobin", Balance::RoundRobin, plain),
        ("leastconn", Balance::LeastConn, plain),
        ("leastconn+latency", Balance::LeastConn, Options { latency: true, ..plain }),
        ("random", Balance::Random, plain),
        ("random+latency", Balance::Random, Options { latency: true, ..plain }),
        ("source", Balance::Source, plain),
        ("uri", Balance::Uri, plain),
        ("uri+bounded", Balance::Uri, Options { hash_factor: 150, ..plain }),
        ("hdr(X-User)", Balance::Header("X-User".into()), plain),
    ]
}

fn pick(c: &mut Criterion) {
    let servers = servers();
    // Uneven weights, as agents announcing capacity would make them.
    let set = BackendSet::new(
        servers.iter().enumerate().map(|(i, s)| (s.clone(), 50 + (i % 4) as u16 * 50, ServerState::Up)).collect(),
    );
    // The keys the client side hashes: a client address, a path, a header's value.
    let clients: Vec<[u8; 4]> = (0..64).map(|i| [10, 1, (i / 8) as u8, i as u8]).collect();
    let paths: Vec<String> = (0..64).map(|i| format!("/api/items/{i}")).collect();
    let users: Vec<String> = (0..64).map(|i| format!("user-{i:04}")).collect();
    for load in ["idle", "busy"] {
        let guards = (load == "busy").then(|| busy(&servers));
        let mut group = c.benchmark_group(format!("pick/{SERVERS} servers/{load}"));
        for (name, kind, options) in algorithms() {
            let balancer = Balancer::new(&kind, 0, options);
            let key = |n: usize| -> Option<&[u8]> {
                match kind {
                    Balance::Source => Some(&clients[n % 64]),
                    Balance::Uri => Some(paths[n % 64].as_bytes()),
                    Balance::Header(_) => Some(users[n % 64].as_bytes()),
                    _ => None,
                }
            };
            let mut n = 0usize;
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| {
                    n = n.wrapping_add(1);
                    let hash = key(n).map(key_hash);
                    let affinity = Affinity { cookie: None, hash };
                    black_box(balancer.pick(black_box(&set), &affinity, &[]).map(|p| p.backend))
                })
            });
        }
        // A request carrying a sticky cookie: a map lookup before any algorithm.
        let balancer = Balancer::new(&Balance::RoundRobin, 0, Options::default());
        let ids: Vec<u64> = servers.iter().map(|s| s.cookie_id()).collect();
        let mut n = 0usize;
        group.bench_function(BenchmarkId::from_parameter("sticky cookie"), |b| {
            b.iter(|| {
                n = n.wrapping_add(1);
                let affinity = Affinity { cookie: Some(ids[n % ids.len()]), hash: None };
                black_box(balancer.pick(black_box(&set), &affinity, &[]).map(|p| p.backend))
            })
        });
        group.finish();
        drop(guards);
    }
}

criterion_group!(benches, pick);
criterion_main!(benches);
