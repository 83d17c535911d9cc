//! Fuzz target `jsonrpc`: arbitrary bytes through `mcpg::fuzzing::jsonrpc` (see that module for what it
//! exercises and asserts).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcpg::fuzzing::jsonrpc(data));
