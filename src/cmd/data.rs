//! `kiln data …`: describe, schema, validate, transform and synth.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use kiln_core::data::{self, ColumnType, Format, ReadOptions, Table};
use kiln_core::schema::{Schema, Severity};
use kiln_core::stats::DatasetStatistics;
use kiln_core::transform::Compression;
use kiln_core::transform::{FittedOp, FittedTransform, Scale, TransformSpec};
use serde::Serialize;

use crate::Outcome;
use crate::ui::{self, Bar, num};

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Print statistics of every column: counts, missing, moments, quantiles, top values.
    Describe {
        /// The data file: CSV, JSON Lines or Parquet.
        file: PathBuf,
        #[command(flatten)]
        read: ReadArgs,
        /// Print the full statistics as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Infer a schema (types, missing rates, ranges, domains) to edit and validate against.
    Schema {
        /// The data file to infer the schema from.
        file: PathBuf,
        #[command(flatten)]
        read: ReadArgs,
        /// Write the schema here (.json or .toml) instead of printing it as JSON.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Check data against a schema; exits with 3 when anomalies reach --fail-on.
    Validate {
        /// The data file to check.
        file: PathBuf,
        /// The schema file (.json or .toml).
        #[arg(long)]
        schema: PathBuf,
        #[command(flatten)]
        read: ReadArgs,
        /// The severity that fails validation.
        #[arg(long, value_enum, default_value_t = FailOn::Error)]
        fail_on: FailOn,
        /// Print the result as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Turn raw rows into model features: fit a spec, or apply a fitted transform.
    #[command(group(clap::ArgGroup::new("how").required(true).args(["spec", "fitted"])))]
    Transform {
        /// The raw data file to turn into features.
        file: PathBuf,
        /// A transform spec (.toml or .json) to fit on FILE and apply.
        #[arg(long)]
        spec: Option<PathBuf>,
        /// Save the fitted transform (JSON) here.
        #[arg(long, requires = "spec")]
        fit_out: Option<PathBuf>,
        /// Apply this fitted transform (JSON) instead of fitting.
        #[arg(long, conflicts_with = "spec")]
        fitted: Option<PathBuf>,
        /// Write the features here (.csv or .parquet).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// How a Parquet output is compressed.
        #[arg(long, value_enum, default_value_t = CompressionArg::Zstd)]
        compression: CompressionArg,
        #[command(flatten)]
        read: ReadArgs,
        /// Print the feature summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Generate a synthetic dataset.
    Synth {
        /// What data to generate.
        #[arg(value_enum)]
        kind: SynthKind,
        /// Number of rows.
        #[arg(long, default_value_t = 100_000)]
        rows: u64,
        /// The random seed: one seed, one dataset.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// The CSV file to write; standard output when absent.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompressionArg {
    None,
    Snappy,
    Zstd,
    Gzip,
    Lz4,
}

impl From<CompressionArg> for kiln_core::transform::Compression {
    fn from(c: CompressionArg) -> Self {
        use kiln_core::transform::Compression as C;
        match c {
            CompressionArg::None => C::None,
            CompressionArg::Snappy => C::Snappy,
            CompressionArg::Zstd => C::Zstd,
            CompressionArg::Gzip => C::Gzip,
            CompressionArg::Lz4 => C::Lz4,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FailOn {
    Error,
    Warning,
    Never,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SynthKind {
    /// Click-through data: 8 numeric and 5 categorical columns, label `click`.
    Ctr,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Csv,
    Jsonl,
    Parquet,
}

/// Options for reading a data file.
#[derive(Debug, Args)]
pub struct ReadArgs {
    /// CSV field delimiter (one character; `\t` for tab). Default: comma, tab for .tsv.
    #[arg(long, value_parser = parse_delimiter)]
    delimiter: Option<u8>,
    /// Override an inferred column type: NAME=integer|float|boolean|categorical (repeatable).
    #[arg(long = "type", value_name = "NAME=TYPE", value_parser = parse_override)]
    types: Vec<(String, ColumnType)>,
    /// A cell text that means missing (repeatable); replaces the defaults
    /// (empty, NA, N/A, null, NULL, NaN, nan).
    #[arg(long = "missing", value_name = "TEXT")]
    missing: Vec<String>,
    /// The largest field accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_field_bytes: usize,
    /// Read as this format whatever the extension says.
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
}

impl ReadArgs {
    fn options(&self) -> ReadOptions {
        let mut o = ReadOptions {
            delimiter: self.delimiter,
            types: self.types.iter().cloned().collect::<HashMap<_, _>>(),
            max_field_bytes: self.max_field_bytes,
            format: self.format.map(|f| match f {
                FormatArg::Csv => Format::Csv,
                FormatArg::Jsonl => Format::JsonLines,
                FormatArg::Parquet => Format::Parquet,
            }),
            ..ReadOptions::default()
        };
        if !self.missing.is_empty() {
            o.missing_values = self.missing.clone();
        }
        o
    }

    fn read(&self, path: &Path) -> Result<Table> {
        Ok(data::read_with_progress(
            path,
            &self.options(),
            &Bar::new(),
        )?)
    }
}

fn parse_delimiter(s: &str) -> Result<u8, String> {
    match s {
        "\\t" | "tab" | "\t" => Ok(b'\t'),
        _ if s.len() == 1 && s.is_ascii() => Ok(s.as_bytes()[0]),
        _ => Err(format!("expected one ASCII character, found {s:?}")),
    }
}

fn parse_override(s: &str) -> Result<(String, ColumnType), String> {
    let (name, ty) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("expected NAME=TYPE, found {s:?}"))?;
    Ok((name.to_string(), ty.parse()?))
}

pub fn run(command: DataCommand) -> Result<Outcome> {
    match command {
        DataCommand::Describe { file, read, json } => describe(&file, &read, json),
        DataCommand::Schema { file, read, output } => schema(&file, &read, output.as_deref()),
        DataCommand::Validate {
            file,
            schema,
            read,
            fail_on,
            json,
        } => validate(&file, &schema, &read, fail_on, json),
        DataCommand::Transform {
            file,
            spec,
            fit_out,
            fitted,
            output,
            compression,
            read,
            json,
        } => transform(
            &file,
            spec.as_deref(),
            fit_out.as_deref(),
            fitted.as_deref(),
            output.as_deref().map(|path| (path, compression.into())),
            &read,
            json,
        ),
        DataCommand::Synth {
            kind: SynthKind::Ctr,
            rows,
            seed,
            output,
        } => synth(rows, seed, output.as_deref()),
    }
}

fn describe(file: &Path, read: &ReadArgs, json: bool) -> Result<Outcome> {
    let table = read.read(file)?;
    describe_table(&file.display().to_string(), &table, json)
}

/// Prints a table's statistics: numeric and categorical columns, or JSON.
pub fn describe_table(name: &str, table: &kiln_core::data::Table, json: bool) -> Result<Outcome> {
    let stats = DatasetStatistics::compute(table);
    if json {
        ui::print_json(&stats)?;
        return Ok(Outcome::Ok);
    }
    println!(
        "{}: {} rows, {} columns, fingerprint {}",
        name,
        stats.rows,
        stats.columns.len(),
        short_digest(&stats.fingerprint)
    );
    let mut numeric = Vec::new();
    let mut categorical = Vec::new();
    for c in &stats.columns {
        if let Some(n) = &c.numeric {
            let q = |p| n.quantile(p).map_or("-".to_string(), num);
            numeric.push(vec![
                c.name.clone(),
                c.column_type.to_string(),
                c.count.to_string(),
                c.missing.to_string(),
                num(n.mean),
                num(n.std_dev),
                num(n.min),
                q(0.01),
                q(0.25),
                q(0.5),
                q(0.75),
                q(0.99),
                num(n.max),
            ]);
        } else if let Some(k) = &c.categorical {
            let top: Vec<String> = k
                .top
                .iter()
                .take(3)
                .map(|v| {
                    format!(
                        "{} ({:.1}%)",
                        v.value,
                        100.0 * v.count as f64 / c.count.max(1) as f64
                    )
                })
                .collect();
            categorical.push(vec![
                c.name.clone(),
                c.column_type.to_string(),
                c.count.to_string(),
                c.missing.to_string(),
                k.distinct.to_string(),
                top.join(", "),
            ]);
        } else {
            numeric.push(vec![
                c.name.clone(),
                c.column_type.to_string(),
                c.count.to_string(),
                c.missing.to_string(),
            ]);
        }
    }
    if !numeric.is_empty() {
        println!("\nnumeric columns");
        let header = [
            "column", "type", "count", "missing", "mean", "std", "min", "p1", "p25", "p50", "p75",
            "p99", "max",
        ];
        println!(
            "{}",
            ui::table(&header, numeric, &(2..13).collect::<Vec<_>>())
        );
    }
    if !categorical.is_empty() {
        println!("\ncategorical columns");
        let header = [
            "column",
            "type",
            "count",
            "missing",
            "distinct",
            "top values",
        ];
        println!("{}", ui::table(&header, categorical, &[2, 3, 4]));
    }
    Ok(Outcome::Ok)
}

fn short_digest(d: &str) -> String {
    d.get(..19).map_or(d.to_string(), |s| format!("{s}…"))
}

fn is_toml(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
}

fn schema(file: &Path, read: &ReadArgs, output: Option<&Path>) -> Result<Outcome> {
    let table = read.read(file)?;
    let stats = DatasetStatistics::compute(&table);
    let schema = Schema::infer(&table, &stats);
    match output {
        Some(path) => {
            write_atomically(path, schema.to_text(is_toml(path)).as_bytes())?;
            eprintln!(
                "wrote the schema of {} columns to {}; edit it, then check data with \
                 `kiln data validate FILE --schema {}`",
                schema.columns.len(),
                path.display(),
                path.display()
            );
        }
        None => println!("{}", schema.to_text(false)),
    }
    Ok(Outcome::Ok)
}

fn validate(
    file: &Path,
    schema_path: &Path,
    read: &ReadArgs,
    fail_on: FailOn,
    json: bool,
) -> Result<Outcome> {
    let text = fs::read_to_string(schema_path)
        .with_context(|| format!("reading the schema {}", schema_path.display()))?;
    let schema = Schema::parse(
        &schema_path.display().to_string(),
        &text,
        is_toml(schema_path),
    )?;
    let table = read.read(file)?;
    let stats = DatasetStatistics::compute(&table);
    let anomalies = schema.validate(&table, &stats);
    let failing = anomalies
        .iter()
        .filter(|a| match fail_on {
            FailOn::Error => a.severity == Severity::Error,
            FailOn::Warning => true,
            FailOn::Never => false,
        })
        .count();
    if json {
        #[derive(Serialize)]
        struct Report<'a> {
            file: String,
            rows: u64,
            passed: bool,
            anomalies: &'a [kiln_core::schema::Anomaly],
        }
        ui::print_json(&Report {
            file: file.display().to_string(),
            rows: stats.rows,
            passed: failing == 0,
            anomalies: &anomalies,
        })?;
    } else if anomalies.is_empty() {
        println!(
            "{}: {} rows match the schema {}",
            file.display(),
            stats.rows,
            schema_path.display()
        );
    } else {
        println!("{}", ui::anomalies(&anomalies));
        println!(
            "\n{}: {} anomalies ({} failing) against {}",
            file.display(),
            anomalies.len(),
            failing,
            schema_path.display()
        );
    }
    Ok(if failing > 0 {
        Outcome::Anomalies
    } else {
        Outcome::Ok
    })
}

fn transform(
    file: &Path,
    spec: Option<&Path>,
    fit_out: Option<&Path>,
    fitted: Option<&Path>,
    output: Option<(&Path, Compression)>,
    read: &ReadArgs,
    json: bool,
) -> Result<Outcome> {
    let fitted = match (spec, fitted) {
        (_, Some(path)) => {
            let text = fs::read_to_string(path)
                .with_context(|| format!("reading the fitted transform {}", path.display()))?;
            FittedTransform::from_json(&text).with_context(|| path.display().to_string())?
        }
        (Some(path), None) => {
            let text = fs::read_to_string(path)
                .with_context(|| format!("reading the spec {}", path.display()))?;
            let spec = if path.extension().is_some_and(|e| e == "json") {
                TransformSpec::from_json(&text)
            } else {
                TransformSpec::from_toml(&text)
            }
            .with_context(|| path.display().to_string())?;
            let table = read.read(file)?;
            let fitted = spec
                .fit(&table)
                .with_context(|| format!("fitting {} on {}", path.display(), file.display()))?;
            if let Some(out) = fit_out {
                write_atomically(out, fitted.to_json().as_bytes())?;
            }
            return finish_transform(file, &table, &fitted, output, json);
        }
        (None, None) => bail!("give --spec to fit a transform or --fitted to apply one"),
    };
    let table = read.read(file)?;
    finish_transform(file, &table, &fitted, output, json)
}

fn finish_transform(
    file: &Path,
    table: &Table,
    fitted: &FittedTransform,
    output: Option<(&Path, Compression)>,
    json: bool,
) -> Result<Outcome> {
    let features = fitted
        .apply_table(table)
        .with_context(|| format!("applying the transform to {}", file.display()))?;
    if let Some((out, compression)) = output {
        kiln_core::transform::write_features(
            out,
            fitted.dense_names(),
            fitted.id_names(),
            &features,
            compression,
        )?;
    }
    if json {
        #[derive(Serialize)]
        struct Summary<'a> {
            rows: usize,
            dense_names: &'a [String],
            id_names: &'a [String],
            id_cardinalities: &'a [u32],
            transform_digest: String,
            output: Option<String>,
        }
        return ui::print_json(&Summary {
            rows: features.rows,
            dense_names: fitted.dense_names(),
            id_names: fitted.id_names(),
            id_cardinalities: fitted.id_cardinalities(),
            transform_digest: fitted.digest(),
            output: output.map(|(p, _)| p.display().to_string()),
        })
        .map(|_| Outcome::Ok);
    }
    let rows: Vec<Vec<String>> = fitted
        .features()
        .iter()
        .map(|f| {
            let (encode, width, detail) = describe_op(&f.op);
            vec![f.column.clone(), encode.to_string(), width, detail]
        })
        .collect();
    println!(
        "{}",
        ui::table(&["column", "encode", "features", "fitted"], rows, &[2])
    );
    println!(
        "\n{} rows → {} dense features and {} id columns{}",
        features.rows,
        features.dense_width,
        features.id_width,
        output.map_or(String::new(), |(p, _)| format!(
            ", written to {}",
            p.display()
        ))
    );
    Ok(Outcome::Ok)
}

fn describe_op(op: &FittedOp) -> (&'static str, String, String) {
    match op {
        FittedOp::Numeric {
            impute,
            scale,
            keep_missing,
            ..
        } => {
            let imp = match impute {
                Some(v) => format!("impute {}; ", num(*v)),
                None if *keep_missing => "missing kept; ".to_string(),
                None => String::new(),
            };
            let (name, detail) = match scale {
                Scale::None => ("pass_through", String::new()),
                Scale::Standardize { mean, std } => (
                    "standardize",
                    format!("mean {}, std {}", num(*mean), num(*std)),
                ),
                Scale::MinMax { min, max } => {
                    ("min_max", format!("range [{}, {}]", num(*min), num(*max)))
                }
            };
            (name, "1".to_string(), format!("{imp}{detail}"))
        }
        FittedOp::Bucketize {
            boundaries, output, ..
        } => (
            "bucketize",
            width(boundaries.len() as u32 + 1, *output),
            format!("{} boundaries", boundaries.len()),
        ),
        FittedOp::Vocabulary {
            vocabulary,
            oov_buckets,
            output,
            ..
        } => (
            "vocabulary",
            width(vocabulary.len() as u32 + oov_buckets, *output),
            format!("{} values + {} oov", vocabulary.len(), oov_buckets),
        ),
        FittedOp::Hash {
            buckets, output, ..
        } => (
            "hash",
            width(*buckets, *output),
            format!("{buckets} buckets"),
        ),
    }
}

fn width(cardinality: u32, output: kiln_core::transform::Output) -> String {
    match output {
        kiln_core::transform::Output::OneHot => cardinality.to_string(),
        kiln_core::transform::Output::Id => format!("1 id (of {cardinality})"),
    }
}

fn synth(rows: u64, seed: u64, output: Option<&Path>) -> Result<Outcome> {
    match output {
        Some(path) => {
            data::write_atomically(path, |out| {
                kiln_core::synth::write_ctr_csv(out, rows, seed, &Bar::new())?;
                Ok(())
            })?;
            eprintln!(
                "wrote {rows} rows of synthetic CTR data (seed {seed}) to {}",
                path.display()
            );
        }
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            kiln_core::synth::write_ctr_csv(
                &mut out,
                rows,
                seed,
                &kiln_core::progress::NoProgress,
            )?;
            out.flush()?;
        }
    }
    Ok(Outcome::Ok)
}

/// Writes a whole file atomically (through a temporary file renamed into place).
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    data::write_atomically(path, |out| Ok(out.write_all(bytes)?))?;
    Ok(())
}
