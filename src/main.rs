//! The `portcullis` binary: a thin wrapper over [`portcullis::cli`].

fn main() -> std::process::ExitCode {
    // The attach helper must start before any runtime, thread or logger
    // exists (it joins namespaces and forks; see `portcullis::attach`).
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(portcullis::attach::HELPER_ARG))
    {
        portcullis::attach::helper_main();
    }
    portcullis::cli::main()
}
