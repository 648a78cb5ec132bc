//! Registered models, their versions, aliases (moved by compare-and-set) and the append-only
//! history of every alias move.

use std::collections::BTreeMap;
use std::sync::mpsc;

use sled::transaction::Transactional;

use super::records::{decode, encode, now_ms};
use super::{
    AliasEvent, ArtifactKind, Expect, Model, ModelVersion, Registry, RegistryError, RegistryEvent,
    Stage, abort, be8, check_alias, check_model_name, join, run_id_text, u32_of,
};

fn version_key(model: &str, version: u32) -> Vec<u8> {
    join(model.as_bytes(), &version.to_be_bytes())
}

impl Registry {
    /// Every registered model, by name.
    pub fn models(&self) -> Result<Vec<Model>, RegistryError> {
        self.models
            .iter()
            .values()
            .map(|v| decode("model", &v?))
            .collect()
    }

    /// The model named `name`.
    pub fn model(&self, name: &str) -> Result<Model, RegistryError> {
        match self.models.get(name.as_bytes())? {
            Some(bytes) => decode("model", &bytes),
            None => Err(RegistryError::NotFound {
                what: "model",
                name: name.to_string(),
                hint: self.hint_among(&self.models, name),
            }),
        }
    }

    /// Creates a model with no versions yet.
    pub fn create_model(&self, name: &str, description: &str) -> Result<Model, RegistryError> {
        check_model_name(name)?;
        let model = Model {
            name: name.to_string(),
            created_ms: now_ms(),
            description: description.to_string(),
            tags: BTreeMap::new(),
            next_version: 1,
        };
        let out = self.models.compare_and_swap(
            name.as_bytes(),
            None as Option<&[u8]>,
            Some(encode(&model)),
        )?;
        if out.is_err() {
            return Err(RegistryError::AlreadyExists {
                what: "model",
                name: name.to_string(),
            });
        }
        self.flush()?;
        Ok(model)
    }

    /// Registers a run's artifact as the next version of a model (created when new).
    ///
    /// The artifact is already completely written (it belongs to the run); the version record,
    /// the model's counter and the artifact reference are one transaction.
    pub fn register_version(
        &self,
        model: &str,
        run_id: u64,
        artifact: &str,
        description: &str,
        signature: Option<serde_json::Value>,
    ) -> Result<ModelVersion, RegistryError> {
        check_model_name(model)?;
        let run = self.run(run_id)?;
        let artifact_ref = run
            .artifacts
            .iter()
            .find(|a| a.name == artifact)
            .cloned()
            .ok_or_else(|| RegistryError::NotFound {
                what: "artifact",
                name: format!("{artifact}` of run `{}", run_id_text(run_id)),
                hint: match run.artifacts.first() {
                    Some(a) => format!("; the run has {}", a.name),
                    None => "; the run has no artifacts".to_string(),
                },
            })?;
        self.verify_artifact(&artifact_ref)?;
        let metrics: BTreeMap<String, f64> = self
            .latest_metrics(run_id)?
            .into_iter()
            .map(|(k, p)| (k, p.value))
            .collect();
        let now = now_ms();
        let objects = self.artifacts.objects_of(
            &artifact_ref.digest,
            artifact_ref.kind == ArtifactKind::Directory,
        );
        let version = (&self.models, &self.versions, &self.artifact_refs).transaction(
            |(models, versions, refs)| {
                let mut m: Model = match models.get(model.as_bytes())? {
                    Some(bytes) => match decode("model", &bytes) {
                        Ok(m) => m,
                        Err(e) => return abort(e),
                    },
                    None => Model {
                        name: model.to_string(),
                        created_ms: now,
                        description: String::new(),
                        tags: BTreeMap::new(),
                        next_version: 1,
                    },
                };
                let v = ModelVersion {
                    model: model.to_string(),
                    version: m.next_version,
                    created_ms: now,
                    run_id,
                    artifact: artifact_ref.clone(),
                    signature: signature.clone(),
                    metrics: metrics.clone(),
                    description: description.to_string(),
                    tags: BTreeMap::new(),
                };
                m.next_version += 1;
                models.insert(model.as_bytes(), encode(&m))?;
                versions.insert(version_key(model, v.version), encode(&v))?;
                let owner = format!("version:{model}/{}", v.version);
                for object in &objects {
                    refs.insert(join(object.as_bytes(), owner.as_bytes()), &[])?;
                }
                Ok(v)
            },
        )?;
        self.flush()?;
        Ok(version)
    }

