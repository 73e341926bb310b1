//! A child process's peak memory: [`run_measured`] runs a command to its end and returns its
//! peak resident set size, as the memory tests and benchmarks bound it.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};

use crate::python;

/// Forks the command, waits for it with `wait4` and prints its raw wait status and `ru_maxrss`
/// (KiB). A process started straight from the test binary would count the test binary's own
/// resident size at the fork in its `ru_maxrss` (Linux carries the forking process's RSS over
/// `exec` into the high-water mark), and with every test of a crate in one binary that size
/// depends on which other tests are running: the launcher, a small process, forks instead.
const LAUNCHER: &str = r#"
import os, sys
pid = os.fork()
if pid == 0:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        os.execvp(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
print(status, usage.ru_maxrss)
"#;

/// Runs `command` (built with `env_clear`, as the worker commands are) to its end through
/// [`LAUNCHER`]; returns its exit status, its stderr, and its peak resident set size in bytes
/// (`ru_maxrss` from `wait4` on its pid: this process alone, not its children).
pub fn run_measured(command: Command) -> (ExitStatus, String, u64) {
    let mut launcher = Command::new(python::interpreter().expect("the project's Python"));
    launcher
        .arg("-c")
        .arg(LAUNCHER)
        .arg(command.get_program())
        .args(command.get_args())
        .env_clear();
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => launcher.env(key, value),
            None => launcher.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        launcher.current_dir(dir);
    }
    let out = launcher
        .stdin(Stdio::null())
        .output()
        .expect("the launcher runs");
    let report = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let fields: Vec<i64> = report
        .split_whitespace()
        .map(|f| f.parse().expect("the launcher prints numbers"))
        .collect();
    let [status, maxrss_kib] = fields[..] else {
        panic!("the launcher printed {report:?} ({}): {stderr}", out.status);
    };
    let status = i32::try_from(status).expect("a wait status");
    // Linux reports ru_maxrss in KiB.
    let peak = u64::try_from(maxrss_kib).unwrap() * 1024;
    (ExitStatus::from_raw(status), stderr, peak)
}
