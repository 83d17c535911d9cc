//! Fuzz target `upstream`: arbitrary bytes through `mcpg::fuzzing::upstream` (see that module for what it
//! exercises and asserts).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcpg::fuzzing::upstream(data));
