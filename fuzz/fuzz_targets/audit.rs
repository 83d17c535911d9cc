//! Fuzz target `audit`: arbitrary bytes through `mcpg::fuzzing::audit` (see that module for what it
//! exercises and asserts).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcpg::fuzzing::audit(data));
