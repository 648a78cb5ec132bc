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
        self.put_reader_expecting(src, None)
    }

    /// Stores the bytes read from `src` when their digest is `expected` (any, when none); bytes
    /// that do not match are refused and nothing is stored.
    pub(crate) fn put_reader_expecting(
        &self,
        src: &mut dyn Read,
        expected: Option<&str>,
    ) -> Result<(String, u64), RegistryError> {
        crate::threads::debug_assert_may_block("storing an artifact");
        if let Some(e) = expected {
            self.path_of(e)?;
        }
        let tmp_dir = self.root.join("tmp");
        let tmp = tmp_dir.join(format!(
            "{}-{}",
            std::process::id(),
            super::records::now_ms() as u64 ^ fastrand_seed()
        ));
        let written = (|| -> Result<(blake3::Hasher, u64), RegistryError> {
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
            Ok((hasher, size))
        })();
        // A read or write that fails part way leaves no temporary file behind.
        let (hasher, size) = written.inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })?;
        let digest = format!("blake3:{}", hasher.finalize().to_hex());
        if let Some(e) = expected.filter(|e| *e != digest) {
            let _ = fs::remove_file(&tmp);
            return Err(RegistryError::Invalid(format!(
                "the content's digest is {digest}, not {e} as stated; it was changed on the way \
                 or the digest is wrong"
            )));
        }
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
        crate::threads::debug_assert_may_block("reading an artifact");
        let path = self.path_of(digest)?;
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => RegistryError::Corrupt(format!(
                "artifact {digest} is missing from {}",
                path.display()
            )),
            _ => io_error(&path, e),
        })?;
        verified(digest, bytes, &path.display().to_string())
    }

    /// Whether an object with this digest is stored (its content is checked when it is read).
    pub(crate) fn has(&self, digest: &str) -> Result<bool, RegistryError> {
        Ok(self.path_of(digest)?.is_file())
    }

    pub(crate) fn verify(&self, digest: &str) -> Result<(), RegistryError> {
        self.read_verified(digest).map(|_| ())
    }

    pub(crate) fn manifest(&self, digest: &str) -> Result<Manifest, RegistryError> {
        parse_manifest(digest, &self.read_verified(digest)?)
    }

    /// Copies an artifact out to `dest`, verifying every object on the way (see [`export_with`]).
    pub(crate) fn export(
        &self,
        digest: &str,
        directory: bool,
        dest: &Path,
    ) -> Result<(), RegistryError> {
        export_with(&|d| self.read_verified(d), digest, directory, dest)
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

/// `bytes` when their BLAKE3 digest is `digest`; `source` names where they came from.
pub fn verified(digest: &str, bytes: Vec<u8>, source: &str) -> Result<Vec<u8>, RegistryError> {
    let actual = format!("blake3:{}", blake3::hash(&bytes).to_hex());
    if actual != digest {
        return Err(RegistryError::Corrupt(format!(
            "artifact {source} does not match its digest {digest} (found {actual}); \
             the file was changed or damaged"
        )));
    }
    Ok(bytes)
}

/// Copies an artifact out to `dest` (a file, or a directory for directory artifacts), its
/// objects read by `fetch` (which checks each against its digest: the local store, or a server's
/// answers). The copy is written beside `dest`, synced, and renamed into place: `dest` appears
/// whole or not at all, and an existing `dest` is refused. A manifest path that would leave
/// `dest` is refused.
pub fn export_with(
    fetch: &dyn Fn(&str) -> Result<Vec<u8>, RegistryError>,
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
    let written = write_out(fetch, digest, directory, &tmp).and_then(|()| {
        fs::rename(&tmp, dest).map_err(|e| io_error(dest, e))?;
        sync_dir(&parent)
    });
    if written.is_err() {
        let _ = fs::remove_dir_all(&tmp).or_else(|_| fs::remove_file(&tmp));
    }
    written
}

fn write_out(
    fetch: &dyn Fn(&str) -> Result<Vec<u8>, RegistryError>,
    digest: &str,
    directory: bool,
    dest: &Path,
) -> Result<(), RegistryError> {
    let write = |path: &Path, bytes: &[u8]| -> Result<(), RegistryError> {
        let mut f = File::create(path).map_err(|e| io_error(path, e))?;
        f.write_all(bytes).map_err(|e| io_error(path, e))?;
        f.sync_all().map_err(|e| io_error(path, e))
    };
    if !directory {
        return write(dest, &fetch(digest)?);
    }
    let manifest = parse_manifest(digest, &fetch(digest)?)?;
    fs::create_dir_all(dest).map_err(|e| io_error(dest, e))?;
    let mut dirs = std::collections::BTreeSet::new();
    for entry in &manifest.files {
        let target = dest.join(&entry.path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
            dirs.insert(parent.to_path_buf());
        }
        write(&target, &fetch(&entry.digest)?)?;
    }
    for d in dirs {
        sync_dir(&d)?;
    }
    Ok(())
}

/// A directory artifact's manifest, read from its bytes; a path that is absolute, empty or
/// climbs out (`..`) is refused.
pub fn parse_manifest(digest: &str, bytes: &[u8]) -> Result<Manifest, RegistryError> {
    let manifest: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| RegistryError::Corrupt(format!("manifest {digest}: {e}")))?;
    for entry in &manifest.files {
        if entry.path.starts_with('/')
            || entry.path.contains('\\')
            || entry
                .path
                .split('/')
                .any(|part| part == ".." || part == "." || part.is_empty())
        {
            return Err(RegistryError::Corrupt(format!(
                "manifest {digest} has an unsafe path {:?}",
                entry.path
            )));
        }
    }
    Ok(manifest)
}

