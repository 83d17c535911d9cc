//! The `mcpg` binary; everything lives in the library so tests and tools share it.

// A gateway allocates and frees many small buffers per request (JSON values, headers); under
// load the system allocator was a quarter of mcpg's CPU time in profiles, mimalloc is cheaper.
// Plugins are separate libraries with their own allocator; nothing crosses the boundary to be
// freed on the other side (abi_stable types carry their own deallocation).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc's default commits each arena it reserves up front (`arena_eager_commit`), which on
// an idle replica is about 10 MB of resident memory nothing uses. The option has to be set
// before the first allocation, and Rust's runtime allocates before `main`, so it is set from an
// ELF constructor that runs before mimalloc's own (a numbered `.init_array` entry runs before
// the unnumbered ones). `mi_option_set_default` leaves `MIMALLOC_ARENA_EAGER_COMMIT` in the
// environment in charge when it is set. The test
// `gateway_lifecycle::mimalloc_commits_arenas_lazily_unless_the_environment_says_otherwise`
// checks, through `MIMALLOC_VERBOSE`, that the value took effect.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array.00200")]
static COMMIT_ARENAS_LAZILY: extern "C" fn() = commit_arenas_lazily;

#[cfg(target_os = "linux")]
extern "C" fn commit_arenas_lazily() {
    // `mi_option_arena_eager_commit` in mimalloc v3's `mimalloc.h` (the bindings name no
    // constant for it).
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    // SAFETY: sets one integer in mimalloc's option table; it allocates nothing.
    unsafe { libmimalloc_sys::mi_option_set_default(ARENA_EAGER_COMMIT, 0) }
}

fn main() -> std::process::ExitCode {
    mcpg::cli::main()
}
