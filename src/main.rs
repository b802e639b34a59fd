//! The `portcullis` binary: a thin wrapper over [`portcullis::cli`].

fn main() -> std::process::ExitCode {
    portcullis::cli::main()
}
