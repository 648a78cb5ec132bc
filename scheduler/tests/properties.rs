//! Properties over generated input: the parser returns a value for any text (every diagnostic
//! on a line of the file), and the executor, on random DAGs with random failures, durations and
//! GPU steps, records every step once, starts none before its needs ended, runs none whose needs
//! failed, and keeps to its limits.
#![allow(clippy::unwrap_used)]

mod common;

use common::parse;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_scheduler::executor::{Attempt, Limits, StepRunner, StepState, execute};
use kiln_scheduler::pipeline::Step;
use proptest::prelude::*;

const EXAMPLE: &str = include_str!("../../examples/pipelines/retrain.toml");

/// The example with lines dropped, duplicated or cut short, and bytes replaced.
fn mutated_example() -> impl Strategy<Value = String> {
    let lines = EXAMPLE.lines().count();
    proptest::collection::vec((0..lines, 0u8..4, any::<u8>(), 0usize..80), 1..6).prop_map(
        move |edits| {
            let mut lines: Vec<String> = EXAMPLE.lines().map(str::to_string).collect();
            for (at, kind, byte, cut) in edits {
                let at = at % lines.len().max(1);
                if lines.is_empty() {
                    break;
                }
                match kind {
                    0 => {
                        lines.remove(at);
                    }
                    1 => {
                        let copy = lines[at].clone();
                        lines.insert(at, copy);
                    }
                    2 => {
                        let keep: String = lines[at].chars().take(cut).collect();
                        lines[at] = keep;
                    }
                    _ => {
                        let mut chars: Vec<char> = lines[at].chars().collect();
                        if !chars.is_empty() {
                            let i = cut % chars.len();
                            chars[i] = char::from(byte % 0x7f);
                        }
                        lines[at] = chars.into_iter().collect();
                    }
                }
            }
            lines.join("\n")
        },
    )
}

fn check_diagnostics(text: &str) -> Result<(), TestCaseError> {
    let parsed = parse(text);
    let lines = text.lines().count().max(1);
    for d in &parsed.diagnostics {
        prop_assert!(
            d.line >= 1 && d.line <= lines + 1,
            "line {} of {lines}: {}",
            d.line,
            d.message
        );
        prop_assert!(!d.message.is_empty());
    }
    if parsed.pipeline.is_none() {
        prop_assert!(parsed.has_errors(), "no pipeline and no error");
    }
    Ok(())
}

/// Steps take their (paused) seconds; a step in `failing` fails every attempt. Records each
/// step's start and end on the paused clock, and the most running at once.
struct Recorder {
    seconds: Vec<u64>,
    failing: BTreeSet<usize>,
    start: tokio::time::Instant,
    spans: Mutex<BTreeMap<usize, (Duration, Duration)>>,
    running: Mutex<(usize, usize)>,
}

fn index(step: &Step) -> usize {
    step.id.trim_start_matches('s').parse().unwrap()
}

impl StepRunner for Recorder {
    async fn run(&self, step: &Step, _attempt: u32) -> Attempt {
        let i = index(step);
        let began = self.start.elapsed();
        {
            let mut r = self.running.lock().unwrap();
            r.0 += 1;
            r.1 = r.1.max(r.0);
        }
        tokio::time::sleep(Duration::from_secs(self.seconds[i])).await;
        self.running.lock().unwrap().0 -= 1;
        self.spans
            .lock()
            .unwrap()
            .insert(i, (began, self.start.elapsed()));
        if self.failing.contains(&i) {
            Attempt::Failed("planned".into())
        } else {
            Attempt::Succeeded
        }
    }
}

#[derive(Debug, Clone)]
struct Dag {
    needs: Vec<Vec<usize>>,
    seconds: Vec<u64>,
    failing: BTreeSet<usize>,
    gpu: Vec<bool>,
    parallel: usize,
}