/// What uploading a file or directory sends: each object (file contents, and for a directory
/// its manifest) with its digest, and the digest the artifact is known by.
pub struct Upload {
    pub digest: String,
    pub directory: bool,
    pub objects: Vec<UploadObject>,
}

pub struct UploadObject {
    pub digest: String,
    pub size: u64,
    pub source: UploadSource,
}

pub enum UploadSource {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// Hashes a file or directory for upload, the way the store names it.
pub fn plan_upload(path: &Path) -> Result<Upload, RegistryError> {
    let hash_file = |p: &Path| -> Result<(String, u64), RegistryError> {
        let mut f = File::open(p).map_err(|e| io_error(p, e))?;
        let mut hasher = blake3::Hasher::new();
        let size = io::copy(&mut f, &mut hasher).map_err(|e| io_error(p, e))?;
        Ok((format!("blake3:{}", hasher.finalize().to_hex()), size))
    };
    let meta = fs::metadata(path).map_err(|e| io_error(path, e))?;
    if !meta.is_dir() {
        let (digest, size) = hash_file(path)?;
        return Ok(Upload {
            digest: digest.clone(),
            directory: false,
            objects: vec![UploadObject {
                digest,
                size,
                source: UploadSource::File(path.to_path_buf()),
            }],
        });
    }
    let mut files = Vec::new();
    collect_files(path, path, &mut files)?;
    files.sort();
    let mut objects = Vec::with_capacity(files.len() + 1);
    let mut entries = Vec::with_capacity(files.len());
    for rel in files {
        let p = path.join(&rel);
        let (digest, size) = hash_file(&p)?;
        entries.push(ManifestEntry {
            path: rel,
            digest: digest.clone(),
            size,
        });
        objects.push(UploadObject {
            digest,
            size,
            source: UploadSource::File(p),
        });
    }
    let manifest = serde_json::to_vec(&Manifest { files: entries })
        .unwrap_or_else(|e| unreachable!("manifests serialize: {e}"));
    let digest = format!("blake3:{}", blake3::hash(&manifest).to_hex());
    objects.push(UploadObject {
        digest: digest.clone(),
        size: manifest.len() as u64,
        source: UploadSource::Bytes(manifest),
    });
    Ok(Upload {
        digest,
        directory: true,
        objects,
    })
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
