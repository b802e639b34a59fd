//! `portcullis-helper`: the attach helper alone (see
//! `portcullis::attach::HelperBinary::sealed_copy_of_helper`).
//!
//! The gateway and `portcullis attach` exec the helper from a sealed memfd
//! copy (CVE-2019-5736). This binary holds only the helper's code (about 4 MB
//! instead of the whole gateway), so the copy made for every
//! `portcullis attach` run is small and its exec is quick. It is never run by
//! hand: without the helper's argv and inherited fds it exits with status 2.

fn main() -> std::process::ExitCode {
    // As in the gateway binary: before any runtime, thread or logger exists.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(portcullis::attach::HELPER_ARG))
    {
        portcullis::attach::helper_main();
    }
    eprintln!("portcullis-helper is started by portcullis only");
    std::process::ExitCode::from(2)
}
