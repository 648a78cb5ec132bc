//! `kiln pipeline validate`: the example is valid and planned; a broken file gets every problem
//! as FILE:LINE:COL and exit code 3.
#![allow(clippy::unwrap_used)]

mod util;

#[test]
fn the_example_validates_and_a_broken_file_lists_every_problem() {
    let k = util::Kiln::new();
    let out = k.ok(&["pipeline", "validate", "examples/pipelines/retrain.toml"]);
    assert!(
        out.contains("pipeline `retrain-ctr` is valid: 10 steps in 9 levels"),
        "{out}"
    );
    assert!(
        out.contains("schedule `0 3 * * *` (catch-up latest, overlap skip)"),
        "{out}"
    );

    let broken = k.file(
        "broken.toml",
        "name = \"p\"\n[schedule]\ncron = \"every day\"\n\n[[steps]]\nid = \"a\"\nneeds = [\"b\"]\nuses = \"ingest\"\nwith = { path = \"x\" }\n\n[[steps]]\nid = \"b\"\nneeds = [\"a\"]\nrun = \"true\"\n",
    );
    let broken = broken.display().to_string();
    let r = k.run(&["pipeline", "validate", &broken]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "{broken}:3:8: error: cron expression \"every day\""
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!(
            "{broken}:6:1: error: the steps form a cycle: a → b → a"
        )),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("pipeline `p`: 2 errors"), "{}", r.stderr);

    let r = k.run(&["pipeline", "validate", "--json", &broken]);
    assert_eq!(r.code, 3);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["diagnostics"].as_array().unwrap().len(), 2);

    let r = k.run(&["pipeline", "validate", "no-such.toml"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("reading no-such.toml"), "{}", r.stderr);
}
