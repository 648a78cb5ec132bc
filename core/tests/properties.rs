//! Property tests of the transform and validation contracts.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow_array::builder::StringDictionaryBuilder;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type};
use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch};
use kiln_core::data::{self, ColumnType, ReadOptions, Table, arrow_schema};
use kiln_core::schema::{AnomalyKind, Schema};
use kiln_core::stats::DatasetStatistics;
use kiln_core::transform::{FittedTransform, TransformSpec};
use proptest::prelude::*;
use serde_json::{Map, Value};

#[derive(Debug, Clone)]
struct Row {
    n1: Option<f64>,
    n2: Option<i64>,
    b: Option<bool>,
    c: Option<String>,
    null_as_absent: bool,
}

fn row() -> impl Strategy<Value = Row> {
    (
        proptest::option::weighted(0.8, -1000.0f64..1000.0),
        proptest::option::weighted(0.8, 0i64..100),
        proptest::option::weighted(0.8, any::<bool>()),
        proptest::option::weighted(
            0.8,
            prop_oneof![
                4 => "[a-e]",
                1 => "[a-z]{1,6}",
                1 => Just("NA".to_string()),
            ],
        ),
        any::<bool>(),
    )
        .prop_map(|(n1, n2, b, c, null_as_absent)| Row {
            n1,
            n2,
            b,
            c,
            null_as_absent,
        })
}

/// A table of the rows, split into two batches at `split`; the first row always has values.
fn table(rows: &[Row], split: usize) -> Table {
    let columns = [
        ("n1".to_string(), ColumnType::Float),
        ("n2".to_string(), ColumnType::Integer),
        ("b".to_string(), ColumnType::Boolean),
        ("c".to_string(), ColumnType::Categorical),
    ];
    let schema = arrow_schema(&columns);
    let batch = |rows: &[Row]| {
        let mut c = StringDictionaryBuilder::<Int32Type>::new();
        for r in rows {
            c.append_option(r.c.as_deref());
        }
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(rows.iter().map(|r| r.n1).collect::<Float64Array>()),
            Arc::new(rows.iter().map(|r| r.n2).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.b).collect::<BooleanArray>()),
            Arc::new(c.finish()),
        ];
        RecordBatch::try_new(schema.clone(), arrays).unwrap()
    };
    let split = split.min(rows.len());
    Table::from_batches(
        "rows",
        schema.clone(),
        vec![batch(&rows[..split]), batch(&rows[split..])],
    )
    .unwrap()
}

fn json_row(r: &Row) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| match v {
        Some(v) => {
            m.insert(k.to_string(), v);
        }
        None if r.null_as_absent => {}
        None => {
            m.insert(k.to_string(), Value::Null);
        }
    };
    put("n1", r.n1.map(|v| serde_json::json!(v)));
    put("n2", r.n2.map(|v| serde_json::json!(v)));
    put("b", r.b.map(|v| serde_json::json!(v)));
    put("c", r.c.clone().map(Value::String));
    m
}

const SPEC: &str = r#"
[[features]]
columns = ["n1"]
impute = "keep"
encode = "standardize"

[[features]]
columns = ["n2"]
impute = "median"
clip = [0, 50]
log1p = true
encode = "min_max"

[[features]]
columns = ["n1"]
encode = "bucketize"
quantiles = 4
output = "id"

[[features]]
columns = ["n2"]
encode = "bucketize"
boundaries = [10, 20, 30]

[[features]]
columns = ["b"]
impute = "most_frequent"

[[features]]
columns = ["c"]
encode = "vocabulary"
top_k = 3
oov_buckets = 2

[[features]]
columns = ["c"]
impute = "constant"
fill = "zz"
encode = "vocabulary"
min_frequency = 2
output = "id"

[[features]]
columns = ["n2"]
encode = "hash"
buckets = 7
"#;

fn rows_with_values() -> impl Strategy<Value = (Vec<Row>, usize)> {
    (proptest::collection::vec(row(), 1..80), 0usize..80).prop_map(|(mut rows, split)| {
        let first = &mut rows[0];
        first.n1.get_or_insert(1.5);
        first.n2.get_or_insert(3);
        first.b.get_or_insert(true);
        first.c.get_or_insert_with(|| "a".to_string());
        (rows, split)
    })
}

fn bits(f: &[f32]) -> Vec<u32> {
    f.iter().map(|v| v.to_bits()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn batch_apply_equals_single_row_apply((rows, split) in rows_with_values()) {
        let t = table(&rows, split);
        let fitted = TransformSpec::from_toml(SPEC).unwrap().fit(&t).unwrap();
        let batch = fitted.apply_table(&t).unwrap();
        prop_assert_eq!(batch.rows, rows.len());
        for (i, r) in rows.iter().enumerate() {
            let one = fitted.apply_json_row(&json_row(r)).unwrap();
            prop_assert_eq!(bits(&one.dense), bits(batch.dense_row(i)), "row {}: {:?}", i, r);
            prop_assert_eq!(&one.ids[..], batch.id_row(i), "row {}: {:?}", i, r);
        }
    }

    #[test]
    fn fit_save_load_apply_gives_the_same_features((rows, split) in rows_with_values()) {
        let t = table(&rows, split);
        let fitted = TransformSpec::from_toml(SPEC).unwrap().fit(&t).unwrap();
        let json = fitted.to_json();
        let loaded = FittedTransform::from_json(&json).unwrap();
        prop_assert_eq!(&loaded, &fitted);
        prop_assert_eq!(loaded.to_json(), json);
        let a = fitted.apply_table(&t).unwrap();
        let b = loaded.apply_table(&t).unwrap();
        prop_assert_eq!(bits(&a.dense), bits(&b.dense));
        prop_assert_eq!(a.ids, b.ids);
    }
}

/// The kinds of corruption injected into a copy of a dataset.
#[derive(Debug, Clone, Copy)]
enum Corruption {
    Drop,
    OutOfRange,
    Missing,
    WrongType,
}

fn breast_cancer() -> Table {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/data/breast_cancer.csv"
    );
    let mut o = ReadOptions::default();
    o.types.insert("label".into(), ColumnType::Categorical);
    data::read(std::path::Path::new(path), &o).unwrap()
}

