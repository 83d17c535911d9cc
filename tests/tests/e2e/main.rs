//! End-to-end tests: the real `mcpg` and `mcpg-config-check` binaries, started as processes.
//! Built by `cargo build --workspace` (the test command does that first).

mod harness;
mod peers;

mod access_control;
mod bad_input;
mod bench_smoke;
mod cli_help;
mod clients;
mod cluster_lifecycle;
mod cluster_sessions;
mod config_check;
mod config_reload;
mod consul_config;
mod deploy_image;
mod deploy_kubernetes;
mod deploy_systemd;
mod etcd_cluster;
mod gateway_lifecycle;
mod ha_pause;
mod hostile_http;
mod mcp_conformance;
mod mcp_peers;
mod mcp_protocol;
mod nats_cluster;
mod nemesis;
mod observability;
mod plugin_schemas;
mod plugin_template;
mod plugins;
mod plugins_oci;
mod pools_cluster;
mod postgres_cluster;
mod rate_limits;
mod redis_cluster;
mod rolling_upgrade;
mod tls;
mod upstream_pools;