    /// Changes what a model says of itself, its description and tags, as `change` says; its
    /// name, versions and counter stay.
    pub fn annotate_model(
        &self,
        name: &str,
        change: impl Fn(&mut String, &mut BTreeMap<String, String>) -> Result<(), RegistryError>,
    ) -> Result<Model, RegistryError> {
        self.model(name)?;
        let model = self
            .models
            .transaction(|t| {
                let Some(bytes) = t.get(name.as_bytes())? else {
                    return abort(RegistryError::NotFound {
                        what: "model",
                        name: name.to_string(),
                        hint: String::new(),
                    });
                };
                let mut model: Model = decode("model", &bytes).or_else(abort)?;
                change(&mut model.description, &mut model.tags).or_else(abort)?;
                t.insert(name.as_bytes(), encode(&model))?;
                Ok(model)
            })
            .map_err(RegistryError::from)?;
        self.flush()?;
        Ok(model)
    }

    /// Changes what a version says of itself, its description and tags, as `change` says; what
    /// it was made from stays.
    pub fn annotate_version(
        &self,
        model: &str,
        version: u32,
        change: impl Fn(&mut String, &mut BTreeMap<String, String>) -> Result<(), RegistryError>,
    ) -> Result<ModelVersion, RegistryError> {
        self.version(model, version)?;
        let key = version_key(model, version);
        let v = self
            .versions
            .transaction(|t| {
                let Some(bytes) = t.get(&key)? else {
                    return abort(RegistryError::NotFound {
                        what: "version",
                        name: format!("{version}` of model `{model}"),
                        hint: String::new(),
                    });
                };
                let mut v: ModelVersion = decode("model version", &bytes).or_else(abort)?;
                change(&mut v.description, &mut v.tags).or_else(abort)?;
                t.insert(key.as_slice(), encode(&v))?;
                Ok(v)
            })
            .map_err(RegistryError::from)?;
        self.flush()?;
        Ok(v)
    }

    /// Versions of a model, oldest first.
    pub fn versions(&self, model: &str) -> Result<Vec<ModelVersion>, RegistryError> {
        self.model(model)?;
        self.versions
            .scan_prefix(join(model.as_bytes(), b""))
            .values()
            .map(|v| decode("model version", &v?))
            .collect()
    }

    /// One version of a model.
    pub fn version(&self, model: &str, version: u32) -> Result<ModelVersion, RegistryError> {
        match self.versions.get(version_key(model, version))? {
            Some(bytes) => decode("model version", &bytes),
            None => {
                self.model(model)?;
                Err(RegistryError::NotFound {
                    what: "version",
                    name: format!("{version}` of model `{model}"),
                    hint: String::new(),
                })
            }
        }
    }

    /// The aliases of a model and the versions they point to.
    pub fn aliases(&self, model: &str) -> Result<BTreeMap<String, u32>, RegistryError> {
        self.model(model)?;
        let prefix = join(model.as_bytes(), b"");
        let mut out = BTreeMap::new();
        for item in self.aliases.scan_prefix(&prefix) {
            let (k, v) = item?;
            out.insert(
                String::from_utf8_lossy(&k[prefix.len()..]).into_owned(),
                u32_of(&v),
            );
        }
        Ok(out)
    }

    /// The version an alias or a version number (`"3"`, `"v3"`) names.
    pub fn resolve(
        &self,
        model: &str,
        alias_or_version: &str,
    ) -> Result<ModelVersion, RegistryError> {
        let number = alias_or_version
            .strip_prefix('v')
            .unwrap_or(alias_or_version);
        if let Ok(v) = number.parse::<u32>() {
            return self.version(model, v);
        }
        match self
            .aliases
            .get(join(model.as_bytes(), alias_or_version.as_bytes()))?
        {
            Some(v) => self.version(model, u32_of(&v)),
            None => {
                let aliases = self.aliases(model)?;
                let mut hint =
                    crate::suggest::hint(alias_or_version, aliases.keys().map(String::as_str));
                if hint.is_empty() && Some(alias_or_version) == Stage::Production.alias() {
                    hint = format!(
                        "; promote a version to make it serve: `kiln models promote {model} \
                         VERSION` (`kiln models show {model}` lists them)"
                    );
                }
                Err(RegistryError::NotFound {
                    what: "alias",
                    name: format!("{alias_or_version}` of model `{model}"),
                    hint,
                })
            }
        }
    }

