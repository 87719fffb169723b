//! The `stackgate` binary: everything lives in the library; see `stackgate::cli`.

/// mimalloc instead of glibc malloc: every proxied request allocates and frees a handful
/// of small, short-lived buffers (header maps, futures, bodies), which mimalloc's
/// thread-local free lists serve in a fraction of glibc's instructions (see the README's
/// benchmark section for the measurement).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    stackgate::cli::main()
}
