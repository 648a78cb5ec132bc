//! Backups, restores and checks of a registry.
//!
//! **A backup is a `KILN_HOME` of its own**: a fresh sled database holding a copy of every tree,
//! and the artifact objects, each verified against its digest as it is copied. So a backup opens
//! like any registry (`kiln --home BACKUP registry check`), and restoring one is putting its two
//! parts in place. It is written beside its final name and renamed into place when whole.
//!
//! **A backup taken while the registry changes is checked before it is kept**: it is opened and
//! checked as a registry, and taken again (up to three times) when a change that happened while it
//! was copied left a reference dangling in the copy.
//!
//! Step outputs and logs under `pipelines/` and the prediction log are files of their own, not
//! part of the registry, and are not in a backup.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::{Registry, RegistryError};

/// What a backup holds (also the answer of `POST /api/registry/backups`).
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct BackupSummary {
    pub dir: PathBuf,
    pub trees: usize,
    pub records: u64,
    pub artifacts: u64,
    pub bytes: u64,
    /// Times the copy was taken (more than once when writes tore it).
    pub attempts: u32,
}

/// One thing wrong with a registry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Problem {
    /// What it is about: `model bc version 3`, `run 0000002a`, `alias bc@champion`.
    pub subject: String,
    pub problem: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.subject, self.problem)
    }
}

fn io(path: &Path, e: std::io::Error) -> RegistryError {
    RegistryError::Io(format!("{}: {e}", path.display()))
}

impl Registry {
    /// Writes a consistent copy of the registry (database and artifacts) to `dir`, which must
    /// not exist yet.
    pub fn backup(&self, dir: &Path) -> Result<BackupSummary, RegistryError> {
        if dir.exists() {
            return Err(RegistryError::Invalid(format!(
                "{} already exists; a backup goes to a new directory",
                dir.display()
            )));
        }
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(|e| io(&parent, e))?;
        let name = dir
            .file_name()
            .map_or_else(|| "backup".into(), |n| n.to_string_lossy().into_owned());
        let tmp = parent.join(format!(".{name}.kiln-tmp-{}", std::process::id()));
        let mut attempts = 0;
        loop {
            attempts += 1;
            let _ = fs::remove_dir_all(&tmp);
            let taken = self.copy_to(&tmp);
            let problems = taken.as_ref().ok().map(|_| check_home(&tmp));
            match (taken, problems) {
                (Ok(mut summary), Some(Ok(problems))) if problems.is_empty() => {
                    fs::rename(&tmp, dir).map_err(|e| io(dir, e))?;
                    File::open(&parent)
                        .and_then(|d| d.sync_all())
                        .map_err(|e| io(&parent, e))?;
                    summary.dir = dir.to_path_buf();
                    summary.attempts = attempts;
                    return Ok(summary);
                }
                (Ok(_), Some(Ok(problems))) if attempts >= 3 => {
                    let _ = fs::remove_dir_all(&tmp);
                    let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
                    return Err(RegistryError::Corrupt(format!(
                        "the registry does not check clean, so no backup was kept ({}); `kiln registry check` lists what is wrong",
                        list.join("; ")
                    )));
                }
                (Ok(_), Some(Ok(_))) => continue,
                (Err(e), _) | (Ok(_), Some(Err(e))) => {
                    let _ = fs::remove_dir_all(&tmp);
                    return Err(e);
                }
                (Ok(_), None) => unreachable!("a copy that was taken is checked"),
            }
        }
    }

