//! The local plugin cache: content-addressed blobs (`blobs/sha256/<hex>`: manifests, configs,
//! libraries) and the digest each reference last resolved to (`refs/`). Every file is written
//! to a private temporary name, checked against its digest, synced and renamed into place, so
//! a reader never sees a half-written file and several processes may fill the cache at once
//! (they write identical content; the rename is atomic). Every read is checked against its
//! digest again, so a file altered on disk is refused, never loaded.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::artifact::digest_of;

/// Why the cache cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("plugin cache {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cached file {path} does not match its digest: expected {expected}, found {actual}; it was altered or damaged, so it is not loaded (delete it and start again to pull it anew)"
    )]
    Tampered {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}; nothing was cached")]
    Mismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("unsupported digest `{0}` (only sha256 is supported)")]
    Algorithm(String),
}

/// The cache under one directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

/// The default cache directory: `$MCPG_PLUGIN_CACHE`, else `$XDG_CACHE_HOME/mcpg/plugins`,
/// else `~/.cache/mcpg/plugins`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MCPG_PLUGIN_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("mcpg/plugins");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache/mcpg/plugins")
}

fn hex_of(digest: &str) -> Result<&str, CacheError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| CacheError::Algorithm(digest.to_owned()))
}

impl Cache {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self, source: std::io::Error) -> CacheError {
        CacheError::Io {
            dir: self.dir.clone(),
            source,
        }
    }

    /// Where the blob with `digest` lives (whether or not it is there).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, CacheError> {
        Ok(self.dir.join("blobs/sha256").join(hex_of(digest)?))
    }

    /// The blob's bytes, checked against its digest; `None` when it is not cached.
    pub fn read(&self, digest: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let path = self.blob_path(digest)?;
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        let actual = digest_of(&bytes);
        if actual != digest {
            return Err(CacheError::Tampered {
                path,
                expected: digest.to_owned(),
                actual,
            });
        }
        Ok(Some(bytes))
    }

    /// The path of a cached blob after checking its content (for a library to load);
    /// `None` when it is not cached.
    pub fn verified_path(&self, digest: &str) -> Result<Option<PathBuf>, CacheError> {
        let path = self.blob_path(digest)?;
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h).map_err(|e| self.io(e))?;
        let actual = format!("sha256:{:x}", h.finalize());
        if actual != digest {
            return Err(CacheError::Tampered {
                path,
                expected: digest.to_owned(),
                actual,
            });
        }
        Ok(Some(path))
    }

    /// A writer for a blob that becomes visible only when [`Pending::commit`] finds its
    /// content matches `digest`.
    pub fn pending(&self, digest: &str, what: &str) -> Result<Pending, CacheError> {
        let final_path = self.blob_path(digest)?;
        let tmp_dir = self.dir.join("tmp");
        std::fs::create_dir_all(&tmp_dir).map_err(|e| self.io(e))?;
        std::fs::create_dir_all(final_path.parent().expect("blobs dir")).map_err(|e| self.io(e))?;
        let tmp = tmp_dir.join(format!("{}.partial", uuid::Uuid::new_v4().simple()));
        let file = std::fs::File::create(&tmp).map_err(|e| self.io(e))?;
        Ok(Pending {
            cache: self.clone(),
            file: Some(file),
            tmp,
            final_path,
            expected: digest.to_owned(),
            what: what.to_owned(),
            hasher: Sha256::new(),
        })
    }

    /// Stores bytes already in memory under their digest, which must be `digest`.
    pub fn write(&self, digest: &str, bytes: &[u8], what: &str) -> Result<PathBuf, CacheError> {
        let mut p = self.pending(digest, what)?;
        p.write(bytes)?;
        p.commit()
    }

    fn ref_path(&self, reference: &str) -> PathBuf {
        self.dir
            .join("refs")
            .join(format!("{:x}", Sha256::digest(reference.as_bytes())))
    }

    /// The digest `reference` last resolved to, if any.
    pub fn resolved(&self, reference: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.ref_path(reference)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        (v["reference"] == reference)
            .then(|| v["digest"].as_str().map(str::to_owned))
            .flatten()
    }

    /// Remembers what `reference` resolved to (atomically).
    pub fn remember(&self, reference: &str, digest: &str) -> Result<(), CacheError> {
        let path = self.ref_path(reference);
        let dir = path.parent().expect("refs dir");
        std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        let tmp = dir.join(format!(".{}.partial", uuid::Uuid::new_v4().simple()));
        let body = serde_json::json!({"reference": reference, "digest": digest}).to_string();
        std::fs::write(&tmp, body).map_err(|e| self.io(e))?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            self.io(e)
        })
    }
}

