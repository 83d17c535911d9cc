//! Two `mcpg` replicas on one real etcd through the etcd coordinator plugin: both boot, see each
//! other, agree on one leader. Also the plugin phase of `mcpg-config-check` on the seed's etcd
//! rules (`key_prefix` must end with `/`).

use mcpg_backends::EtcdServer;

use crate::harness::{TempDir, cdylib, config_check, start_agreeing_replicas};

fn config(etcd: &str, listen: u16, admin: u16) -> String {
    format!(
        "server:\n  listen: \"127.0.0.1:{listen}\"\n  admin_listen: \"127.0.0.1:{admin}\"\n\
         cluster:\n  kind: etcd\n  endpoints: [\"{etcd}\"]\n  key_prefix: \"/mcpg/e2e/\"\n\
         plugins:\n  - id: dev.mcpg.cluster.etcd\n    source: {{path: \"{}\"}}\n\
         bindings: [{{name: m, path: /mcp, upstreams: [{{name: t, stdio: {{command: x}}}}]}}]\n",
        cdylib("mcpg_cluster_etcd").display()
    )
}

#[test]
fn two_replicas_on_one_etcd_see_each_other_and_agree_on_a_leader() {
    let server = EtcdServer::start();
    let (_dir, _replicas, status) =
        start_agreeing_replicas("etcd-2", &["etcd-a", "etcd-b"], |listen, admin| {
            config(&server.url(), listen, admin)
        });
    assert_eq!(status["cluster_kind"], "etcd");
}

#[test]
fn config_check_rejects_a_key_prefix_without_trailing_slash_with_its_position() {
    let dir = TempDir::new("etcd-check");
    let f = dir.write(
        "c.yaml",
        &format!(
            "cluster:\n  kind: etcd\n  endpoints: [\"http://etcd-0:2379\"]\n  key_prefix: /mcpg/prod\n\
             plugins:\n  - id: dev.mcpg.cluster.etcd\n    source: {{path: \"{}\"}}\n\
             bindings: [{{name: m, path: /mcp, upstreams: [{{name: t, stdio: {{command: x}}}}]}}]\n",
            cdylib("mcpg_cluster_etcd").display()
        ),
    );
    let (code, text) = config_check(&f);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "{}:4:3: cluster.key_prefix: must end with `/`: write `/mcpg/prod/`",
            f.display()
        )),
        "{text}"
    );
}
