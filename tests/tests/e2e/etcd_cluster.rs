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

/// Issue 20, row 14: an endpoint the etcd client cannot parse (a space in the port, a port
/// over 65535) passed `mcpg-config-check` and then failed `mcpg` with "invalid uri" and no
/// position. The plugin's validation runs boot's own parser, so the checker refuses it at the
/// endpoint's line and column.
#[test]
fn config_check_refuses_an_endpoint_boot_cannot_parse_with_its_position() {
    let dir = TempDir::new("etcd-endpoint");
    for (i, bad) in ["http://etcd-0:23 79", "http://etcd-0:99999"]
        .iter()
        .enumerate()
    {
        let f = dir.write(
            &format!("c{i}.yaml"),
            &format!(
                "cluster:\n  kind: etcd\n  endpoints:\n    - \"http://etcd-1:2379\"\n    - \"{bad}\"\n\
                 plugins:\n  - id: dev.mcpg.cluster.etcd\n    source: {{path: \"{}\"}}\n\
                 bindings: [{{name: m, path: /mcp, upstreams: [{{name: t, stdio: {{command: x}}}}]}}]\n",
                cdylib("mcpg_cluster_etcd").display()
            ),
        );
        let (code, text) = config_check(&f);
        assert_eq!(code, Some(1), "{bad}: {text}");
        let at = format!(
            "{}:5:7: cluster.endpoints[1]: invalid endpoint: ",
            f.display()
        );
        assert!(text.contains(&at), "{bad}: want `{at}` in:\n{text}");
    }
}
