//! Whole pipeline runs with real shell commands and a real registry: outputs and values flow
//! between steps, failures are retried and keep their logs, a command over its timeout is killed
//! with everything it started, an unchanged second run is cached step by step (and says why),
//! changed inputs rerun what depends on them, `if` skips, a cancelled run stops its steps, and a
//! command's metrics become a tracking run and its inputs arrive in variables and a file.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kiln_core::registry::{PipelineRun, PipelineRunState, Registry, StepExecState, StepExecution};
use kiln_scheduler::ComponentSpec;
use kiln_scheduler::executor::Limits;
use kiln_scheduler::pipeline::Arg;
use kiln_scheduler::run::{
    ComponentCall, ComponentError, Components, Force, NoComponents, Notify, RunRequest,
    run_pipeline,
};
use tokio::sync::watch;

struct Setup {
    _dir: tempfile::TempDir,
    work: PathBuf,
    registry: Arc<Registry>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let registry = Arc::new(Registry::open(&dir.path().join("home")).unwrap());
    Setup {
        _dir: dir,
        work,
        registry,
    }
}

fn request(s: &Setup, text: &str) -> RunRequest {
    let file = s.work.join("p.toml");
    std::fs::write(&file, text).unwrap();
    RunRequest {
        file,
        text: text.to_string(),
        params: BTreeMap::new(),
        trigger: "manual".into(),
        logical_date: "2026-11-28".into(),
        force: Force::Nothing,
        limits: Limits {
            backoff: Duration::from_millis(10),
            ..Limits::default()
        },
        path_prefix: Vec::new(),
        notifier: None,
    }
}

async fn run_with<C: Components>(s: &Setup, c: C, r: RunRequest) -> PipelineRun {
    let (_keep, cancel) = watch::channel(false);
    run_pipeline(s.registry.clone(), Arc::new(c), r, cancel, &|_| {})
        .await
        .unwrap()
}

async fn run(s: &Setup, r: RunRequest) -> PipelineRun {
    run_with(s, NoComponents, r).await
}

/// Why a run was refused before it started.
async fn refusal(s: &Setup, r: RunRequest) -> String {
    let (_keep, cancel) = watch::channel(false);
    run_pipeline(
        s.registry.clone(),
        Arc::new(NoComponents),
        r,
        cancel,
        &|_| {},
    )
    .await
    .unwrap_err()
    .to_string()
}

fn step<'a>(run: &'a PipelineRun, id: &str) -> &'a StepExecution {
    run.steps.iter().find(|x| x.id == id).unwrap()
}

fn output(run: &PipelineRun, id: &str, name: &str) -> String {
    let dir = step(run, id).outputs_dir.clone().unwrap();
    std::fs::read_to_string(Path::new(&dir).join(name)).unwrap()
}

const FLOW: &str = r#"name = "p"
[params]
who = "kiln"

[[steps]]
id = "hello"
run = "printf 'hello %s on %s' '${params.who}' '${date}' > ${outputs}/greeting; echo size=$(wc -c < ${outputs}/greeting) >> $KILN_VALUES"

[[steps]]
id = "shout"
needs = ["hello"]
run = "tr a-z A-Z < ${steps.hello.greeting} > $KILN_OUTPUTS/loud; echo ${steps.hello.size} > ${outputs}/size"

[[steps]]
id = "flaky"
run = "echo attempt $KILN_ATTEMPT; exit 3"
retries = 1

[[steps]]
id = "never"
needs = ["flaky"]
run = "true"
"#;

#[tokio::test]
async fn outputs_and_values_flow_between_steps_and_failures_keep_their_logs() {
    let s = setup();
    let r = run(&s, request(&s, FLOW)).await;
    assert_eq!(r.state, PipelineRunState::Failed);
    assert_eq!(step(&r, "hello").state, StepExecState::Succeeded);
    assert_eq!(step(&r, "hello").values["size"], "24");
    assert_eq!(output(&r, "shout", "loud"), "HELLO KILN ON 2026-11-28");
    assert_eq!(output(&r, "shout", "size"), "24\n");
    let flaky = step(&r, "flaky");
    assert_eq!((flaky.state, flaky.attempts), (StepExecState::Failed, 2));
    let error = flaky.error.as_deref().unwrap();
    assert!(
        error.contains("exit status: 3") && error.ends_with("ends: attempt 2"),
        "{error}"
    );
    assert_eq!(flaky.logs.len(), 2);
    assert_eq!(
        std::fs::read_to_string(&flaky.logs[0]).unwrap(),
        "attempt 1\n"
    );
    assert_eq!(step(&r, "never").state, StepExecState::UpstreamFailed);
    assert_eq!(step(&r, "never").attempts, 0);
    // The record is in the registry as returned.
    assert_eq!(s.registry.pipeline_run(r.id).unwrap(), r);
}

