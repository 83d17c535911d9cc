//! A durable single-node key-value store in a directory: one file per key.
//!
//! A write goes to a temporary file that is fsynced, renamed over the key's file, and then the
//! directory is fsynced: a crash at any point leaves either the old or the new record, never a
//! torn one, so nothing already acknowledged is lost. Writes are serialised in-process (which
//! makes compare-and-swap atomic); the directory must belong to one mcpg process. Revisions are
//! the larger of the last revision plus one and the wall clock in microseconds, so they keep
//! increasing across restarts even when the newest key was deleted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use mcpg_plugin_api::coordinator::{CasOutcome, CoordError, CoordResult, Entry};

use super::Store;

const MAGIC: &[u8; 6] = b"MCPG1\n";
const SUFFIX: &str = ".rec";

/// A [`Store`] kept in a directory.
#[derive(Clone)]
pub struct FileStore {
    dir: Arc<PathBuf>,
    /// The last revision handed out; holding it serialises writes.
    last: Arc<tokio::sync::Mutex<u64>>,
}

struct Record {
    revision: u64,
    /// Unix milliseconds; 0 for no expiry.
    expires_ms: u64,
    value: Vec<u8>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

fn hex(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(name: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..name.len())
        .step_by(2)
        .map(|i| {
            name.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    String::from_utf8(bytes?).ok()
}

fn io_err(e: std::io::Error) -> CoordError {
    CoordError::unavailable(format!("file store: {e}"))
}

impl FileStore {
    /// Opens (creating) `dir`, removing temporary files a crash left behind.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut last = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                std::fs::remove_file(entry.path())?;
            } else if name.ends_with(SUFFIX)
                && let Some(r) = read_record(&entry.path())?
            {
                last = last.max(r.revision);
            }
        }
        Ok(Self {
            dir: Arc::new(dir.to_path_buf()),
            last: Arc::new(tokio::sync::Mutex::new(last)),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{}{SUFFIX}", hex(key)))
    }

    fn live(&self, key: &str) -> std::io::Result<Option<Record>> {
        let path = self.path(key);
        match read_record(&path)? {
            Some(r) if r.expires_ms != 0 && r.expires_ms <= now_ms() => {
                let _ = std::fs::remove_file(&path);
                Ok(None)
            }
            other => Ok(other),
        }
    }

    fn write(
        &self,
        key: &str,
        last: &mut u64,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> std::io::Result<u64> {
        let revision = (*last + 1).max(now_us());
        let expires_ms = ttl.map(|t| now_ms() + t.as_millis() as u64).unwrap_or(0);
        let tmp = self.dir.join(format!("{}.{revision}.tmp", hex(key)));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(&revision.to_be_bytes())?;
            f.write_all(&expires_ms.to_be_bytes())?;
            f.write_all(&value)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.path(key))?;
        sync_dir(&self.dir)?;
        *last = revision;
        Ok(revision)
    }

    fn remove(&self, key: &str) -> std::io::Result<()> {
        std::fs::remove_file(self.path(key))?;
        sync_dir(&self.dir)
    }

    /// Runs blocking file work off the async workers, holding the write lock.
    async fn locked<T: Send + 'static>(
        &self,
        f: impl FnOnce(&FileStore, &mut u64) -> std::io::Result<T> + Send + 'static,
    ) -> CoordResult<T> {
        let mut guard = self.last.clone().lock_owned().await;
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me, &mut guard))
            .await
            .map_err(|e| CoordError::backend(e.to_string()))?
            .map_err(io_err)
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn read_record(path: &Path) -> std::io::Result<Option<Record>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if bytes.len() < MAGIC.len() + 16 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not an mcpg record", path.display()),
        ));
    }
    let n = MAGIC.len();
    Ok(Some(Record {
        revision: u64::from_be_bytes(bytes[n..n + 8].try_into().unwrap()),
        expires_ms: u64::from_be_bytes(bytes[n + 8..n + 16].try_into().unwrap()),
        value: bytes[n + 16..].to_vec(),
    }))
}

fn entry(key: &str, r: Record) -> Entry {
    Entry {
        key: key.to_owned(),
        value: r.value,
        revision: r.revision,
    }
}

