//! Fuzz target `stdio_lines`: arbitrary bytes through `mcpg::fuzzing::stdio_lines` (see that module for what it
//! exercises and asserts).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcpg::fuzzing::stdio_lines(data));