#[tokio::test]
async fn an_unchanged_run_is_cached_and_changes_rerun_what_depends_on_them() {
    let s = setup();
    let text = r#"name = "c"
[params]
n = 3

[[steps]]
id = "make"
run = "seq ${params.n} > ${outputs}/numbers"

[[steps]]
id = "count"
needs = ["make"]
run = "wc -l < ${steps.make.numbers} > ${outputs}/count"

[[steps]]
id = "stamp"
run = "date +%s%N > ${outputs}/now"
cache = false
"#;
    let first = run(&s, request(&s, text)).await;
    assert_eq!(first.state, PipelineRunState::Succeeded);
    let second = run(&s, request(&s, text)).await;
    for id in ["make", "count"] {
        let e = step(&second, id);
        assert_eq!(e.state, StepExecState::Cached, "{id}");
        assert_eq!(e.cached_from, Some(first.id));
        assert!(
            e.reason
                .as_deref()
                .unwrap()
                .contains(&format!("run {}", first.id)),
            "{:?}",
            e.reason
        );
    }
    assert_eq!(output(&second, "count", "count").trim(), "3");
    // `cache = false` always runs.
    assert_eq!(step(&second, "stamp").state, StepExecState::Succeeded);

    // A changed parameter reruns `make`; its output changed, so `count` reruns too.
    let mut changed = request(&s, text);
    changed.params.insert("n".into(), "5".into());
    let third = run(&s, changed).await;
    assert_eq!(step(&third, "make").state, StepExecState::Succeeded);
    assert_eq!(step(&third, "count").state, StepExecState::Succeeded);
    assert_eq!(output(&third, "count", "count").trim(), "5");

    // Forcing one step reruns it; its output is the same, so its dependent stays cached.
    let mut forced = request(&s, text);
    forced.force = Force::Steps(["make".to_string()].into());
    let fourth = run(&s, forced).await;
    assert_eq!(step(&fourth, "make").state, StepExecState::Succeeded);
    assert_eq!(step(&fourth, "count").state, StepExecState::Cached);
}

/// A component that counts its calls and writes its argument's content to its outputs.
struct Copy(std::sync::atomic::AtomicUsize);

const COPY: &[ComponentSpec] = &[ComponentSpec {
    name: "ingest",
    args: &[Arg::required("path").path()],
    outputs: &["lines"],
}];

impl Components for Copy {
    fn catalogue(&self) -> &'static [ComponentSpec] {
        COPY
    }

    fn run(&self, call: &ComponentCall) -> Result<BTreeMap<String, String>, ComponentError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let from = call.path("path").unwrap();
        let text = std::fs::read_to_string(&from).map_err(|e| e.to_string())?;
        std::fs::write(call.outputs.join("copy"), &text).unwrap();
        Ok(BTreeMap::from([(
            "lines".to_string(),
            text.lines().count().to_string(),
        )]))
    }
}

#[tokio::test]
async fn changed_files_that_components_read_rerun_them() {
    let s = setup();
    std::fs::write(s.work.join("data.txt"), "a\nb\n").unwrap();
    let text = "name = \"f\"\n[[steps]]\nid = \"ingest\"\nuses = \"ingest\"\nwith = { path = \"data.txt\" }\n\n[[steps]]\nid = \"big\"\nneeds = [\"ingest\"]\nif = \"${steps.ingest.lines}\"\nrun = \"true\"\n";
    let first = run_with(&s, Copy(0.into()), request(&s, text)).await;
    // `if` needs true or false: 2 is neither.
    assert_eq!(step(&first, "ingest").values["lines"], "2");
    assert_eq!(step(&first, "big").state, StepExecState::Failed);
    assert!(
        step(&first, "big")
            .error
            .as_deref()
            .unwrap()
            .contains("neither true nor false")
    );

    let copy = Copy(0.into());
    let again = run_with(&s, copy, request(&s, text)).await;
    assert_eq!(step(&again, "ingest").state, StepExecState::Cached);
    std::fs::write(s.work.join("data.txt"), "a\nb\nc\n").unwrap();
    let changed = run_with(&s, Copy(0.into()), request(&s, text)).await;
    assert_eq!(step(&changed, "ingest").state, StepExecState::Succeeded);
    assert_eq!(output(&changed, "ingest", "copy"), "a\nb\nc\n");
}

