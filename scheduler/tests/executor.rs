//! The executor on tokio's paused clock: retries wait 1 s, 2 s, 4 s…; a step over its timeout is
//! stopped; a failed step's dependents do not run while independent ones do; at most `parallel`
//! steps run at once, and at most one that holds the GPU.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_scheduler::executor::{Attempt, Limits, StepRecord, StepRunner, StepState, execute};
use kiln_scheduler::pipeline::Step;

/// Each step takes `seconds[id]` of (paused) time and fails its first `failures[id]` attempts.
#[derive(Default)]
struct Pretend {
    seconds: BTreeMap<&'static str, u64>,
    failures: BTreeMap<&'static str, u32>,
    running: Mutex<(usize, usize)>,
}

impl StepRunner for Pretend {
    async fn run(&self, step: &Step, attempt: u32) -> Attempt {
        {
            let mut r = self.running.lock().unwrap();
            r.0 += 1;
            r.1 = r.1.max(r.0);
        }
        let s = self.seconds.get(step.id.as_str()).copied().unwrap_or(0);
        tokio::time::sleep(Duration::from_secs(s)).await;
        self.running.lock().unwrap().0 -= 1;
        if attempt <= self.failures.get(step.id.as_str()).copied().unwrap_or(0) {
            Attempt::Failed(format!("attempt {attempt} failed"))
        } else {
            Attempt::Succeeded
        }
    }
}

fn pipeline(steps: &str) -> kiln_scheduler::Pipeline {
    let parsed = common::parse(&format!("name = \"p\"\n{steps}"));
    assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
    parsed.pipeline.unwrap()
}

