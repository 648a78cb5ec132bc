//! The content-addressed artifact store beside the database: `artifacts/objects/ab/cdef…`, named
//! by the BLAKE3 digest of the content, written to a temporary file, synced and renamed into place,
//! and verified against its name on every read. The same content is stored once.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RegistryError;

/// A directory artifact: its files, by relative path, with their digests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub files: Vec<ManifestEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Relative path with `/` separators.
    pub path: String,
    pub digest: String,
    pub size: u64,
}

pub(crate) struct ArtifactStore {
    root: PathBuf,
}

fn io_error(path: &Path, e: io::Error) -> RegistryError {
    RegistryError::Io(format!("{}: {e}", path.display()))
}

impl ArtifactStore {
    pub(crate) fn open(root: PathBuf) -> Result<ArtifactStore, RegistryError> {
        for dir in [root.join("objects"), root.join("tmp")] {
            fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        }
        // Temporary files left by a crash are never referenced; clear them.
        if let Ok(entries) = fs::read_dir(root.join("tmp")) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(ArtifactStore { root })
    }

    /// Where the object with this digest lives.
    pub(crate) fn path_of(&self, digest: &str) -> Result<PathBuf, RegistryError> {
        let hex = digest
            .strip_prefix("blake3:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| RegistryError::Invalid(format!("`{digest}` is not a blake3 digest")))?;
        Ok(self.root.join("objects").join(&hex[..2]).join(&hex[2..]))
    }

    /// Stores the bytes read from `src`; returns their digest and size.
    pub(crate) fn put_reader(&self, src: &mut dyn Read) -> Result<(String, u64), RegistryError> {
        let tmp_dir = self.root.join("tmp");
        let tmp = tmp_dir.join(format!(
            "{}-{}",
            std::process::id(),
            super::records::now_ms() as u64 ^ fastrand_seed()
        ));
        let mut file = File::create(&tmp).map_err(|e| io_error(&tmp, e))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = src.read(&mut buf).map_err(|e| io_error(&tmp, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(|e| io_error(&tmp, e))?;
            size += n as u64;
        }
        file.sync_all().map_err(|e| io_error(&tmp, e))?;
        drop(file);
        let digest = format!("blake3:{}", hasher.finalize().to_hex());
        let dest = self.path_of(&digest)?;
        if dest.exists() && self.verify(&digest).is_ok() {
            let _ = fs::remove_file(&tmp);
            return Ok((digest, size));
        }
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&parent).map_err(|e| io_error(&parent, e))?;
        fs::rename(&tmp, &dest).map_err(|e| io_error(&dest, e))?;
        sync_dir(&parent)?;
        Ok((digest, size))
    }

    pub(crate) fn put_bytes(&self, bytes: &[u8]) -> Result<(String, u64), RegistryError> {
        self.put_reader(&mut &bytes[..])
    }

    pub(crate) fn put_file(&self, path: &Path) -> Result<(String, u64), RegistryError> {
        let mut f = File::open(path).map_err(|e| io_error(path, e))?;
        self.put_reader(&mut f)
    }

    /// Stores every file under `dir` and then its manifest; returns the manifest's digest and
    /// the total size of the files.
    pub(crate) fn put_dir(&self, dir: &Path) -> Result<(String, u64), RegistryError> {
        let mut files = Vec::new();
        collect_files(dir, dir, &mut files)?;
        files.sort();
        let mut entries = Vec::with_capacity(files.len());
        let mut total = 0;
        for rel in files {
            let (digest, size) = self.put_file(&dir.join(&rel))?;
            total += size;
            entries.push(ManifestEntry {
                path: rel,
                digest,
                size,
            });
        }
        let manifest = serde_json::to_vec(&Manifest { files: entries })
            .unwrap_or_else(|e| unreachable!("manifests serialize: {e}"));
        let (digest, _) = self.put_bytes(&manifest)?;
        Ok((digest, total))
    }

    /// Reads an object, checking its content against its digest.
    pub(crate) fn read_verified(&self, digest: &str) -> Result<Vec<u8>, RegistryError> {
        let path = self.path_of(digest)?;
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => RegistryError::Corrupt(format!(
                "artifact {digest} is missing from {}",
                path.display()
            )),
            _ => io_error(&path, e),
        })?;
        let actual = format!("blake3:{}", blake3::hash(&bytes).to_hex());
        if actual != digest {
            return Err(RegistryError::Corrupt(format!(
                "artifact {} does not match its digest {digest} (found {actual}); \
                 the file was changed or damaged",
                path.display()
            )));
        }
        Ok(bytes)
    }

    pub(crate) fn verify(&self, digest: &str) -> Result<(), RegistryError> {
        self.read_verified(digest).map(|_| ())
    }

    pub(crate) fn manifest(&self, digest: &str) -> Result<Manifest, RegistryError> {
        let bytes = self.read_verified(digest)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| RegistryError::Corrupt(format!("manifest {digest}: {e}")))
    }

    /// Copies an artifact out to `dest` (a file, or a directory for directory artifacts),
    /// verifying every object on the way. The copy is written beside `dest`, synced, and renamed
    /// into place: `dest` appears whole or not at all, and an existing `dest` is refused.
    pub(crate) fn export(
        &self,
        digest: &str,
        directory: bool,
        dest: &Path,
    ) -> Result<(), RegistryError> {
        if dest.exists() {
            return Err(io_error(
                dest,
                io::Error::new(io::ErrorKind::AlreadyExists, "it already exists"),
            ));
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = dest
            .file_name()
            .map_or_else(|| "export".into(), |n| n.to_string_lossy().into_owned());
        let tmp = parent.join(format!(
            ".{name}.kiln-tmp-{}-{}",
            std::process::id(),
            fastrand_seed()
        ));
        let written = self.write_out(digest, directory, &tmp).and_then(|()| {
            fs::rename(&tmp, dest).map_err(|e| io_error(dest, e))?;
            sync_dir(&parent)
        });
        if written.is_err() {
            let _ = fs::remove_dir_all(&tmp).or_else(|_| fs::remove_file(&tmp));
        }
        written
    }

    fn write_out(&self, digest: &str, directory: bool, dest: &Path) -> Result<(), RegistryError> {
        let write = |path: &Path, bytes: &[u8]| -> Result<(), RegistryError> {
            let mut f = File::create(path).map_err(|e| io_error(path, e))?;
            f.write_all(bytes).map_err(|e| io_error(path, e))?;
            f.sync_all().map_err(|e| io_error(path, e))
        };
        if !directory {
            return write(dest, &self.read_verified(digest)?);
        }
        let manifest = self.manifest(digest)?;
        fs::create_dir_all(dest).map_err(|e| io_error(dest, e))?;
        let mut dirs = std::collections::BTreeSet::new();
        for entry in &manifest.files {
            if entry
                .path
                .split('/')
                .any(|part| part == ".." || part.is_empty())
            {
                return Err(RegistryError::Corrupt(format!(
                    "manifest {digest} has an unsafe path {:?}",
                    entry.path
                )));
            }
            let target = dest.join(&entry.path);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
                dirs.insert(parent.to_path_buf());
            }
            write(&target, &self.read_verified(&entry.digest)?)?;
        }
        for d in dirs {
            sync_dir(&d)?;
        }
        Ok(())
    }

    /// Every digest an artifact's object (and, for a directory, its files) is stored under.
    pub(crate) fn objects_of(&self, digest: &str, directory: bool) -> Vec<String> {
        let mut out = vec![digest.to_string()];
        if directory && let Ok(m) = self.manifest(digest) {
            out.extend(m.files.into_iter().map(|e| e.digest));
        }
        out
    }

    pub(crate) fn remove(&self, digest: &str) -> Result<(), RegistryError> {
        let path = self.path_of(digest)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&path, e)),
        }
    }
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), RegistryError> {
    for entry in fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let path = entry.path();
        let ty = entry.file_type().map_err(|e| io_error(&path, e))?;
        if ty.is_dir() {
            collect_files(root, &path, out)?;
        } else if ty.is_file() {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            out.push(rel);
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), RegistryError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

/// A per-call number that keeps concurrent temporary names apart within one process.
fn fastrand_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
}