#[tokio::test]
async fn a_false_condition_skips_the_step_and_its_dependents() {
    let s = setup();
    let text = "name = \"s\"\n[[steps]]\nid = \"check\"\nrun = \"echo ok=false >> $KILN_VALUES\"\n\n[[steps]]\nid = \"push\"\nneeds = [\"check\"]\nif = \"${steps.check.ok}\"\nrun = \"touch ${outputs}/pushed\"\n\n[[steps]]\nid = \"announce\"\nneeds = [\"push\"]\nrun = \"true\"\n";
    let r = run(&s, request(&s, text)).await;
    assert_eq!(r.state, PipelineRunState::Succeeded);
    let push = step(&r, "push");
    assert_eq!(push.state, StepExecState::Skipped);
    assert!(
        push.reason.as_deref().unwrap().contains("is false"),
        "{:?}",
        push.reason
    );
    assert_eq!(step(&r, "announce").state, StepExecState::Skipped);
}

#[tokio::test]
async fn a_command_over_its_timeout_is_killed_with_its_children() {
    let s = setup();
    let text = "name = \"p\"\n[[steps]]\nid = \"slow\"\nrun = \"echo $$ > ${outputs}/pid; sleep 30; echo late > ${outputs}/late\"\ntimeout = \"300ms\"\n";
    let r = run(&s, request(&s, text)).await;
    assert_eq!(step(&r, "slow").state, StepExecState::TimedOut);
    assert_gone(&r, "slow").await;
}

async fn assert_gone(r: &PipelineRun, id: &str) {
    let group = output(r, id, "pid");
    let group = format!("-{}", group.trim());
    // Nothing of the process group is left (allowing a moment for the kernel to reap it).
    let mut alive = true;
    for _ in 0..40 {
        alive = std::process::Command::new("kill")
            .args(["-0", "--", &group])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        if !alive {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive, "process group {group} still runs");
    let dir = step(r, id).outputs_dir.clone().unwrap();
    assert!(!Path::new(&dir).join("late").exists());
}

#[tokio::test]
async fn a_cancelled_run_stops_its_steps_and_records_them_as_cancelled() {
    let s = setup();
    let text = "name = \"x\"\n[[steps]]\nid = \"long\"\nrun = \"echo $$ > ${outputs}/pid; sleep 30; echo late > ${outputs}/late\"\n\n[[steps]]\nid = \"after\"\nneeds = [\"long\"]\nrun = \"true\"\n";
    let (tx, cancel) = watch::channel(false);
    let registry = s.registry.clone();
    let req = request(&s, text);
    let task = tokio::spawn(async move {
        run_pipeline(registry, Arc::new(NoComponents), req, cancel, &|_| {}).await
    });
    // Wait for the step to start (up to 10 s on a busy machine), then cancel.
    let mut started = false;
    for _ in 0..500 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let runs = s.registry.pipeline_runs(Some("x"), 1).unwrap();
        let pid = runs
            .first()
            .and_then(|r| step(r, "long").outputs_dir.clone())
            .map(|d| Path::new(&d).join("pid"));
        if pid.is_some_and(|p| p.exists()) {
            started = true;
            break;
        }
    }
    assert!(started);
    tx.send(true).unwrap();
    let r = task.await.unwrap().unwrap();
    assert_eq!(r.state, PipelineRunState::Cancelled);
    assert_eq!(step(&r, "long").state, StepExecState::Cancelled);
    assert_eq!(step(&r, "after").state, StepExecState::Cancelled);
    assert_gone(&r, "long").await;
}