fn dags() -> impl Strategy<Value = Dag> {
    (1usize..24).prop_flat_map(|n| {
        (
            proptest::collection::vec(
                proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
                n,
            ),
            proptest::collection::vec(0u64..5, n),
            proptest::collection::vec(prop::bool::weighted(0.15), n),
            proptest::collection::vec(prop::bool::weighted(0.25), n),
            1usize..5,
        )
            .prop_map(move |(picks, seconds, fails, gpu, parallel)| Dag {
                // A step needs only earlier steps: no cycles.
                needs: picks
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let set: BTreeSet<usize> =
                            p.iter().filter(|_| i > 0).map(|x| x.index(i)).collect();
                        set.into_iter().collect()
                    })
                    .collect(),
                seconds,
                failing: fails
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| **f)
                    .map(|(i, _)| i)
                    .collect(),
                gpu,
                parallel,
            })
    })
}

fn text(dag: &Dag) -> String {
    let mut t = String::from("name = \"random\"\n");
    for (i, needs) in dag.needs.iter().enumerate() {
        let needs: Vec<String> = needs.iter().map(|n| format!("\"s{n}\"")).collect();
        t.push_str(&format!(
            "\n[[steps]]\nid = \"s{i}\"\nneeds = [{}]\nrun = \"x\"\ngpu = {}\n",
            needs.join(", "),
            dag.gpu[i]
        ));
    }
    t
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_text_parses_to_a_value(text in "\\PC{0,400}") {
        check_diagnostics(&text)?;
    }

    #[test]
    fn a_damaged_example_gives_diagnostics_on_its_lines(text in mutated_example()) {
        check_diagnostics(&text)?;
    }

    #[test]
    fn the_executor_keeps_order_failures_and_limits(dag in dags()) {
        let parsed = parse(&text(&dag));
        prop_assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
        let pipeline = parsed.pipeline.unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let (records, recorder) = rt.block_on(async {
            let recorder = Arc::new(Recorder {
                seconds: dag.seconds.clone(),
                failing: dag.failing.clone(),
                start: tokio::time::Instant::now(),
                spans: Mutex::new(BTreeMap::new()),
                running: Mutex::new((0, 0)),
            });
            let limits = Limits { parallel: dag.parallel, ..Limits::default() };
            (execute(&pipeline, recorder.clone(), limits).await, recorder)
        });
        let n = dag.needs.len();
        prop_assert_eq!(records.len(), n);
        let by: BTreeMap<usize, _> = records.iter().map(|r| (r.id[1..].parse::<usize>().unwrap(), r)).collect();
        prop_assert_eq!(by.len(), n, "each step recorded once");
        let spans = recorder.spans.lock().unwrap().clone();
        // What should have happened, step by step in order (needs come first).
        let mut produced = vec![false; n];
        for i in 0..n {
            let ran = dag.needs[i].iter().all(|&d| produced[d]);
            let state = &by[&i].state;
            if ran {
                let want = if dag.failing.contains(&i) { StepState::Failed } else { StepState::Succeeded };
                prop_assert_eq!(state, &want, "s{}", i);
                let (began, _) = spans[&i];
                for &d in &dag.needs[i] {
                    prop_assert!(began >= spans[&d].1, "s{} began before its need s{} ended", i, d);
                }
            } else {
                prop_assert_eq!(state, &StepState::UpstreamFailed, "s{}", i);
                prop_assert!(!spans.contains_key(&i), "s{} ran though a need failed", i);
            }
            produced[i] = state.produced();
        }
        prop_assert!(recorder.running.lock().unwrap().1 <= dag.parallel);
        // GPU steps never overlap (a step of zero seconds overlaps nothing).
        let gpu: Vec<(Duration, Duration)> = spans
            .iter()
            .filter(|(i, _)| dag.gpu[**i])
            .map(|(_, s)| *s)
            .collect();
        for (a, x) in gpu.iter().enumerate() {
            for y in &gpu[a + 1..] {
                prop_assert!(x.1 <= y.0 || y.1 <= x.0, "GPU steps {:?} and {:?} overlap", x, y);
            }
        }
    }
}
