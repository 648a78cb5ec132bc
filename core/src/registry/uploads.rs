//! Files of a run's artifacts that arrive in parts (MLflow's multipart upload): each part is
//! kept under `KILN_HOME/uploads/ID/` until the upload completes, when the parts, in order,
//! become one file of the run's artifacts (stored and digested as any other), or is aborted.
//! An upload names its run and path when it begins, so a part carries nothing a client could
//! point elsewhere; uploads left unfinished for a day are cleared when the next one begins.

use std::io::{Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ArtifactRef, Registry, RegistryError};

/// The most parts one upload has.
pub const MAX_PARTS: u32 = 10_000;

/// How long an unfinished upload is kept.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// What an upload is for, kept beside its parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Upload {
    run: u64,
    path: String,
    parts: u32,
}

fn io(what: &str, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Io(format!("{what}: {e}"))
}

impl Registry {
    fn upload_dir(&self, id: &str) -> Result<PathBuf, RegistryError> {
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RegistryError::NotFound {
                what: "upload",
                name: id.chars().take(40).collect(),
                hint: String::new(),
            });
        }
        Ok(self.home().join("uploads").join(id))
    }

    fn upload(&self, id: &str) -> Result<(PathBuf, Upload), RegistryError> {
        let dir = self.upload_dir(id)?;
        let text = match std::fs::read(dir.join("upload.json")) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RegistryError::NotFound {
                    what: "upload",
                    name: id.to_string(),
                    hint: " (completed, aborted or cleared after a day)".into(),
                });
            }
            Err(e) => return Err(io("reading an upload", e)),
        };
        let upload = serde_json::from_slice(&text)
            .map_err(|e| RegistryError::Corrupt(format!("upload {id}: {e}")))?;
        Ok((dir, upload))
    }

    /// Begins an upload of `parts` parts to the file `path` of run `run`'s artifacts, under
    /// `id` (32 hex digits the caller drew at random: whoever knows it may send parts).
    pub fn begin_upload(
        &self,
        id: &str,
        run: u64,
        path: &str,
        parts: u32,
    ) -> Result<(), RegistryError> {
        crate::threads::debug_assert_may_block("beginning an upload");
        self.run(run)?;
        super::files::parts(path)?;
        if parts == 0 || parts > MAX_PARTS {
            return Err(RegistryError::Invalid(format!(
                "an upload has 1 to {MAX_PARTS} parts, not {parts}"
            )));
        }
        self.clear_stale_uploads();
        let dir = self.upload_dir(id)?;
        std::fs::create_dir_all(&dir).map_err(|e| io("making an upload's directory", e))?;
        let upload = Upload {
            run,
            path: path.to_string(),
            parts,
        };
        let text = serde_json::to_vec(&upload).map_err(|e| io("writing an upload", e))?;
        std::fs::write(dir.join("upload.json"), text).map_err(|e| io("writing an upload", e))
    }

    /// Keeps part `part` (from 1) of an upload, replacing an earlier copy; its size. A part that
    /// would take the parts stored so far past `limit` bytes is refused, not kept (parts sent at
    /// the same moment are each checked against what was stored before them).
    pub fn put_upload_part(
        &self,
        id: &str,
        part: u32,
        src: &mut dyn Read,
        limit: u64,
    ) -> Result<u64, RegistryError> {
        crate::threads::debug_assert_may_block("storing an upload's part");
        let (dir, upload) = self.upload(id)?;
        if part == 0 || part > upload.parts {
            return Err(RegistryError::Invalid(format!(
                "upload {id} has parts 1 to {}, not {part}",
                upload.parts
            )));
        }
        // What the other parts hold already.
        let held: u64 = (1..=upload.parts)
            .filter(|p| *p != part)
            .filter_map(|p| std::fs::metadata(dir.join(p.to_string())).ok())
            .map(|m| m.len())
            .sum();
        let room = limit.saturating_sub(held);
        let partial = dir.join(format!("{part}.partial"));
        let mut file = std::fs::File::create(&partial).map_err(|e| io("storing a part", e))?;
        let size = std::io::copy(&mut src.take(room.saturating_add(1)), &mut file)
            .map_err(|e| io("storing a part", e))?;
        if size > room {
            drop(file);
            let _ = std::fs::remove_file(&partial);
            return Err(RegistryError::Invalid(format!(
                "upload {id} is over the limit of {limit} bytes for one file"
            )));
        }
        file.flush().map_err(|e| io("storing a part", e))?;
        std::fs::rename(&partial, dir.join(part.to_string()))
            .map_err(|e| io("storing a part", e))?;
        Ok(size)
    }

    /// Joins an upload's parts, in order, into its file of the run's artifacts (digested and
    /// stored as any other) and forgets the upload. Every part must be there.
    pub fn complete_upload(&self, id: &str) -> Result<ArtifactRef, RegistryError> {
        crate::threads::debug_assert_may_block("completing an upload");
        let (dir, upload) = self.upload(id)?;
        let mut files = Vec::with_capacity(upload.parts as usize);
        for part in 1..=upload.parts {
            match std::fs::File::open(dir.join(part.to_string())) {
                Ok(f) => files.push(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(RegistryError::Invalid(format!(
                        "upload {id} lacks part {part} of {}",
                        upload.parts
                    )));
                }
                Err(e) => return Err(io("reading a part", e)),
            }
        }
        let mut joined: Box<dyn Read> = Box::new(std::io::empty());
        for f in files {
            joined = Box::new(joined.chain(f));
        }
        let stored = self.put_run_file(upload.run, &upload.path, &mut joined)?;
        drop(joined);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(stored)
    }

    /// Forgets an upload and its parts.
    pub fn abort_upload(&self, id: &str) -> Result<(), RegistryError> {
        let (dir, _) = self.upload(id)?;
        std::fs::remove_dir_all(&dir).map_err(|e| io("removing an upload", e))
    }

    /// Removes uploads begun more than a day ago and never finished.
    fn clear_stale_uploads(&self) {
        let Ok(entries) = std::fs::read_dir(self.home().join("uploads")) else {
            return;
        };
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_AFTER);
            if old {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use super::*;
    use crate::registry::NewRun;

    #[test]
    fn parts_become_one_file_in_order_and_nothing_else_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path()).unwrap();
        let run = r
            .create_run(NewRun {
                experiment: "e".into(),
                name: "r".into(),
                params: BTreeMap::new(),
                tags: BTreeMap::new(),
                parent: None,
                lineage: Default::default(),
            })
            .unwrap();
        let id = "0123456789abcdef0123456789abcdef";
        r.begin_upload(id, run.id, "big/weights.bin", 3).unwrap();
        // Out of order, and one part sent twice.
        r.put_upload_part(id, 3, &mut &b"ccc"[..], 100).unwrap();
        r.put_upload_part(id, 1, &mut &b"xxx"[..], 100).unwrap();
        r.put_upload_part(id, 1, &mut &b"aaa"[..], 100).unwrap();
        let e = r.complete_upload(id).unwrap_err();
        assert!(e.to_string().contains("lacks part 2 of 3"), "{e}");
        // Parts 1 and 3 hold 6 bytes: with a limit of 8, part 2 may hold 2, not 3.
        let e = r.put_upload_part(id, 2, &mut &b"bbb"[..], 8).unwrap_err();
        assert!(e.to_string().contains("over the limit of 8 bytes"), "{e}");
        r.put_upload_part(id, 2, &mut &b"bb"[..], 8).unwrap();
        let e = r.put_upload_part(id, 4, &mut &b"d"[..], 100).unwrap_err();
        assert!(e.to_string().contains("parts 1 to 3, not 4"), "{e}");
        let stored = r.complete_upload(id).unwrap();
        assert_eq!(stored.name, "big");
        assert_eq!(
            r.read_run_file(run.id, "big/weights.bin").unwrap(),
            b"aaabbccc"
        );
        // The upload is gone; a made-up or malformed id names nothing.
        for bad in [id, "../../etc", "0123456789abcdef0123456789abcdeg"] {
            assert!(matches!(
                r.complete_upload(bad),
                Err(RegistryError::NotFound { .. })
            ));
        }
        for (path, parts) in [("../x", 1), ("a", 0), ("a", MAX_PARTS + 1)] {
            assert!(
                r.begin_upload(id, run.id, path, parts).is_err(),
                "{path} {parts}"
            );
        }
        r.begin_upload(id, run.id, "gone.bin", 1).unwrap();
        r.abort_upload(id).unwrap();
        assert!(!dir.path().join("uploads").join(id).exists());
    }
}
