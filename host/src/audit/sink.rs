//! The audit writer: one thread drains the queue into the sinks. The file sink resumes the
//! chain at start, rotates at `max_bytes` without splitting or losing a record, and fsyncs on
//! rotation and shutdown; the stdout sink writes plain records.
//!
//! A config reload replaces the sinks through the queue ([`Msg::Replace`]), so every record
//! queued before it goes to the old sinks and every one after to the new: one writer at a
//! time, a file's chain never forked.
//!
//! The writer is an OS thread rather than a Tokio task because file writes and fsync block:
//! on a runtime worker they would stall request handling, which the bounded queue exists to
//! prevent.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::Record;
use super::chain::{self, GENESIS};

/// What travels through the queue.
pub enum Msg {
    Record(Box<Record>),
    /// Write what came before, fsync, acknowledge and stop.
    Shutdown(oneshot::Sender<()>),
    /// Write what came before and fsync, then open the sinks the function makes (on the writer
    /// thread: opening a file resumes its chain, blocking work) and write what comes after to
    /// them. If they cannot be opened the old sinks stay. Acknowledged with the outcome.
    Replace(Opener, oneshot::Sender<Result<(), String>>),
}

/// Opens a set of sinks (see [`Msg::Replace`]).
pub type Opener = Box<dyn FnOnce() -> io::Result<Vec<Box<dyn Sink>>> + Send>;

/// A destination for records. Every call happens on the writer thread.
pub trait Sink: Send {
    /// Writes a batch; on failure says how many of the batch (a prefix) were written.
    fn write(&mut self, batch: &[Box<Record>]) -> Result<(), (usize, io::Error)>;
    /// Makes what was written durable.
    fn sync(&mut self) -> io::Result<()>;
    fn name(&self) -> &'static str;
}

/// Most records one batch takes from the queue before flushing.
const BATCH: usize = 1024;

pub fn spawn_writer(
    mut rx: mpsc::Receiver<Msg>,
    mut sinks: Vec<Box<dyn Sink>>,
    written: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("mcpg-audit".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(BATCH);
            // `None` from the queue means every Auditor is gone: finish like a shutdown.
            let mut ack: Option<oneshot::Sender<()>> = None;
            let mut open = true;
            while open {
                // A replacement ends the batch: what came before it goes to the old sinks.
                let mut replace = None;
                match rx.blocking_recv() {
                    Some(Msg::Record(r)) => batch.push(r),
                    Some(Msg::Shutdown(a)) => (ack, open) = (Some(a), false),
                    Some(Msg::Replace(o, a)) => replace = Some((o, a)),
                    None => open = false,
                }
                while open && replace.is_none() && batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(Msg::Record(r)) => batch.push(r),
                        Ok(Msg::Shutdown(a)) => (ack, open) = (Some(a), false),
                        Ok(Msg::Replace(o, a)) => replace = Some((o, a)),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                    }
                }
                if !batch.is_empty() {
                    write_batch(&mut sinks, &batch, &written, &dropped);
                    batch.clear();
                }
                if let Some((opener, done)) = replace {
                    let _ = done.send(replace_sinks(&mut sinks, opener));
                }
            }
            for s in &mut sinks {
                if let Err(e) = s.sync() {
                    tracing::error!("audit {} sink: cannot sync at shutdown: {e}", s.name());
                }
            }
            rx.close();
            // Whatever raced in after the shutdown request is lost: count it.
            while let Ok(m) = rx.try_recv() {
                if let Msg::Record(_) = m {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Some(a) = ack {
                let _ = a.send(());
            }
        })?;
    Ok(())
}

