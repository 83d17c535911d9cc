//! What a newcomer meets first: the `mcpg` binary's help (the environment it reads, its exit
//! codes, what each argument is), the fields of its start-up log line, and the README's quick
//! start on the example config.

use std::process::Command;
use std::time::Duration;

use crate::harness::{Proc, TempDir, bin, free_port, wait_ready};
use crate::peers::time_stdio;

fn help(args: &[&str]) -> String {
    let out = Command::new(bin("mcpg"))
        .args(args)
        .output()
        .expect("run mcpg");
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the mcpg listening on `port` answers `/readyz` with 200.
fn assert_ready(port: u16) {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        wait_ready(addr, Duration::from_secs(30)),
        "mcpg never became ready"
    );
}

#[test]
fn help_names_the_environment_the_exit_codes_and_every_argument() {
    let top = help(&["--help"]);
    for want in ["MCPG_LOG", "Exit status:", "  0  ", "  1  ", "  2  "] {
        assert!(
            top.contains(want),
            "`{want}` missing from mcpg --help:\n{top}"
        );
    }
    for cmd in ["inspect", "pull", "push"] {
        let h = help(&["plugin", cmd, "--help"]);
        let line = h
            .lines()
            .find(|l| l.trim_start().starts_with("<REFERENCE>"))
            .unwrap_or_else(|| panic!("no <REFERENCE> argument in:\n{h}"));
        assert!(
            line.trim() != "<REFERENCE>",
            "plugin {cmd}: <REFERENCE> is not described:\n{h}"
        );
    }
}

#[test]
fn the_start_log_gives_the_admin_address_the_worker_threads_and_the_scheduler() {
    for scheduler in ["pinned", "work_stealing"] {
        let dir = TempDir::new("cli-start-log");
        let (port, admin) = (free_port(), free_port());
        let f = dir.write(
            "mcpg.yaml",
            &format!(
                "server:\n  listen: \"127.0.0.1:{port}\"\n  admin_listen: \"127.0.0.1:{admin}\"\n  worker_threads: 3\n  scheduler: {scheduler}\nobservability:\n  logs: {{format: json}}\nbindings:\n  - name: time\n    path: /mcp\n    upstreams:\n      - {}\n",
                time_stdio("")
            ),
        );
        let proc = Proc::spawn(Command::new(bin("mcpg")).arg("--config").arg(&f));
        assert_ready(port);
        // `pinned` runs one named thread per `worker_threads`; `work_stealing` none.
        let mut serving: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", proc.child.id()))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_owned())
            .filter(|name| name.starts_with("mcpg-serve-"))
            .collect();
        serving.sort();
        let want: &[&str] = match scheduler {
            "pinned" => &["mcpg-serve-1", "mcpg-serve-2", "mcpg-serve-3"],
            _ => &[],
        };
        assert_eq!(serving, want, "{scheduler}");
        proc.signal("TERM");
        let (status, log) = proc.wait(Duration::from_secs(30));
        assert!(status.success(), "{log}");
        let start: serde_json::Value = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "mcpg starting")
            .unwrap_or_else(|| panic!("no start line in:\n{log}"));
        assert_eq!(
            start["admin_listen"],
            format!("127.0.0.1:{admin}"),
            "{start}"
        );
        // `server.worker_threads` is the number of threads serving (3: not this machine's CPU
        // count), whichever the scheduler.
        assert_eq!(start["worker_threads"], 3, "{start}");
        assert_eq!(start["scheduler"], scheduler, "{start}");
    }
}

/// The README's quick start: `examples/single-node.yaml` as it is, started from a shell where
/// a venv holding `mcp-server-time` is active (its `bin` first on `PATH`, which is all that
/// `activate` does for a child process), serves the time tools. The venv is the test peers'
/// (`tools/install-test-deps` makes it with `python3 -m venv` and its `pip`, as the README
/// does).
#[test]
fn the_readme_quick_start_serves_time_from_an_activated_venv() {
    let venv_bin = crate::peers::python().parent().unwrap().to_path_buf();
    assert!(venv_bin.join("python3").exists(), "{}", venv_bin.display());
    let path = format!(
        "{}:{}",
        venv_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (port, admin) = (free_port(), free_port());
    let _proc = Proc::spawn(
        Command::new(bin("mcpg"))
            .arg("--config")
            .arg(crate::harness::repo_root().join("examples/single-node.yaml"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .env("PATH", path)
            .env("VIRTUAL_ENV", venv_bin.parent().unwrap()),
    );
    assert_ready(port);
    let report = crate::peers::py_client(
        &format!("http://127.0.0.1:{port}/mcp"),
        "legacy",
        serde_json::json!({"calls": [{"name": "get_current_time", "arguments": {"timezone": "UTC"}}]}),
    );
    let call = &report["calls"][0];
    assert_eq!(call["is_error"], false, "{report}");
    assert!(call["text"].to_string().contains("UTC"), "{report}");
}
