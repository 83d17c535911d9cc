//! The author's path from zero: `plugins/template` copied out of the repository (as
//! `cargo generate` or `cp -r` would, then renamed), its two path dependencies pointed at this
//! checkout as `docs/plugins.md` says, built standalone and its tests run (the test kit against
//! the in-memory coordinator, in-process and as a `.so`). It shares this workspace's lock file
//! and target folder so that it does not rebuild the world.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{TempDir, repo_root};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every file of the copy, with the template's names replaced by the new plugin's.
fn rename(dir: &Path, replace: &[(&str, &str)]) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rename(&path, replace);
            continue;
        }
        let mut text = std::fs::read_to_string(&path).unwrap();
        for (from, to) in replace {
            text = text.replace(from, to);
        }
        std::fs::write(&path, text).unwrap();
    }
}

/// The workspace's target folder (this test runs from `<target>/<profile>/deps/`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .nth(3)
        .expect("<target>/<profile>/deps/<exe>")
        .to_path_buf()
}

#[test]
fn a_crate_made_from_the_template_outside_the_repository_builds_and_passes_the_kit() {
    let root = repo_root();
    let dir = TempDir::new("template-copy");
    assert!(
        !dir.0.starts_with(&root),
        "the copy must be outside the repository"
    );
    let krate = dir.0.join("mcpg-cluster-acme");
    copy_dir(&root.join("plugins/template"), &krate);
    let api = root.join("plugin-api");
    rename(
        &krate,
        &[
            ("mcpg-cluster-template", "mcpg-cluster-acme"),
            ("mcpg_cluster_template", "mcpg_cluster_acme"),
            (
                "\"../../plugin-api\"",
                &format!("{:?}", api.display().to_string()),
            ),
            (
                "\"../../plugin-api/testkit\"",
                &format!("{:?}", api.join("testkit").display().to_string()),
            ),
        ],
    );
    let manifest = std::fs::read_to_string(krate.join("Cargo.toml")).unwrap();
    assert!(
        !manifest.contains("workspace = true") && manifest.contains(&*api.to_string_lossy()),
        "the template must spell its dependencies out: {manifest}"
    );
    // The workspace's lock file: the same versions, so the shared target folder is reused.
    std::fs::copy(root.join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["test", "--offline"])
        .current_dir(&krate)
        .env("CARGO_TARGET_DIR", target_dir())
        .env_remove("CARGO_MANIFEST_DIR")
        .output()
        .expect("run cargo");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "cargo test in the copy failed:\n{text}"
    );
    for test in [
        "in_process_rlib_passes_the_test_kit ... ok",
        "shared_library_passes_the_test_kit ... ok",
        "validation_reports_every_problem_and_warns_on_clamping ... ok",
    ] {
        assert!(text.contains(test), "{test} did not run:\n{text}");
    }
}

/// The two crates a plugin author depends on are packageable as they stand (every dependency
/// has a version, nothing refers outside the crate). `--no-verify` keeps this cheap: the full
/// `cargo package -p mcpg-plugin-api -p mcpg-plugin-testkit` (which builds both from their
/// packages) is what docs/plugins.md names, and it passed when this test was written.
#[test]
fn the_plugin_api_crates_package() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "package",
            "-p",
            "mcpg-plugin-api",
            "-p",
            "mcpg-plugin-testkit",
        ])
        .args(["--no-verify", "--allow-dirty", "--offline"])
        .current_dir(repo_root())
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .expect("run cargo");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo package failed:\n{text}");
    assert!(
        text.contains("Packaging mcpg-plugin-api")
            && text.contains("Packaging mcpg-plugin-testkit"),
        "{text}"
    );
}
