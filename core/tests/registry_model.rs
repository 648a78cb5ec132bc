//! The registry against a plain in-memory model: random operation sequences, with reopens,
//! must leave the registry holding exactly what the model says.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use kiln_core::registry::{Expect, NewRun, Registry, RegistryError, RunStatus};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    CreateRun {
        exp: u8,
    },
    LogMetric {
        run: usize,
        key: u8,
        step: i64,
        value: i32,
    },
    EndRun {
        run: usize,
        failed: bool,
    },
    Attach {
        run: usize,
        content: u8,
    },
    Register {
        model: u8,
        run: usize,
    },
    SetAlias {
        model: u8,
        alias: u8,
        version: usize,
        expect: u8,
    },
    DeleteAlias {
        model: u8,
        alias: u8,
    },
    DeleteVersion {
        model: u8,
        version: usize,
        force: bool,
    },
    DeleteRun {
        run: usize,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..2).prop_map(|exp| Op::CreateRun { exp }),
        6 => (0usize..8, 0u8..3, -2i64..4, -100i32..100)
            .prop_map(|(run, key, step, value)| Op::LogMetric { run, key, step, value }),
        1 => (0usize..8, any::<bool>()).prop_map(|(run, failed)| Op::EndRun { run, failed }),
        2 => (0usize..8, 0u8..3).prop_map(|(run, content)| Op::Attach { run, content }),
        3 => (0u8..2, 0usize..8).prop_map(|(model, run)| Op::Register { model, run }),
        4 => (0u8..2, 0u8..3, 0usize..8, 0u8..3)
            .prop_map(|(model, alias, version, expect)| Op::SetAlias { model, alias, version, expect }),
        1 => (0u8..2, 0u8..3).prop_map(|(model, alias)| Op::DeleteAlias { model, alias }),
        1 => (0u8..2, 0usize..8, any::<bool>())
            .prop_map(|(model, version, force)| Op::DeleteVersion { model, version, force }),
        1 => (0usize..8).prop_map(|run| Op::DeleteRun { run }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Default, Clone)]
struct MRun {
    status: Option<RunStatus>,
    metrics: BTreeMap<String, Vec<(i64, f64)>>,
    artifact: Option<String>,
}

#[derive(Debug, Default, Clone)]
struct MModel {
    next: u32,
    versions: BTreeMap<u32, String>,
    aliases: BTreeMap<String, u32>,
    history: usize,
}

#[derive(Default)]
struct State {
    runs: BTreeMap<u64, MRun>,
    created: Vec<u64>,
    models: BTreeMap<String, MModel>,
}

const ALIASES: [&str; 3] = ["champion", "challenger", "production"];

fn pick<T: Copy>(v: &[T], i: usize) -> Option<T> {
    (!v.is_empty()).then(|| v[i % v.len()])
}

fn check(reg: &Registry, s: &State) {
    let ids: BTreeSet<u64> = reg.runs(None).unwrap().iter().map(|r| r.id).collect();
    assert_eq!(ids, s.runs.keys().copied().collect());
    for (id, m) in &s.runs {
        let run = reg.run(*id).unwrap();
        assert_eq!(run.status, m.status.unwrap_or(RunStatus::Running));
        let latest = reg.latest_metrics(*id).unwrap();
        assert_eq!(
            latest.keys().collect::<Vec<_>>(),
            m.metrics.keys().collect::<Vec<_>>()
        );
        for (key, points) in &m.metrics {
            let best = points
                .iter()
                .enumerate()
                .max_by_key(|(i, (step, _))| (*step, *i))
                .map(|(_, p)| *p)
                .unwrap();
            assert_eq!((latest[key].step, latest[key].value), best, "latest {key}");
            let mut sorted: Vec<(usize, (i64, f64))> = points.iter().copied().enumerate().collect();
            sorted.sort_by_key(|(i, (step, _))| (*step, *i));
            let history: Vec<(i64, f64)> = reg
                .metric_history(*id, key, None)
                .unwrap()
                .iter()
                .map(|p| (p.step, p.value))
                .collect();
            assert_eq!(
                history,
                sorted.into_iter().map(|(_, p)| p).collect::<Vec<_>>()
            );
        }
        for a in &run.artifacts {
            reg.verify_artifact(a).unwrap();
        }
        assert_eq!(run.artifacts.first().map(|a| a.digest.clone()), m.artifact);
    }
    let names: Vec<String> = reg.models().unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(names, s.models.keys().cloned().collect::<Vec<_>>());
    for (name, m) in &s.models {
        let versions: Vec<u32> = reg
            .versions(name)
            .unwrap()
            .iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(versions, m.versions.keys().copied().collect::<Vec<_>>());
        for v in reg.versions(name).unwrap() {
            assert_eq!(Some(&v.artifact.digest), m.versions.get(&v.version));
            reg.verify_artifact(&v.artifact).unwrap();
        }
        assert_eq!(reg.aliases(name).unwrap(), m.aliases);
        assert_eq!(reg.history(name).unwrap().len(), m.history);
    }
}

