//! The `gpufleet` command: a thin shell over the library.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    // One malloc arena for the whole process, set before any thread starts.
    // glibc gives each thread that meets a locked arena one of its own (up
    // to eight a core), and memory freed in an arena serves only the
    // threads using that arena, so each kept its own high-water mark. One
    // arena: 14 % less peak memory at 30,006 nodes, about 13 % more CPU at
    // 1,000 (BENCHMARKS.md, "Memory a node"). Small allocations still go
    // through each thread's cache without a lock.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: a plain setting of the C allocator, made before any thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
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
