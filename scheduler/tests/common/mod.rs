//! A catalogue of components for the scheduler's tests, shaped like kiln's built-in ones (the
//! binary declares the real ones beside their implementations), so that the example pipeline
//! and the parser's component checks can be tested here.
#![allow(dead_code)]

use kiln_scheduler::ComponentSpec;
use kiln_scheduler::pipeline::Arg;

const fn req(name: &'static str) -> Arg {
    Arg::required(name)
}

const fn opt(name: &'static str) -> Arg {
    Arg::optional(name)
}

pub const CATALOGUE: &[ComponentSpec] = &[
    ComponentSpec {
        name: "ingest",
        args: &[req("path").path(), opt("format"), opt("delimiter")],
        outputs: &["data", "rows"],
    },
    ComponentSpec {
        name: "statistics",
        args: &[req("data").path()],
        outputs: &["statistics"],
    },
    ComponentSpec {
        name: "validate",
        args: &[req("data").path(), opt("schema").path(), opt("fail_on")],
        outputs: &["anomalies"],
    },
    ComponentSpec {
        name: "transform",
        args: &[req("data").path(), req("spec").path()],
        outputs: &["transform"],
    },
    ComponentSpec {
        name: "train",
        args: &[
            req("data").path(),
            req("target"),
            opt("model"),
            opt("hidden"),
            opt("epochs"),
            opt("lr"),
            opt("device"),
            opt("spec").path(),
        ],
        outputs: &["model", "run", "test_*"],
    },
    ComponentSpec {
        name: "evaluate",
        args: &[
            req("model").path(),
            req("data").path(),
            opt("baseline"),
            opt("thresholds"),
            opt("min_improvement"),
            opt("slices"),
            opt("min_slice_rows"),
            opt("max_slice_regression"),
        ],
        outputs: &["blessed", "metric", "candidate", "worst_slice"],
    },
    ComponentSpec {
        name: "infra-validate",
        args: &[req("model").path(), opt("requests")],
        outputs: &["requests"],
    },
    ComponentSpec {
        name: "push",
        args: &[
            req("model").path(),
            req("name"),
            opt("alias"),
            opt("blessing"),
        ],
        outputs: &["pushed", "version"],
    },
];

/// Parses with [`CATALOGUE`].
pub fn parse(text: &str) -> kiln_scheduler::Parsed {
    kiln_scheduler::parse_with(text, CATALOGUE)
}
