//! `mcpg plugin push|pull|inspect`: plugins in OCI registries, each command's result printed
//! as JSON.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;

use super::args::{PluginCommand, RegistryArgs};
use super::fail;

/// Runs `mcpg plugin …` (on the process's runtime): prints the result as JSON, or the error.
pub(super) async fn run(cmd: PluginCommand) -> ExitCode {
    match exchange(cmd).await {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// The command's exchange with the registry, and what it found out.
async fn exchange(cmd: PluginCommand) -> Result<Value, String> {
    match cmd {
        PluginCommand::Push {
            file,
            reference,
            registry,
        } => push(&file, reference, &registry).await,
        PluginCommand::Pull {
            reference,
            platform,
            cache_dir,
            registry,
        } => pull(reference, platform, cache_dir, &registry).await,
        PluginCommand::Inspect {
            reference,
            registry,
        } => crate::oci::inspect(&reference, registry.plain_http, registry.basic()?)
            .await
            .map_err(|e| e.to_string()),
    }
}

/// `mcpg plugin push FILE REFERENCE`.
async fn push(file: &Path, reference: String, registry: &RegistryArgs) -> Result<Value, String> {
    let p = crate::oci::push(file, &reference, registry.plain_http, registry.basic()?)
        .await
        .map_err(|e| e.to_string())?;
    Ok(serde_json::json!({
        "pushed": reference,
        "digest": p.index_digest,
        "pinned": pinned(&reference, &p.index_digest),
        "platform": p.info.platform.to_string(),
        "manifest_digest": p.manifest_digest,
        "id": p.info.id,
        "abi": p.info.abi,
    }))
}

/// `mcpg plugin pull REFERENCE`: into the cache, whatever the cache holds already.
async fn pull(
    reference: String,
    platform: Option<String>,
    cache_dir: Option<PathBuf>,
    registry: &RegistryArgs,
) -> Result<Value, String> {
    let want = match platform {
        Some(p) => crate::oci::artifact::Platform::parse(&p)
            .ok_or_else(|| format!("--platform `{p}`: expected OS/ARCH, e.g. linux/amd64"))?,
        None => crate::oci::artifact::Platform::host(),
    };
    let src = crate::oci::Source {
        reference: reference.clone(),
        policy: crate::config::model::PullPolicy::Always,
        plain_http: registry.plain_http,
        basic: registry.basic()?,
        cache_dir: cache_dir.unwrap_or_else(crate::oci::cache::default_dir),
    };
    let r = crate::oci::fetch(&src, &want, None)
        .await
        .map_err(|e| e.to_string())?;
    Ok(serde_json::json!({
        "pulled": reference,
        "digest": r.digest,
        "id": r.info.id,
        "platform": r.info.platform.to_string(),
        "abi": r.info.abi,
        "library": r.library,
    }))
}

/// `registry/repository@digest` for a pushed tag.
fn pinned(reference: &str, digest: &str) -> String {
    let repo = match reference.rfind(':') {
        Some(i) if !reference[i..].contains('/') => &reference[..i],
        _ => reference,
    };
    format!("{repo}@{digest}")
}
