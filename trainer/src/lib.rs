//! kiln's trainer: dense networks on burn (logistic and linear regression, MLPs) and kiln's own
//! gradient-boosted trees, trained on a kiln table with a transform fitted on the training split only, evaluated with
//! `kiln_core::metrics`, and saved as a model bundle any reader can load.
//!
//! The same code trains on the CPU (burn's pure-Rust flex backend, multithreaded) and, with the
//! `gpu` feature, on burn's wgpu backend: the device is a value chosen at the edge
//! ([`DeviceChoice`]); nothing else knows which it is.

mod config;
mod device;
mod evaluate;
mod fit;
pub mod gate;
mod gbdt;
mod model;
mod predict;
pub mod sweep;
mod targets;
mod tpe;
pub mod tracked;

pub use config::{
    DeviceChoice, EpochReport, ModelKind, NoLogger, OptimizerKind, RunLogger, Schedule, Splits,
    TrainConfig, TrainError, TrainOutcome,
};
pub use device::device;
pub use evaluate::{Foreign, evaluate, test_fraction_of, test_split};
pub use fit::{
    DEFAULT_LR, SPARSE_LR, default_spec, default_tree_spec, fit_network, train, train_from,
};
pub use model::Net;
pub use predict::{Dense, Predictor};