/// Syncs the current sinks and swaps in the ones `opener` makes; keeps the current ones if it
/// fails.
fn replace_sinks(sinks: &mut Vec<Box<dyn Sink>>, opener: Opener) -> Result<(), String> {
    for s in sinks.iter_mut() {
        if let Err(e) = s.sync() {
            tracing::error!("audit {} sink: cannot sync before a reload: {e}", s.name());
        }
    }
    match opener() {
        Ok(new) if !new.is_empty() => {
            *sinks = new;
            Ok(())
        }
        Ok(_) => Err("no sink".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn write_batch(
    sinks: &mut [Box<dyn Sink>],
    batch: &[Box<Record>],
    written: &AtomicU64,
    dropped: &AtomicU64,
) {
    for (i, s) in sinks.iter_mut().enumerate() {
        let ok = match s.write(batch) {
            Ok(()) => batch.len(),
            Err((ok, e)) => {
                // Not rate-limited: a failing sink fails per batch, not per record.
                tracing::error!(
                    "audit {} sink: {} record(s) not written: {e}",
                    s.name(),
                    batch.len() - ok
                );
                ok
            }
        };
        if i == 0 {
            written.fetch_add(ok as u64, Ordering::Relaxed);
            dropped.fetch_add((batch.len() - ok) as u64, Ordering::Relaxed);
        }
    }
}

/// Records as plain JSON lines (no chain fields) on standard output; logs go to stderr.
pub struct StdoutSink;

impl Sink for StdoutSink {
    fn write(&mut self, batch: &[Box<Record>]) -> Result<(), (usize, io::Error)> {
        let mut buf = Vec::new();
        for r in batch {
            serde_json::to_writer(&mut buf, r).map_err(|e| (0, e.into()))?;
            buf.push(b'\n');
        }
        let mut out = io::stdout().lock();
        out.write_all(&buf)
            .and_then(|()| out.flush())
            .map_err(|e| (0, e))
    }

    fn sync(&mut self) -> io::Result<()> {
        io::stdout().lock().flush()
    }

    fn name(&self) -> &'static str {
        "stdout"
    }
}

/// The live file `path`, rotated files `path.1` (newest) … `path.N`.
pub struct FileSink {
    path: PathBuf,
    max_bytes: u64,
    max_files: u32,
    /// `None` after a failed rotation; the next write reopens `path`.
    file: Option<File>,
    /// Bytes of complete lines in the live file.
    len: u64,
    next_seq: u64,
    prev: String,
}

impl FileSink {
    /// Opens (or creates) the live file and continues the chain from its last record, or from
    /// the newest rotated file's when the live one is empty. A torn last line (a write cut
    /// short by a crash) is truncated away; a complete last line that is not a valid record
    /// starts a new segment behind a chain-break marker.
    pub fn open(path: &Path, max_bytes: u64, max_files: u32, replica: &str) -> io::Result<Self> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let tail = read_tail(&mut file)?;
        if tail.torn > 0 {
            tracing::warn!(
                "audit file {}: truncating an incomplete last line ({} bytes), left by a write that was cut short",
                path.display(),
                tail.torn
            );
            file.set_len(tail.complete)?;
            file.sync_all()?;
        }
        let mut last = tail.last_line.map(|l| (path.to_path_buf(), l));
        if last.is_none() {
            let rotated = rotated_name(path, 1);
            if let Ok(mut f) = File::open(&rotated) {
                last = read_tail(&mut f)?.last_line.map(|l| (rotated, l));
            }
        }
        let mut sink = Self {
            path: path.to_path_buf(),
            max_bytes,
            max_files,
            file: Some(file),
            len: tail.complete,
            next_seq: 0,
            prev: GENESIS.to_owned(),
        };
        let Some((from, line)) = last else {
            return Ok(sink);
        };
        let reason = match chain::open(&line) {
            Ok(o) if o.intact => {
                sink.next_seq = after(o.seq, &from)?;
                sink.prev = o.hash;
                return Ok(sink);
            }
            Ok(o) => {
                sink.next_seq = after(o.seq, &from)?;
                format!(
                    "the last record of {} (seq {}) does not match its hash",
                    from.display(),
                    o.seq
                )
            }
            Err(e) => {
                // Keep the numbering going if the line still says where it was.
                let seq = serde_json::from_slice::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v.get("seq").and_then(|s| s.as_u64()));
                sink.next_seq = match seq {
                    Some(s) => after(s, &from)?,
                    None => 0,
                };
                format!("the last line of {} is unreadable: {e}", from.display())
            }
        };
        tracing::error!("audit file {}: chain break: {reason}", path.display());
        let marker = chain::seal(
            sink.next_seq,
            GENESIS,
            &chain::ChainBreak::new(replica, reason),
        )?;
        sink.append(&marker.line)?;
        sink.file.as_mut().expect("just opened").sync_all()?;
        sink.next_seq += 1;
        sink.prev = marker.hash;
        Ok(sink)
    }
}

/// The seq after `seq`, or a clear error when a record numbered `u64::MAX` (a crafted or
/// corrupt file) leaves no number for the next one.
fn after(seq: u64, file: &Path) -> io::Result<u64> {
    seq.checked_add(1).ok_or_else(|| {
        io::Error::other(format!(
            "audit file {}: its last record has seq {seq}, the largest there is, so the chain cannot go on; move the audit files aside (after `mcpg audit verify`) to start a new chain",
            file.display()
        ))
    })
}

