//! The AWS emulator (moto server) on a free 127.0.0.1 port.
//!
//! Each [`Emulator`] is its own server process with its own state, so tests are isolated
//! from each other without coordination; the process is killed on drop (and, via
//! `PR_SET_PDEATHSIG`, when the thread that started it dies).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use aws_config::{BehaviorVersion, Region, SdkConfig};

/// The region every local resource lives in.
pub const REGION: &str = "us-east-1";
/// Static credentials the emulator accepts (not secrets: the emulator checks nothing).
const ACCESS_KEY: &str = "testing";
const SECRET_KEY: &str = "testing";

/// A running emulator.
pub struct Emulator {
    child: Child,
    port: u16,
    die_with_parent: bool,
}

impl Emulator {
    /// Starts moto on a free port, waits until it answers, and turns off Batch's Docker
    /// runner (every submitted job then reads SUCCEEDED; nothing runs the worker).
    pub fn start() -> anyhow::Result<Self> {
        Self::spawn(true)
    }

    /// Like [`Emulator::start`], but the server outlives this process if the caller
    /// `std::mem::forget`s it (the local run's `--keep`).
    pub fn start_kept() -> anyhow::Result<Self> {
        Self::spawn(false)
    }

    fn spawn(die_with_parent: bool) -> anyhow::Result<Self> {
        Self::spawn_on(free_port()?, die_with_parent)
    }

    fn spawn_on(port: u16, die_with_parent: bool) -> anyhow::Result<Self> {
        let python = crate::python::interpreter()?;
        let mut command = Command::new(&python);
        command
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; it only sets a flag on the child.
        if die_with_parent {
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting the AWS emulator with {}", python.display()))?;
        let mut emulator = Self {
            child,
            port,
            die_with_parent,
        };
        emulator.wait_ready(Duration::from_secs(30))?;
        emulator.post("/moto-api/config", r#"{"batch": {"use_docker": false}}"#)?;
        Ok(emulator)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SDK configuration for this emulator (static test credentials, region `us-east-1`).
    pub async fn sdk_config(&self) -> SdkConfig {
        sdk_config_for(&self.endpoint()).await
    }

    /// The environment a child process (worker, submitter, AWS CLI) needs to reach it.
    pub fn env(&self) -> Vec<(String, String)> {
        env_for(&self.endpoint())
    }

    /// Forgets all state (buckets, tables, jobs).
    pub fn reset(&self) -> anyhow::Result<()> {
        self.post("/moto-api/reset", "")?;
        self.post("/moto-api/config", r#"{"batch": {"use_docker": false}}"#)
    }

    /// Stops the server now (the same happens on drop).
    pub fn stop(mut self) {
        self.kill();
    }

    /// Kills the server (SIGKILL) and keeps its port: clients now get connection refused,
    /// as in an outage, until [`Emulator::restart`].
    pub fn crash(&mut self) {
        self.kill();
    }

    /// Starts a fresh server on the same port (after [`Emulator::crash`], or killing the running
    /// one first). Clients keep their endpoint; the state is gone (moto keeps it in memory).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let fresh = Self::spawn_on(self.port, self.die_with_parent)?;
        // The old value's drop reaps an already reaped child: a no-op.
        *self = fresh;
        Ok(())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(200) = http(self.port, "GET", "/moto-api/", "") {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the AWS emulator exited during start-up ({status}); is moto installed? run `scripts/setup`");
            }
            if start.elapsed() > limit {
                bail!(
                    "the AWS emulator did not answer on 127.0.0.1:{} within {limit:?}",
                    self.port
                );
            }
            // Polling a condition with a deadline, not sleeping as synchronisation.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn post(&self, path: &str, body: &str) -> anyhow::Result<()> {
        match http(self.port, "POST", path, body)? {
            200 | 201 => Ok(()),
            status => bail!("emulator POST {path} answered {status}"),
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// SDK configuration for an emulator at `endpoint`.
pub async fn sdk_config_for(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(REGION))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            ACCESS_KEY,
            SECRET_KEY,
            None,
            None,
            "embatch-localaws",
        ))
        .load()
        .await
}

/// The environment that points a child process at an emulator at `endpoint`.
pub fn env_for(endpoint: &str) -> Vec<(String, String)> {
    [
        (embatch_aws::client::ENDPOINT_URL_ENV, endpoint),
        (embatch_aws::client::REGION_ENV, REGION),
        ("AWS_DEFAULT_REGION", REGION),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        // Keep child processes away from any real profile or instance metadata.
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A name no other test uses: `<prefix>-<random>` in lower case (valid for buckets and tables).
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A minimal HTTP/1.1 request to 127.0.0.1 returning the status code (the emulator's
/// control API is all we talk to this way).
fn http(port: u16, method: &str, path: &str, body: &str) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP response from the emulator")?;
    Ok(status)
}
