//! A run's artifacts as a tree of files, the way MLflow's artifact store sees them: a file at the
//! top is a file artifact of that name; `model/MLmodel` is the file `MLmodel` of the directory
//! artifact `model`. Files arrive one at a time; each one stored makes a new manifest for its
//! directory, and the run points to it once every object it names is stored.

use std::io::Read;

use super::artifacts::{Manifest, ManifestEntry};
use super::{ArtifactKind, ArtifactRef, Registry, RegistryError, check_key, join, run_id_text};

/// One entry of a listing: a name within the listed directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub name: String,
    pub is_dir: bool,
    /// Bytes, for files.
    pub size: Option<u64>,
}

/// `a/b/c` as its parts; an empty, absolute, `.` or `..` part is refused.
pub(super) fn parts(path: &str) -> Result<Vec<&str>, RegistryError> {
    let parts: Vec<&str> = path.split('/').collect();
    if path.is_empty()
        || path.contains('\\')
        || parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\0'))
    {
        return Err(RegistryError::Invalid(format!(
            "artifact path {path:?} is not a relative path of named parts"
        )));
    }
    Ok(parts)
}

impl Registry {
    /// Stores the bytes of `src` as the file `path` of run `id`'s artifacts, replacing a file of
    /// that path; returns the top-level artifact it now belongs to.
    pub fn put_run_file(
        &self,
        id: u64,
        path: &str,
        src: &mut dyn Read,
    ) -> Result<ArtifactRef, RegistryError> {
        let p = parts(path)?;
        let name = p[0];
        check_key("artifact", name)?;
        self.run(id)?;
        let (digest, size) = self.artifacts.put_reader(src)?;
        let owner = format!("run:{}", run_id_text(id));
        // References first: an object is never collected while a record may point to it.
        self.artifact_refs
            .insert(join(digest.as_bytes(), owner.as_bytes()), &[])?;
        // The run may gain other files meanwhile; build on what it holds, and try again when it
        // changed under us.
        for _ in 0..16 {
            let current = self.run(id)?.artifacts.into_iter().find(|a| a.name == name);
            let next = if p.len() == 1 {
                if current
                    .as_ref()
                    .is_some_and(|a| a.kind == ArtifactKind::Directory)
                {
                    return Err(RegistryError::Invalid(format!(
                        "artifact `{name}` of run {} is a directory",
                        run_id_text(id)
                    )));
                }
                ArtifactRef {
                    name: name.to_string(),
                    digest: digest.clone(),
                    kind: ArtifactKind::File,
                    size,
                }
            } else {
                let mut manifest = match &current {
                    None => Manifest { files: Vec::new() },
                    Some(a) if a.kind == ArtifactKind::Directory => {
                        self.artifacts.manifest(&a.digest)?
                    }
                    Some(_) => {
                        return Err(RegistryError::Invalid(format!(
                            "artifact `{name}` of run {} is a file, not a directory",
                            run_id_text(id)
                        )));
                    }
                };
                let inner = p[1..].join("/");
                manifest.files.retain(|e| e.path != inner);
                manifest.files.push(ManifestEntry {
                    path: inner,
                    digest: digest.clone(),
                    size,
                });
                manifest.files.sort_by(|a, b| a.path.cmp(&b.path));
                let bytes = serde_json::to_vec(&manifest)
                    .unwrap_or_else(|e| unreachable!("manifests serialize: {e}"));
                let (manifest_digest, _) = self.artifacts.put_bytes(&bytes)?;
                self.artifact_refs
                    .insert(join(manifest_digest.as_bytes(), owner.as_bytes()), &[])?;
                ArtifactRef {
                    name: name.to_string(),
                    digest: manifest_digest,
                    kind: ArtifactKind::Directory,
                    size: manifest.files.iter().map(|e| e.size).sum(),
                }
            };
            let expected = current.map(|a| a.digest);
            let stale = std::cell::Cell::new(false);
            let written = self.update_run(id, |run| {
                let now = run.artifacts.iter().position(|a| a.name == name);
                if now.map(|i| run.artifacts[i].digest.clone()) != expected {
                    stale.set(true);
                    return Err(RegistryError::Invalid(String::new()));
                }
                match now {
                    Some(i) => run.artifacts[i] = next.clone(),
                    None => run.artifacts.push(next.clone()),
                }
                Ok(())
            });
            match written {
                Ok(_) => {
                    self.flush()?;
                    return Ok(next);
                }
                Err(_) if stale.get() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(RegistryError::Invalid(format!(
            "artifact `{name}` of run {} kept changing; try again",
            run_id_text(id)
        )))
    }

    /// The entries of directory `path` of run `id`'s artifacts (its top level when empty).
    pub fn list_run_files(&self, id: u64, path: &str) -> Result<Vec<FileEntry>, RegistryError> {
        let run = self.run(id)?;
        if path.is_empty() {
            return Ok(run
                .artifacts
                .iter()
                .map(|a| FileEntry {
                    name: a.name.clone(),
                    is_dir: a.kind == ArtifactKind::Directory,
                    size: (a.kind == ArtifactKind::File).then_some(a.size),
                })
                .collect());
        }
        let p = parts(path)?;
        let Some(artifact) = run.artifacts.iter().find(|a| a.name == p[0]) else {
            return Ok(Vec::new());
        };
        if artifact.kind == ArtifactKind::File {
            return Ok(Vec::new());
        }
        let prefix = format!("{}/", p[1..].join("/"));
        let prefix = if p.len() == 1 { String::new() } else { prefix };
        let mut out: Vec<FileEntry> = Vec::new();
        for e in self.artifacts.manifest(&artifact.digest)?.files {
            let Some(rest) = e.path.strip_prefix(&prefix) else {
                continue;
            };
            match rest.split_once('/') {
                Some((dir, _)) => {
                    if !out.iter().any(|f| f.name == dir) {
                        out.push(FileEntry {
                            name: dir.to_string(),
                            is_dir: true,
                            size: None,
                        });
                    }
                }
                None => out.push(FileEntry {
                    name: rest.to_string(),
                    is_dir: false,
                    size: Some(e.size),
                }),
            }
        }
        Ok(out)
    }

    /// The bytes of file `path` of run `id`'s artifacts, checked against their digest.
    pub fn read_run_file(&self, id: u64, path: &str) -> Result<Vec<u8>, RegistryError> {
        let run = self.run(id)?;
        let p = parts(path)?;
        let missing = || RegistryError::NotFound {
            what: "artifact file",
            name: format!("{path}` of run `{}", run_id_text(id)),
            hint: String::new(),
        };
        let artifact = run
            .artifacts
            .iter()
            .find(|a| a.name == p[0])
            .ok_or_else(missing)?;
        match (artifact.kind, p.len()) {
            (ArtifactKind::File, 1) => self.artifacts.read_verified(&artifact.digest),
            (ArtifactKind::Directory, n) if n > 1 => {
                let inner = p[1..].join("/");
                let entry = self
                    .artifacts
                    .manifest(&artifact.digest)?
                    .files
                    .into_iter()
                    .find(|e| e.path == inner)
                    .ok_or_else(missing)?;
                self.artifacts.read_verified(&entry.digest)
            }
            _ => Err(missing()),
        }
    }
}
