//! The container image (`Containerfile`, `tools/build-image`), built from this build's
//! binaries with podman (`--storage-driver vfs`, storage of its own), pushed to a real registry
//! (Debian's `docker-registry`), pulled back with skopeo (manifest digest unchanged), unpacked
//! with umoci, and run: `mcpg-config-check --deny-warnings` and `mcpg` from its root filesystem
//! under `chroot`, as the image's user, with the image's environment. Containers cannot run on
//! these machines (no cgroups), so chroot plays the runtime: same files, same user, same
//! entrypoint, the host's network.
//!
//! Two boots: `single_node` in front of the fixture upstream (an MCP call answered, SIGTERM
//! exits 0), and two pods of the Kubernetes base (`deploy/kubernetes/base/mcpg.yaml`, with the
//! Deployment's arguments and environment read from its manifest), which load the Redis plugin
//! from the image's plugin directory, join a real `redis-server`, find each other at their
//! advertise URLs and serve one session between them. The test needs root (`chroot`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use mcpg_backends::RedisServer;
use serde_json::{Value, json};

use crate::deploy_kubernetes::yaml_documents;
use crate::harness::{
    Proc, TempDir, bin, free_port, http, legacy_session, repo_root, run_ok, session_post,
    wait_ready, wait_until,
};
use crate::mcp_peers::bench_fixture;
use crate::plugins_oci::Registry;

/// Where the image keeps the shipped plugins (docs/deployment.md#container-image).
const PLUGIN_DIR: &str = "/usr/lib/mcpg/plugins";
const SHIPPED_PLUGINS: [&str; 4] = ["redis", "nats", "etcd", "consul"];

/// A system tool that `tools/install-test-deps` installs from Debian.
fn tool(name: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is missing: run tools/install-test-deps (apt-get install -y {package})");
}

