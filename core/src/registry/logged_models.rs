//! Logged models, as MLflow 3 clients make them (`<flavor>.log_model`): a model's files with
//! its name, type, status, tags and parameters, apart from any registered version. Their files
//! are a directory artifact of a run (the run that produced the model, or one made for it), so
//! the artifact store, its digests and its garbage collection work as for any run's files, and
//! a version registered from a logged model is a version of that run's artifact.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::records::{Millis, decode, encode, now_ms};
use super::{NewRun, Registry, RegistryError, RunStatus, check_key};

/// Where a logged model is in its life: its files on the way, all there, or given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoggedModelStatus {
    Pending,
    Ready,
    Failed,
}

/// A logged model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedModel {
    /// `m-` and 16 hex digits.
    pub id: String,
    pub experiment: String,
    pub name: String,
    /// The run whose artifact [`LoggedModel::artifact`] holds the files.
    pub run: u64,
    /// The run that produced the model, when the client named one.
    pub source_run: Option<u64>,
    pub artifact: String,
    pub model_type: String,
    pub status: LoggedModelStatus,
    pub status_message: String,
    pub tags: BTreeMap<String, String>,
    pub params: BTreeMap<String, String>,
    pub created_ms: Millis,
    pub updated_ms: Millis,
}

/// A logged model as a client asks for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewLoggedModel {
    /// The experiment's name (it must exist).
    pub experiment: String,
    /// Empty: `model`.
    pub name: String,
    pub source_run: Option<u64>,
    pub model_type: String,
    pub tags: BTreeMap<String, String>,
    pub params: BTreeMap<String, String>,
}

/// The run tag that marks a run made to hold a logged model's files.
pub const HOLDER_TAG: &str = "kiln.logged_model";

