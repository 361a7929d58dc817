//! Running `nvidia-smi` and `dcgmi`: with a time limit (a wedged GPU can
//! hang nvidia-smi), reading their output as it comes (a whole `-q -x`
//! report is larger than a pipe holds), and keeping at most [`MAX_OUTPUT`]
//! of it.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The most output kept of one command (an 8-GPU `-q -x` is some 350 KB).
pub const MAX_OUTPUT: usize = 16 << 20;

/// How a command ended.
#[derive(Clone, Debug, Default)]
pub struct Ran {
    /// Its exit status; `None` when a signal ended it.
    pub status: Option<i32>,
    /// What it printed, at most [`MAX_OUTPUT`].
    pub stdout: Vec<u8>,
    /// Its errors, at most [`MAX_OUTPUT`], lossily decoded.
    pub stderr: String,
    /// It ran past its time and was killed.
    pub timed_out: bool,
}

/// Runs `program args…` with no input, for at most `timeout`.
pub fn run(program: &Path, args: &[&str], timeout: Duration) -> std::io::Result<Ran> {
    let mut child = Command::new(program)
        .args(args.iter().map(OsStr::new))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() >= timeout {
            timed_out = true;
            // It may have ended just now; either way, wait for it.
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // A child of the command may hold the pipes open: wait a little, then
    // take what came.
    let collect =
        |rx: mpsc::Receiver<Vec<u8>>| rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
    Ok(Ran {
        status: status.code(),
        stdout: collect(stdout),
        stderr: String::from_utf8_lossy(&collect(stderr)).into_owned(),
        timed_out,
    })
}

/// Reads a pipe to its end on a thread of its own, keeping at most
/// [`MAX_OUTPUT`].
fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 64 * 1024];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            let _ = tx.send(kept);
        });
    } else {
        let _ = tx.send(Vec::new());
    }
    rx
}

/// The first `name` on PATH that is a file.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn output_larger_than_a_pipe_comes_whole() {
        let ran = run(
            Path::new("sh"),
            &["-c", "head -c 300000 /dev/zero; echo oops >&2; exit 3"],
            Duration::from_secs(20),
        )
        .unwrap();
        assert_eq!(ran.stdout.len(), 300_000);
        assert_eq!(ran.stderr.trim(), "oops");
        assert_eq!(ran.status, Some(3));
        assert!(!ran.timed_out);
    }

    #[test]
    fn a_hung_command_is_stopped() {
        let ran = run(Path::new("sleep"), &["30"], Duration::from_millis(200)).unwrap();
        assert!(ran.timed_out);
    }
}
