//! The servers under test run as child processes of this same binary (`serve`, or the bare ceiling
//! handler), so their RSS, descriptors and CPU time are theirs alone, not the generator's.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::BenchError;
use super::procfs::{self, ProcSample};

/// How long a child may take to become ready, and to drain after SIGTERM.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Server {
    name: String,
    child: Child,
    base_url: String,
    ticks_per_s: f64,
}

impl Server {
    /// Starts `weiling-relay serve` with `env` (and nothing else from this process's environment).
    pub fn relay(
        name: &str,
        env: &HashMap<String, String>,
        ticks_per_s: f64,
    ) -> Result<Server, BenchError> {
        Self::spawn(name, &["serve"], env, ticks_per_s)
    }

    /// Starts the bare ceiling handler (`bench --ceiling-server ADDR`) with the relay's settings.
    pub fn ceiling(
        name: &str,
        env: &HashMap<String, String>,
        ticks_per_s: f64,
    ) -> Result<Server, BenchError> {
        let listen = listen_of(env);
        Self::spawn(
            name,
            &["bench", "--ceiling-server", &listen],
            env,
            ticks_per_s,
        )
    }

    fn spawn(
        name: &str,
        args: &[&str],
        env: &HashMap<String, String>,
        ticks_per_s: f64,
    ) -> Result<Server, BenchError> {
        let listen = listen_of(env);
        let child = Command::new(own_binary()?)
            .args(args)
            .env_clear()
            .envs(env)
            // Overload answers (429/503) are expected here and would flood the terminal at warn.
            .env("RUST_LOG", "error,lapin=off,amq_protocol=off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        Ok(Server {
            name: name.to_owned(),
            child,
            base_url: format!("http://{listen}"),
            ticks_per_s,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `host:port`, as the relay tags its User-Agent with it.
    pub fn listen(&self) -> &str {
        self.base_url.trim_start_matches("http://")
    }

    pub fn metrics_url(&self) -> String {
        format!("{}/metrics", self.base_url)
    }

    pub fn callback_url(&self) -> String {
        format!("{}/weiling/callback", self.base_url)
    }

    pub fn sample(&self) -> Option<ProcSample> {
        procfs::sample(self.pid(), self.ticks_per_s)
    }

    /// Waits until `/readyz` answers 200 (the broker link is up), or fails if the child exits.
    pub async fn wait_ready(&mut self) -> Result<(), BenchError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let started = Instant::now();
        while started.elapsed() < READY_TIMEOUT {
            if let Some(status) = self.child.try_wait()? {
                return Err(BenchError::Child(format!(
                    "{} exited before it was ready ({status})",
                    self.name
                )));
            }
            if let Ok(response) = http.get(format!("{}/readyz", self.base_url)).send().await
                && response.status().is_success()
            {
                // The pid lets an operator attach a profiler (`perf record -g -p PID`) mid-run.
                println!(
                    "      {} ready at {} (pid {})",
                    self.name,
                    self.base_url,
                    self.pid()
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(BenchError::Child(format!(
            "{} not ready within {} s",
            self.name,
            READY_TIMEOUT.as_secs()
        )))
    }

    /// SIGTERM (the graceful drain), then SIGKILL if it has not exited in time.
    pub async fn stop(mut self) {
        let pid = self.pid().to_string();
        let terminated = tokio::task::spawn_blocking(move || {
            Command::new("kill")
                .args(["-TERM", &pid])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        })
        .await;
        if matches!(terminated, Ok(Ok(status)) if status.success()) {
            let started = Instant::now();
            while started.elapsed() < STOP_TIMEOUT {
                if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    /// A bench that ends early (an error) must not leave servers behind; after `stop` this is a no-op.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The binary this process runs. On Linux `/proc/self/exe` names the running file even after a
/// rebuild replaced it on disk (the target directory is shared), so every child of one run is the
/// same build as the bench; elsewhere the path it was started from.
fn own_binary() -> Result<PathBuf, BenchError> {
    let proc_exe = PathBuf::from("/proc/self/exe");
    if proc_exe.exists() {
        return Ok(proc_exe);
    }
    Ok(std::env::current_exe()?)
}

/// A free loopback address for a child to listen on (bound and released: a small race, fine here).
pub fn free_address() -> Result<String, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// The address a child server listens on, from the environment it is started with.
fn listen_of(env: &HashMap<String, String>) -> String {
    env.get("WEILING_RELAY__SERVER__LISTEN")
        .cloned()
        .unwrap_or_default()
}