/// A blob being written into the cache.
pub struct Pending {
    cache: Cache,
    file: Option<std::fs::File>,
    tmp: PathBuf,
    final_path: PathBuf,
    expected: String,
    what: String,
    hasher: Sha256,
}

impl Pending {
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), CacheError> {
        self.hasher.update(bytes);
        self.file
            .as_mut()
            .expect("open until committed")
            .write_all(bytes)
            .map_err(|e| self.cache.io(e))
    }

    /// Makes the blob visible under its digest, if its content matches; otherwise nothing is
    /// left behind.
    pub fn commit(mut self) -> Result<PathBuf, CacheError> {
        let file = self.file.take().expect("open until committed");
        let actual = format!("sha256:{:x}", std::mem::take(&mut self.hasher).finalize());
        if actual != self.expected {
            return Err(CacheError::Mismatch {
                what: self.what.clone(),
                expected: self.expected.clone(),
                actual,
            });
        }
        file.sync_all().map_err(|e| self.cache.io(e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.final_path).map_err(|e| self.cache.io(e))?;
        Ok(self.final_path.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Not committed (or committed: the temporary name is gone already).
        let _ = std::fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> (Cache, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("mcpg-cache-test-{}", uuid::Uuid::new_v4().simple()));
        (Cache::new(dir.clone()), dir)
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(e.path());
                }
            }
        }
        out
    }

    #[test]
    fn blobs_are_checked_on_the_way_in_and_out() {
        let (c, dir) = cache();
        let d = digest_of(b"library");
        assert_eq!(c.read(&d).unwrap(), None);
        let wrong = c
            .write(&digest_of(b"other"), b"library", "a test blob")
            .unwrap_err();
        assert!(matches!(wrong, CacheError::Mismatch { .. }), "{wrong}");
        assert!(
            files(&dir).is_empty(),
            "a mismatch leaves nothing: {:?}",
            files(&dir)
        );
        let p = c.write(&d, b"library", "a test blob").unwrap();
        assert_eq!(c.read(&d).unwrap().unwrap(), b"library");
        assert_eq!(c.verified_path(&d).unwrap().unwrap(), p);
        std::fs::write(&p, b"libr4ry").unwrap();
        let e = c.verified_path(&d).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&d) && msg.contains(&digest_of(b"libr4ry")),
            "{msg}"
        );
        assert!(matches!(c.read(&d), Err(CacheError::Tampered { .. })));
        c.remember("r/x:1", &d).unwrap();
        assert_eq!(c.resolved("r/x:1"), Some(d));
        assert_eq!(c.resolved("r/x:2"), None);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn concurrent_writers_of_one_blob_all_succeed() {
        let (c, dir) = cache();
        let d = digest_of(b"same content");
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                let d = d.clone();
                std::thread::spawn(move || c.write(&d, b"same content", "a test blob").map(|_| ()))
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        assert_eq!(c.read(&d).unwrap().unwrap(), b"same content");
        assert_eq!(files(&dir).len(), 1, "{:?}", files(&dir));
        let _ = std::fs::remove_dir_all(dir);
    }
}
