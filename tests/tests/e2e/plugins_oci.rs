//! Plugins from an OCI registry, against a real one: Debian's `docker-registry` on a free
//! loopback port, without auth and with basic auth. The redis, nats and etcd plugins are
//! pushed with `mcpg plugin push`; `mcpg` boots from `source.oci` by tag and by digest, again
//! with the registry stopped (from its cache); a cached blob altered on disk is refused, and so
//! is a blob the registry serves altered; asking for a platform the artifact lacks says what it
//! has. `mcpg-config-check` checks a cached plugin's keys without a network.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use mcpg_backends::RedisServer;
use serde_json::Value;

use crate::harness::{Proc, TempDir, bin, cdylib, free_port, http_get, wait_ready, wait_until};
use crate::peers::python;

/// `docker-registry`, which `tools/install-test-deps` installs.
fn registry_bin() -> PathBuf {
    let p = PathBuf::from("/usr/bin/docker-registry");
    assert!(
        p.exists(),
        "docker-registry is missing: run `tools/install-test-deps` (apt-get install docker-registry)"
    );
    p
}

/// A registry on a free loopback port, storing under its own directory (also the image
/// test's, `deploy_image`).
pub(crate) struct Registry {
    proc: Option<Proc>,
    pub(crate) addr: SocketAddr,
    dir: TempDir,
}

impl Registry {
    /// With `user` set, the registry asks for HTTP basic auth with that user and password.
    pub(crate) fn start(user: Option<(&str, &str)>) -> Self {
        let dir = TempDir::new("registry");
        let port = free_port();
        let mut cfg = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n",
            dir.0.join("data").display()
        );
        if let Some((u, p)) = user {
            let out = Command::new(python())
                .args([
                    "-c",
                    "import bcrypt, sys; print(sys.argv[1] + ':' + bcrypt.hashpw(sys.argv[2].encode(), bcrypt.gensalt(rounds=5)).decode())",
                    u,
                    p,
                ])
                .output()
                .expect("run python");
            assert!(
                out.status.success(),
                "bcrypt (tools/install-test-deps): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let htpasswd = dir.write("htpasswd", &String::from_utf8_lossy(&out.stdout));
            cfg.push_str(&format!(
                "auth: {{htpasswd: {{realm: mcpg-test, path: {}}}}}\n",
                htpasswd.display()
            ));
        }
        let f = dir.write("config.yml", &cfg);
        let proc = Proc::spawn(Command::new(registry_bin()).arg("serve").arg(f));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(
            wait_until(Duration::from_secs(15), || http_get(addr, "/v2/")
                .is_ok_and(|(s, _)| s == 200 || s == 401)),
            "the registry never answered on {addr}"
        );
        Self {
            proc: Some(proc),
            addr,
            dir,
        }
    }

    fn stop(&mut self) {
        self.proc.take();
    }