fn run_ops(home: &Path, ops: &[Op]) {
    let files = tempfile::tempdir().unwrap();
    let mut reg = Some(Registry::open(home).unwrap());
    let mut s = State::default();
    for op in ops {
        let r = reg.as_ref().unwrap();
        match op.clone() {
            Op::CreateRun { exp } => {
                let run = r
                    .create_run(NewRun {
                        experiment: format!("exp{exp}"),
                        ..Default::default()
                    })
                    .unwrap();
                s.runs.insert(run.id, MRun::default());
                s.created.push(run.id);
            }
            Op::LogMetric {
                run,
                key,
                step,
                value,
            } => {
                let Some(id) = pick(&s.created, run) else {
                    continue;
                };
                let key = format!("m{key}");
                let res = r.log_metrics(id, &[(&key, step, f64::from(value))]);
                match s.runs.get_mut(&id) {
                    Some(m) => {
                        res.unwrap();
                        m.metrics
                            .entry(key)
                            .or_default()
                            .push((step, f64::from(value)));
                    }
                    None => assert!(matches!(res, Err(RegistryError::NotFound { .. }))),
                }
            }
            Op::EndRun { run, failed } => {
                let Some(id) = pick(&s.created, run) else {
                    continue;
                };
                let status = if failed {
                    RunStatus::Failed
                } else {
                    RunStatus::Finished
                };
                let res = r.end_run(id, status);
                match s.runs.get_mut(&id) {
                    Some(m) => {
                        res.unwrap();
                        m.status = Some(status);
                    }
                    None => assert!(res.is_err()),
                }
            }
            Op::Attach { run, content } => {
                let Some(id) = pick(&s.created, run) else {
                    continue;
                };
                let path = files.path().join(format!("f{content}"));
                std::fs::write(&path, format!("weights {content}")).unwrap();
                let res = r.log_artifact(id, "model", &path);
                match s.runs.get_mut(&id) {
                    Some(m) if m.artifact.is_none() => m.artifact = Some(res.unwrap().digest),
                    _ => assert!(res.is_err()),
                }
            }
            Op::Register { model, run } => {
                let Some(id) = pick(&s.created, run) else {
                    continue;
                };
                let name = format!("model{model}");
                let res = r.register_version(&name, id, "model", "", None);
                match s.runs.get(&id).and_then(|m| m.artifact.clone()) {
                    Some(digest) => {
                        let v = res.unwrap();
                        let m = s.models.entry(name).or_insert(MModel {
                            next: 1,
                            ..Default::default()
                        });
                        assert_eq!(v.version, m.next);
                        m.next += 1;
                        m.versions.insert(v.version, digest);
                    }
                    None => assert!(res.is_err()),
                }
            }
            Op::SetAlias {
                model,
                alias,
                version,
                expect,
            } => {
                let name = format!("model{model}");
                let alias = ALIASES[alias as usize];
                let Some(m) = s.models.get_mut(&name) else {
                    assert!(r.set_alias(&name, alias, 1, Expect::Any, "t", "").is_err());
                    continue;
                };
                let versions: Vec<u32> = m.versions.keys().copied().collect();
                let Some(v) = pick(&versions, version) else {
                    continue;
                };
                let current = m.aliases.get(alias).copied();
                let (expect, ok) = match expect {
                    0 => (Expect::Any, true),
                    1 => (Expect::Absent, current.is_none()),
                    _ => (Expect::Version(v), current == Some(v)),
                };
                let res = r.set_alias(&name, alias, v, expect, "t", "test");
                if ok {
                    let e = res.unwrap();
                    assert_eq!((e.from, e.to), (current, Some(v)));
                    m.aliases.insert(alias.to_string(), v);
                    m.history += 1;
                } else {
                    assert!(
                        matches!(res, Err(RegistryError::Conflict { .. })),
                        "{res:?}"
                    );
                }
            }
            Op::DeleteAlias { model, alias } => {
                let name = format!("model{model}");
                let alias = ALIASES[alias as usize];
                let res = r.delete_alias(&name, alias, Expect::Any, "t", "");
                match s.models.get_mut(&name) {
                    Some(m) if m.aliases.contains_key(alias) => {
                        res.unwrap();
                        m.aliases.remove(alias);
                        m.history += 1;
                    }
                    _ => assert!(res.is_err()),
                }
            }
            Op::DeleteVersion {
                model,
                version,
                force,
            } => {
                let name = format!("model{model}");
                let Some(m) = s.models.get_mut(&name) else {
                    continue;
                };
                let versions: Vec<u32> = m.versions.keys().copied().collect();
                let Some(v) = pick(&versions, version) else {
                    continue;
                };
                let pointing: Vec<String> = m
                    .aliases
                    .iter()
                    .filter(|(_, t)| **t == v)
                    .map(|(a, _)| a.clone())
                    .collect();
                let res = r.delete_version(&name, v, force, "t");
                if pointing.is_empty() || force {
                    res.unwrap();
                    m.versions.remove(&v);
                    for a in pointing {
                        m.aliases.remove(&a);
                        m.history += 1;
                    }
                } else {
                    assert!(matches!(res, Err(RegistryError::Aliased { .. })), "{res:?}");
                }
            }
            Op::DeleteRun { run } => {
                let Some(id) = pick(&s.created, run) else {
                    continue;
                };
                let res = r.delete_run(id);
                match s.runs.remove(&id) {
                    Some(_) => res.unwrap(),
                    None => assert!(res.is_err()),
                }
            }
            Op::Reopen => {
                r.flush().unwrap();
                drop(reg.take());
                reg = Some(Registry::open(home).unwrap());
            }
        }
    }
    let r = reg.as_ref().unwrap();
    check(r, &s);
    r.flush().unwrap();
    drop(reg.take());
    check(&Registry::open(home).unwrap(), &s);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn registry_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let home = tempfile::tempdir().unwrap();
        run_ops(home.path(), &ops);
    }
}
