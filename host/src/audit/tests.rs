//! Tests of the audit log on real files: chain, restart, rotation, tampering, drops, redaction.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::json;

use super::sink::{self, Sink};
use super::verify::ProblemKind;
use super::*;
use crate::config::model::AuditFileConfig;

/// A fresh directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir() -> TempDir {
    let d = std::env::temp_dir().join(format!("mcpg-audit-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

fn config(path: &Path, max_bytes: u64, max_files: u32) -> AuditConfig {
    AuditConfig {
        enabled: true,
        file: Some(AuditFileConfig {
            path: path.to_path_buf(),
            max_bytes,
            max_files,
        }),
        ..AuditConfig::default()
    }
}

fn sample(i: usize) -> Record {
    let mut r = Record::new("modern", "main", "tools/call");
    r.identity = Some("token:ci".into());
    r.request_id = Some(json!(i));
    r.upstream = Some("fs".into());
    r.name = Some(format!("tool-{i}"));
    r.latency_ms = 1.25;
    r.outcome = if i.is_multiple_of(3) {
        Outcome::Error {
            code: -32602,
            message: "bad \"params\"".into(),
        }
    } else {
        Outcome::Ok
    };
    r
}

async fn write(cfg: &AuditConfig, from: usize, n: usize) -> Auditor {
    let a = Auditor::start(cfg, "node-a").await.unwrap();
    for i in from..from + n {
        a.record(sample(i));
    }
    a.shutdown().await;
    a
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn set_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn problems(paths: &[PathBuf]) -> Vec<Problem> {
    match verify(paths) {
        Err(VerifyError::Invalid { problems, .. }) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

#[tokio::test]
async fn records_are_written_and_verify() {
    let dir = temp_dir();
    let path = dir.join("audit.jsonl");
    let a = write(&config(&path, 1 << 20, 3), 0, 50).await;
    assert_eq!((a.written(), a.dropped()), (50, 0));

    let report = verify(std::slice::from_ref(&path)).unwrap();
    assert_eq!(report.records, 50);
    assert_eq!((report.first_seq, report.last_seq), (Some(0), Some(49)));
    assert_eq!(report.anchor.as_deref(), Some(chain::GENESIS));

    let first: Value = serde_json::from_str(&lines(&path)[0]).unwrap();
    assert_eq!(first["seq"], 0);
    assert_eq!(first["replica"], "node-a");
    assert_eq!(first["era"], "modern");
    assert_eq!(first["request_id"], 0);
    assert_eq!(
        first["outcome"],
        json!({"status": "error", "code": -32602, "message": "bad \"params\""})
    );
    assert!(first.get("session").is_none(), "None fields are left out");
    assert_eq!(first["hash"].as_str().unwrap().len(), 64);
    let second: Value = serde_json::from_str(&lines(&path)[1]).unwrap();
    assert_eq!(second["prev"], first["hash"]);
}

#[tokio::test]
async fn the_chain_continues_across_a_restart() {
    let dir = temp_dir();
    let path = dir.join("audit.jsonl");
    let cfg = config(&path, 1 << 20, 3);
    write(&cfg, 0, 10).await;
    write(&cfg, 10, 10).await;
    let report = verify(&[path]).unwrap();
    assert_eq!(report.records, 20);
    assert_eq!(report.last_seq, Some(19));
}

#[tokio::test]
async fn rotation_keeps_every_record_and_the_chain() {
    let dir = temp_dir();
    let path = dir.join("audit.jsonl");
    let cfg = config(&path, 4096, 1000);
    write(&cfg, 0, 150).await;
    write(&cfg, 150, 150).await;

    let files = all_files(&dir);
    assert!(files.len() >= 4, "{files:?}");
    let mut total = 0;
    for f in &files {
        let size = std::fs::metadata(f).unwrap().len();
        assert!(size <= 4096, "{} is {size} bytes", f.display());
        total += lines(f).len();
    }
    assert_eq!(total, 300);
    // Lexical order puts audit.jsonl first and .10 before .2: verify orders by content.
    let report = verify(&files).unwrap();
    assert_eq!((report.records, report.files), (300, files.len()));
    assert_eq!(report.anchor.as_deref(), Some(chain::GENESIS));
    // The newest rotated file holds the records just before the live file's first.
    let newest: Value =
        serde_json::from_str(lines(&dir.join("audit.jsonl.1")).last().unwrap()).unwrap();
    let live: Value = serde_json::from_str(&lines(&path)[0]).unwrap();
    assert_eq!(live["prev"], newest["hash"]);
}

#[tokio::test]
async fn rotation_prunes_beyond_max_files() {
    let dir = temp_dir();
    let path = dir.join("audit.jsonl");
    write(&config(&path, 4096, 2), 0, 300).await;
    let names: Vec<_> = all_files(&dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]);
    let report = verify(&all_files(&dir)).unwrap();
    assert_eq!(report.last_seq, Some(299));
    assert!(report.records < 300);
    assert_ne!(report.anchor.as_deref(), Some(chain::GENESIS));
}

#[tokio::test]
async fn a_restart_right_after_rotation_continues_from_the_rotated_file() {
    let dir = temp_dir();
    let path = dir.join("audit.jsonl");
    let cfg = config(&path, 1 << 20, 3);
    write(&cfg, 0, 5).await;
    // As if the process died between the rename and the first record of the new file.
    std::fs::rename(&path, dir.join("audit.jsonl.1")).unwrap();
    std::fs::write(&path, "").unwrap();
    write(&cfg, 5, 5).await;
    let report = verify(&all_files(&dir)).unwrap();
    assert_eq!((report.records, report.files), (10, 2));
}

#[tokio::test]
async fn a_torn_last_line_is_truncated_at_start() {
    let dir = temp_dir();
    let path = dir.join("audit.jsonl");
    let cfg = config(&path, 1 << 20, 3);
    write(&cfg, 0, 5).await;
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(br#"{"seq":5,"prev":"ab"#);
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        problems(std::slice::from_ref(&path))[..],
        [Problem {
            line: 6,
            kind: ProblemKind::Incomplete,
            ..
        }]
    ));

    write(&cfg, 5, 5).await;
    let report = verify(&[path]).unwrap();
    assert_eq!((report.records, report.last_seq), (10, Some(9)));
}

#[tokio::test]
async fn an_altered_last_record_at_start_is_marked_as_a_chain_break() {
    let dir = temp_dir();
    let path = dir.join("audit.jsonl");
    let cfg = config(&path, 1 << 20, 3);
    write(&cfg, 0, 5).await;
    let mut l = lines(&path);
    l[4] = l[4].replace("tool-4", "tool-X");
    set_lines(&path, &l);
    write(&cfg, 5, 5).await;

    let p = problems(std::slice::from_ref(&path));
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!((p[0].line, &p[0].kind), (5, &ProblemKind::Altered));
    assert_eq!(p[1].line, 6);
    assert!(matches!(&p[1].kind, ProblemKind::ChainBreak(why) if why.contains("seq 4")));
    // The new segment itself is sound.
    assert_eq!(lines(&path).len(), 11);
}

#[tokio::test]
async fn tampering_is_reported_where_it_happened() {
    let dir = temp_dir();
    let path = dir.join("audit.jsonl");
    write(&config(&path, 1 << 20, 3), 0, 20).await;
    let original = lines(&path);
    let check = |l: &[String]| {
        set_lines(&path, l);
        problems(std::slice::from_ref(&path))
    };

    // One character changed in a middle record.
    let mut l = original.clone();
    l[9] = l[9].replace("tool-9", "tool-8");
    let p = check(&l);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!((p[0].line, p[0].seq), (10, Some(9)));
    assert_eq!(p[0].kind, ProblemKind::Altered);
    assert!(
        p[0].to_string()
            .contains("audit.jsonl:10: seq 9: hash mismatch")
    );

    // A line deleted: the next one no longer links and its seq skips.
    let mut l = original.clone();
    l.remove(7);
    let p = check(&l);
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p.iter().all(|p| p.line == 8 && p.seq == Some(8)));
    assert!(matches!(p[0].kind, ProblemKind::BrokenLink { .. }));
    assert_eq!(
        p[1].kind,
        ProblemKind::SeqGap {
            expected: 7,
            found: 8
        }
    );

    // Two lines swapped.
    let mut l = original.clone();
    l.swap(4, 5);
    let lines_hit: Vec<_> = check(&l).iter().map(|p| p.line).collect();
    assert!(
        lines_hit.contains(&5) && lines_hit.contains(&6),
        "{lines_hit:?}"
    );

    // Every problem, not just the first.
    let mut l = original.clone();
    l[2] = l[2].replace("tool-2", "tool-3");
    l[15] = l[15].replace("token:ci", "token:xx");
    let hit: Vec<_> = check(&l).iter().map(|p| (p.line, p.kind.clone())).collect();
    assert_eq!(hit, [(3, ProblemKind::Altered), (16, ProblemKind::Altered)]);

    set_lines(&path, &original);
    assert_eq!(verify(&[path]).unwrap().records, 20);
}

#[tokio::test]
async fn a_missing_rotated_file_breaks_the_link_between_files() {
    let dir = temp_dir();
    let path = dir.join("audit.jsonl");
    write(&config(&path, 4096, 1000), 0, 200).await;
    assert!(verify(&all_files(&dir)).is_ok());
    std::fs::remove_file(dir.join("audit.jsonl.2")).unwrap();
    let p = problems(&all_files(&dir));
    assert!(
        p.iter()
            .all(|p| p.path.ends_with("audit.jsonl.1") && p.line == 1),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|p| matches!(p.kind, ProblemKind::SeqGap { .. }))
    );
}

#[test]
fn verify_reports_unreadable_files_and_no_files() {
    assert!(matches!(verify(&[]), Err(VerifyError::NoFiles)));
    let missing = temp_dir().join("nope.jsonl");
    assert!(matches!(verify(&[missing]), Err(VerifyError::Io { .. })));
}

/// A sink that holds the writer inside its first write until released.
struct Gate {
    entered: std::sync::mpsc::Sender<()>,
    release: Mutex<std::sync::mpsc::Receiver<()>>,
    seen: std::sync::Arc<AtomicU64>,
}

impl Sink for Gate {
    fn write(&mut self, batch: &[Box<Record>]) -> Result<(), (usize, std::io::Error)> {
        let _ = self.entered.send(());
        let _ = self.release.lock().unwrap().recv();
        self.seen.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn name(&self) -> &'static str {
        "gate"
    }
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_instead_of_blocking() {
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let seen = std::sync::Arc::new(AtomicU64::new(0));
    let cfg = AuditConfig {
        enabled: true,
        queue_capacity: 1,
        ..AuditConfig::default()
    };
    let gate = Gate {
        entered: entered_tx,
        release: Mutex::new(release_rx),
        seen: seen.clone(),
    };
    let a = Auditor::with_sinks(&cfg, "n", vec![Box::new(gate)]).unwrap();
    a.record(sample(0));
    entered.recv().unwrap(); // the writer holds record 0 and is stuck in the sink
    for i in 1..=1000 {
        a.record(sample(i)); // returns at once although nothing drains the queue
    }
    assert_eq!(a.dropped(), 999, "one fits in the queue");
    let (written, dropped) = a.counters();
    for _ in 0..2 {
        release.send(()).unwrap();
    }
    a.shutdown().await;
    assert_eq!(seen.load(Ordering::Relaxed), 2);
    assert_eq!(written.load(Ordering::Relaxed), 2);
    assert_eq!(dropped.load(Ordering::Relaxed), 999);
    a.record(sample(1001));
    assert_eq!(
        a.dropped(),
        1000,
        "after shutdown records are counted as dropped"
    );
}

#[tokio::test]
async fn arguments_and_results_are_redacted_at_any_depth() {
    let dir = temp_dir();
    let path = dir.join("audit.jsonl");
    let cfg = AuditConfig {
        include_arguments: true,
        include_results: true,
        redact: vec!["password".into(), "API_KEY".into()],
        ..config(&path, 1 << 20, 3)
    };
    let a = Auditor::start(&cfg, "n").await.unwrap();
    assert!(a.wants_arguments() && a.wants_results());
    let mut r = sample(1);
    r.arguments = Some(json!({
        "user": "bob",
        "Password": "hunter2",
        "nested": [{"deeper": {"api_key": "sk-live-123", "keep": 1}}],
    }));
    r.result = Some(json!({"content": [{"password": {"any": "shape-secret"}}]}));
    a.record(r);
    a.shutdown().await;

    let text = std::fs::read_to_string(&path).unwrap();
    for secret in ["hunter2", "sk-live-123", "shape-secret"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    let rec: Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(
        rec["arguments"],
        json!({
            "user": "bob",
            "Password": REDACTED,
            "nested": [{"deeper": {"api_key": REDACTED, "keep": 1}}],
        })
    );
    assert_eq!(rec["result"], json!({"content": [{"password": REDACTED}]}));
    verify(&[path]).unwrap();
}

#[tokio::test]
async fn arguments_and_results_are_left_out_unless_asked_for() {
    let dir = temp_dir();
    let path = dir.join("audit.jsonl");
    let a = Auditor::start(&config(&path, 1 << 20, 3), "n")
        .await
        .unwrap();
    assert!(!a.wants_arguments() && !a.wants_results());
    let mut r = sample(1);
    r.arguments = Some(json!({"q": "private-argument"}));
    r.result = Some(json!({"a": "private-result"}));
    a.record(r);
    a.shutdown().await;
    let rec: Value = serde_json::from_str(lines(&path)[0].as_str()).unwrap();
    assert!(rec.get("arguments").is_none() && rec.get("result").is_none());
}

#[test]
fn a_disabled_auditor_records_nothing() {
    let a = Auditor::disabled();
    assert!(!a.enabled() && !a.wants_arguments());
    a.record(sample(0));
    assert_eq!((a.written(), a.dropped()), (0, 0));
}

#[test]
fn time_is_rfc3339_utc_with_milliseconds() {
    let at = |ms: u64| rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms));
    assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(at(951_782_400_000), "2000-02-29T00:00:00.000Z");
    assert_eq!(at(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    assert_eq!(at(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
}

#[test]
fn the_rotated_file_names_are_recognised_exactly() {
    let dir = temp_dir();
    let path = dir.join("a.jsonl");
    for n in [
        "a.jsonl.1",
        "a.jsonl.12",
        "a.jsonl.01",
        "a.jsonl.x",
        "a.jsonl.0",
        "b.jsonl.3",
    ] {
        std::fs::write(dir.join(n), "").unwrap();
    }
    let mut got: Vec<u32> = sink::rotated_files(&path)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    got.sort();
    assert_eq!(got, [1, 12]);
}

#[test]
fn mcpg_audit_verify_takes_one_or_more_files_and_no_config() {
    use crate::cli::{Args, AuditCommand, Command};
    use clap::Parser;
    let args = Args::try_parse_from(["mcpg", "audit", "verify", "a.jsonl", "a.jsonl.1"]).unwrap();
    assert!(matches!(
        args.command,
        Some(Command::Audit(AuditCommand::Verify { files })) if files.len() == 2
    ));
    let usage = Args::try_parse_from(["mcpg", "audit", "verify"]).unwrap_err();
    assert_eq!(usage.exit_code(), 2);
}

#[tokio::test]
async fn an_unreadable_last_line_at_start_is_marked_as_a_chain_break() {
    let dir = temp_dir();
    let path = dir.join("audit.jsonl");
    let cfg = config(&path, 1 << 20, 3);
    write(&cfg, 0, 5).await;
    let mut l = lines(&path);
    l[4] = r#"{"seq":4,"note":"written by hand"}"#.into();
    set_lines(&path, &l);
    write(&cfg, 5, 2).await;

    let p = problems(std::slice::from_ref(&path));
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(matches!(p[0].kind, ProblemKind::Malformed(_)) && p[0].line == 5);
    assert!(matches!(p[1].kind, ProblemKind::ChainBreak(_)));
    assert_eq!((p[1].line, p[1].seq), (6, Some(5)), "numbering continues");
}

#[tokio::test]
async fn records_a_failing_file_cannot_take_are_counted_as_dropped() {
    // Every write to /dev/full fails with "no space left on device".
    let a = write(&config(Path::new("/dev/full"), 1 << 20, 0), 0, 3).await;
    assert_eq!((a.written(), a.dropped()), (0, 3));
}

/// Replayed by the `audit` fuzz target too (fuzz/regressions/audit/seq-overflow-after-u64-max): a
/// record after one numbered u64::MAX made the verifier overflow (a panic in debug builds, a
/// silent wrap to 0 in release).
#[test]
fn a_record_after_seq_u64_max_is_out_of_order_not_an_overflow() {
    let dir = temp_dir();
    let path = dir.join("audit.jsonl");
    let a = chain::seal(u64::MAX, chain::GENESIS, &json!({"event": "request"})).unwrap();
    let b = chain::seal(0, &a.hash, &json!({"event": "request"})).unwrap();
    std::fs::write(&path, [a.line, b.line].concat()).unwrap();
    let p = problems(std::slice::from_ref(&path));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!((p[0].line, p[0].seq), (2, Some(0)));
    assert!(matches!(p[0].kind, ProblemKind::SeqGap { found: 0, .. }));
    assert!(p[0].to_string().contains("seq out of order"), "{}", p[0]);
}

/// Resuming after a record numbered u64::MAX (a crafted or corrupt file) is a clear error,
/// not an overflow (a panic in debug builds, a silent wrap to 0 in release).
#[test]
fn resuming_after_seq_u64_max_is_a_clear_error() {
    let dir = temp_dir();
    let path = dir.join("audit.jsonl");
    let last = chain::seal(u64::MAX, chain::GENESIS, &json!({"event": "request"})).unwrap();
    std::fs::write(&path, &last.line).unwrap();
    let e = match sink::FileSink::open(&path, 1 << 20, 3, "node-a") {
        Ok(_) => panic!("a chain at u64::MAX cannot go on"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("its last record has seq 18446744073709551615, the largest there is"),
        "{e}"
    );
    // The same when the last line is no longer a valid record but still names its seq.
    std::fs::write(&path, format!("{{\"seq\":{}}}\n", u64::MAX)).unwrap();
    assert!(sink::FileSink::open(&path, 1 << 20, 3, "node-a").is_err());
    // One below the limit resumes, and the next write is refused cleanly.
    let last = chain::seal(u64::MAX - 1, chain::GENESIS, &json!({"event": "request"})).unwrap();
    std::fs::write(&path, &last.line).unwrap();
    let mut s = sink::FileSink::open(&path, 1 << 20, 3, "node-a").expect("resumes");
    let r = Box::new(sample(1));
    let (done, e) = s.write(&[r]).expect_err("no seq left after u64::MAX");
    assert_eq!(done, 0);
    assert!(e.to_string().contains("the largest there is"), "{e}");
}

/// A config reload changes the audit log in place: records queued before a change go where
/// the old config said, the ones after where the new one says, each file's chain intact and
/// continued (never written by two writers); switched off, nothing is written; a sink that
/// cannot be opened changes nothing; the counters carry on across it all.
#[tokio::test]
async fn a_reload_moves_the_sinks_and_settings_in_queue_order() {
    let dir = temp_dir();
    let (a_path, b_path) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
    let a_cfg = config(&a_path, 1 << 20, 3);
    let b_cfg = AuditConfig {
        include_arguments: true,
        redact: vec!["secret".into()],
        ..config(&b_path, 1 << 20, 3)
    };
    let with_args = |i: usize| {
        let mut r = sample(i);
        r.arguments = Some(json!({"secret": "s3", "q": i}));
        r
    };
    let auditor = Auditor::start(&a_cfg, "node-a").await.unwrap();
    let (written, _) = auditor.counters();
    for i in 0..3 {
        auditor.record(with_args(i));
    }
    assert!(!auditor.wants_arguments());
    auditor.reconfigure(&a_cfg, &b_cfg).await.unwrap();
    assert!(auditor.wants_arguments());
    for i in 3..5 {
        auditor.record(with_args(i));
    }
    // A file in a directory that cannot be made: refused, the running sinks stay.
    let bad = config(Path::new("/proc/mcpg-audit/x.jsonl"), 1 << 20, 3);
    assert!(auditor.reconfigure(&b_cfg, &bad).await.is_err());
    auditor.record(with_args(5));
    // Off, then on again on the first file: its chain goes on where it stopped.
    let off = AuditConfig::default();
    auditor.reconfigure(&b_cfg, &off).await.unwrap();
    assert!(!auditor.enabled());
    auditor.record(with_args(99));
    auditor.reconfigure(&off, &a_cfg).await.unwrap();
    auditor.record(with_args(6));
    auditor.shutdown().await;

    let ids = |p: &Path| -> Vec<Value> {
        lines(p)
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect()
    };
    let a = ids(&a_path);
    let b = ids(&b_path);
    assert_eq!(
        a.iter()
            .map(|r| r["request_id"].clone())
            .collect::<Vec<_>>(),
        [json!(0), json!(1), json!(2), json!(6)]
    );
    assert!(
        a.iter().all(|r| r.get("arguments").is_none()),
        "not asked for in a"
    );
    assert_eq!(
        b.iter()
            .map(|r| r["request_id"].clone())
            .collect::<Vec<_>>(),
        [json!(3), json!(4), json!(5)]
    );
    assert_eq!(b[0]["arguments"], json!({"secret": REDACTED, "q": 3}));
    let report = verify(std::slice::from_ref(&a_path)).unwrap();
    assert_eq!((report.records, report.last_seq), (4, Some(3)));
    assert_eq!(verify(&[b_path]).unwrap().records, 3);
    assert_eq!(written.load(Ordering::Relaxed), 7, "one counter throughout");
}