    /// Writes a backup into `dir` under a name of its time (`kiln-backup-20261129T210000Z`),
    /// then keeps only the newest `keep` backups there (when given).
    pub fn backup_into(
        &self,
        dir: &Path,
        keep: Option<usize>,
    ) -> Result<BackupSummary, RegistryError> {
        let name = chrono::Utc::now()
            .format("kiln-backup-%Y%m%dT%H%M%S%.3fZ")
            .to_string();
        let summary = self.backup(&dir.join(name))?;
        if let Some(keep) = keep {
            let mut old: Vec<PathBuf> = fs::read_dir(dir)
                .map_err(|e| io(dir, e))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("kiln-backup-"))
                })
                .collect();
            old.sort();
            let excess = old.len().saturating_sub(keep.max(1));
            for p in &old[..excess] {
                fs::remove_dir_all(p).map_err(|e| io(p, e))?;
            }
        }
        Ok(summary)
    }

    /// Copies every tree and every artifact object into a new home at `to`.
    fn copy_to(&self, to: &Path) -> Result<BackupSummary, RegistryError> {
        self.flush()?;
        let db = sled::Config::new()
            .path(to.join("registry"))
            .open()
            .map_err(RegistryError::from)?;
        let (mut trees, mut records) = (0, 0u64);
        for name in self.db.tree_names() {
            let source = self.db.open_tree(&name)?;
            let target = db.open_tree(&name)?;
            let mut batch = sled::Batch::default();
            let mut in_batch = 0;
            for item in source.iter() {
                let (k, v) = item?;
                batch.insert(k, v);
                in_batch += 1;
                records += 1;
                if in_batch == 10_000 {
                    target.apply_batch(std::mem::take(&mut batch))?;
                    in_batch = 0;
                }
            }
            target.apply_batch(batch)?;
            trees += 1;
        }
        db.flush()?;
        drop(db);
        let (artifacts, bytes) = copy_objects(
            &self.home.join("artifacts").join("objects"),
            &to.join("artifacts").join("objects"),
        )?;
        Ok(BackupSummary {
            dir: to.to_path_buf(),
            trees,
            records,
            artifacts,
            bytes,
            attempts: 1,
        })
    }

    /// Everything wrong with the registry: references that do not resolve (a run's experiment,
    /// a version's run, an alias's version, a deployment's target) and artifacts whose content
    /// does not match their digest or is missing. Empty when all is well.
    pub fn check(&self) -> Result<Vec<Problem>, RegistryError> {
        let mut out = Vec::new();
        let mut problem = |subject: String, problem: String| out.push(Problem { subject, problem });
        let experiments: std::collections::BTreeSet<u64> =
            self.experiments()?.iter().map(|e| e.id).collect();
        let runs = self.runs(None)?;
        let run_ids: std::collections::BTreeSet<u64> = runs.iter().map(|r| r.id).collect();
        for run in &runs {
            let subject = format!("run {}", super::run_id_text(run.id));
            if !experiments.contains(&run.experiment_id) {
                problem(
                    subject.clone(),
                    format!("its experiment (id {}) does not exist", run.experiment_id),
                );
            }
            for a in &run.artifacts {
                if let Err(e) = self.verify_artifact(a) {
                    problem(subject.clone(), format!("artifact `{}`: {e}", a.name));
                }
            }
        }
        for model in self.models()? {
            let versions = self.versions(&model.name)?;
            let numbers: std::collections::BTreeSet<u32> =
                versions.iter().map(|v| v.version).collect();
            for v in &versions {
                let subject = format!("model {} version {}", v.model, v.version);
                if v.run_id != 0 && !run_ids.contains(&v.run_id) {
                    problem(
                        subject.clone(),
                        format!("its run {} does not exist", super::run_id_text(v.run_id)),
                    );
                }
                if let Err(e) = self.verify_artifact(&v.artifact) {
                    problem(subject, format!("its bundle: {e}"));
                }
            }
            for (alias, version) in self.aliases(&model.name)? {
                if !numbers.contains(&version) {
                    problem(
                        format!("alias {}@{alias}", model.name),
                        format!("points to version {version}, which does not exist"),
                    );
                }
            }
        }
        for d in self.deployments()? {
            for target in d.targets() {
                if let Err(e) = self.resolve(&d.model, target) {
                    problem(
                        format!("deployment of {}", d.model),
                        format!("target `{target}`: {e}"),
                    );
                }
            }
        }
        Ok(out)
    }
}

/// Opens the home at `home` (a backup) and checks it.
fn check_home(home: &Path) -> Result<Vec<Problem>, RegistryError> {
    Registry::open(home)?.check()
}

