//! Fuzz target `config`: arbitrary bytes through `mcpg::fuzzing::config` (see that module for what it
//! exercises and asserts).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcpg::fuzzing::config(data));