#[async_trait]
impl Store for FileStore {
    async fn get(&self, key: &str) -> CoordResult<Option<Entry>> {
        let key = key.to_owned();
        self.locked(move |s, _| Ok(s.live(&key)?.map(|r| entry(&key, r))))
            .await
    }

    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> CoordResult<u64> {
        let key = key.to_owned();
        self.locked(move |s, last| s.write(&key, last, value, ttl))
            .await
    }

    async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<Option<u64>> {
        let key = key.to_owned();
        self.locked(move |s, last| {
            if s.live(&key)?.is_some() {
                return Ok(None);
            }
            s.write(&key, last, value, ttl).map(Some)
        })
        .await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<CasOutcome> {
        let key = key.to_owned();
        self.locked(move |s, last| match s.live(&key)? {
            Some(r) if r.revision == expected => {
                Ok(CasOutcome::Swapped(s.write(&key, last, value, ttl)?))
            }
            current => Ok(CasOutcome::Mismatch(current.map(|r| entry(&key, r)))),
        })
        .await
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> CoordResult<bool> {
        let key = key.to_owned();
        self.locked(move |s, _| match (s.live(&key)?, expected) {
            (Some(r), Some(rev)) if r.revision != rev => Ok(false),
            (Some(_), _) => s.remove(&key).map(|()| true),
            (None, _) => Ok(false),
        })
        .await
    }

    async fn list(&self, prefix: &str) -> CoordResult<Vec<Entry>> {
        let prefix = prefix.to_owned();
        self.locked(move |s, _| {
            let mut out = Vec::new();
            for e in std::fs::read_dir(s.dir.as_path())? {
                let name = e?.file_name().to_string_lossy().into_owned();
                let Some(key) = name.strip_suffix(SUFFIX).and_then(unhex) else {
                    continue;
                };
                if key.starts_with(&prefix)
                    && let Some(r) = s.live(&key)?
                {
                    out.push(entry(&key, r));
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "mcpg-file-{tag}-{}-{}",
            std::process::id(),
            now_us()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[tokio::test]
    async fn kv_semantics_and_durability_across_reopen() {
        let dir = temp("kv");
        let s = FileStore::open(&dir).unwrap();
        let r1 = s.put("a/1", b"one".to_vec(), None).await.unwrap();
        assert!(
            s.create("a/1", b"x".to_vec(), None)
                .await
                .unwrap()
                .is_none()
        );
        let r2 = match s
            .compare_and_swap("a/1", r1, b"two".to_vec(), None)
            .await
            .unwrap()
        {
            CasOutcome::Swapped(r) => r,
            other => panic!("{other:?}"),
        };
        assert!(r2 > r1);
        assert!(matches!(
            s.compare_and_swap("a/1", r1, b"no".to_vec(), None)
                .await
                .unwrap(),
            CasOutcome::Mismatch(Some(_))
        ));
        s.put("a/2", b"x".to_vec(), None).await.unwrap();
        s.put("b/1", b"x".to_vec(), None).await.unwrap();
        assert!(!s.delete("b/1", Some(1)).await.unwrap());
        assert!(s.delete("b/1", None).await.unwrap());

        // What was acknowledged survives a restart; a crash's leftover temp file is discarded.
        std::fs::write(dir.join("deadbeef.99.tmp"), b"torn").unwrap();
        let reopened = FileStore::open(&dir).unwrap();
        let keys: Vec<String> = reopened
            .list("a/")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, ["a/1", "a/2"]);
        assert_eq!(reopened.get("a/1").await.unwrap().unwrap().value, b"two");
        assert!(!dir.join("deadbeef.99.tmp").exists());
        let r3 = reopened.put("c", b"x".to_vec(), None).await.unwrap();
        assert!(r3 > r2, "revisions keep increasing across restarts");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn ttl_expires_entries() {
        let dir = temp("ttl");
        let s = FileStore::open(&dir).unwrap();
        s.put("t", b"x".to_vec(), Some(Duration::from_millis(50)))
            .await
            .unwrap();
        assert!(s.get("t").await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(s.get("t").await.unwrap().is_none());
        assert!(s.list("").await.unwrap().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
