//! The `mcpg` binary; everything lives in the library so tests and tools share it.

fn main() -> std::process::ExitCode {
    mcpg::cli::main()
}
