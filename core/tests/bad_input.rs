//! Bad input gives a clear error naming the file and line, never a panic.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use kiln_core::data::{self, ReadOptions};
use kiln_core::transform::TransformSpec;

/// Writes `bytes` to a file named `name` in a fresh directory and returns the read error.
fn check(name: &str, bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let err = data::read(&path, &ReadOptions::default())
        .expect_err("bad input must not read")
        .to_string();
    let shown = path.display().to_string();
    assert!(
        err.starts_with(&shown),
        "error does not name the file: {err}"
    );
    err[shown.len()..].to_string()
}

#[test]
fn empty_file() {
    assert_eq!(
        check("e.csv", b""),
        ": the file is empty; expected a header row with column names"
    );
}

#[test]
fn header_only() {
    assert_eq!(
        check("h.csv", b"a,b,c\n"),
        ": the file has a header but no data rows"
    );
}

#[test]
fn ragged_rows() {
    assert_eq!(
        check("r.csv", b"a,b,c\n1,2,3\n4,5\n"),
        ":3: expected 3 fields, found 2"
    );
    assert!(
        check("r.csv", b"a,b\n1,2\n3,4,5\n")
            .starts_with(":3: expected 2 fields, found 3; a field with an unquoted delimiter")
    );
}

#[test]
fn non_utf8_bytes() {
    assert_eq!(
        check("u.csv", b"a,b\n1,ok\n2,caf\xe9\n"),
        ":3: field 2 is not valid UTF-8 (bad byte after 3 valid bytes); re-encode the file as UTF-8"
    );
}

#[test]
fn ten_megabyte_field() {
    let mut bytes = b"a,b\n1,\"".to_vec();
    bytes.extend(std::iter::repeat_n(b'x', 10 << 20));
    bytes.extend(b"\"\n");
    assert_eq!(
        check("big.csv", &bytes),
        ":2: field 2 is 10.0 MiB, over the 1.0 MiB limit; an unclosed quote often causes this \
         (raise the limit with --max-field-bytes)"
    );
}

#[test]
fn unclosed_quote_swallowing_the_file() {
    let mut text = String::from("a,b\n1,\"oops\n");
    for i in 0..200_000 {
        text.push_str(&format!("{i},x\n"));
    }
    let err = check("q.csv", text.as_bytes());
    assert!(err.starts_with(":2: field 2 is "), "{err}");
    assert!(
        err.contains("over the 1.0 MiB limit; an unclosed quote"),
        "{err}"
    );
}

#[test]
fn duplicate_and_empty_header_names() {
    assert_eq!(
        check("d.csv", b"a,b,a\n1,2,3\n"),
        ":1: column `a` appears twice in the header"
    );
    assert_eq!(
        check("n.csv", b"a,,c\n1,2,3\n"),
        ":1: column 2 of the header has no name"
    );
}

#[test]
fn jsonl_errors_name_the_line() {
    assert_eq!(
        check("j.jsonl", b"{\"a\": 1}\n{\"a\": 2\n"),
        ":2: invalid JSON at column 7: EOF while parsing an object; expected one JSON object per line"
    );
    assert_eq!(
        check("j.jsonl", b"{\"a\": 1}\n\n{\"a\": [1, 2]}\n"),
        ":3: key `a`: nested arrays and objects are not supported; flatten them into columns"
    );
    assert_eq!(
        check("j.jsonl", b"\n\n"),
        ": the file has no rows; expected one JSON object per line"
    );
}

#[test]
fn not_parquet_and_unknown_extension() {
    assert!(check("x.parquet", b"a,b\n1,2\n").starts_with(": not a readable Parquet file:"));
    assert!(check("x.xlsx", b"a,b\n1,2\n").starts_with(": unknown file extension"));
}

#[test]
fn missing_file() {
    let path = PathBuf::from("/nonexistent/kiln/data.csv");
    let err = data::read(&path, &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("/nonexistent/kiln/data.csv: No such file"),
        "{err}"
    );
}

#[test]
fn unknown_type_override() {
    let mut o = ReadOptions::default();
    o.types
        .insert("mean radiu".into(), kiln_core::ColumnType::Categorical);
    let err = data::read(Path::new("../examples/data/breast_cancer.csv"), &o)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "../examples/data/breast_cancer.csv: unknown column `mean radiu` in a type override; \
         did you mean `mean radius`?"
    );
}

fn spec_error(spec: &str) -> String {
    let table =
        data::read_csv_str("age,city\n31,Oslo\n45,Lima\n", &ReadOptions::default()).unwrap();
    match TransformSpec::from_toml(spec) {
        Err(e) => e.to_string(),
        Ok(s) => s
            .fit(&table)
            .expect_err("bad spec must not fit")
            .to_string(),
    }
}

#[test]
fn unknown_column_in_a_spec() {
    assert_eq!(
        spec_error("[[features]]\ncolumns = [\"agee\"]\nencode = \"standardize\"\n"),
        "features[0]: unknown column `agee`; did you mean `age`?"
    );
}

#[test]
fn spec_mistakes_say_what_to_do() {
    assert_eq!(
        spec_error("[[features]]\ncolumns = [\"city\"]\nencode = \"standardize\"\n"),
        "features[0]: column `city` is categorical; encode = \"standardize\" needs a numeric \
         column (use encode = \"vocabulary\" or \"hash\" for categories)"
    );
    assert_eq!(
        spec_error("[[features]]\ncolumns = [\"age\"]\nbuckets = 3\n"),
        "features[0]: `buckets` applies only to encode = \"hash\", not \"pass_through\""
    );
    assert_eq!(
        spec_error("[[features]]\ncolumns = [\"age\"]\nencode = \"bucketize\"\n"),
        "features[0]: encode = \"bucketize\" needs `boundaries = [...]` or `quantiles = K`"
    );
    assert_eq!(
        spec_error(
            "[[features]]\ncolumns = [\"city\"]\nencode = \"vocabulary\"\nimpute = \"keep\"\n"
        ),
        "features[0]: impute = \"keep\" keeps a missing number as NaN, but encode = \"vocabulary\" \
         makes ids; use it with pass_through, standardize or min_max"
    );
    let typo = spec_error("[[features]]\ncolums = [\"age\"]\n");
    assert!(
        typo.contains("line 2") && typo.contains("unknown field `colums`"),
        "{typo}"
    );
}

#[test]
fn hand_edited_fitted_transform_is_refused_not_a_panic() {
    let table =
        data::read_csv_str("age,city\n31,Oslo\n45,Lima\n", &ReadOptions::default()).unwrap();
    let spec = "[[features]]\ncolumns = [\"city\"]\nencode = \"hash\"\nbuckets = 8\n";
    let json = TransformSpec::from_toml(spec)
        .unwrap()
        .fit(&table)
        .unwrap()
        .to_json();
    let broken = json.replace("\"buckets\": 8", "\"buckets\": 0");
    assert_ne!(broken, json);
    let err = kiln_core::transform::FittedTransform::from_json(&broken)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("feature of column `city`: a hash needs at least 1 bucket"),
        "{err}"
    );
    let newer = json.replace("\"format_version\": 1", "\"format_version\": 99");
    let err = kiln_core::transform::FittedTransform::from_json(&newer)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("format version 99 is newer than this kiln reads (1); upgrade kiln"),
        "{err}"
    );
}
