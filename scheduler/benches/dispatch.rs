//! Scheduling overhead per step: DAGs of 1,000 steps that do nothing, wide (all independent)
//! and deep (a chain). Measured twice: the executor alone (planning, permits, retries' loop,
//! events), and whole recorded runs (templates, cache keys, output digests, the run record in
//! the registry). The baseline in the same run is a tokio task spawned and joined per step,
//! the least any async executor does per step.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kiln_core::registry::Registry;
use kiln_scheduler::executor::{Attempt, Limits, StepRunner, execute};
use kiln_scheduler::pipeline::Step;
use kiln_scheduler::run::{
    ComponentCall, ComponentError, Components, Force, RunRequest, run_pipeline,
};
use tokio::sync::watch;

const STEPS: usize = 1000;

fn dag(wide: bool, step: &str) -> String {
    let mut text = String::from("name = \"bench\"\n");
    for i in 0..STEPS {
        text.push_str(&format!("[[steps]]\nid = \"s{i}\"\n{step}\n"));
        if !wide && i > 0 {
            text.push_str(&format!("needs = [\"s{}\"]\n", i - 1));
        }
    }
    text
}

struct Nothing;

impl StepRunner for Nothing {
    async fn run(&self, _step: &Step, _attempt: u32) -> Attempt {
        Attempt::Succeeded
    }
}

const INGEST: &[kiln_scheduler::ComponentSpec] = &[kiln_scheduler::ComponentSpec {
    name: "ingest",
    args: &[kiln_scheduler::pipeline::Arg::required("path")],
    outputs: &[],
}];

impl Components for Nothing {
    fn catalogue(&self) -> &'static [kiln_scheduler::ComponentSpec] {
        INGEST
    }

    fn run(&self, _call: &ComponentCall) -> Result<BTreeMap<String, String>, ComponentError> {
        Ok(BTreeMap::new())
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("dispatch");
    g.throughput(Throughput::Elements(STEPS as u64));
    g.sample_size(10);
    g.bench_function("baseline: spawn and join a task per step", |b| {
        b.to_async(&rt).iter(|| async {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..STEPS {
                set.spawn(async move { black_box(i) });
            }
            while set.join_next().await.is_some() {}
        });
    });
    let limits = Limits {
        parallel: 16,
        ..Limits::default()
    };
    for wide in [true, false] {
        let shape = if wide { "wide" } else { "deep" };
        let p = kiln_scheduler::parse_with(&dag(wide, "run = \"true\""), Nothing.catalogue())
            .pipeline
            .unwrap();
        g.bench_with_input(BenchmarkId::new("executor", shape), &p, |b, p| {
            b.to_async(&rt)
                .iter(|| async { black_box(execute(p, Arc::new(Nothing), limits.clone()).await) });
        });
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::open(&dir.path().join("home")).unwrap());
        let text = dag(
            wide,
            "uses = \"ingest\"\nwith = { path = \"x\" }\ncache = false",
        );
        let file = dir.path().join("p.toml");
        std::fs::write(dir.path().join("x"), "x").unwrap();
        g.bench_with_input(BenchmarkId::new("recorded run", shape), &text, |b, text| {
            b.to_async(&rt).iter(|| async {
                let (_keep, cancel) = watch::channel(false);
                let request = RunRequest {
                    file: file.clone(),
                    text: text.clone(),
                    params: BTreeMap::new(),
                    trigger: "bench".into(),
                    logical_date: "2026-11-28".into(),
                    force: Force::All,
                    limits: limits.clone(),
                    path_prefix: Vec::new(),
                    notifier: None,
                };
                black_box(
                    run_pipeline(
                        registry.clone(),
                        Arc::new(Nothing),
                        request,
                        cancel,
                        &|_| {},
                    )
                    .await
                    .unwrap(),
                )
            });
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
