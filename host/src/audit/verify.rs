//! Checking audit files against the hash chain: every line's hash, the `prev` links and the
//! `seq` numbering, within and across files. Behind `mcpg audit verify`.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::chain::{self, GENESIS};

/// What a clean check saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerifyReport {
    pub files: usize,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// `prev` of the first record checked: [`GENESIS`] when the files start the log, else
    /// the hash of a record that is no longer here (rotated away), to compare with a copy.
    pub anchor: Option<String>,
    /// Hash of the last record: note it somewhere else to detect later truncation.
    pub last_hash: Option<String>,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} file(s), {} record(s)", self.files, self.records)?;
        if let (Some(a), Some(b)) = (self.first_seq, self.last_seq) {
            write!(f, ", seq {a}..={b}")?;
        }
        if let Some(anchor) = &self.anchor {
            if anchor == GENESIS {
                write!(f, ", from the start of the log")?;
            } else {
                write!(f, ", anchored at prev {anchor}")?;
            }
        }
        if let Some(h) = &self.last_hash {
            write!(f, ", last hash {h}")?;
        }
        Ok(())
    }
}

/// One thing wrong, where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub path: PathBuf,
    /// 1-based.
    pub line: usize,
    pub seq: Option<u64>,
    pub kind: ProblemKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProblemKind {
    /// Not a chained record at all.
    Malformed(String),
    /// The line's bytes do not hash to its `hash`: it was altered.
    Altered,
    /// `prev` is not the hash of the record before: a record before this one was removed,
    /// inserted, reordered, or altered and re-hashed.
    BrokenLink { expected: String, found: String },
    /// `seq` does not follow the record before.
    SeqGap { expected: u64, found: u64 },
    /// The writer started a new segment because the log's last record was invalid at start.
    ChainBreak(String),
    /// The file ends in the middle of a line: a write cut short (the next start truncates it)
    /// or one still in progress.
    Incomplete,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.path.display(), self.line)?;
        if let Some(s) = self.seq {
            write!(f, "seq {s}: ")?;
        }
        match &self.kind {
            ProblemKind::Malformed(why) => write!(f, "malformed: {why}"),
            ProblemKind::Altered => write!(f, "hash mismatch: this record was altered"),
            ProblemKind::BrokenLink { expected, found } => write!(
                f,
                "prev {found} is not the hash of the record before ({expected}): a record was removed, inserted or reordered before this one"
            ),
            ProblemKind::SeqGap { expected, found } if found > expected => write!(
                f,
                "seq gap: expected {expected}, {} record(s) missing",
                found - expected
            ),
            ProblemKind::SeqGap { expected, .. } => {
                write!(f, "seq out of order: expected {expected}")
            }
            ProblemKind::ChainBreak(why) => write!(f, "chain break written at start: {why}"),
            ProblemKind::Incomplete => write!(
                f,
                "incomplete last line (a write cut short, or one in progress)"
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("no files given")]
    NoFiles,
    /// Every problem found, in file and line order.
    #[error("{} problem(s) in {}", problems.len(), summary)]
    Invalid {
        summary: VerifyReport,
        problems: Vec<Problem>,
    },
}

/// Checks `paths` as one chain. They are taken in the order of their first record's `seq`, so
/// `audit.jsonl*` in any order works; a file that does not start with a readable record goes
/// last. The first record's `prev` is not checked but reported as the anchor.
pub fn verify(paths: &[PathBuf]) -> Result<VerifyReport, VerifyError> {
    if paths.is_empty() {
        return Err(VerifyError::NoFiles);
    }
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| VerifyError::Io { path, source }
    };
    let mut ordered = Vec::new();
    for p in paths {
        let mut first = Vec::new();
        BufReader::new(File::open(p).map_err(io_err(p))?)
            .read_until(b'\n', &mut first)
            .map_err(io_err(p))?;
        let seq = chain::open(trim_newline(&first)).ok().map(|o| o.seq);
        ordered.push((seq.unwrap_or(u64::MAX), p));
    }
    ordered.sort_by_key(|(seq, _)| *seq);

    let mut v = Verifier::default();
    for (_, p) in ordered {
        v.report.files += 1;
        let mut reader = BufReader::new(File::open(p).map_err(io_err(p))?);
        let mut line = Vec::new();
        let mut n = 0;
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).map_err(io_err(p))? == 0 {
                break;
            }
            n += 1;
            if line.last() != Some(&b'\n') {
                v.problem(p, n, None, ProblemKind::Incomplete);
                break;
            }
            v.line(p, n, trim_newline(&line));
        }
    }
    if v.problems.is_empty() {
        Ok(v.report)
    } else {
        Err(VerifyError::Invalid {
            summary: v.report,
            problems: v.problems,
        })
    }
}

fn trim_newline(l: &[u8]) -> &[u8] {
    l.strip_suffix(b"\n").unwrap_or(l)
}

#[derive(Default)]
struct Verifier {
    report: VerifyReport,
    problems: Vec<Problem>,
    /// `seq` and hash of the last record read, altered or not: each record is judged
    /// against its predecessor as written, so one bad line is reported once, not again for
    /// every line after it.
    last: Option<(u64, String)>,
}

impl Verifier {
    fn problem(&mut self, path: &Path, line: usize, seq: Option<u64>, kind: ProblemKind) {
        self.problems.push(Problem {
            path: path.to_path_buf(),
            line,
            seq,
            kind,
        });
    }

    fn line(&mut self, path: &Path, n: usize, line: &[u8]) {
        let o = match chain::open(line) {
            Ok(o) => o,
            Err(why) => {
                // The next record cannot be linked to a line we cannot read; saying so again
                // there would only repeat this problem.
                self.last = None;
                return self.problem(path, n, None, ProblemKind::Malformed(why));
            }
        };
        let seq = Some(o.seq);
        if !o.intact {
            self.problem(path, n, seq, ProblemKind::Altered);
        }
        if let Some(reason) = &o.chain_break {
            self.problem(path, n, seq, ProblemKind::ChainBreak(reason.clone()));
        } else if let Some((last_seq, last_hash)) = self.last.take() {
            if o.prev != last_hash {
                let kind = ProblemKind::BrokenLink {
                    expected: last_hash,
                    found: o.prev.clone(),
                };
                self.problem(path, n, seq, kind);
            }
            // Nothing follows u64::MAX: a record after it is out of order, never an overflow.
            if last_seq.checked_add(1) != Some(o.seq) {
                let kind = ProblemKind::SeqGap {
                    expected: last_seq.saturating_add(1),
                    found: o.seq,
                };
                self.problem(path, n, seq, kind);
            }
        }
        let r = &mut self.report;
        if r.records == 0 {
            r.first_seq = seq;
            r.anchor = Some(o.prev.clone());
        }
        r.records += 1;
        r.last_seq = seq;
        r.last_hash = Some(o.hash.clone());
        self.last = Some((o.seq, o.hash));
    }
}
