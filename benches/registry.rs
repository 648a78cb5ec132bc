//! Benchmarks of the registry: metric logging (1 and 8 threads), registering a version and moving
//! an alias (each with its fsync), and listing 10,000 runs. Baselines in the same run: raw sled
//! inserts of the same key and value sizes, and one sled flush.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kiln_core::registry::{Expect, NewRun, Registry};

const POINTS: u64 = 1_000;

fn metrics(c: &mut Criterion) {
    let home = tempfile::tempdir().unwrap();
    let reg = Registry::open(home.path()).unwrap();
    let runs: Vec<u64> = (0..8)
        .map(|_| reg.create_run(NewRun::default()).unwrap().id)
        .collect();
    let raw = sled::open(home.path().join("baseline")).unwrap();
    let mut g = c.benchmark_group("log_metrics");
    g.throughput(Throughput::Elements(POINTS));
    let mut step = 0i64;
    g.bench_function("baseline_raw_sled_insert", |b| {
        b.iter(|| {
            for _ in 0..POINTS {
                step += 1;
                let mut k = [0u8; 28];
                k[..8].copy_from_slice(&step.to_be_bytes());
                raw.insert(k, &[0u8; 17]).unwrap();
            }
        })
    });
    g.bench_function("one_thread", |b| {
        b.iter(|| {
            for _ in 0..POINTS {
                step += 1;
                reg.log_metrics(runs[0], &[("loss", step, 0.5)]).unwrap();
            }
        })
    });
    g.throughput(Throughput::Elements(8 * POINTS));
    g.bench_function("eight_threads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                std::thread::scope(|s| {
                    for run in &runs {
                        let reg = &reg;
                        s.spawn(move || {
                            for p in 0..POINTS as i64 {
                                reg.log_metrics(*run, &[("loss", (i as i64) * 10_000 + p, 0.5)])
                                    .unwrap();
                            }
                        });
                    }
                });
            }
            start.elapsed()
        })
    });
    g.finish();
}

fn mutations(c: &mut Criterion) {
    let home = tempfile::tempdir().unwrap();
    let reg = Registry::open(home.path()).unwrap();
    let file = home.path().join("weights.bin");
    std::fs::write(&file, vec![7u8; 64 * 1024]).unwrap();
    let run = reg.create_run(NewRun::default()).unwrap().id;
    reg.log_artifact(run, "model", &file).unwrap();
    let raw = sled::open(home.path().join("baseline")).unwrap();
    let mut g = c.benchmark_group("durable_mutation");
    g.sample_size(30).measurement_time(Duration::from_secs(6));
    let mut n = 0u64;
    g.bench_function("baseline_sled_insert_and_flush", |b| {
        b.iter(|| {
            n += 1;
            raw.insert(n.to_be_bytes(), &[1u8; 200][..]).unwrap();
            raw.flush().unwrap();
        })
    });
    g.bench_function("register_version", |b| {
        b.iter(|| {
            black_box(
                reg.register_version("bench", run, "model", "", None)
                    .unwrap(),
            )
        })
    });
    let mut current = reg.aliases("bench").unwrap().get("champion").copied();
    g.bench_function("move_alias_compare_and_set", |b| {
        b.iter(|| {
            let to = if current == Some(1) { 2 } else { 1 };
            let expect = current.map_or(Expect::Absent, Expect::Version);
            reg.set_alias("bench", "champion", to, expect, "bench", "")
                .unwrap();
            current = Some(to);
        })
    });
    g.finish();
}

fn listing(c: &mut Criterion) {
    let home = tempfile::tempdir().unwrap();
    let reg = Registry::open(home.path()).unwrap();
    for i in 0..10_000 {
        let id = reg
            .create_run(NewRun {
                experiment: format!("exp{}", i % 10),
                ..Default::default()
            })
            .unwrap()
            .id;
        reg.log_metrics(id, &[("auc", 0, f64::from(i % 100) / 100.0)])
            .unwrap();
    }
    reg.flush().unwrap();
    let mut g = c.benchmark_group("list_runs");
    g.sample_size(10);
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("all_10000", |b| {
        b.iter(|| black_box(reg.runs(None).unwrap()))
    });
    g.bench_function("all_10000_with_latest_metrics", |b| {
        b.iter(|| {
            let runs = reg.runs(None).unwrap();
            let m: Vec<_> = runs
                .iter()
                .map(|r| reg.latest_metrics(r.id).unwrap())
                .collect();
            black_box(m)
        })
    });
    g.finish();
}

criterion_group!(benches, metrics, mutations, listing);
criterion_main!(benches);