    /// Points `alias` at `version` if it currently matches `expect`, and records the move.
    pub fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version: u32,
        expect: Expect,
        by: &str,
        reason: &str,
    ) -> Result<AliasEvent, RegistryError> {
        check_alias(alias)?;
        self.move_alias(model, alias, Some(version), expect, by, reason)
    }

    /// Deletes an alias if it currently matches `expect`, and records the deletion.
    pub fn delete_alias(
        &self,
        model: &str,
        alias: &str,
        expect: Expect,
        by: &str,
        reason: &str,
    ) -> Result<AliasEvent, RegistryError> {
        self.move_alias(model, alias, None, expect, by, reason)
    }

    fn move_alias(
        &self,
        model: &str,
        alias: &str,
        to: Option<u32>,
        expect: Expect,
        by: &str,
        reason: &str,
    ) -> Result<AliasEvent, RegistryError> {
        self.model(model)?;
        let key = join(model.as_bytes(), alias.as_bytes());
        let seq = self.db.generate_id()?;
        let history_key = join(model.as_bytes(), &be8(seq));
        let event = (&self.versions, &self.aliases, &self.history).transaction(
            |(versions, aliases, history)| {
                if let Some(v) = to
                    && versions.get(version_key(model, v))?.is_none()
                {
                    return abort(RegistryError::NotFound {
                        what: "version",
                        name: format!("{v}` of model `{model}"),
                        hint: String::new(),
                    });
                }
                let from = aliases.get(key.as_slice())?.map(|v| u32_of(&v));
                let ok = match expect {
                    Expect::Any => true,
                    Expect::Absent => from.is_none(),
                    Expect::Version(v) => from == Some(v),
                };
                if !ok {
                    return abort(RegistryError::Conflict {
                        model: model.to_string(),
                        alias: alias.to_string(),
                        expected: match expect {
                            Expect::Version(v) => Some(v),
                            _ => None,
                        },
                        found: from,
                    });
                }
                if from.is_none() && to.is_none() {
                    return abort(RegistryError::NotFound {
                        what: "alias",
                        name: format!("{alias}` of model `{model}"),
                        hint: String::new(),
                    });
                }
                match to {
                    Some(v) => aliases.insert(key.as_slice(), &v.to_be_bytes())?,
                    None => aliases.remove(key.as_slice())?,
                };
                let event = AliasEvent {
                    model: model.to_string(),
                    alias: alias.to_string(),
                    from,
                    to,
                    at_ms: now_ms(),
                    by: by.to_string(),
                    reason: reason.to_string(),
                };
                history.insert(history_key.as_slice(), encode(&event))?;
                Ok(event)
            },
        )?;
        self.flush()?;
        Ok(event)
    }

    /// Every alias move of a model, oldest first.
    pub fn history(&self, model: &str) -> Result<Vec<AliasEvent>, RegistryError> {
        self.model(model)?;
        self.history
            .scan_prefix(join(model.as_bytes(), b""))
            .values()
            .map(|v| decode("alias event", &v?))
            .collect()
    }

    /// The version `alias` pointed to at `at_ms` ("what was in production on date X").
    pub fn alias_at(
        &self,
        model: &str,
        alias: &str,
        at_ms: i64,
    ) -> Result<Option<u32>, RegistryError> {
        Ok(self
            .history(model)?
            .into_iter()
            .rev()
            .find(|e| e.alias == alias && e.at_ms <= at_ms)
            .and_then(|e| e.to))
    }

    /// The MLflow-style stage of a version, read from the `production` and `staging` aliases.
    pub fn stage(&self, model: &str, version: u32) -> Result<Stage, RegistryError> {
        let aliases = self.aliases(model)?;
        for stage in [Stage::Production, Stage::Staging] {
            if aliases.get(stage.alias().unwrap_or_default()) == Some(&version) {
                return Ok(stage);
            }
        }
        let staged = [Stage::Production.alias(), Stage::Staging.alias()];
        let was_staged = self
            .history(model)?
            .iter()
            .any(|e| staged.contains(&Some(e.alias.as_str())) && e.to == Some(version));
        Ok(if was_staged {
            Stage::Archived
        } else {
            Stage::None
        })
    }

    /// Deletes a version; refused while an alias points to it, unless `force` (which deletes
    /// those aliases, recording it). Its artifact objects go when nothing else references them.
    pub fn delete_version(
        &self,
        model: &str,
        version: u32,
        force: bool,
        by: &str,
    ) -> Result<(), RegistryError> {
        let v = self.version(model, version)?;
        let pointing: Vec<String> = self
            .aliases(model)?
            .into_iter()
            .filter(|(_, target)| *target == version)
            .map(|(a, _)| a)
            .collect();
        if !pointing.is_empty() && !force {
            return Err(RegistryError::Aliased {
                model: model.to_string(),
                version,
                aliases: pointing,
            });
        }
        if let Some(bytes) = self.deployments.get(model.as_bytes())? {
            let d: super::Deployment = decode("deployment", &bytes)?;
            let named = d
                .targets()
                .any(|t| t.strip_prefix('v').unwrap_or(t).parse::<u32>() == Ok(version));
            if named && !force {
                return Err(RegistryError::Invalid(format!(
                    "version {version} of model `{model}` is in its deployment; change the traffic \
                     split first (`kiln models deploy {model}`) or delete with --force"
                )));
            }
            if named {
                self.deployments.remove(model.as_bytes())?;
            }
        }
        for alias in &pointing {
            self.delete_alias(
                model,
                alias,
                Expect::Version(version),
                by,
                "version deleted",
            )?;
        }
        self.versions.remove(version_key(model, version))?;
        self.release_artifacts(
            &format!("version:{model}/{version}"),
            std::slice::from_ref(&v.artifact),
        )?;
        self.flush()
    }

    /// Deletes a model with all its versions (with `force` when aliases point to any); its alias
    /// history stays, as an audit record.
    pub fn delete_model(&self, model: &str, force: bool, by: &str) -> Result<usize, RegistryError> {
        let versions = self.versions(model)?;
        let aliases = self.aliases(model)?;
        if !aliases.is_empty() && !force {
            let (alias, version) = aliases
                .iter()
                .next()
                .map(|(a, v)| (a.clone(), *v))
                .unwrap_or_default();
            return Err(RegistryError::Aliased {
                model: model.to_string(),
                version,
                aliases: vec![alias],
            });
        }
        for v in &versions {
            self.delete_version(model, v.version, true, by)?;
        }
        self.models.remove(model.as_bytes())?;
        self.deployments.remove(model.as_bytes())?;
        self.flush()?;
        Ok(versions.len())
    }

    /// Subscribes to alias moves and version changes in this process. Each call starts a thread
    /// that forwards sled's change feed; it ends when the receiver is dropped and a change comes.
    pub fn watch(&self) -> mpsc::Receiver<RegistryEvent> {
        let (tx, rx) = mpsc::channel();
        let mut history = self.history.watch_prefix(b"");
        let mut versions = self.versions.watch_prefix(b"");
        let mut deployments = self.deployments.watch_prefix(b"");
        let tx2 = tx.clone();
        let tx3 = tx.clone();
        std::thread::spawn(move || {
            for event in &mut deployments {
                let model = String::from_utf8_lossy(event.key()).into_owned();
                if tx3
                    .send(RegistryEvent::DeploymentChanged { model })
                    .is_err()
                {
                    return;
                }
            }
        });
        std::thread::spawn(move || {
            for event in &mut history {
                if let sled::Event::Insert { value, .. } = event
                    && let Ok(e) = decode::<AliasEvent>("alias event", &value)
                    && tx.send(RegistryEvent::AliasMoved(e)).is_err()
                {
                    return;
                }
            }
        });
        std::thread::spawn(move || {
            for event in &mut versions {
                let key = event.key().to_vec();
                let Some(split) = key.iter().position(|b| *b == 0) else {
                    continue;
                };
                if key.len() != split + 5 {
                    continue;
                }
                let model = String::from_utf8_lossy(&key[..split]).into_owned();
                let version = u32_of(&key[split + 1..]);
                let e = match event {
                    sled::Event::Insert { .. } => RegistryEvent::VersionCreated { model, version },
                    sled::Event::Remove { .. } => RegistryEvent::VersionDeleted { model, version },
                };
                if tx2.send(e).is_err() {
                    return;
                }
            }
        });
        rx
    }
}