fn by_id(records: &[StepRecord]) -> BTreeMap<String, StepRecord> {
    records.iter().map(|r| (r.id.clone(), r.clone())).collect()
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_exponentially_then_succeed_or_fail() {
    let p = pipeline(
        "[[steps]]\nid = \"flaky\"\nrun = \"x\"\nretries = 3\n\n[[steps]]\nid = \"broken\"\nrun = \"x\"\nretries = 2\n\n[[steps]]\nid = \"after\"\nneeds = [\"broken\"]\nrun = \"x\"\n",
    );
    let runner = Arc::new(Pretend {
        failures: [("flaky", 2), ("broken", 99)].into(),
        ..Default::default()
    });
    let r = by_id(&execute(&p, runner, Limits::default()).await);
    // Two failures, waits of 1 s and 2 s, then success.
    assert_eq!(r["flaky"].state, StepState::Succeeded);
    assert_eq!(r["flaky"].attempts, 3);
    assert_eq!(r["flaky"].finished, Some(Duration::from_secs(3)));
    // Three attempts (one plus two retries), kept with the last error; its dependent never runs.
    assert_eq!(r["broken"].state, StepState::Failed);
    assert_eq!(r["broken"].attempts, 3);
    assert_eq!(r["broken"].error.as_deref(), Some("attempt 3 failed"));
    assert_eq!(r["after"].state, StepState::UpstreamFailed);
    assert_eq!(r["after"].attempts, 0);
}

#[tokio::test(start_paused = true)]
async fn a_step_over_its_timeout_is_stopped_and_retried() {
    let p = pipeline("[[steps]]\nid = \"slow\"\nrun = \"x\"\ntimeout = \"1m\"\nretries = 1\n");
    let runner = Arc::new(Pretend {
        seconds: [("slow", 600)].into(),
        ..Default::default()
    });
    let r = by_id(&execute(&p, runner, Limits::default()).await);
    assert_eq!(r["slow"].state, StepState::TimedOut);
    assert_eq!(r["slow"].attempts, 2);
    assert_eq!(r["slow"].error.as_deref(), Some("timed out after 1m"));
    // 60 s, a 1 s backoff, 60 s: not the ten minutes the step wanted.
    assert_eq!(r["slow"].finished, Some(Duration::from_secs(121)));
}

#[tokio::test(start_paused = true)]
async fn independent_steps_run_in_parallel_within_the_limit() {
    let p = pipeline(
        "[[steps]]\nid = \"a\"\nrun = \"x\"\n\n[[steps]]\nid = \"b\"\nrun = \"x\"\n\n[[steps]]\nid = \"c\"\nrun = \"x\"\n\n[[steps]]\nid = \"d\"\nneeds = [\"a\", \"b\", \"c\"]\nrun = \"x\"\n",
    );
    let runner = Arc::new(Pretend {
        seconds: [("a", 10), ("b", 10), ("c", 10), ("d", 5)].into(),
        ..Default::default()
    });
    let limits = Limits {
        parallel: 2,
        ..Limits::default()
    };
    let r = by_id(&execute(&p, runner.clone(), limits).await);
    assert_eq!(runner.running.lock().unwrap().1, 2, "at most two at once");
    let mut ends: Vec<u64> = ["a", "b", "c"]
        .iter()
        .map(|s| r[*s].finished.unwrap().as_secs())
        .collect();
    ends.sort();
    assert_eq!(ends, [10, 10, 20]);
    // `d` starts when the last of its needs ends.
    assert_eq!(r["d"].started, Some(Duration::from_secs(20)));
    assert_eq!(r["d"].finished, Some(Duration::from_secs(25)));
}

#[tokio::test(start_paused = true)]
async fn steps_that_hold_the_gpu_run_one_at_a_time_beside_the_others() {
    // `a` and `b` train on the GPU (one declared, one by its device argument), `c` and `d` do
    // not; all four are independent and the limit would let them all run at once.
    let p = pipeline(
        "[[steps]]\nid = \"a\"\nrun = \"x\"\ngpu = true\n\n[[steps]]\nid = \"b\"\nuses = \"train\"\nwith = { data = \"d.csv\", target = \"y\", device = \"gpu\" }\n\n[[steps]]\nid = \"c\"\nrun = \"x\"\n\n[[steps]]\nid = \"d\"\nuses = \"train\"\nwith = { data = \"d.csv\", target = \"y\", device = \"cpu\" }\n",
    );
    let gpu: Vec<bool> = p.steps.iter().map(|s| s.gpu).collect();
    assert_eq!(gpu, [true, true, false, false]);
    let runner = Arc::new(Pretend {
        seconds: [("a", 10), ("b", 10), ("c", 10), ("d", 10)].into(),
        ..Default::default()
    });
    let limits = Limits::default();
    let r = by_id(&execute(&p, runner.clone(), limits.clone()).await);
    assert_eq!(
        runner.running.lock().unwrap().1,
        3,
        "c and d beside one GPU step"
    );
    let mut gpu_ends = [r["a"].finished.unwrap(), r["b"].finished.unwrap()];
    gpu_ends.sort();
    assert_eq!(gpu_ends, [Duration::from_secs(10), Duration::from_secs(20)]);
    assert_eq!(r["c"].finished, Some(Duration::from_secs(10)));
    assert_eq!(r["d"].finished, Some(Duration::from_secs(10)));

    // Two runs sharing one `Limits` (as the runs of one process do) share the GPU too.
    let one = pipeline("[[steps]]\nid = \"a\"\nrun = \"x\"\ngpu = true\n");
    let (first, second) = tokio::join!(
        execute(&one, runner.clone(), limits.clone()),
        execute(&one, runner.clone(), limits.clone()),
    );
    let mut ends = [first[0].finished.unwrap(), second[0].finished.unwrap()];
    ends.sort();
    assert_eq!(ends, [Duration::from_secs(10), Duration::from_secs(20)]);
}

/// Refuses every attempt: a failure no retry can change.
struct Refuse;

impl StepRunner for Refuse {
    async fn run(&self, _step: &Step, _attempt: u32) -> Attempt {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Attempt::Refused("`with.target` must be a column name".into())
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_step_fails_at_once_without_its_retries() {
    let p = pipeline(
        "[[steps]]\nid = \"a\"\nrun = \"x\"\nretries = 3\n\n[[steps]]\nid = \"b\"\nneeds = [\"a\"]\nrun = \"x\"\n",
    );
    let r = by_id(&execute(&p, Arc::new(Refuse), Limits::default()).await);
    assert_eq!(r["a"].state, StepState::Failed);
    assert_eq!(r["a"].attempts, 1);
    assert_eq!(
        r["a"].finished,
        Some(Duration::from_secs(1)),
        "no backoff waited"
    );
    assert_eq!(
        r["a"].reason.as_deref(),
        Some("not retried: another attempt would fail the same way")
    );
    assert_eq!(r["b"].state, StepState::UpstreamFailed);
}
