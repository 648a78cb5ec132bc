//! Benchmarks of the data hot paths: CSV load, transform of one raw JSON row, transform of a batch.
//! Each group has a baseline measured in the same run, so figures read as ratios on a noisy machine.
//!
//! `KILN_BENCH_ROWS` sets the rows of the CSV load (default 200,000).
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::io::BufWriter;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kiln_core::data::{self, ReadOptions};
use kiln_core::progress::NoProgress;
use kiln_core::transform::TransformSpec;

fn ctr_file(rows: u64) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new().suffix(".csv").tempfile().unwrap();
    let mut w = BufWriter::new(file.reopen().unwrap());
    kiln_core::synth::write_ctr_csv(&mut w, rows, 7, &NoProgress).unwrap();
    drop(w);
    file
}

fn csv_load(c: &mut Criterion) {
    let rows: u64 = std::env::var("KILN_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let file = ctr_file(rows);
    let mut g = c.benchmark_group("csv_load");
    g.sample_size(10);
    g.throughput(Throughput::Elements(rows));
    g.bench_function("baseline_tokenize_only", |b| {
        b.iter(|| {
            let mut r = csv::Reader::from_path(file.path()).unwrap();
            let mut rec = csv::ByteRecord::new();
            let mut n = 0u64;
            while r.read_byte_record(&mut rec).unwrap() {
                n += rec.len() as u64;
            }
            black_box(n)
        })
    });
    g.bench_function("kiln_read_to_arrow", |b| {
        b.iter(|| black_box(data::read(file.path(), &ReadOptions::default()).unwrap()))
    });
    g.finish();
}

struct Fixture {
    fitted: kiln_core::transform::FittedTransform,
    table: data::Table,
    row_json: String,
}

fn fixture() -> Fixture {
    let file = ctr_file(20_000);
    let table = data::read(file.path(), &ReadOptions::default()).unwrap();
    let spec = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/ctr.spec.toml"
    ))
    .unwrap();
    let fitted = TransformSpec::from_toml(&spec)
        .unwrap()
        .fit(&table)
        .unwrap();
    let row_json = r#"{"click": 0, "i1": 3, "i2": 48.12, "i3": 0.5123, "i4": -0.214, "i5": 130.5,
        "i6": 41, "i7": 1012, "i8": 0.00093, "c1": "c1_2", "c2": "c2_1f", "c3": "c3_a4",
        "c4": null, "c5": "c5_1b3"}"#
        .to_string();
    Fixture {
        fitted,
        table,
        row_json,
    }
}

fn transform_row(c: &mut Criterion) {
    let f = fixture();
    let mut dense = vec![0f32; f.fitted.dense_width()];
    let mut ids = vec![0u32; f.fitted.id_width()];
    let parsed: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&f.row_json).unwrap();
    let mut g = c.benchmark_group("transform_row");
    g.throughput(Throughput::Elements(1));
    g.bench_function("baseline_json_parse_only", |b| {
        b.iter(|| {
            let m: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(black_box(&f.row_json)).unwrap();
            black_box(m)
        })
    });
    g.bench_function("apply_parsed_row", |b| {
        b.iter(|| {
            f.fitted
                .apply_json_row_into(black_box(&parsed), &mut dense, &mut ids)
                .unwrap();
            black_box(&dense);
        })
    });
    g.bench_function("parse_and_apply_json_text", |b| {
        b.iter(|| {
            let m: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(black_box(&f.row_json)).unwrap();
            f.fitted
                .apply_json_row_into(&m, &mut dense, &mut ids)
                .unwrap();
            black_box(&dense);
        })
    });
    g.finish();
}

fn transform_batch(c: &mut Criterion) {
    let f = fixture();
    let batch = f.table.batches()[0].slice(4096, 1024);
    let mut dense = vec![0f32; 1024 * f.fitted.dense_width()];
    let mut ids = vec![0u32; 1024 * f.fitted.id_width()];
    let mut g = c.benchmark_group("transform_batch_1024");
    g.throughput(Throughput::Elements(1024));
    g.bench_function("baseline_read_every_cell", |b| {
        b.iter(|| {
            let mut acc = 0f64;
            for col in batch.columns() {
                for row in 0..col.len() {
                    acc += data::numeric_value(col.as_ref(), row).unwrap_or(1.0);
                }
            }
            black_box(acc)
        })
    });
    g.bench_function("apply_batch", |b| {
        b.iter(|| {
            dense.fill(0.0);
            f.fitted
                .apply_batch_into(black_box(&batch), 0, &mut dense, &mut ids)
                .unwrap();
            black_box(&dense);
        })
    });
    g.finish();
}

criterion_group!(benches, csv_load, transform_row, transform_batch);
criterion_main!(benches);