#[tokio::test]
async fn unknown_parameters_and_invalid_files_are_refused_before_a_run_is_recorded() {
    let s = setup();
    let mut r = request(&s, FLOW);
    r.params.insert("whom".into(), "x".into());
    let (_keep, cancel) = watch::channel(false);
    let e = run_pipeline(
        s.registry.clone(),
        Arc::new(NoComponents),
        r,
        cancel.clone(),
        &|_| {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("no parameter `whom`; it has who"), "{e}");
    let bad = request(
        &s,
        "name = \"b\"\n[[steps]]\nid = \"a\"\nneeds = [\"zz\"]\nrun = \"true\"\n",
    );
    let e = run_pipeline(
        s.registry.clone(),
        Arc::new(NoComponents),
        bad,
        cancel,
        &|_| {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("p.toml:4:") && e.contains("zz"), "{e}");
    assert!(s.registry.pipeline_runs(None, 10).unwrap().is_empty());
}

/// Counts how many calls run at once, each taking 300 ms.
#[derive(Default)]
struct Overlap {
    running: std::sync::Mutex<(usize, usize)>,
}

impl Overlap {
    /// The most calls that ran at once.
    fn most(&self) -> usize {
        self.running.lock().unwrap().1
    }
}

const TRAIN: &[ComponentSpec] = &[ComponentSpec {
    name: "train",
    args: &[
        Arg::required("data").path(),
        Arg::required("target"),
        Arg::optional("device"),
        Arg::optional("seed"),
    ],
    outputs: &[],
}];

impl Components for Overlap {
    fn catalogue(&self) -> &'static [ComponentSpec] {
        TRAIN
    }

    fn run(&self, _call: &ComponentCall) -> Result<BTreeMap<String, String>, ComponentError> {
        {
            let mut r = self.running.lock().unwrap();
            r.0 += 1;
            r.1 = r.1.max(r.0);
        }
        std::thread::sleep(Duration::from_millis(300));
        self.running.lock().unwrap().0 -= 1;
        Ok(BTreeMap::new())
    }
}

#[tokio::test]
async fn the_gpu_and_the_files_parallel_limit_bound_what_runs_at_once() {
    let s = setup();
    std::fs::write(s.work.join("d.csv"), "x,y\n1,0\n").unwrap();
    let text = r#"name = "g"
[params]
device = "gpu"

[[steps]]
id = "one"
uses = "train"
with = { data = "d.csv", target = "y", device = "${params.device}" }

[[steps]]
id = "two"
uses = "train"
with = { data = "d.csv", target = "y", device = "${params.device}", seed = 2 }
"#;
    let most_at_once = |params: &[(&str, &str)]| {
        let mut r = request(&s, text);
        r.params = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let components = Arc::new(Overlap::default());
        let (components2, registry) = (components.clone(), s.registry.clone());
        async move {
            let (_keep, cancel) = watch::channel(false);
            let run = run_pipeline(registry, components2, r, cancel, &|_| {})
                .await
                .unwrap();
            assert_eq!(run.state, PipelineRunState::Succeeded);
            components.most()
        }
    };
    assert_eq!(most_at_once(&[]).await, 1, "both on the GPU: one at a time");
    assert_eq!(
        most_at_once(&[("device", "cpu")]).await,
        2,
        "on the CPU: together"
    );
    // The file's `parallel` bounds the run's steps whatever the device.
    let text = format!("parallel = 1\n{text}");
    let mut r = request(&s, &text);
    r.params = BTreeMap::from([("device".to_string(), "cpu".to_string())]);
    r.force = Force::All;
    let components = Arc::new(Overlap::default());
    let (_keep, cancel) = watch::channel(false);
    let run = run_pipeline(s.registry.clone(), components.clone(), r, cancel, &|_| {})
        .await
        .unwrap();
    assert_eq!(run.state, PipelineRunState::Succeeded);
    assert_eq!(components.most(), 1);
}

#[tokio::test]
async fn metrics_a_command_reports_become_a_tracking_run_and_values() {
    let s = setup();
    let text = r#"name = "m"

[[steps]]
id = "fit"
run = "for l in 0.9 0.5 0.25; do echo loss=$l >> $KILN_METRICS; done; echo auc = 0.81 >> $KILN_METRICS"

[[steps]]
id = "gate"
needs = ["fit"]
run = "echo ${steps.fit.auc} ${steps.fit.loss} > ${outputs}/seen"

[[steps]]
id = "broken"
run = "echo auc=high >> $KILN_METRICS"
"#;
    let r = run(&s, request(&s, text)).await;
    let fit = step(&r, "fit");
    assert_eq!(fit.state, StepExecState::Succeeded);
    assert_eq!(fit.values["auc"], "0.81");
    assert_eq!(fit.values["loss"], "0.25");
    assert_eq!(output(&r, "gate", "seen"), "0.81 0.25\n");

    let id = kiln_core::registry::parse_run_id(&fit.values["run"]).unwrap();
    let tracked = s.registry.run(id).unwrap();
    assert_eq!(tracked.name, "fit");
    assert_eq!(tracked.status, kiln_core::registry::RunStatus::Finished);
    assert_eq!(tracked.tags["kiln.pipeline_run"], r.id.to_string());
    assert_eq!(tracked.tags["kiln.pipeline_step"], "fit");
    assert_eq!(
        s.registry.experiment("m").unwrap().id,
        tracked.experiment_id
    );
    let loss: Vec<(i64, f64)> = s
        .registry
        .metric_history(id, "loss", None)
        .unwrap()
        .iter()
        .map(|p| (p.step, p.value))
        .collect();
    assert_eq!(loss, [(0, 0.9), (1, 0.5), (2, 0.25)]);

    let broken = step(&r, "broken");
    assert_eq!(broken.state, StepExecState::Failed);
    let error = broken.error.as_deref().unwrap();
    assert!(
        error.contains("$KILN_METRICS line 1: \"auc=high\" is not NAME=NUMBER"),
        "{error}"
    );
}

#[tokio::test]
async fn a_command_finds_its_inputs_in_environment_variables_and_a_file() {
    let s = setup();
    let text = r#"name = "i"

[[steps]]
id = "make-it"
run = "echo hi > ${outputs}/greeting; echo words=1 >> $KILN_VALUES"

[[steps]]
id = "use"
needs = ["make-it"]
run = "cat \"$KILN_INPUT_MAKE_IT/greeting\" > ${outputs}/copy; cp \"$KILN_INPUTS\" ${outputs}/inputs.json"
"#;
    let r = run(&s, request(&s, text)).await;
    assert_eq!(r.state, PipelineRunState::Succeeded, "{r:?}");
    assert_eq!(output(&r, "use", "copy"), "hi\n");
    let inputs: serde_json::Value =
        serde_json::from_str(&output(&r, "use", "inputs.json")).unwrap();
    let made = step(&r, "make-it");
    assert_eq!(
        inputs["make-it"]["outputs"].as_str(),
        made.outputs_dir.as_deref()
    );
    assert_eq!(inputs["make-it"]["values"]["words"], "1");
}

/// What a hostile caller puts in a parameter or a step puts in a value.
const HOSTILE: &[&str] = &[
    "1; touch PWNED #",
    "$(touch PWNED)",
    "`touch PWNED`",
    "x' ; touch PWNED ; echo '",
    "x\" ; touch PWNED ; echo \"",
    "a\ntouch PWNED",
    "${HOME} && touch PWNED",
    "-rf *",
];

const QUOTING: &str = r#"name = "q"
[params]
text = "plain"
n = 3

[[steps]]
id = "first"
run = "printf '%s' ${params.text} > ${outputs}/bare; echo \"v=${params.text}\" > ${outputs}/double; echo 'w=${params.text}' > ${outputs}/single; printf '%s' \"$KILN_PARAM_TEXT\" > ${outputs}/env; echo \"copy=$KILN_PARAM_TEXT\" | head -n 1 >> $KILN_VALUES"

[[steps]]
id = "second"
needs = ["first"]
run = "printf '%s' ${steps.first.copy} > ${outputs}/value # it's a comment with ${params.text}"
"#;

#[tokio::test]
async fn no_parameter_or_value_is_ever_shell_code() {
    for hostile in HOSTILE {
        let s = setup();
        let mut r = request(&s, QUOTING);
        r.params.insert("text".into(), hostile.to_string());
        let run = run(&s, r).await;
        assert_eq!(
            run.state,
            PipelineRunState::Succeeded,
            "{hostile:?}: {run:?}"
        );
        assert!(
            !s.work.join("PWNED").exists(),
            "{hostile:?} ran as a command"
        );
        assert_eq!(output(&run, "first", "bare"), *hostile, "{hostile:?}");
        assert_eq!(output(&run, "first", "double"), format!("v={hostile}\n"));
        assert_eq!(output(&run, "first", "single"), format!("w={hostile}\n"));
        assert_eq!(output(&run, "first", "env"), *hostile);
        // A value a step reports goes into a later line as text too (up to the line's end,
        // as `$KILN_VALUES` holds one line per value).
        let first_line = hostile.lines().next().unwrap().trim();
        assert_eq!(output(&run, "second", "value"), first_line, "{hostile:?}");
    }
}

#[tokio::test]
async fn parameters_are_typed_and_a_value_of_the_wrong_type_is_refused_by_name() {
    let s = setup();
    let mut r = request(&s, QUOTING);
    r.params.insert("n".into(), "1; touch PWNED #".into());
    let e = refusal(&s, r).await;
    assert!(e.contains("parameter `n`") && e.contains("integer"), "{e}");
    assert!(s.registry.pipeline_runs(None, 10).unwrap().is_empty());
    let declared = "name = \"d\"\n[params]\nrate = { type = \"float\", default = 1 }\n[[steps]]\nid = \"a\"\nrun = \"echo ${params.rate} > $KILN_OUTPUTS/r\"\n";
    let mut r = request(&s, declared);
    r.params.insert("rate".into(), "0.5".into());
    let done = run(&s, r).await;
    assert_eq!(output(&done, "a", "r"), "0.5\n");
    let mut r = request(&s, declared);
    r.params.insert("rate".into(), "fast".into());
    let e = refusal(&s, r).await;
    assert!(
        e.contains("`rate`") && e.contains("\"fast\" is not a finite number"),
        "{e}"
    );
}

#[tokio::test]
async fn what_a_step_starts_in_the_background_ends_with_the_step() {
    let s = setup();
    let text =
        "name = \"t\"\n[[steps]]\nid = \"a\"\nrun = \"echo $$ > $KILN_OUTPUTS/pid; sleep 30 &\"\n";
    let run = run(&s, request(&s, text)).await;
    assert_eq!(step(&run, "a").state, StepExecState::Succeeded);
    assert_gone(&run, "a").await;
}

#[tokio::test]
async fn a_log_keeps_its_first_64_mib_and_is_read_in_parts() {
    let s = setup();
    let text = "name = \"loud\"\n[[steps]]\nid = \"a\"\nrun = \"head -c 70000000 /dev/zero | tr '\\\\0' x; echo; echo done >&2\"\n";
    let run = run(&s, request(&s, text)).await;
    assert_eq!(step(&run, "a").state, StepExecState::Succeeded);
    let log = &step(&run, "a").logs[0];
    let size = std::fs::metadata(log).unwrap().len();
    let cap = kiln_scheduler::command::LOG_CAP;
    assert!(size > cap && size < cap + 200, "{size}");
    let tail = s.registry.step_log(run.id, "a", 1, None, 100).unwrap();
    assert_eq!(
        (tail.size, tail.start, tail.text.len()),
        (size, size - 100, 100)
    );
    assert!(
        tail.text.contains("the log stops at 64 MiB"),
        "{}",
        tail.text
    );
    let head = s.registry.step_log(run.id, "a", 1, Some(0), 10).unwrap();
    assert_eq!(head.text, "xxxxxxxxxx");
}

/// Keeps what it is asked to post; fails the first `fail` posts.
#[derive(Default)]
struct Inbox {
    posts: std::sync::Mutex<Vec<(String, serde_json::Value)>>,
    fail: std::sync::atomic::AtomicUsize,
}

impl Notify for Inbox {
    fn post(&self, url: &str, summary: &serde_json::Value) -> Result<(), String> {
        self.posts
            .lock()
            .unwrap()
            .push((url.to_string(), summary.clone()));
        let left = self.fail.load(std::sync::atomic::Ordering::SeqCst);
        if left > 0 {
            self.fail
                .store(left - 1, std::sync::atomic::Ordering::SeqCst);
            return Err("503 from the receiver".into());
        }
        Ok(())
    }
}

const WITH_HANDLERS: &str = r#"
name = "nightly"
notify = "https://hooks.example.test/T000/secret"

[params]
fail = "no"

[[steps]]
id = "prepare"
run = "echo preparing"

[[steps]]
id = "train"
needs = ["prepare"]
run = "echo 'loss went to NaN at epoch 3'; if [ \"${params.fail}\" = yes ]; then exit 3; fi"

[[steps]]
id = "push"
needs = ["train"]
run = "echo pushed"

[[on_failure]]
id = "page"
run = "printf '%s|%s|%s' \"$KILN_FAILED_STEP\" \"$KILN_FAILED_ERROR\" \"$KILN_FAILED_LOG_TAIL\" > $KILN_OUTPUTS/page.txt"

[[on_failure]]
id = "after-page"
needs = ["page"]
run = "echo done > $KILN_OUTPUTS/after.txt"
"#;

#[tokio::test]
async fn failure_handlers_run_only_when_the_run_fails_and_every_run_is_announced() {
    let s = setup();
    let inbox = Arc::new(Inbox::default());

    // A run that succeeds: the handlers are skipped, the summary says so.
    let mut r = request(&s, WITH_HANDLERS);
    r.notifier = Some(inbox.clone());
    let ok = run(&s, r).await;
    assert_eq!(ok.state, PipelineRunState::Succeeded);
    for id in ["page", "after-page"] {
        assert_eq!(step(&ok, id).state, StepExecState::Skipped, "{id}");
        assert_eq!(
            step(&ok, id).reason.as_deref(),
            Some("on_failure: the run succeeded")
        );
    }
    {
        let posts = inbox.posts.lock().unwrap();
        assert_eq!(posts.len(), 1);
        let (url, summary) = &posts[0];
        assert_eq!(url, "https://hooks.example.test/T000/secret");
        assert_eq!(summary["state"], "succeeded");
        assert_eq!(summary["run"], ok.id);
        assert_eq!(summary["failed_steps"], serde_json::json!([]));
        assert_eq!(
            summary["text"],
            format!(
                "kiln: pipeline nightly run {} (2026-11-28) succeeded",
                ok.id
            )
        );
    }

    // A run that fails at `train`: `push` does not run, the handlers do, in order, with the
    // failure in their environment; the run stays failed. The receiver refuses the first post:
    // it is posted again.
    inbox.fail.store(1, std::sync::atomic::Ordering::SeqCst);
    let mut r = request(&s, WITH_HANDLERS);
    r.params.insert("fail".into(), "yes".into());
    r.notifier = Some(inbox.clone());
    let failed = run(&s, r).await;
    assert_eq!(failed.state, PipelineRunState::Failed);
    assert_eq!(step(&failed, "push").state, StepExecState::UpstreamFailed);
    assert_eq!(step(&failed, "page").state, StepExecState::Succeeded);
    assert_eq!(step(&failed, "after-page").state, StepExecState::Succeeded);
    let page = output(&failed, "page", "page.txt");
    let (failed_step, rest) = page.split_once('|').unwrap();
    let (error, tail) = rest.split_once('|').unwrap();
    assert_eq!(failed_step, "train");
    assert!(error.contains("exit") && error.contains('3'), "{error}");
    assert!(tail.contains("loss went to NaN at epoch 3"), "{tail}");
    let posts = inbox.posts.lock().unwrap();
    assert_eq!(
        posts.len(),
        3,
        "one for the first run, two tries for the second"
    );
    let summary = &posts[2].1;
    assert_eq!(summary, &posts[1].1);
    assert_eq!(summary["state"], "failed");
    assert_eq!(summary["failed_steps"][0]["id"], "train");
    assert!(
        summary["text"].as_str().unwrap().starts_with(&format!(
            "kiln: pipeline nightly run {} (2026-11-28) failed at step train: ",
            failed.id
        )),
        "{summary}"
    );
}

#[tokio::test]
async fn failure_handlers_are_checked_like_steps() {
    let s = setup();
    let bad = r#"
name = "p"
notify = "hooks.example.test"
[[steps]]
id = "a"
run = "true"
[[on_failure]]
id = "a"
run = "true"
[[on_failure]]
id = "h"
needs = ["b"]
run = "true"
"#;
    let e = refusal(&s, request(&s, bad)).await;
    assert!(e.contains("step id `a` is used twice"), "{e}");
    assert!(
        e.contains(
            "needs unknown step `b` (an on_failure step: it may need other on_failure steps only)"
        ),
        "{e}"
    );
    assert!(
        e.contains("notify = \"hooks.example.test\": give an http:// or https:// URL"),
        "{e}"
    );
}

const MARKETS: &str = r#"
name = "markets"
[params]
markets = ["us", "eu"]

[[steps]]
id = "prepare"
run = "echo ready"

[[steps]]
id = "train"
needs = ["prepare"]
for_each = "${params.markets}"
run = "echo market=${item} >> $KILN_VALUES; echo ${item} > ${outputs}/name.txt; [ ${item} != fail ]"

[[steps]]
id = "report"
needs = ["train"]
run = "echo ${steps.train.market} > ${outputs}/all.txt; cat ${steps.train[eu].name.txt} > ${outputs}/eu.txt"
"#;

#[tokio::test]
async fn a_step_fans_out_over_a_list_and_its_dependants_see_every_item() {
    let s = setup();
    let first = run(&s, request(&s, MARKETS)).await;
    assert_eq!(first.state, PipelineRunState::Succeeded);
    let ids: Vec<&str> = first.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["prepare", "train[us]", "train[eu]", "report"]);
    assert_eq!(step(&first, "report").needs, ["train[us]", "train[eu]"]);
    assert_eq!(step(&first, "train[eu]").values["market"], "eu");
    assert_eq!(output(&first, "report", "all.txt").trim(), r#"["us","eu"]"#);
    assert_eq!(output(&first, "report", "eu.txt").trim(), "eu");

    // Each item is cached on its own: a new item runs alone, and what needs them all reruns.
    let mut r = request(&s, MARKETS);
    r.params.insert("markets".into(), "us,eu,jp".into());
    let second = run(&s, r).await;
    assert_eq!(step(&second, "train[us]").state, StepExecState::Cached);
    assert_eq!(step(&second, "train[eu]").state, StepExecState::Cached);
    assert_eq!(step(&second, "train[jp]").state, StepExecState::Succeeded);
    assert_eq!(step(&second, "report").state, StepExecState::Succeeded);
    assert_eq!(
        output(&second, "report", "all.txt").trim(),
        r#"["us","eu","jp"]"#
    );

    // One item failing stops what needs them all, not the other items.
    let mut r = request(&s, MARKETS);
    r.params
        .insert("markets".into(), r#"["us", "fail"]"#.into());
    let third = run(&s, r).await;
    assert_eq!(third.state, PipelineRunState::Failed);
    assert_eq!(step(&third, "train[us]").state, StepExecState::Cached);
    assert_eq!(step(&third, "train[fail]").state, StepExecState::Failed);
    assert_eq!(step(&third, "report").state, StepExecState::UpstreamFailed);

    // Items that would be shell code or an empty list are refused before the run.
    let mut r = request(&s, MARKETS);
    r.params.insert("markets".into(), "us,$(reboot)".into());
    let e = refusal(&s, r).await;
    assert!(
        e.contains("item \"$(reboot)\" must be letters, digits"),
        "{e}"
    );
    let mut r = request(&s, MARKETS);
    r.params.insert("markets".into(), "".into());
    let e = refusal(&s, r).await;
    assert!(
        e.contains("runs for each item of parameter `markets`, which has none"),
        "{e}"
    );
    // `${item}` outside a for_each step is an error of the file.
    let bad = "name = \"p\"\n[[steps]]\nid = \"a\"\nrun = \"echo ${item}\"\n";
    let e = refusal(&s, request(&s, bad)).await;
    assert!(e.contains("`${item}` is for steps with `for_each`"), "{e}");
}

const DISCOVERED: &str = r#"
name = "discovered"
[params]
found = "us,eu"

[[steps]]
id = "discover"
run = "echo markets=${params.found} >> $KILN_VALUES"

[[steps]]
id = "side"
run = "echo independent"

[[steps]]
id = "train"
needs = ["discover"]
for_each = "${steps.discover.markets}"
run = "echo m=${item} >> $KILN_VALUES"

[[steps]]
id = "report"
needs = ["train", "side"]
run = "echo ${steps.train.m} > ${outputs}/all.txt"
"#;

#[tokio::test]
async fn a_step_fans_out_over_an_earlier_steps_list_once_it_is_known() {
    let s = setup();
    let first = run(&s, request(&s, DISCOVERED)).await;
    assert_eq!(first.state, PipelineRunState::Succeeded, "{first:#?}");
    let train = step(&first, "train");
    assert_eq!(train.state, StepExecState::Succeeded);
    assert_eq!(
        train.reason.as_deref(),
        Some("fanned out into train[us], train[eu]")
    );
    assert_eq!(step(&first, "train[eu]").values["m"], "eu");
    assert_eq!(step(&first, "train[us]").needs, ["discover"]);
    let mut needs = step(&first, "report").needs.clone();
    needs.sort();
    assert_eq!(needs, ["side", "train[eu]", "train[us]"]);
    assert_eq!(output(&first, "report", "all.txt").trim(), r#"["us","eu"]"#);

    // Unchanged: the source and each item come from the cache.
    let second = run(&s, request(&s, DISCOVERED)).await;
    assert_eq!(step(&second, "discover").state, StepExecState::Cached);
    assert_eq!(step(&second, "train[us]").state, StepExecState::Cached);

    // A value that lists nothing usable fails the step, named, and what needs it does not run.
    for (found, says) in [
        ("", "which has none"),
        ("us;reboot", "must be letters, digits"),
    ] {
        let mut r = request(&s, DISCOVERED);
        r.params.insert("found".into(), found.into());
        let failed = run(&s, r).await;
        assert_eq!(failed.state, PipelineRunState::Failed);
        let train = step(&failed, "train");
        assert_eq!(train.state, StepExecState::Failed);
        assert!(train.error.as_deref().unwrap().contains(says), "{train:?}");
        assert_eq!(step(&failed, "report").state, StepExecState::UpstreamFailed);
        assert_eq!(step(&failed, "side").state, StepExecState::Cached);
    }
    // The source must be a step it needs.
    let bad = DISCOVERED.replace("needs = [\"discover\"]\nfor_each", "for_each");
    let e = refusal(&s, request(&s, &bad)).await;
    assert!(
        e.contains("an earlier step's value must be `${steps.ID.NAME}` of a step it needs"),
        "{e}"
    );
}
