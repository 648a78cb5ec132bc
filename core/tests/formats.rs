//! CSV, JSON Lines and Parquet holding the same rows read into the same table.
#![allow(clippy::unwrap_used)]

use kiln_core::data::{self, ColumnType, ReadOptions, Table};
use kiln_core::stats::DatasetStatistics;

const CSV: &str = "\
id,score,ok,city,note
1,0.5,true,Oslo,\"a, quoted\"\"note\"\"\"
2,NA,false,Lima,
3,-2.25,,Oslo,plain
4,1e3,true,NaN,x
";

const JSONL: &str = r#"{"id": 1, "score": 0.5, "ok": true, "city": "Oslo", "note": "a, quoted\"note\""}
{"id": 2, "score": null, "ok": false, "city": "Lima"}

{"id": 3, "score": -2.25, "ok": null, "city": "Oslo", "note": "plain"}
{"id": 4, "score": 1000, "ok": true, "note": "x"}
"#;

fn read(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> Table {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    data::read(&path, &ReadOptions::default()).unwrap()
}

fn types(t: &Table) -> Vec<ColumnType> {
    (0..t.num_columns()).map(|i| t.column_type(i)).collect()
}

#[test]
fn the_same_rows_in_three_formats_are_the_same_table() {
    let dir = tempfile::tempdir().unwrap();
    let csv = read(&dir, "t.csv", CSV.as_bytes());
    assert_eq!(
        types(&csv),
        [
            ColumnType::Integer,
            ColumnType::Float,
            ColumnType::Boolean,
            ColumnType::Categorical,
            ColumnType::Categorical
        ]
    );
    let jsonl = read(&dir, "t.jsonl", JSONL.as_bytes());
    assert_eq!(types(&jsonl), types(&csv));
    assert_eq!(jsonl.fingerprint(), csv.fingerprint());

    // Parquet written by the Arrow writer, as pyarrow or Polars would.
    let path = dir.path().join("t.parquet");
    let file = std::fs::File::create(&path).unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(file, csv.arrow_schema().clone(), None).unwrap();
    for b in csv.batches() {
        w.write(b).unwrap();
    }
    w.close().unwrap();
    let pq = data::read(&path, &ReadOptions::default()).unwrap();
    assert_eq!(types(&pq), types(&csv));
    assert_eq!(pq.fingerprint(), csv.fingerprint());

    let (a, b) = (
        DatasetStatistics::compute(&csv),
        DatasetStatistics::compute(&pq),
    );
    assert_eq!(a.columns, b.columns);
}

#[test]
fn delimiter_and_tsv() {
    let dir = tempfile::tempdir().unwrap();
    let tsv = read(&dir, "t.tsv", b"a\tb\n1\tx y\n");
    assert_eq!(types(&tsv), [ColumnType::Integer, ColumnType::Categorical]);
    let path = dir.path().join("semi.csv");
    std::fs::write(&path, "a;b\n1;2,5\n").unwrap();
    let o = ReadOptions {
        delimiter: Some(b';'),
        ..ReadOptions::default()
    };
    let t = data::read(&path, &o).unwrap();
    assert_eq!(types(&t), [ColumnType::Integer, ColumnType::Categorical]);
}

#[test]
fn type_overrides_apply_to_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = ReadOptions::default();
    o.types.insert("id".into(), ColumnType::Categorical);
    o.types.insert("score".into(), ColumnType::Float);
    for (name, bytes) in [("t.csv", CSV), ("t.jsonl", JSONL)] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let t = data::read(&path, &o).unwrap();
        assert_eq!(t.column_type(0), ColumnType::Categorical, "{name}");
    }
}

/// Parquet as pyarrow writes it with each codec (fixtures made by
/// `core/tests/fixtures/parquet/make.py`): every one reads into the same table.
#[test]
fn parquet_with_every_codec_reads_the_same() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parquet");
    let plain = data::read(&dir.join("none.parquet"), &ReadOptions::default()).unwrap();
    assert_eq!(plain.num_rows(), 5);
    assert_eq!(
        types(&plain),
        [
            ColumnType::Float,
            ColumnType::Integer,
            ColumnType::Categorical,
            ColumnType::Boolean
        ]
    );
    assert_eq!(
        plain.numbers(0),
        [Some(1.5), None, Some(-2.25), Some(1e6), Some(0.0)]
    );
    for codec in ["snappy", "gzip", "brotli", "lz4", "zstd"] {
        let t = data::read(
            &dir.join(format!("{codec}.parquet")),
            &ReadOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{codec}: {e}"));
        assert_eq!(t.fingerprint(), plain.fingerprint(), "{codec}");
        assert_eq!(types(&t), types(&plain), "{codec}");
    }
}
