//! kiln's shared language: tabular data, statistics, schema and fitted feature transforms.
//!
//! Every other kiln crate depends on this one and on nothing of each other's.
//! It has no async runtime, no web framework and no ML framework: it reads data into Apache Arrow,
//! describes it, checks it against a schema, and turns raw rows into model features.
//!
//! ```
//! use kiln_core::data::{read_csv_str, ReadOptions};
//! use kiln_core::transform::TransformSpec;
//!
//! let table = read_csv_str("age,city\n31,Oslo\n45,Lima\nNA,Oslo\n", &ReadOptions::default()).unwrap();
//! let spec = TransformSpec::from_toml(r#"
//!     [[features]]
//!     columns = ["age"]
//!     encode = "standardize"
//!
//!     [[features]]
//!     columns = ["city"]
//!     encode = "vocabulary"
//! "#).unwrap();
//! let fitted = spec.fit(&table).unwrap();
//! let row = serde_json::json!({"age": 38, "city": "Lima"});
//! let features = fitted.apply_json_row(row.as_object().unwrap()).unwrap();
//! assert_eq!(fitted.dense_names(), ["age", "city=Oslo", "city=Lima", "city=<oov>"]);
//! assert_eq!(features.dense[1..], [0.0, 1.0, 0.0]);
//! ```

pub mod backend;
pub mod bundle;
pub mod data;
pub mod metrics;
pub mod progress;
pub mod registry;
pub mod schema;
pub mod stats;
pub mod synth;
pub mod text;
pub mod threads;
pub mod transform;
pub mod trees;
pub mod wire;

pub mod suggest;

pub use data::{ColumnType, DataError, ReadOptions, Table};
pub use progress::Progress;
