//! The `stackgate` binary: everything lives in the library; see `stackgate::cli`.

fn main() -> std::process::ExitCode {
    stackgate::cli::main()
}