impl FileSink {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                let f = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&self.path)?;
                self.len = f.metadata()?.len();
                self.file.insert(f)
            }
        };
        if let Err(e) = file.write_all(bytes) {
            // Leave no partial line behind for the next batch to follow.
            let _ = file.set_len(self.len);
            return Err(e);
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Closes the live file durably and moves it to `path.1`, shifting older files up and
    /// deleting those beyond `max_files`; then opens a new live file.
    fn rotate(&mut self) -> io::Result<()> {
        if let Some(f) = self.file.take() {
            // Durable before the rename, so a rotated file is never torn.
            f.sync_all()?;
        }
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        for (k, p) in rotated_files(&self.path)? {
            if k >= self.max_files {
                std::fs::remove_file(p)?;
            }
        }
        for k in (1..self.max_files).rev() {
            let from = rotated_name(&self.path, k);
            if from.exists() {
                std::fs::rename(&from, rotated_name(&self.path, k + 1))?;
            }
        }
        if self.max_files == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            std::fs::rename(&self.path, rotated_name(&self.path, 1))?;
        }
        // Makes the renames durable; some filesystems cannot open a directory, so best effort.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        self.file = Some(
            OpenOptions::new()
                .append(true)
                .create(true)
                .open(&self.path)?,
        );
        self.len = 0;
        Ok(())
    }
}

impl Sink for FileSink {
    fn write(&mut self, batch: &[Box<Record>]) -> Result<(), (usize, io::Error)> {
        let mut buf = Vec::new();
        // Records in `buf`, and the chain state before them, to roll back if it fails.
        let mut in_buf = 0;
        let mut done = 0;
        let mut start = (self.next_seq, self.prev.clone());
        for r in batch {
            let next = after(self.next_seq, &self.path).map_err(|e| {
                (self.next_seq, self.prev) = start.clone();
                (done, e)
            })?;
            let sealed = chain::seal(self.next_seq, &self.prev, r).map_err(|e| (done, e.into()))?;
            let size = self.len + buf.len() as u64;
            if size > 0 && size + sealed.line.len() as u64 > self.max_bytes {
                if let Err(e) = self.append(&buf) {
                    (self.next_seq, self.prev) = start;
                    return Err((done, e));
                }
                done += in_buf;
                buf.clear();
                in_buf = 0;
                // The chain state already includes everything written; a failed rotation
                // leaves the live file in place (or reopens it) and the next write retries.
                self.rotate().map_err(|e| (done, e))?;
                start = (self.next_seq, self.prev.clone());
            }
            buf.extend_from_slice(&sealed.line);
            in_buf += 1;
            self.next_seq = next;
            self.prev = sealed.hash;
        }
        if let Err(e) = self.append(&buf) {
            (self.next_seq, self.prev) = start;
            return Err((done, e));
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        match &self.file {
            Some(f) => f.sync_all(),
            None => Ok(()),
        }
    }

    fn name(&self) -> &'static str {
        "file"
    }
}

pub fn rotated_name(path: &Path, k: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{k}"));
    PathBuf::from(s)
}

/// The rotated files `path.K` that exist, with their `K`.
pub fn rotated_files(path: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(Vec::new());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let n = entry.file_name();
        let n = n.to_string_lossy();
        if let Some(k) = n.strip_prefix(&prefix).and_then(|k| k.parse::<u32>().ok())
            && k > 0
            && k.to_string() == n[prefix.len()..]
        {
            out.push((k, entry.path()));
        }
    }
    Ok(out)
}

/// The end of a file: its last complete line and whatever follows it.
struct Tail {
    /// Bytes up to and including the last `\n`.
    complete: u64,
    /// Bytes after the last `\n`: an unfinished write.
    torn: u64,
    /// The last complete line, without its `\n`.
    last_line: Option<Vec<u8>>,
}

fn read_tail(file: &mut File) -> io::Result<Tail> {
    const CHUNK: u64 = 64 * 1024;
    let len = file.metadata()?.len();
    // `buf` holds the file's bytes from `start` to the end; grows backwards until it holds
    // the last complete line, which may be longer than one chunk.
    let mut buf: Vec<u8> = Vec::new();
    let mut start = len;
    loop {
        if let Some(end) = buf.iter().rposition(|&c| c == b'\n') {
            let begin = buf[..end].iter().rposition(|&c| c == b'\n').map(|i| i + 1);
            if begin.is_some() || start == 0 {
                let begin = begin.unwrap_or(0);
                let complete = start + end as u64 + 1;
                return Ok(Tail {
                    complete,
                    torn: len - complete,
                    last_line: Some(buf[begin..end].to_vec()),
                });
            }
        } else if start == 0 {
            return Ok(Tail {
                complete: 0,
                torn: len,
                last_line: None,
            });
        }
        let n = CHUNK.min(start);
        start -= n;
        let mut chunk = vec![0; n as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
    }
}