    /// The stored blob with `digest` (the registry's filesystem layout).
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir.0.join(format!(
            "data/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
    }
}

fn mcpg(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin("mcpg"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run mcpg")
}

fn json_out(out: &Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn push(registry: &Registry, lib: &str, repo: &str) -> Value {
    let file = cdylib(lib);
    let reference = format!("{}/mcpg/{repo}:1.0", registry.addr);
    json_out(
        &mcpg(
            &[
                "plugin",
                "push",
                "--plain-http",
                file.to_str().unwrap(),
                &reference,
            ],
            &[],
        ),
        &format!("push {lib}"),
    )
}

/// Every file under `dir`.
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

fn config(redis: &str, source: &str) -> String {
    format!(
        "server:\n  listen: \"127.0.0.1:{}\"\n\
         cluster:\n  kind: redis\n  url: \"{redis}\"\n  key_prefix: \"oci:\"\n\
         plugins:\n  - id: dev.mcpg.cluster.redis\n    source: {source}\n\
         bindings: [{{name: m, path: /mcp, upstreams: [{{name: t, stdio: {{command: x}}}}]}}]\n",
        free_port()
    )
}

/// The `server.listen` address of a config [`config`] wrote.
fn listen_of(config: &str) -> SocketAddr {
    config
        .lines()
        .find_map(|l| l.trim().strip_prefix("listen: \""))
        .and_then(|l| l.trim_end_matches('"').parse().ok())
        .expect("the config names server.listen")
}

/// Boots `mcpg` with `config`; returns its stderr once it was ready and stopped cleanly, or
/// the failure it exited with.
fn boot(dir: &TempDir, name: &str, config: &str) -> Result<String, String> {
    let f = dir.write(name, config);
    let listen = listen_of(config);
    let mut proc = Proc::spawn(Command::new(bin("mcpg")).arg("--config").arg(&f));
    // Ready, or exited (a refusal): whichever comes first.
    let ready = wait_until(Duration::from_secs(60), || {
        matches!(http_get(listen, "/readyz"), Ok((200, _)))
            || proc.child.try_wait().ok().flatten().is_some()
    }) && matches!(http_get(listen, "/readyz"), Ok((200, _)));
    if ready {
        proc.signal("TERM");
    }
    let (status, stderr) = proc.wait(Duration::from_secs(60));
    if ready && status.success() {
        Ok(stderr)
    } else {
        Err(stderr)
    }
}

#[test]
fn plugins_are_published_to_a_registry_and_booted_from_it() {
    let mut registry = Registry::start(None);
    let redis = RedisServer::start();
    let dir = TempDir::new("oci-boot");
    let cache = dir.0.join("cache");
    let cache_s = cache.display().to_string();

    let pushed = push(&registry, "mcpg_cluster_redis", "cluster-redis");
    for (lib, repo, id) in [
        ("mcpg_cluster_nats", "cluster-nats", "dev.mcpg.cluster.nats"),
        ("mcpg_cluster_etcd", "cluster-etcd", "dev.mcpg.cluster.etcd"),
    ] {
        let p = push(&registry, lib, repo);
        assert_eq!(p["id"], id, "{p}");
        // Pulled back by digest into a cache of its own, it is the same library.
        let pulled = json_out(
            &mcpg(
                &[
                    "plugin",
                    "pull",
                    "--plain-http",
                    "--cache-dir",
                    &dir.0.join(repo).display().to_string(),
                    p["pinned"].as_str().unwrap(),
                ],
                &[],
            ),
            "pull",
        );
        let library = std::fs::read(pulled["library"].as_str().unwrap()).unwrap();
        assert_eq!(library, std::fs::read(cdylib(lib)).unwrap(), "{repo}");
    }
    let tag = pushed["pushed"].as_str().unwrap().to_owned();
    let pinned = pushed["pinned"].as_str().unwrap().to_owned();
    assert_eq!(pushed["platform"], "linux/amd64", "{pushed}");
    let inspected = json_out(
        &mcpg(&["plugin", "inspect", "--plain-http", &tag], &[]),
        "inspect",
    );
    assert_eq!(inspected["digest"], pushed["digest"], "{inspected}");
    assert_eq!(inspected["builds"][0]["id"], "dev.mcpg.cluster.redis");
    assert!(
        inspected["builds"][0]["config_schema"].is_object(),
        "{inspected}"
    );

    // By tag (resolved at boot, and the digest logged), then by digest.
    let by_tag = format!("{{oci: \"{tag}\", plain_http: true, cache_dir: \"{cache_s}\"}}");
    let stderr = boot(&dir, "tag.yaml", &config(&redis.url(), &by_tag))
        .unwrap_or_else(|e| panic!("by tag: {e}"));
    assert!(
        stderr.contains("resolved the plugin's tag")
            && stderr.contains(pushed["digest"].as_str().unwrap()),
        "{stderr}"
    );
    let by_digest = format!("{{oci: \"{pinned}\", plain_http: true, cache_dir: \"{cache_s}\"}}");
    boot(&dir, "digest.yaml", &config(&redis.url(), &by_digest))
        .unwrap_or_else(|e| panic!("by digest: {e}"));

    // The registry goes away: a digest-pinned plugin boots from the cache.
    registry.stop();
    let stderr = boot(&dir, "offline.yaml", &config(&redis.url(), &by_digest))
        .unwrap_or_else(|e| panic!("offline: {e}"));
    assert!(stderr.contains("plugin found in the cache"), "{stderr}");
    // A tag needs the registry under the default policy, and says so...
    let err = boot(&dir, "offline-tag.yaml", &config(&redis.url(), &by_tag)).unwrap_err();
    assert!(err.contains("registry for"), "{err}");
    // ...but not with `pull_policy: if_not_present`.
    let lenient = format!(
        "{{oci: \"{tag}\", plain_http: true, cache_dir: \"{cache_s}\", pull_policy: if_not_present}}"
    );
    boot(
        &dir,
        "offline-tag-cached.yaml",
        &config(&redis.url(), &lenient),
    )
    .unwrap_or_else(|e| panic!("offline by tag from the cache: {e}"));

    // mcpg-config-check checks the cached plugin's own keys, offline.
    let bad = config(&redis.url(), &by_digest).replace(
        "key_prefix: \"oci:\"",
        "key_prefix: \"oci:\"\n  lease_ttl_ms: 5",
    );
    let f = dir.write("check.yaml", &bad);
    let out = Command::new(bin("mcpg-config-check"))
        .arg(&f)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("cluster.lease_ttl_ms") && text.contains("dev.mcpg.cluster.redis"),
        "{text}"
    );

    // A cached library altered on disk is refused, naming both digests.
    let library_digest = inspected["builds"][0]["library_digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let cached = cache
        .join("blobs/sha256")
        .join(library_digest.strip_prefix("sha256:").unwrap());
    let mut bytes = std::fs::read(&cached).unwrap();
    bytes.push(0);
    std::fs::write(&cached, &bytes).unwrap();
    let err = boot(&dir, "tampered.yaml", &config(&redis.url(), &by_digest)).unwrap_err();
    assert!(
        err.contains("does not match its digest") && err.contains(&library_digest),
        "{err}"
    );
    assert!(
        files(&cache)
            .iter()
            .all(|f| !f.to_string_lossy().ends_with(".partial")),
        "{:?}",
        files(&cache)
    );
}

#[test]
fn a_registry_serving_altered_content_or_lacking_the_platform_is_refused() {
    let registry = Registry::start(None);
    let dir = TempDir::new("oci-refuse");
    let pushed = push(&registry, "mcpg_cluster_redis", "cluster-redis");
    let tag = pushed["pushed"].as_str().unwrap();
    let cache = dir.0.join("cache");
    let cache_s = cache.display().to_string();

    // No build for the platform asked for: the error says what the artifact has.
    let out = mcpg(
        &[
            "plugin",
            "pull",
            "--plain-http",
            "--cache-dir",
            &cache_s,
            "--platform",
            "linux/riscv64",
            tag,
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no build for linux/riscv64") && err.contains("it has: linux/amd64"),
        "{err}"
    );

    // The registry serves an altered library: refused, both digests named, nothing cached.
    let inspected = json_out(
        &mcpg(&["plugin", "inspect", "--plain-http", tag], &[]),
        "inspect",
    );
    let library_digest = inspected["builds"][0]["library_digest"].as_str().unwrap();
    let stored = registry.blob_file(library_digest);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    let out = mcpg(
        &[
            "plugin",
            "pull",
            "--plain-http",
            "--cache-dir",
            &cache_s,
            tag,
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(library_digest),
        "names the expected digest: {err}"
    );
    let left: Vec<PathBuf> = files(&cache)
        .into_iter()
        .filter(|f| {
            f.to_string_lossy()
                .contains(library_digest.strip_prefix("sha256:").unwrap())
                || f.to_string_lossy().ends_with(".partial")
        })
        .collect();
    assert!(
        left.is_empty(),
        "half-written or unverified files left: {left:?}"
    );
}

#[test]
fn a_registry_with_basic_auth_takes_credentials_from_the_config_or_the_docker_file() {
    let registry = Registry::start(Some(("mcpg", "s3cret-pass")));
    let redis = RedisServer::start();
    let dir = TempDir::new("oci-auth");
    let file = cdylib("mcpg_cluster_redis");
    let reference = format!("{}/mcpg/cluster-redis:auth", registry.addr);

    let anonymous = mcpg(
        &[
            "plugin",
            "push",
            "--plain-http",
            file.to_str().unwrap(),
            &reference,
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&anonymous.stderr);
    assert_eq!(anonymous.status.code(), Some(1), "{err}");
    assert!(!err.contains("s3cret-pass"));
    let pushed = json_out(
        &mcpg(
            &[
                "plugin",
                "push",
                "--plain-http",
                "--username",
                "mcpg",
                file.to_str().unwrap(),
                &reference,
            ],
            &[("MCPG_REGISTRY_PASSWORD", "s3cret-pass")],
        ),
        "push with credentials",
    );

    // The container tools' credentials file.
    let docker = dir.0.join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let auth = base64_of("mcpg:s3cret-pass");
    std::fs::write(
        docker.join("config.json"),
        format!(
            "{{\"auths\": {{\"{}\": {{\"auth\": \"{auth}\"}}}}}}",
            registry.addr
        ),
    )
    .unwrap();
    let pulled = json_out(
        &mcpg(
            &[
                "plugin",
                "pull",
                "--plain-http",
                "--cache-dir",
                &dir.0.join("c1").display().to_string(),
                &reference,
            ],
            &[("DOCKER_CONFIG", docker.to_str().unwrap())],
        ),
        "pull with the docker credentials file",
    );
    assert_eq!(pulled["digest"], pushed["digest"]);

    // Credentials in the config, from the environment.
    let source = format!(
        "{{oci: \"{reference}\", plain_http: true, cache_dir: \"{}\", auth: {{username: mcpg, password: \"${{env.OCI_TEST_PASSWORD}}\"}}}}",
        dir.0.join("c2").display()
    );
    let f = dir.write("auth.yaml", &config(&redis.url(), &source));
    let listen = listen_of(&std::fs::read_to_string(&f).unwrap());
    let proc = Proc::spawn(
        Command::new(bin("mcpg"))
            .arg("--config")
            .arg(&f)
            .env("OCI_TEST_PASSWORD", "s3cret-pass"),
    );
    assert!(
        wait_ready(listen, Duration::from_secs(60)),
        "mcpg did not boot with registry credentials from the config"
    );
    proc.signal("TERM");
    let (status, stderr) = proc.wait(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("s3cret-pass"), "the password was logged");
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// What `mcpg plugin …` says when it cannot reach a registry: a plain-HTTP registry spoken to
/// over HTTPS is a TLS failure with `--plain-http` suggested (it is on loopback), a port where
/// nothing listens is "connection refused", and a reference without a registry host is
/// refused instead of meaning Docker Hub.
#[test]
fn registry_errors_say_what_to_do() {
    let registry = Registry::start(None);
    let file = cdylib("mcpg_cluster_redis");
    let reference = format!("{}/mcpg/cluster-redis:1.0", registry.addr);

    let out = mcpg(&["plugin", "push", file.to_str().unwrap(), &reference], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("TLS handshake"), "{err}");
    assert!(err.contains("--plain-http"), "{err}");
    json_out(
        &mcpg(
            &[
                "plugin",
                "push",
                "--plain-http",
                file.to_str().unwrap(),
                &reference,
            ],
            &[],
        ),
        "push with --plain-http",
    );

    let closed = format!("127.0.0.1:{}/mcpg/cluster-redis:1.0", free_port());
    for plain in [true, false] {
        let mut args = vec!["plugin", "inspect"];
        if plain {
            args.push("--plain-http");
        }
        args.push(&closed);
        let out = mcpg(&args, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("connection refused"), "{err}");
        assert!(
            !err.contains("--plain-http"),
            "refused is not a TLS problem: {err}"
        );
    }

    for bare in ["x", "redis:1", "mcpg/cluster-redis:1.0"] {
        let out = mcpg(&["plugin", "pull", "--plain-http", bare], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bare}: {err}");
        assert!(err.contains("names no registry"), "{bare}: {err}");
        assert!(err.contains("docker.io/"), "{bare}: {err}");
    }
}
