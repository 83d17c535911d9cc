//! Fuzz target `headers`: arbitrary bytes through `mcpg::fuzzing::headers` (see that module for what it
//! exercises and asserts).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcpg::fuzzing::headers(data));
