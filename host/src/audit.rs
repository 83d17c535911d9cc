//! The audit log: one record per MCP request, sinks, the hash chain and its verification.