fn kind_tag(k: &AnomalyKind) -> &'static str {
    match k {
        AnomalyKind::MissingColumn => "missing_column",
        AnomalyKind::ExtraColumn => "extra_column",
        AnomalyKind::WrongType { .. } => "wrong_type",
        AnomalyKind::MissingRate { .. } => "missing_rate",
        AnomalyKind::OutOfRange { .. } => "out_of_range",
        AnomalyKind::UnseenCategories { .. } => "unseen_categories",
        AnomalyKind::Drift { .. } => "drift",
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn validation_finds_every_injected_anomaly(
        picks in proptest::sample::subsequence((0usize..30).collect::<Vec<_>>(), 0..8),
        kinds in proptest::collection::vec(0usize..4, 8),
        rate in 0.05f64..0.5,
        extra in any::<bool>(),
        unseen in any::<bool>(),
    ) {
        let clean = breast_cancer();
        let schema = Schema::infer(&clean, &DatasetStatistics::compute(&clean));
        let batch = &clean.batches()[0];
        let n = clean.num_rows();
        let hit = |row: usize| (row as f64 * 0.618_033_988_7).fract() < rate;
        let mut expected: BTreeSet<(String, &str)> = BTreeSet::new();
        let mut columns: Vec<(String, ColumnType)> = Vec::new();
        let mut arrays: Vec<ArrayRef> = Vec::new();
        for index in 0..clean.num_columns() {
            let name = clean.column_name(index).to_string();
            let array = batch.column(index).clone();
            let corruption = picks
                .iter()
                .position(|p| *p == index)
                .map(|i| [Corruption::Drop, Corruption::OutOfRange, Corruption::Missing, Corruption::WrongType][kinds[i]]);
            let (ty, array): (ColumnType, ArrayRef) = match corruption {
                None if name == "label" && unseen => {
                    expected.insert((name.clone(), "unseen_categories"));
                    let d = array.as_dictionary::<Int32Type>();
                    let v = d.values().as_string::<i32>();
                    let mut b = StringDictionaryBuilder::<Int32Type>::new();
                    for (row, k) in d.keys().iter().enumerate() {
                        let s = v.value(k.unwrap() as usize);
                        b.append_value(if hit(row) || row == 0 { "2" } else { s });
                    }
                    (ColumnType::Categorical, Arc::new(b.finish()))
                }
                None => (clean.column_type(index), array),
                Some(Corruption::Drop) => {
                    expected.insert((name.clone(), "missing_column"));
                    continue;
                }
                Some(c) => {
                    let values = array.as_primitive::<Float64Type>();
                    match c {
                        Corruption::OutOfRange => {
                            expected.insert((name.clone(), "out_of_range"));
                            let a: Float64Array = (0..n)
                                .map(|r| Some(if hit(r) || r == 0 { values.value(r) * 1000.0 + 1.0 } else { values.value(r) }))
                                .collect();
                            (ColumnType::Float, Arc::new(a))
                        }
                        Corruption::Missing => {
                            expected.insert((name.clone(), "missing_rate"));
                            let a: Float64Array = (0..n)
                                .map(|r| (!(hit(r) || r == 0)).then(|| values.value(r)))
                                .collect();
                            (ColumnType::Float, Arc::new(a))
                        }
                        _ => {
                            expected.insert((name.clone(), "wrong_type"));
                            let mut b = StringDictionaryBuilder::<Int32Type>::new();
                            for r in 0..n {
                                b.append_value(format!("x{}", values.value(r)));
                            }
                            (ColumnType::Categorical, Arc::new(b.finish()))
                        }
                    }
                }
            };
            columns.push((name, ty));
            arrays.push(array);
        }
        if extra {
            expected.insert(("extra".to_string(), "extra_column"));
            columns.push(("extra".to_string(), ColumnType::Integer));
            arrays.push(Arc::new((0..n as i64).collect::<Int64Array>()));
        }
        let schema_ref = arrow_schema(&columns);
        let corrupted = Table::from_batches(
            "corrupted",
            schema_ref.clone(),
            vec![RecordBatch::try_new(schema_ref, arrays).unwrap()],
        )
        .unwrap();
        let found: BTreeSet<(String, &str)> = schema
            .validate(&corrupted, &DatasetStatistics::compute(&corrupted))
            .iter()
            .map(|a| (a.column.clone(), kind_tag(&a.kind)))
            .collect();
        prop_assert_eq!(found, expected);
    }
}
