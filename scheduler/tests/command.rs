//! `run` steps as real shell commands: outputs flow between steps through templates, a failing
//! command is retried and fails with its log kept, and a command over its timeout is killed with
//! everything it started.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kiln_scheduler::command::CommandRunner;
use kiln_scheduler::executor::{Limits, StepState, execute};
use kiln_scheduler::parse;

fn runner(dir: &std::path::Path) -> Arc<CommandRunner> {
    Arc::new(CommandRunner {
        dir: dir.to_path_buf(),
        params: BTreeMap::from([("who".to_string(), "kiln".to_string())]),
        run_id: "r1".into(),
        date: "2026-11-28".into(),
    })
}

fn quick() -> Limits {
    Limits {
        backoff: Duration::from_millis(10),
        ..Limits::default()
    }
}

#[tokio::test]
async fn outputs_flow_between_steps_and_failures_keep_their_logs() {
    let dir = tempfile::tempdir().unwrap();
    let p = parse(
        r#"name = "p"
[params]
who = "kiln"

[[steps]]
id = "hello"
run = "printf 'hello %s on %s' '${params.who}' '${date}' > ${outputs}/greeting"

[[steps]]
id = "shout"
needs = ["hello"]
run = "tr a-z A-Z < ${steps.hello.greeting} > $KILN_OUTPUTS/loud"

[[steps]]
id = "flaky"
run = "echo attempt $KILN_ATTEMPT; exit 3"
retries = 1

[[steps]]
id = "never"
needs = ["flaky"]
run = "true"
"#,
    );
    assert!(!p.has_errors(), "{:?}", p.diagnostics);
    let r = runner(dir.path());
    let records = execute(&p.pipeline.unwrap(), r.clone(), quick()).await;
    let state: BTreeMap<&str, &StepState> =
        records.iter().map(|r| (r.id.as_str(), &r.state)).collect();
    assert_eq!(state["hello"], &StepState::Succeeded);
    assert_eq!(state["shout"], &StepState::Succeeded);
    assert_eq!(
        std::fs::read_to_string(r.outputs("shout").join("loud")).unwrap(),
        "HELLO KILN ON 2026-11-28"
    );
    let flaky = records.iter().find(|r| r.id == "flaky").unwrap();
    assert_eq!((&flaky.state, flaky.attempts), (&StepState::Failed, 2));
    let error = flaky.error.as_deref().unwrap();
    assert!(
        error.contains("exit status: 3") && error.ends_with("ends: attempt 2"),
        "{error}"
    );
    assert_eq!(
        std::fs::read_to_string(r.log("flaky", 1)).unwrap(),
        "attempt 1\n"
    );
    assert_eq!(state["never"], &StepState::UpstreamFailed);
}

#[tokio::test]
async fn a_command_over_its_timeout_is_killed_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let p = parse(
        "name = \"p\"\n[[steps]]\nid = \"slow\"\nrun = \"echo $$ > ${outputs}/pid; sleep 30; echo late > ${outputs}/late\"\ntimeout = \"300ms\"\n",
    );
    let r = runner(dir.path());
    let records = execute(&p.pipeline.unwrap(), r.clone(), quick()).await;
    assert_eq!(records[0].state, StepState::TimedOut);
    let group = std::fs::read_to_string(r.outputs("slow").join("pid")).unwrap();
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
    assert!(!r.outputs("slow").join("late").exists());
}
