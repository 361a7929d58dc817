//! The `gpufleet` command: a thin shell over the library.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // `gpufleet why NODE | head`: a reader that stops early ends the
    // command quietly, as it does `ls` or `kubectl get`, instead of a panic
    // on the first print after the pipe closed. Rust ignores SIGPIPE by
    // default; the operator keeps that.
    #[cfg(unix)]
    if args.prints_for_people() {
        // SAFETY: restores the default disposition of one signal before any
        // thread is started; no handler runs Rust code.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            // An error may quote the cluster (an API server's message).
            eprintln!("gpufleet: {}", gpufleet::view::safe(&format!("{err:#}")));
            ExitCode::FAILURE
        }
    }
}
