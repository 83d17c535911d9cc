//! The Kubernetes manifests (`deploy/kubernetes`): the base and the example overlay, rendered
//! with `kubectl kustomize` (kubectl pinned and installed by `tools/install-test-deps`), every
//! object validated offline against the Kubernetes 1.37 schemas (`kubernetes-validate
//! --strict`), scanned by `checkov` (no failed check; each skipped one carries its reason in
//! the manifest), and checked for what mcpg itself needs: the downward-API node id and
//! advertise URL, probes on mcpg's paths, a grace period longer than the config's drain, the
//! Secret keys the config reads, the image's user and its writable cache. The embedded config
//! is the file the image test checks with `mcpg-config-check --deny-warnings` (plugin phase
//! included) and boots on Redis (`deploy_image.rs`); here it is checked without the plugin
//! phase, since the plugin path is the image's.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::harness::{TempDir, bin, repo_root, run_ok};
use crate::peers::deps;

fn installed(p: PathBuf) -> PathBuf {
    assert!(
        p.exists(),
        "{} is missing: run tools/install-test-deps (it installs kubectl and the checkers)",
        p.display()
    );
    p
}

/// Every document of a YAML file (or stream), as JSON, through the checkers' PyYAML.
pub(crate) fn yaml_documents(path: &Path) -> Vec<Value> {
    let out = run_ok(
        Command::new(installed(deps().join("deploy-venv/bin/python")))
            .args([
                "-c",
                "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))",
            ])
            .arg(path),
        "YAML to JSON",
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The rendered objects of one kind.
fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    of_kind(objects, kind)
        .into_iter()
        .find(|o| o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

/// A value of the Containerfile's final stage (`USER`, `ENV NAME=`).
fn containerfile_user() -> u64 {
    let text = std::fs::read_to_string(repo_root().join("Containerfile")).unwrap();
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER in the Containerfile");
    user.split(':').next().unwrap().trim().parse().unwrap()
}

fn containerfile_env(name: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("Containerfile")).unwrap();
    let at = text
        .find(&format!("{name}="))
        .expect("ENV in the Containerfile");
    text[at + name.len() + 1..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// A copy of deploy/kubernetes with the example's secrets.env written (it is not in the
/// repository: every deployer makes their own).
fn tree_with_secrets(dir: &TempDir) -> PathBuf {
    let copy = dir.0.join("kubernetes");
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(repo_root().join("deploy/kubernetes"))
            .arg(&copy),
        "copy deploy/kubernetes",
    );
    let random = |n: usize| {
        use std::io::Read;
        let mut buf = vec![0u8; n];
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut buf)
            .unwrap();
        buf.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    std::fs::write(
        copy.join("overlays/example/secrets.env"),
        format!(
            "redis-url=redis://redis:6379\nforwarding-secret={}\nadmin-token={}\n",
            random(24),
            random(24)
        ),
    )
    .unwrap();
    copy
}

#[test]
fn the_kubernetes_manifests_render_validate_and_pass_the_scanner() {
    let kubectl = installed(deps().join("bin/kubectl"));
    let venv = deps().join("deploy-venv/bin");
    let dir = TempDir::new("kubernetes");
    let tree = tree_with_secrets(&dir);

    let mut rendered = Vec::new();
    for (name, path) in [("base", "base"), ("example", "overlays/example")] {
        let out = run_ok(
            Command::new(&kubectl).arg("kustomize").arg(tree.join(path)),
            &format!("kubectl kustomize {path}"),
        );
        rendered.push(dir.write(
            &format!("{name}.yaml"),
            &String::from_utf8_lossy(&out.stdout),
        ));
    }

    // Every object against the Kubernetes schemas, unknown fields refused.
    let out = run_ok(
        Command::new(installed(venv.join("kubernetes-validate")))
            .args(["--strict", "--kubernetes-version", "1.37.0"])
            .args(&rendered),
        "kubernetes-validate",
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.matches("passed for resource").count() >= 10,
        "kubernetes-validate checked too little:\n{said}"
    );

    // The overlay's rendering holds every object of the base too; the base alone has no
    // namespace on purpose (an overlay sets it), which checkov reports as CKV_K8S_21.
    scan(&venv, &rendered[1..]);

    let objects = yaml_documents(&rendered[1]);
    check_example(&objects);
    check_config();
}

/// checkov over renderings: no failed check, and every skipped one was skipped with a
/// reason (`checkov.io/skipN: ID=reason` beside the comment that explains it).
fn scan(venv: &Path, rendered: &[PathBuf]) {
    let mut cmd = Command::new(installed(venv.join("checkov")));
    cmd.args([
        "--framework",
        "kubernetes",
        "--skip-download",
        "--output",
        "json",
    ]);
    for f in rendered {
        cmd.arg("--file").arg(f);
    }
    let out = cmd.output().expect("run checkov");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "checkov: not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let reports = match report {
        Value::Array(a) => a,
        one => vec![one],
    };
    let mut passed = 0;
    for r in &reports {
        let failed = r["results"]["failed_checks"].as_array().unwrap();
        let names: Vec<String> = failed
            .iter()
            .map(|c| format!("{} {} ({})", c["check_id"], c["resource"], c["check_name"]))
            .collect();
        assert!(names.is_empty(), "checkov findings:\n{}", names.join("\n"));
        for s in r["results"]["skipped_checks"].as_array().unwrap() {
            let reason = s["check_result"]["suppress_comment"]
                .as_str()
                .unwrap_or_default();
            assert!(
                reason.len() > 10,
                "{} skipped on {} without a reason",
                s["check_id"],
                s["resource"]
            );
        }
        passed += r["summary"]["passed"].as_u64().unwrap();
    }
    assert!(out.status.success(), "checkov exited {}", out.status);
    assert!(passed > 100, "checkov checked too little: {passed} passed");
}

/// What mcpg needs of the rendered example (the base, in its namespace, with its Redis).
fn check_example(objects: &[Value]) {
    let config_text =
        std::fs::read_to_string(repo_root().join("deploy/kubernetes/base/mcpg.yaml")).unwrap();
    let config = &yaml_documents(&repo_root().join("deploy/kubernetes/base/mcpg.yaml"))[0];
    let deployment = named(objects, "Deployment", "mcpg");
    let pod = &deployment["spec"]["template"];
    let spec = &pod["spec"];
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];

    // The config is mounted, unchanged, where the image's command reads it.
    let config_maps = of_kind(objects, "ConfigMap");
    assert_eq!(config_maps.len(), 1);
    let cm = config_maps[0];
    assert_eq!(cm["data"]["config.yaml"], config_text.as_str());
    let volume = |name: &str| {
        spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    let mount = |path: &str| {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"))
    };
    let config_mount = mount("/etc/mcpg");
    assert_eq!(
        volume(config_mount["name"].as_str().unwrap())["configMap"]["name"],
        cm["metadata"]["name"]
    );
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--config=/etc/mcpg/config.yaml"), "{args:?}");

    // Identity from the downward API: the pod's name and IP, on the config's MCP port.
    let env = c["env"].as_array().unwrap();
    let env_var = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no env {name}"))
    };
    assert_eq!(
        env_var("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env_var("POD_IP")["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    let listen = config["server"]["listen"].as_str().unwrap();
    let port = listen.rsplit(':').next().unwrap();
    assert!(args.contains(&"--node-id=$(POD_NAME)"), "{args:?}");
    assert_eq!(
        config["server"]["advertise_url"],
        "${env.MCPG_ADVERTISE_URL}"
    );
    assert_eq!(
        env_var("MCPG_ADVERTISE_URL")["value"],
        format!("http://$(POD_IP):{port}")
    );
    // Kubernetes expands $(POD_IP) only when POD_IP is defined earlier in the list.
    let index = |name: &str| env.iter().position(|e| e["name"] == name).unwrap();
    assert!(index("POD_IP") < index("MCPG_ADVERTISE_URL"));

    // Every secret the config reads from the environment comes from the generated Secret.
    let secret = of_kind(objects, "Secret")[0];
    for var in [
        "MCPG_REDIS_URL",
        "MCPG_FORWARDING_SECRET",
        "MCPG_ADMIN_TOKEN",
    ] {
        assert!(config_text.contains(&format!("${{env.{var}}}")), "{var}");
        let r = &env_var(var)["valueFrom"]["secretKeyRef"];
        assert_eq!(r["name"], secret["metadata"]["name"], "{var}");
        let key = r["key"].as_str().unwrap();
        assert!(
            secret["data"][key].as_str().is_some_and(|v| !v.is_empty()),
            "the Secret has no {key}"
        );
    }

    // Probes on mcpg's paths and ports.
    let ports = c["ports"].as_array().unwrap();
    let port_of = |name: &str| {
        ports
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["containerPort"].to_string())
            .unwrap_or_else(|| panic!("no port {name}"))
    };
    assert_eq!(port_of("http"), port);
    let admin_port = config["server"]["admin_listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap();
    assert_eq!(port_of("admin"), admin_port);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"],
        admin_port
    );

    // The kubelet's SIGKILL comes after the drain, never during it; and no hook needs a
    // shell, which the image does not have.
    let drain = config["server"]["drain_timeout_ms"].as_u64().unwrap()
        + config["server"]["shutdown_delay_ms"].as_u64().unwrap();
    let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace * 1000 > drain,
        "terminationGracePeriodSeconds {grace} s does not exceed the drain ({drain} ms)"
    );
    assert!(c["lifecycle"]["preStop"]["exec"].is_null(), "{c}");

    // The image's user, nothing writable but volumes, the plugin cache among them.
    let user = containerfile_user();
    assert_eq!(spec["securityContext"]["runAsUser"], user);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    let cache = containerfile_env("MCPG_PLUGIN_CACHE");
    let cache_mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| cache.starts_with(m["mountPath"].as_str().unwrap()) && m["mountPath"] != "/")
        .unwrap_or_else(|| panic!("the plugin cache {cache} is on the read-only root"));
    assert!(cache_mount["readOnly"].is_null() || cache_mount["readOnly"] == false);
    for k in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(c["resources"][k][r].is_string(), "resources.{k}.{r}");
        }
    }

    // The Service, PDB and NetworkPolicy select these pods.
    let labels = &pod["metadata"]["labels"];
    let selects = |selector: &Value| {
        selector
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| labels[k] == *v)
    };
    assert!(selects(
        &named(objects, "Service", "mcpg")["spec"]["selector"]
    ));
    assert!(selects(
        &named(objects, "PodDisruptionBudget", "mcpg")["spec"]["selector"]["matchLabels"]
    ));
    assert!(selects(
        &named(objects, "NetworkPolicy", "mcpg")["spec"]["podSelector"]["matchLabels"]
    ));
    // The example's Redis is where the Secret's URL points.
    assert_eq!(
        named(objects, "Service", "redis")["spec"]["ports"][0]["port"],
        6379
    );
}

/// The embedded config through the host's checker (the image test adds the plugin phase).
fn check_config() {
    let out = Command::new(bin("mcpg-config-check"))
        .args(["--deny-warnings", "--no-plugins"])
        .arg(repo_root().join("deploy/kubernetes/base/mcpg.yaml"))
        .env("MCPG_REDIS_URL", "redis://redis:6379")
        .env("MCPG_ADVERTISE_URL", "http://10.0.0.7:8080")
        .env("MCPG_FORWARDING_SECRET", "0123456789abcdef0123456789abcdef")
        .env("MCPG_ADMIN_TOKEN", "0123456789abcdef0123456789abcdef")
        .output()
        .expect("run mcpg-config-check");
    assert!(
        out.status.success(),
        "mcpg-config-check --deny-warnings deploy/kubernetes/base/mcpg.yaml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
