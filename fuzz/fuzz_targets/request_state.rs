//! Fuzz target `request_state`: arbitrary bytes through `mcpg::fuzzing::request_state` (see that module for what it
//! exercises and asserts).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcpg::fuzzing::request_state(data));