/// Copies artifact objects, verifying each against the digest its path names; returns how many
/// and their bytes. An object whose content does not match is an error: a backup never keeps a
/// damaged object.
fn copy_objects(from: &Path, to: &Path) -> Result<(u64, u64), RegistryError> {
    let (mut count, mut bytes) = (0, 0);
    let Ok(prefixes) = fs::read_dir(from) else {
        return Ok((0, 0));
    };
    for prefix in prefixes {
        let prefix = prefix.map_err(|e| io(from, e))?.path();
        if !prefix.is_dir() {
            continue;
        }
        let head = prefix
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dest_dir = to.join(&head);
        fs::create_dir_all(&dest_dir).map_err(|e| io(&dest_dir, e))?;
        for object in fs::read_dir(&prefix).map_err(|e| io(&prefix, e))? {
            let source = object.map_err(|e| io(&prefix, e))?.path();
            let tail = source
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let dest = dest_dir.join(&tail);
            let mut input = File::open(&source).map_err(|e| io(&source, e))?;
            let mut output = File::create(&dest).map_err(|e| io(&dest, e))?;
            let mut hasher = blake3::Hasher::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = input.read(&mut buf).map_err(|e| io(&source, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                output.write_all(&buf[..n]).map_err(|e| io(&dest, e))?;
                bytes += n as u64;
            }
            output.sync_all().map_err(|e| io(&dest, e))?;
            if hasher.finalize().to_hex().as_str() != format!("{head}{tail}") {
                return Err(RegistryError::Corrupt(format!(
                    "artifact object {} does not match its digest; `kiln registry check` names what holds it",
                    source.display()
                )));
            }
            count += 1;
        }
        File::open(&dest_dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(&dest_dir, e))?;
    }
    Ok((count, bytes))
}

/// Puts the backup `from` in place as the registry of `home`: the database and the artifact
/// objects are replaced (the current ones are moved aside to `registry.before-restore-…` and
/// `artifacts.before-restore-…`, never deleted). `home` must not be open in any process.
pub fn restore(home: &Path, from: &Path) -> Result<Vec<PathBuf>, RegistryError> {
    // The backup must open and check clean before anything is moved.
    let problems = check_home(from)?;
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(RegistryError::Corrupt(format!(
            "{} does not check clean: {}",
            from.display(),
            list.join("; ")
        )));
    }
    fs::create_dir_all(home).map_err(|e| io(home, e))?;
    // Taking the lock proves that no process owns the home while it is replaced.
    let lock = super::take_lock(home)?;
    let stamp = super::records::now_ms();
    let staging = home.join(format!(".restore-{stamp}"));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).map_err(|e| io(&staging, e))?;
    copy_tree(&from.join("registry"), &staging.join("registry"))?;
    let objects = staging.join("artifacts").join("objects");
    fs::create_dir_all(&objects).map_err(|e| io(&objects, e))?;
    copy_objects(
        &from.join("artifacts").join("objects"),
        &staging.join("artifacts").join("objects"),
    )?;
    let mut moved = Vec::new();
    for part in ["registry", "artifacts"] {
        let current = home.join(part);
        if current.exists() {
            let aside = home.join(format!("{part}.before-restore-{stamp}"));
            fs::rename(&current, &aside).map_err(|e| io(&current, e))?;
            moved.push(aside);
        }
        fs::rename(staging.join(part), &current).map_err(|e| io(&current, e))?;
    }
    let _ = fs::remove_dir_all(&staging);
    File::open(home)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(home, e))?;
    drop(lock);
    Ok(moved)
}

/// Copies a directory's files (sled's database directory, a model bundle), syncing each.
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), RegistryError> {
    fs::create_dir_all(to).map_err(|e| io(to, e))?;
    for entry in fs::read_dir(from).map_err(|e| io(from, e))? {
        let path = entry.map_err(|e| io(from, e))?.path();
        let dest = to.join(path.file_name().unwrap_or_default());
        if path.is_dir() {
            copy_tree(&path, &dest)?;
        } else {
            fs::copy(&path, &dest).map_err(|e| io(&path, e))?;
            File::open(&dest)
                .and_then(|f| f.sync_all())
                .map_err(|e| io(&dest, e))?;
        }
    }
    File::open(to)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(to, e))
}