fn json_of(out: &Output, what: &str) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The unpacked image: its root filesystem and what a runtime would run (umoci's runtime
/// config: the image's user, environment and entrypoint + command).
struct Unpacked {
    rootfs: PathBuf,
    uid: u64,
    gid: u64,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

impl Unpacked {
    fn read(bundle: &Path) -> Self {
        let config: Value =
            serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
        let process = &config["process"];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .unwrap_or_else(|| panic!("runtime config: {process}"))
                .iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect()
        };
        Self {
            rootfs: bundle.join("rootfs"),
            uid: process["user"]["uid"].as_u64().unwrap(),
            gid: process["user"]["gid"].as_u64().unwrap(),
            env: strings(&process["env"])
                .into_iter()
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_owned(), v.to_owned())
                })
                .collect(),
            args: strings(&process["args"]),
        }
    }

    /// `argv` run inside the image as its user, with only the image's environment plus `env`.
    fn command(&self, argv: &[&str], env: &[(&str, &str)]) -> Command {
        let mut c = Command::new(tool("chroot", "coreutils"));
        c.arg(format!("--userspec={}:{}", self.uid, self.gid))
            .arg(&self.rootfs)
            .args(argv)
            .env_clear();
        for (k, v) in &self.env {
            c.env(k, v);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    fn write(&self, path: &str, text: &str) {
        std::fs::write(self.rootfs.join(path.trim_start_matches('/')), text).unwrap();
    }

    fn config_check(&self, config: &str, env: &[(&str, &str)]) {
        let out = self
            .command(
                &[
                    "/usr/local/bin/mcpg-config-check",
                    "--deny-warnings",
                    config,
                ],
                env,
            )
            .output()
            .expect("run mcpg-config-check in the image");
        assert!(
            out.status.success(),
            "mcpg-config-check --deny-warnings {config} in the image:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `(uid, gid, groups)` of a running process, from /proc.
fn credentials(pid: u32) -> (String, String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    (field("Uid:"), field("Gid:"), field("Groups:"))
}

/// `tools/call echo` in a fresh legacy session at `addr`/mcp; the answer's text.
fn echo(addr: SocketAddr, text: &str) -> String {
    let sid = legacy_session(addr, "/mcp");
    let (status, body) = session_post(
        addr,
        "/mcp",
        &sid,
        &json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":text}}}),
    );
    assert_eq!(status, 200, "tools/call through the image's mcpg: {body}");
    body
}

fn workspace_version() -> String {
    let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    manifest
        .lines()
        .skip_while(|l| *l != "[workspace.package]")
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("workspace version")
        .to_owned()
}

/// podman with storage of its own (removed with it). podman refuses a run root longer than
/// 50 characters, so it lives at a short path.
struct Podman {
    storage: TempDir,
}

impl Podman {
    fn new(n: u8) -> Self {
        let dir = std::env::temp_dir().join(format!("mcpg-img{n}-{}", std::process::id()));
        Self {
            storage: TempDir(dir),
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(tool("podman", "podman"));
        c.arg("--root")
            .arg(self.storage.0.join("root"))
            .arg("--runroot")
            .arg(self.storage.0.join("run"))
            .args(["--storage-driver", "vfs"]);
        c
    }

    /// `tools/build-image` from the binaries this test build produced, into this storage.
    fn build(&self, tag: &str, tmp: &Path) {
        let profile_dir = bin("mcpg").parent().unwrap().to_path_buf();
        let out = run_ok(
            Command::new(repo_root().join("tools/build-image"))
                .arg("--profile-dir")
                .arg(&profile_dir)
                .arg("--storage")
                .arg(&self.storage.0)
                .args(["--tag", tag])
                .env("TMPDIR", tmp),
            "tools/build-image",
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), tag);
    }

    fn image_id(&self, tag: &str) -> String {
        let out = run_ok(
            self.command()
                .args(["image", "inspect", "--format", "{{.Id}}", tag]),
            "podman image inspect",
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

#[test]
fn the_image_is_built_pushed_pulled_and_runs_mcpg_as_its_user() {
    let (uid, _, _) = credentials(std::process::id());
    assert!(
        uid.starts_with("0 "),
        "the image test runs the image under chroot, which needs root (uids {uid})"
    );
    let dir = TempDir::new("image");
    let tag = "localhost/mcpg:e2e";

    // Built twice from the same binaries, in separate storage (no layer cache shared): the
    // same image, since file times and the creation time come from the commit, not the clock.
    let podman = Podman::new(1);
    podman.build(tag, &dir.0);
    {
        let again = Podman::new(2);
        again.build(tag, &dir.0);
        assert_eq!(podman.image_id(tag), again.image_id(tag));
    }

    let registry = Registry::start(None);
    let (inspected, layout) = push_and_pull_back(&podman, tag, &registry, &dir);
    check_labels(&inspected);

    let bundle = dir.0.join("bundle");
    run_ok(
        Command::new(tool("umoci", "umoci"))
            .args(["unpack", "--image"])
            .arg(format!("{}:e2e", layout.display()))
            .arg(&bundle),
        "umoci unpack",
    );
    let image = Unpacked::read(&bundle);
    check_root_filesystem(&image);

    let (_fixture, upstream) = bench_fixture();
    boot_single_node(&image, &upstream);
    boot_kubernetes_config(&image, &upstream);
}

/// Pushes `tag` to the registry with podman and copies it back with skopeo into an OCI
/// layout: the same manifest, byte for byte (the digest podman pushed, the registry serves
/// and the layout holds are one). Returns `skopeo inspect` of the pushed image and the layout.
fn push_and_pull_back(
    podman: &Podman,
    tag: &str,
    registry: &Registry,
    dir: &TempDir,
) -> (Value, PathBuf) {
    let skopeo = tool("skopeo", "skopeo");
    let remote = format!("docker://{}/mcpg:e2e", registry.addr);
    let digest_file = dir.0.join("pushed-digest");
    run_ok(
        podman
            .command()
            .args(["push", "--quiet", "--tls-verify=false", "--digestfile"])
            .arg(&digest_file)
            .args([tag, &remote]),
        "podman push",
    );
    let pushed = std::fs::read_to_string(&digest_file).unwrap();
    assert!(pushed.starts_with("sha256:"), "{pushed:?}");
    let inspected = json_of(
        &run_ok(
            Command::new(&skopeo).args(["inspect", "--tls-verify=false", &remote]),
            "skopeo inspect",
        ),
        "skopeo inspect",
    );
    assert_eq!(inspected["Digest"], pushed.as_str(), "{inspected}");
    let layout = dir.0.join("oci");
    run_ok(
        Command::new(&skopeo)
            .args(["copy", "--quiet", "--src-tls-verify=false", &remote])
            .arg(format!("oci:{}:e2e", layout.display())),
        "skopeo copy",
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"],
        pushed.as_str(),
        "the pulled manifest differs from the pushed one: {index}"
    );
    (inspected, layout)
}

/// What the image says about itself: linux/amd64, and the OCI annotation labels.
fn check_labels(inspected: &Value) {
    assert_eq!(inspected["Architecture"], "amd64", "{inspected}");
    assert_eq!(inspected["Os"], "linux", "{inspected}");
    let labels = &inspected["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"],
        workspace_version().as_str()
    );
    // What `podman build .` labels an image with when no --build-arg says otherwise.
    let containerfile = std::fs::read_to_string(repo_root().join("Containerfile")).unwrap();
    assert!(
        containerfile.contains(&format!("ARG MCPG_VERSION={}\n", workspace_version())),
        "the Containerfile's default MCPG_VERSION is not the workspace's version"
    );
    let revision = labels["org.opencontainers.image.revision"]
        .as_str()
        .unwrap_or_default();
    assert!(
        revision.len() >= 40 && revision.chars().take(40).all(|c| c.is_ascii_hexdigit()),
        "revision label: {labels}"
    );
    for key in ["source", "licenses", "title", "documentation"] {
        let v = labels[format!("org.opencontainers.image.{key}")]
            .as_str()
            .unwrap_or_default();
        assert!(!v.is_empty(), "label {key} is missing: {labels}");
    }
}

/// A non-root user, no shell, the plugins where the docs say, CA certificates, and the
/// plugin cache writable by that user only.
fn check_root_filesystem(image: &Unpacked) {
    assert_ne!(image.uid, 0, "the image runs as root");
    assert_ne!(image.gid, 0, "the image runs with group root");
    assert_eq!(
        image.args[0], "/usr/local/bin/mcpg",
        "entrypoint: {:?}",
        image.args
    );
    let fs = &image.rootfs;
    let passwd = std::fs::read_to_string(fs.join("etc/passwd")).unwrap();
    assert!(
        passwd.contains(&format!(":{}:{}:", image.uid, image.gid)),
        "the image's user is not in /etc/passwd: {passwd}"
    );
    for shell in ["bin/sh", "bin/bash", "usr/bin/sh", "usr/bin/env"] {
        assert!(!fs.join(shell).exists(), "{shell} is in the image");
    }
    for p in SHIPPED_PLUGINS {
        let lib = fs.join(format!(
            "{}/libmcpg_cluster_{p}.so",
            PLUGIN_DIR.trim_start_matches('/')
        ));
        assert!(lib.is_file(), "{} is missing", lib.display());
    }
    let certs = std::fs::read_to_string(fs.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(certs.matches("BEGIN CERTIFICATE").count() > 50);
    let cache = image
        .env
        .iter()
        .find(|(k, _)| k == "MCPG_PLUGIN_CACHE")
        .map(|(_, v)| v.clone())
        .expect("MCPG_PLUGIN_CACHE in the image's environment");
    let parent = Path::new(&cache).parent().unwrap();
    let meta = std::fs::metadata(fs.join(parent.strip_prefix("/").unwrap())).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (u64::from(meta.uid()), u64::from(meta.gid())),
        (image.uid, image.gid),
        "{} is not the image user's",
        parent.display()
    );
    let bin_meta = std::fs::metadata(fs.join("usr/local/bin/mcpg")).unwrap();
    assert_eq!(
        bin_meta.uid(),
        0,
        "the binaries must not be the runtime user's"
    );
    assert_eq!(
        bin_meta.mode() & 0o022,
        0,
        "the binaries must not be writable"
    );
}

/// `single_node` in front of the fixture: config checked, ready, an MCP call answered, run
/// as the image's user, SIGTERM exits 0.
fn boot_single_node(image: &Unpacked, upstream: &str) {
    let (listen, admin) = (free_port(), free_port());
    image.write(
        "/etc/mcpg/single-node.yaml",
        &format!(
            "server: {{listen: \"127.0.0.1:{listen}\", admin_listen: \"127.0.0.1:{admin}\"}}\n\
             bindings:\n  - name: fixture\n    path: /mcp\n    upstreams: [{{name: f, http: {{url: {upstream:?}}}}}]\n"
        ),
    );
    image.config_check("/etc/mcpg/single-node.yaml", &[]);
    let mut argv: Vec<&str> = vec![&image.args[0]];
    argv.extend(["--config", "/etc/mcpg/single-node.yaml"]);
    let proc = Proc::spawn(&mut image.command(&argv, &[]));
    let addr: SocketAddr = format!("127.0.0.1:{listen}").parse().unwrap();
    let ready = wait_ready(addr, Duration::from_secs(30));
    assert!(ready, "mcpg from the image never became ready");
    let (uid, gid, groups) = credentials(proc.child.id());
    let want = |id: u64| vec![id.to_string(); 4].join(" ");
    assert_eq!(uid, want(image.uid), "mcpg runs with uids {uid}");
    assert_eq!(gid, want(image.gid), "mcpg runs with gids {gid}");
    assert!(
        groups.is_empty() || groups == image.gid.to_string(),
        "supplementary groups {groups}"
    );
    let body = echo(addr, "from the image");
    assert!(body.contains("from the image"), "{body}");
    proc.signal("TERM");
    let (status, stderr) = proc.wait(Duration::from_secs(30));
    assert!(status.success(), "exit after SIGTERM: {status}\n{stderr}");
}

/// What the kubelet would run for the base Deployment's container (its `args` and `env`,
/// `$(VAR)` expanded from the variables before, field references resolved for a pod named
/// `pod` at `pod_ip`, Secret keys looked up in `secrets`): the arguments and the environment.
fn deployment_process(
    pod: &str,
    pod_ip: &str,
    secrets: &[(&str, &str)],
) -> (Vec<String>, Vec<(String, String)>) {
    let deployment =
        &yaml_documents(&repo_root().join("deploy/kubernetes/base/deployment.yaml"))[0];
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1, "one container per pod");
    let c = &containers[0];
    assert!(
        c["command"].is_null(),
        "the Deployment must keep the image's entrypoint"
    );
    let expand = |v: &str, env: &[(String, String)]| {
        env.iter()
            .fold(v.to_owned(), |v, (k, x)| v.replace(&format!("$({k})"), x))
    };
    let mut env: Vec<(String, String)> = Vec::new();
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_owned();
        let from = &e["valueFrom"];
        let value = if let Some(v) = e["value"].as_str() {
            expand(v, &env)
        } else if from["fieldRef"]["fieldPath"] == "metadata.name" {
            pod.to_owned()
        } else if from["fieldRef"]["fieldPath"] == "status.podIP" {
            pod_ip.to_owned()
        } else if let Some(key) = from["secretKeyRef"]["key"].as_str() {
            secrets
                .iter()
                .find(|(k, _)| *k == key)
                .unwrap_or_else(|| panic!("env {name}: no Secret key {key} in the test"))
                .1
                .to_owned()
        } else {
            panic!("env {name}: a source the test does not know: {e}")
        };
        env.push((name, value));
    }
    let args = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| expand(a.as_str().unwrap(), &env))
        .collect();
    (args, env)
}

/// One pod of the base Deployment, run from the image.
struct Pod {
    name: &'static str,
    _proc: Proc,
    main: SocketAddr,
    admin: SocketAddr,
}

/// The admin token and forwarding secret the test's "Secret" holds.
const ADMIN_TOKEN: &str = "admin-token-for-the-image-test-run";
const FORWARDING_SECRET: &str = "forwarding-secret-for-the-image-test";

/// Starts pod `name` from the image with the arguments and environment the base Deployment
/// gives it (read from deploy/kubernetes/base/deployment.yaml), except the ports: free loopback
/// ports instead of 8080 and 9090 (flags, which win over the file, and the advertise URL).
/// `mcpg-config-check --deny-warnings` runs first with the same environment.
fn start_pod(image: &Unpacked, name: &'static str, redis_url: &str, upstream: &str) -> Pod {
    let (args, mut env) = deployment_process(
        name,
        "127.0.0.1",
        &[
            ("redis-url", redis_url),
            ("forwarding-secret", FORWARDING_SECRET),
            ("admin-token", ADMIN_TOKEN),
        ],
    );
    let (listen, admin) = (free_port(), free_port());
    for (k, v) in &mut env {
        if k == "MCPG_ADVERTISE_URL" {
            assert_eq!(v, "http://127.0.0.1:8080");
            *v = format!("http://127.0.0.1:{listen}");
        }
    }
    env.push(("MCPG_UPSTREAM_URL".into(), upstream.into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert!(
        args.contains(&"--config=/etc/mcpg/config.yaml".to_owned()),
        "{args:?}"
    );
    image.config_check("/etc/mcpg/config.yaml", &env);

    let mut argv: Vec<String> = vec![image.args[0].clone()];
    argv.extend(args);
    argv.push(format!("--listen=127.0.0.1:{listen}"));
    argv.push(format!("--admin-listen=127.0.0.1:{admin}"));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    Pod {
        name,
        _proc: Proc::spawn(&mut image.command(&argv, &env)),
        main: format!("127.0.0.1:{listen}").parse().unwrap(),
        admin: format!("127.0.0.1:{admin}").parse().unwrap(),
    }
}

/// `GET path` on the admin listener with the admin token, as JSON.
fn admin_get(pod: &Pod, path: &str) -> Value {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let (status, _, body) = http(pod.admin, "GET", path, &[("Authorization", &bearer)], b"");
    assert_eq!(status, 200, "{} {path}: {body}", pod.name);
    serde_json::from_str(&body).unwrap()
}

/// The Kubernetes base's config as two pods of its Deployment on a real Redis: the Redis
/// plugin is loaded from the image's plugin directory (by `mcpg-config-check`'s plugin phase
/// and by `mcpg`), the node ids are the pods' names, each finds the other at its advertise
/// URL, and a session opened on one is served through the other (forwarded with the
/// Secret's forwarding secret).
fn boot_kubernetes_config(image: &Unpacked, upstream: &str) {
    let redis = RedisServer::start();
    let config = std::fs::read_to_string(repo_root().join("deploy/kubernetes/base/mcpg.yaml"))
        .expect("the Kubernetes base's config");
    assert!(
        config.contains(&format!("{PLUGIN_DIR}/libmcpg_cluster_redis.so")),
        "the Kubernetes config does not load the plugin the image ships"
    );
    image.write("/etc/mcpg/config.yaml", &config);
    // The image's default command names this very file, and so does the Deployment.
    assert_eq!(
        image.args[1..],
        ["--config", "/etc/mcpg/config.yaml"],
        "the image's command"
    );
    let pods = [
        start_pod(image, "mcpg-6d4b9c7f8-x2x9q", &redis.url(), upstream),
        start_pod(image, "mcpg-6d4b9c7f8-k7v4m", &redis.url(), upstream),
    ];
    for pod in &pods {
        let ready = wait_ready(pod.main, Duration::from_secs(30));
        assert!(
            ready,
            "{} from the image never became ready on Redis",
            pod.name
        );
        let s = admin_get(pod, "/api/cluster/status");
        assert_eq!(s["cluster_kind"], "redis", "{s}");
        assert_eq!(s["backend"]["ok"], true, "{s}");
        assert_eq!(
            s["node_id"], pod.name,
            "the node id is not the pod's name: {s}"
        );
    }
    let keys = redis
        .command(&["KEYS", "mcpg:default:*"])
        .unwrap_or_default();
    assert!(
        keys.starts_with('*') && !keys.starts_with("*0"),
        "nothing under the config's key_prefix in Redis: {keys:?}"
    );
    // Each pod sees the other, at the URL its environment advertised.
    let seen = wait_until(Duration::from_secs(15), || {
        admin_get(&pods[0], "/api/cluster/peers")["peers"]
            .as_array()
            .is_some_and(|p| p.len() == 2)
    });
    let peers = admin_get(&pods[0], "/api/cluster/peers");
    assert!(seen, "{peers}");
    let advertised = format!("http://{}", pods[1].main);
    assert!(
        peers.to_string().contains(&advertised),
        "{} is not advertised at {advertised}: {peers}",
        pods[1].name
    );
    // A session opened on one pod, called through the other.
    let sid = legacy_session(pods[0].main, "/mcp");
    let (status, body) = session_post(
        pods[1].main,
        "/mcp",
        &sid,
        &json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"across pods"}}}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("across pods"), "{body}");
}
