//! The `mcpg` command line's arguments (clap types) and the flags that override config keys.

use std::path::PathBuf;

use clap::Parser;

use crate::config;

/// What `mcpg --help` shows after the options: the environment it reads and its exit codes
/// (those of `cli::main` and the subcommands; clap's own usage errors exit 2 as well).
const AFTER_HELP: &str = "\
Environment:
  MCPG_LOG                 Log filter overriding `observability.logs.level`, e.g. `debug` or
                           `info,mcpg=debug` (tracing's EnvFilter syntax)
  MCPG_PLUGIN_CACHE        Default plugin cache directory for `oci` plugin sources
  MCPG_REGISTRY_PASSWORD   The password for `mcpg plugin … --username`
  ${env.NAME} in the config file reads any variable (`${env.NAME:-default}` with a default)

Exit status:
  0  mcpg stopped on SIGTERM or Ctrl-C after draining
  1  the configuration or a flag's value is invalid, or start-up failed (a port in use, the
     cluster or a plugin unavailable); the reason is printed on stderr
  2  the configuration file cannot be read, or the command line cannot be parsed (an unknown
     flag, no --config)
  `mcpg plugin …`: 0 done (JSON on stdout), 1 failed. `mcpg audit verify`: 0 intact,
  1 problems found (each printed), 2 a file cannot be read.";

/// mcpg: a clustered gateway for the Model Context Protocol.
#[derive(Debug, Parser)]
#[command(
    name = "mcpg",
    version,
    about,
    subcommand_negates_reqs = true,
    after_help = AFTER_HELP
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The configuration file (YAML).
    #[arg(long, short = 'c', value_name = "FILE", required = true)]
    pub config: Option<PathBuf>,
    /// This replica's node id; overrides the coordinator's `node_id` and the hostname.
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Overrides `server.listen` (`IP:PORT`), so one config file serves every replica.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<String>,
    /// Overrides `server.admin_listen` (`IP:PORT`).
    #[arg(long, value_name = "IP:PORT")]
    pub admin_listen: Option<String>,
    /// Overrides `server.advertise_url`: where the other replicas reach this one.
    #[arg(long, value_name = "URL")]
    pub advertise_url: Option<String>,
    /// When the cluster backend cannot be reached at start, keep running (not ready) and
    /// retry until it answers, instead of exiting with an error.
    #[arg(long)]
    pub wait_for_cluster: bool,
}

/// Commands besides serving.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Publish, fetch and look at plugins in OCI registries.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Check audit log files.
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// `mcpg audit …`
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Checks audit files against their hash chain (every record's hash, the links between
    /// records and files, the seq numbering). Exit 0: intact; 1: problems, each printed;
    /// 2: a file could not be read.
    Verify {
        /// The live file and any rotated ones (`audit.jsonl*`), in any order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// `mcpg plugin …`
#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// Packs a plugin library built for this machine (its id, ABI version, platform and config
    /// schema read from the library) and pushes it to a registry tag, keeping the builds for
    /// other platforms already published there.
    Push {
        /// The plugin's shared library (`.so`).
        file: PathBuf,
        /// Where to push: `registry/repository:tag`, the registry host first (e.g.
        /// `localhost:5000/mcpg/cluster-redis:1.0`; Docker Hub is `docker.io/…`).
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Pulls a plugin into the cache (every digest verified) and prints where its library is.
    Pull {
        /// What to pull: `registry/repository:tag` or `registry/repository@sha256:…`, the
        /// registry host first (Docker Hub is `docker.io/…`).
        reference: String,
        /// The build to pull, `os/architecture` (default: this machine's).
        #[arg(long, value_name = "OS/ARCH")]
        platform: Option<String>,
        /// The plugin cache (default: `$MCPG_PLUGIN_CACHE`, `$XDG_CACHE_HOME/mcpg/plugins` or
        /// `~/.cache/mcpg/plugins`).
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Shows what a reference holds: the digest it resolves to and each platform's build.
    Inspect {
        /// What to look at: `registry/repository:tag` or `registry/repository@sha256:…`, the
        /// registry host first (e.g. `registry.example.com/mcpg/cluster-redis:1.2.0`).
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

/// How to reach a registry.
#[derive(Debug, clap::Args)]
pub struct RegistryArgs {
    /// Talk to the registry over plain HTTP instead of HTTPS.
    #[arg(long)]
    pub plain_http: bool,
    /// Registry user name; the password is read from `$MCPG_REGISTRY_PASSWORD`. Without it,
    /// the container tools' credentials file (`$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json`) is used when it has the registry, else none.
    #[arg(long, value_name = "USER")]
    pub username: Option<String>,
}

impl RegistryArgs {
    /// The credentials `--username` asks for, the password from the environment.
    pub(super) fn basic(&self) -> Result<crate::oci::Basic, String> {
        match &self.username {
            None => Ok(None),
            Some(u) => match std::env::var("MCPG_REGISTRY_PASSWORD") {
                Ok(p) => Ok(Some((u.clone(), p))),
                Err(_) => Err("--username needs the password in $MCPG_REGISTRY_PASSWORD".into()),
            },
        }
    }
}

impl Args {
    /// The flags that override keys of the config file.
    pub(super) fn overrides(&self) -> Vec<config::Override> {
        let mut out = Vec::new();
        for (flag, pointer, value) in [
            ("--listen", "/server/listen", &self.listen),
            ("--admin-listen", "/server/admin_listen", &self.admin_listen),
            (
                "--advertise-url",
                "/server/advertise_url",
                &self.advertise_url,
            ),
        ] {
            if let Some(v) = value {
                out.push(config::Override {
                    flag,
                    pointer,
                    value: serde_json::Value::String(v.clone()),
                });
            }
        }
        out
    }
}