impl Registry {
    /// Records a new logged model, pending until its files are in. Without a source run, a
    /// finished run of the model's name is made to hold its files.
    pub fn create_logged_model(&self, new: NewLoggedModel) -> Result<LoggedModel, RegistryError> {
        self.experiment(&new.experiment)?;
        let name = if new.name.is_empty() {
            "model".to_string()
        } else {
            new.name
        };
        check_key("logged model", &name)?;
        if name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(RegistryError::Invalid(format!(
                "logged model name {name:?} is a path; give a name without `/`"
            )));
        }
        let id = format!(
            "m-{:016x}",
            self.next_id("logged_model")? ^ 0x6b69_6c6e_0000_0000
        );
        let run = match new.source_run {
            Some(run) => {
                let r = self.run(run)?;
                if self.experiment_by_id(r.experiment_id)?.name != new.experiment {
                    return Err(RegistryError::Invalid(format!(
                        "run {} is not in experiment `{}`",
                        super::run_id_text(run),
                        new.experiment
                    )));
                }
                run
            }
            None => {
                let holder = self.create_run(NewRun {
                    experiment: new.experiment.clone(),
                    name: name.clone(),
                    params: BTreeMap::new(),
                    tags: BTreeMap::from([(HOLDER_TAG.to_string(), id.clone())]),
                    parent: None,
                    lineage: Default::default(),
                })?;
                self.end_run(holder.id, RunStatus::Finished)?.id
            }
        };
        // The model's directory in the run's artifacts: its name, unless the run has one of
        // that name already.
        let taken: Vec<String> = self
            .run(run)?
            .artifacts
            .into_iter()
            .map(|a| a.name)
            .chain(
                self.logged_models_where(|m| m.run == run)?
                    .into_iter()
                    .map(|m| m.artifact),
            )
            .collect();
        let artifact = std::iter::once(name.clone())
            .chain((2..).map(|n| format!("{name}-{n}")))
            .find(|a| !taken.contains(a))
            .unwrap_or_else(|| id.clone());
        let now = now_ms();
        let model = LoggedModel {
            id,
            experiment: new.experiment,
            name,
            run,
            source_run: new.source_run,
            artifact,
            model_type: new.model_type,
            status: LoggedModelStatus::Pending,
            status_message: String::new(),
            tags: new.tags,
            params: new.params,
            created_ms: now,
            updated_ms: now,
        };
        self.logged_models
            .insert(model.id.as_bytes(), encode(&model))?;
        self.flush()?;
        Ok(model)
    }

    pub fn logged_model(&self, id: &str) -> Result<LoggedModel, RegistryError> {
        match self.logged_models.get(id.as_bytes())? {
            Some(bytes) => decode("logged model", &bytes),
            None => Err(RegistryError::NotFound {
                what: "logged model",
                name: id.to_string(),
                hint: String::new(),
            }),
        }
    }

    /// Every logged model `keep` accepts, oldest first.
    pub fn logged_models_where(
        &self,
        keep: impl Fn(&LoggedModel) -> bool,
    ) -> Result<Vec<LoggedModel>, RegistryError> {
        let mut out = Vec::new();
        for entry in self.logged_models.iter().values() {
            let model: LoggedModel = decode("logged model", &entry?)?;
            if keep(&model) {
                out.push(model);
            }
        }
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(out)
    }

    /// Changes a logged model as `change` says (status, tags, parameters); the rest stays.
    pub fn update_logged_model(
        &self,
        id: &str,
        change: impl Fn(&mut LoggedModel) -> Result<(), RegistryError>,
    ) -> Result<LoggedModel, RegistryError> {
        let model = self
            .logged_models
            .transaction(|t| {
                let Some(bytes) = t.get(id.as_bytes())? else {
                    return sled::transaction::abort(RegistryError::NotFound {
                        what: "logged model",
                        name: id.to_string(),
                        hint: String::new(),
                    });
                };
                let mut model: LoggedModel = match decode("logged model", &bytes) {
                    Ok(m) => m,
                    Err(e) => return sled::transaction::abort(e),
                };
                if let Err(e) = change(&mut model) {
                    return sled::transaction::abort(e);
                }
                model.id = id.to_string();
                model.updated_ms = now_ms();
                t.insert(id.as_bytes(), encode(&model))?;
                Ok(model)
            })
            .map_err(RegistryError::from)?;
        self.flush()?;
        Ok(model)
    }

    /// Forgets a logged model; its files stay with its run (and any version made from them).
    pub fn delete_logged_model(&self, id: &str) -> Result<(), RegistryError> {
        self.logged_model(id)?;
        self.logged_models.remove(id.as_bytes())?;
        self.flush()
    }

    /// The logged models of a run being deleted go with it.
    pub(super) fn forget_logged_models_of(&self, run: u64) -> Result<(), RegistryError> {
        for model in self.logged_models_where(|m| m.run == run)? {
            self.logged_models.remove(model.id.as_bytes())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn registry() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path()).unwrap();
        r.create_experiment("e").unwrap();
        (dir, r)
    }

    #[test]
    fn a_model_without_a_run_gets_a_finished_one_and_names_do_not_collide() {
        let (_d, r) = registry();
        let a = r
            .create_logged_model(NewLoggedModel {
                experiment: "e".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!((a.name.as_str(), a.artifact.as_str()), ("model", "model"));
        assert_eq!(a.status, LoggedModelStatus::Pending);
        let holder = r.run(a.run).unwrap();
        assert_eq!(holder.status, RunStatus::Finished);
        assert_eq!(holder.tags[HOLDER_TAG], a.id);
        // Two models of one name in one run get two directories.
        let b = r
            .create_logged_model(NewLoggedModel {
                experiment: "e".into(),
                name: "model".into(),
                source_run: Some(a.run),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(b.artifact, "model-2");
        assert_ne!(a.id, b.id);
        let ready = r
            .update_logged_model(&b.id, |m| {
                m.status = LoggedModelStatus::Ready;
                Ok(())
            })
            .unwrap();
        assert_eq!(r.logged_model(&b.id).unwrap(), ready);
        // Deleting the run takes its logged models along.
        r.delete_run(a.run).unwrap();
        assert!(r.logged_models_where(|_| true).unwrap().is_empty());
        assert!(matches!(
            r.logged_model(&a.id),
            Err(RegistryError::NotFound { .. })
        ));
    }

    #[test]
    fn a_source_run_must_be_of_the_experiment_and_names_are_checked() {
        let (_d, r) = registry();
        let run = r
            .create_run(NewRun {
                experiment: "other".into(),
                name: "r".into(),
                params: BTreeMap::new(),
                tags: BTreeMap::new(),
                parent: None,
                lineage: Default::default(),
            })
            .unwrap();
        let e = r
            .create_logged_model(NewLoggedModel {
                experiment: "e".into(),
                source_run: Some(run.id),
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.to_string().contains("is not in experiment `e`"), "{e}");
        let e = r
            .create_logged_model(NewLoggedModel {
                experiment: "e".into(),
                name: "../up".into(),
                ..Default::default()
            })
            .unwrap_err();
        assert!(matches!(e, RegistryError::Invalid(_)), "{e}");
    }
}
