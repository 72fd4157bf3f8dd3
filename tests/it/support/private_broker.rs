//! A private RabbitMQ node for tests that stop or disturb the broker.
//!
//! Each [`PrivateBroker`] is a separate Erlang node (own name, ports, data dir and cookie) so
//! such tests never affect the shared node on 127.0.0.1:5672 or each other.

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const RABBITMQCTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

/// How long a node may take to boot (or the app to start) before the test fails.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for one ordinary `rabbitmqctl` command, so a wedged node fails the test instead
/// of hanging it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound for `rabbitmqctl stop` in `Drop`, after which the node is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Boot attempts; a retry (with new ports) covers a port being taken between probe and bind.
const BOOT_ATTEMPTS: u32 = 3;

/// The distribution ports rabbitmqctl itself listens on (`RABBITMQ_CTL_DIST_PORT_MIN..=MAX`
/// defaults); a node given one of these can collide with a concurrent CLI call.
const CLI_DIST_PORTS: std::ops::RangeInclusive<u16> = 35672..=35682;

/// Distinguishes nodes started by this process.
static NODE_COUNTER: AtomicU32 = AtomicU32::new(0);
/// Ports already handed to a node by this process, so concurrent tests never share one.
static PORTS_IN_USE: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A running private RabbitMQ node; dropping it stops the node and deletes its data.
pub struct PrivateBroker {
    node: String,
    amqp_port: u16,
    dist_port: u16,
    dir: PathBuf,
    /// Environment for `rabbitmq-server` and `rabbitmqctl`: the same `HOME` (Erlang cookie)
    /// and node settings for both.
    env: Vec<(&'static str, OsString)>,
    /// An amqps listener: its port and the PEM files it serves.
    tls: Option<(u16, TlsFiles)>,
    /// The `enabled_plugins` file's term.
    plugins: &'static str,
    /// The Erlang cookie nodes of one cluster share; `None` lets the node make its own.
    cookie: Option<String>,
}

/// PEM texts of an amqps listener: the CA, the server certificate and its key.
#[derive(Clone)]
pub struct TlsFiles {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl PrivateBroker {
    /// Boots a fresh node in a fresh temp dir on free ports and waits until it accepts AMQP
    /// connections. Panics with the reason (and the node's log tail) on failure.
    pub async fn start() -> PrivateBroker {
        Self::start_with(None).await
    }

    /// The same with an amqps listener on a port of its own besides the plain one.
    pub async fn start_with_tls(tls: TlsFiles) -> PrivateBroker {
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<TlsFiles>) -> PrivateBroker {
        let mut failures = Vec::new();
        for _ in 0..BOOT_ATTEMPTS {
            let mut broker = PrivateBroker::prepare();
            if let Some(files) = &tls {
                let [port, _] = reserve_free_ports();
                broker.tls = Some((port, files.clone()));
            }
            match broker.boot().await {
                Ok(()) => return broker,
                // Dropping `broker` stops whatever part of the node came up.
                Err(err) => failures.push(format!("{}: {err}", broker.node)),
            }
        }
        panic!(
            "private RabbitMQ node failed to start after {BOOT_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f` (guest may log in over loopback).
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// The AMQP port.
    /// `amqps://guest:guest@127.0.0.1:PORT/%2f` of the TLS listener (started with TLS only).
    pub fn amqps_url(&self) -> String {
        let (port, _) = self.tls.as_ref().expect("a node started with TLS");
        format!("amqps://guest:guest@127.0.0.1:{port}/%2f")
    }

    pub fn port(&self) -> u16 {
        self.amqp_port
    }

    /// The Erlang node name (`name@localhost`).
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// Stops the RabbitMQ application (the Erlang node stays up); AMQP connections fail.
    pub async fn stop_app(&self) {
        self.rabbitmqctl(&["stop_app"]).await;
    }

    /// Starts the RabbitMQ application again and waits until it is running.
    pub async fn start_app(&self) {
        self.rabbitmqctl(&["start_app"]).await;
        self.rabbitmqctl(&["await_startup", "--timeout", &timeout_arg(STARTUP_TIMEOUT)])
            .await;
    }

    /// Runs `rabbitmqctl -n NODE ARGS...` and returns its stdout; panics on failure.
    pub async fn rabbitmqctl(&self, args: &[&str]) -> String {
        let command = self.ctl_command(args);
        let description = format!("rabbitmqctl -n {} {}", self.node, args.join(" "));
        match run_blocking(command, COMMAND_TIMEOUT).await {
            Ok(stdout) => stdout,
            Err(err) => panic!("{description} failed: {err}"),
        }
    }

    /// Raises (`on`) or clears the memory alarm, which blocks publishers, and waits until
    /// the node reports the new alarm state.
    pub async fn set_memory_alarm(&self, on: bool) {
        // A watermark of ~0 bytes trips the alarm at once; 0.4 is RabbitMQ's default.
        let watermark = if on { "0.000000001" } else { "0.4" };
        self.rabbitmqctl(&["set_vm_memory_high_watermark", watermark])
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.memory_alarm_active().await != on {
            assert!(
                Instant::now() < deadline,
                "memory alarm on {} did not become {on} within 10 s",
                self.node
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the node currently has a memory alarm raised.
    pub async fn memory_alarm_active(&self) -> bool {
        let alarms = self
            .rabbitmqctl(&["eval", "rabbit_alarm:get_alarms()."])
            .await;
        alarms.contains("resource_limit,memory")
    }

    /// The OS pid of the node's `beam.smp`, from the pid file the server writes.
    pub fn os_pid(&self) -> u32 {
        match read_pid_file(&self.pid_file()) {
            Some(pid) => pid,
            None => panic!("no pid file for {} at {:?}", self.node, self.pid_file()),
        }
    }

    /// Picks a node name, ports and directory; nothing is started yet.
    fn prepare() -> PrivateBroker {
        let serial = NODE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let process = std::process::id();
        let node = format!("weiling_it_{process}_{serial}@localhost");
        let dir = std::env::temp_dir().join(format!("weiling-it-broker-{process}-{serial}"));
        let [amqp_port, dist_port] = reserve_free_ports();
        let env = vec![
            ("RABBITMQ_NODENAME", node.clone().into()),
            ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT", amqp_port.to_string().into()),
            ("RABBITMQ_DIST_PORT", dist_port.to_string().into()),
            ("RABBITMQ_MNESIA_BASE", dir.join("mnesia").into()),
            ("RABBITMQ_LOG_BASE", dir.join("log").into()),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                dir.join("enabled_plugins").into(),
            ),
            ("RABBITMQ_PID_FILE", dir.join("pid").into()),
            // A missing config file means defaults; without this the node would read the
            // shared node's /etc/rabbitmq/rabbitmq.conf and try to listen on 5672.
            ("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq").into()),
            // The Erlang cookie lives in $HOME; server and CLI must see the same one.
            ("HOME", dir.clone().into()),
        ];
        PrivateBroker {
            node,
            amqp_port,
            dist_port,
            dir,
            env,
            tls: None,
            plugins: "[].",
            cookie: None,
        }
    }

    /// Creates the node's files, starts it detached and waits for the app to run.
    async fn boot(&self) -> Result<(), String> {
        // A leftover dir would hold another node's pid file or data (pid reuse).
        let _ = std::fs::remove_dir_all(&self.dir);
        for sub in ["mnesia", "log"] {
            let path = self.dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|err| format!("create {path:?}: {err}"))?;
        }
        let plugins = self.dir.join("enabled_plugins");
        std::fs::write(&plugins, format!("{}\n", self.plugins))
            .map_err(|err| format!("write {plugins:?}: {err}"))?;
        if let Some(cookie) = &self.cookie {
            use std::os::unix::fs::PermissionsExt;
            let path = self.dir.join(".erlang.cookie");
            std::fs::write(&path, cookie).map_err(|err| format!("write {path:?}: {err}"))?;
            // Erlang refuses a cookie file others can read.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400))
                .map_err(|err| format!("chmod {path:?}: {err}"))?;
        }
        if let Some((port, files)) = &self.tls {
            self.write_tls_config(*port, files)?;
        }
        self.launch().await
    }

    /// `kill -9` of the node's beam process (by the pid its pid file holds), like a machine
    /// losing power; waits until the process is gone. Data on disk stays for [`Self::restart`].
    pub async fn kill_9(&self) {
        let pid = self.os_pid();
        let status = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stdin(Stdio::null())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -KILL {pid}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_alive(pid) {
            assert!(Instant::now() < deadline, "beam pid {pid} survived kill -9");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = std::fs::remove_file(self.pid_file());
    }

    /// Starts the node again on its old data (after [`Self::kill_9`]), as `rabbitmq-server
    /// -detached` would; durable queues and persistent messages come back.
    pub async fn restart(&self) {
        if let Err(err) = self.launch().await {
            panic!("private broker {} did not restart: {err}", self.node);
        }
    }

    /// Closes every client connection from the server side, as an operator would.
    pub async fn close_all_connections(&self) {
        self.rabbitmqctl(&["close_all_connections", "fault injection"])
            .await;
    }

    /// Raises (`on`: a free-disk limit far above any disk) or clears the disk alarm, and waits
    /// until the node reports it.
    pub async fn set_disk_alarm(&self, on: bool) {
        let limit = if on { "1000000GB" } else { "50MB" };
        self.rabbitmqctl(&["set_disk_free_limit", limit]).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let alarms = self
                .rabbitmqctl(&["eval", "rabbit_alarm:get_alarms()."])
                .await;
            if alarms.contains("resource_limit,disk") == on {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "disk alarm on {} did not become {on} within 30 s",
                self.node
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts `rabbitmq-server -detached` on the prepared directory and waits for the app.
    /// The node reads `rabbitmq.conf` from `RABBITMQ_CONFIG_FILE` (its dir, `.conf` added).
    fn write_tls_config(&self, port: u16, files: &TlsFiles) -> Result<(), String> {
        let write = |name: &str, text: &str| {
            let path = self.dir.join(name);
            std::fs::write(&path, text).map_err(|err| format!("write {path:?}: {err}"))?;
            Ok::<_, String>(path)
        };
        let ca = write("ca.pem", &files.ca)?;
        let cert = write("server.pem", &files.cert)?;
        let key = write("server.key", &files.key)?;
        let conf = format!(
            "listeners.ssl.default = 127.0.0.1:{port}\nssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\nssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
            ca.display(),
            cert.display(),
            key.display()
        );
        write("rabbitmq.conf", &conf).map(|_| ())
    }

    async fn launch(&self) -> Result<(), String> {
        // The detached node inherits stdout/stderr; files instead of pipes keep it from
        // holding the test's pipes open (which would make cargo test hang).
        let server_log = self.dir.join("server.out");
        let stdout = std::fs::File::create(&server_log)
            .map_err(|err| format!("create {server_log:?}: {err}"))?;
        let stderr = stdout
            .try_clone()
            .map_err(|err| format!("clone {server_log:?}: {err}"))?;
        let mut server = Command::new(RABBITMQ_SERVER);
        server
            .arg("-detached")
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let status = tokio::task::spawn_blocking(move || server.status())
            .await
            .map_err(|err| format!("rabbitmq-server task: {err}"))?
            .map_err(|err| format!("spawn {RABBITMQ_SERVER}: {err}"))?;
        if !status.success() {
            return Err(format!(
                "rabbitmq-server -detached exited with {status}; {}",
                self.log_tail()
            ));
        }

        // `wait PIDFILE` waits for the pid file, then for the app, and gives up early if the
        // OS process dies (e.g. a port clash), unlike `await_startup` which fails at once
        // while the node is not yet registered.
        let pid_file = self.pid_file().into_os_string();
        let mut wait = self.ctl_command(&["wait", "--timeout", &timeout_arg(STARTUP_TIMEOUT)]);
        wait.arg(pid_file);
        run_blocking(wait, STARTUP_TIMEOUT + Duration::from_secs(10))
            .await
            .map(drop)
            .map_err(|err| format!("{err}; {}", self.log_tail()))
    }

    fn ctl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(RABBITMQCTL);
        command
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .envs(self.env.iter().map(|(key, value)| (key, value)));
        command
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    /// The end of the node's main log, for boot failure messages.
    fn log_tail(&self) -> String {
        let log = self.dir.join("log").join(format!("{}.log", self.node));
        match std::fs::read_to_string(&log) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines
                    .get(lines.len().saturating_sub(30)..)
                    .unwrap_or_default();
                format!("last lines of {log:?}:\n{}", tail.join("\n"))
            }
            Err(err) => format!("no node log at {log:?} ({err})"),
        }
    }
}

/// Three (or more) private nodes joined into one RabbitMQ cluster with `join_cluster`, each with the
/// consistent-hash exchange plugin; dropping it stops every node.
pub struct PrivateCluster {
    pub nodes: Vec<PrivateBroker>,
}

impl PrivateCluster {
    pub async fn start(size: usize) -> PrivateCluster {
        let cookie = format!(
            "WEILINGIT{}{}",
            std::process::id(),
            NODE_COUNTER.load(Ordering::Relaxed)
        );
        let mut nodes: Vec<PrivateBroker> = Vec::new();
        for _ in 0..size {
            let mut failures = Vec::new();
            let mut booted = None;
            for _ in 0..BOOT_ATTEMPTS {
                let mut node = PrivateBroker::prepare();
                node.plugins = "[rabbitmq_consistent_hash_exchange].";
                node.cookie = Some(cookie.clone());
                match node.boot().await {
                    Ok(()) => {
                        booted = Some(node);
                        break;
                    }
                    Err(err) => failures.push(format!("{}: {err}", node.node)),
                }
            }
            let Some(node) = booted else {
                panic!("cluster node failed to start:\n{}", failures.join("\n"));
            };
            if let Some(first) = nodes.first() {
                node.rabbitmqctl(&["stop_app"]).await;
                node.rabbitmqctl(&["join_cluster", first.node_name()]).await;
                node.start_app().await;
            }
            nodes.push(node);
        }
        let cluster = PrivateCluster { nodes };
        let status = cluster.nodes[0].rabbitmqctl(&["cluster_status"]).await;
        for node in &cluster.nodes {
            assert!(
                status.contains(node.node_name()),
                "{} not in the cluster: {status}",
                node.node_name()
            );
        }
        cluster
    }

    /// Every node's AMQP URL, comma-separated, as `amqp.url` takes a cluster.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(PrivateBroker::amqp_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Asks the first node in `alive` for the leader of every quorum queue whose name starts with
    /// `prefix`: the node name per queue.
    pub async fn leaders(&self, alive: usize, prefix: &str) -> Vec<(String, String)> {
        let out = self.nodes[alive]
            .rabbitmqctl(&[
                "-q",
                "--no-table-headers",
                "list_queues",
                "name",
                "type",
                "leader",
            ])
            .await;
        out.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split('\t').collect();
                match fields.as_slice() {
                    [name, "quorum", leader, ..] if name.starts_with(prefix) => {
                        Some(((*name).to_owned(), (*leader).to_owned()))
                    }
                    _ => None,
                }
            })
            .collect()
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // Read the pid first: the node deletes its pid file when it stops.
        let beam_pid = read_pid_file(&self.pid_file());
        if let Err(err) = run_with_deadline(self.ctl_command(&["stop"]), STOP_TIMEOUT) {
            eprintln!(
                "private broker {}: rabbitmqctl stop failed: {err}",
                self.node
            );
        }
        if let Some(pid) = beam_pid {
            // `stop` returns before the OS process has fully exited.
            let deadline = Instant::now() + Duration::from_secs(10);
            while is_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if is_alive(pid) {
                eprintln!("private broker {}: killing beam pid {pid}", self.node);
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stdin(Stdio::null())
                    .status();
            }
        }
        if let Err(err) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("private broker {}: remove {:?}: {err}", self.node, self.dir);
        }
        if let Ok(mut ports) = PORTS_IN_USE.lock() {
            ports.retain(|port| *port != self.amqp_port && *port != self.dist_port);
        }
    }
}

/// Two distinct free loopback ports, found by binding port 0 and releasing, skipping ports
/// rabbitmqctl uses and ports already given to another node of this process.
fn reserve_free_ports() -> [u16; 2] {
    let mut in_use = PORTS_IN_USE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // Keep every probe socket bound until both ports are picked so the OS hands out distinct
    // ports.
    let mut probes = Vec::new();
    let mut next_port = || loop {
        let probe = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|err| panic!("bind 127.0.0.1:0 to find a free port: {err}"));
        let port = probe
            .local_addr()
            .unwrap_or_else(|err| panic!("local_addr of a port probe: {err}"))
            .port();
        probes.push(probe);
        if !CLI_DIST_PORTS.contains(&port) && !in_use.contains(&port) {
            in_use.push(port);
            return port;
        }
    };
    [next_port(), next_port()]
}

fn read_pid_file(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` is a live process. A zombie counts as dead: it can no longer run, and the
/// node's parent may never reap it.
fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn timeout_arg(timeout: Duration) -> String {
    timeout.as_secs().to_string()
}

/// [`run_with_deadline`] on the blocking pool, so the async runtime keeps running.
async fn run_blocking(command: Command, limit: Duration) -> Result<String, String> {
    tokio::task::spawn_blocking(move || run_with_deadline(command, limit))
        .await
        .map_err(|err| format!("command task: {err}"))?
}

/// Runs `command` to completion and returns its stdout; an error carries the exit status and
/// output. A command still running after `limit` is killed.
fn run_with_deadline(mut command: Command, limit: Duration) -> Result<String, String> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("spawn: {err}"))?;
    let pid = child.id();
    // Collect output on a thread so the pipes are drained while we wait with a deadline.
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    let output: Output = match done_rx.recv_timeout(limit) {
        Ok(result) => result.map_err(|err| format!("wait: {err}"))?,
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stdin(Stdio::null())
                .status();
            return Err(format!("timed out after {limit:?} (killed pid {pid})"));
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "exited with {}\nstdout:\n{stdout}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

#[cfg(test)]
mod tests {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    use super::*;

    async fn connect(broker: &PrivateBroker) -> lapin::Result<Connection> {
        Connection::connect(&broker.amqp_url(), ConnectionProperties::default()).await
    }

    /// Declares a queue and publishes one message with publisher confirms.
    async fn publish_confirmed(connection: &Connection) {
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let queue = channel
            .queue_declare(
                "private-broker-smoke".into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.name().as_str().into(),
                BasicPublishOptions::default(),
                b"hello",
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "publish was not acked: {confirm:?}");
    }

    #[tokio::test]
    async fn private_broker_lifecycle() {
        let started = Instant::now();
        let broker = PrivateBroker::start().await;
        eprintln!("private broker booted in {:?}", started.elapsed());
        assert_ne!(
            broker.port(),
            5672,
            "must never reuse the shared node's port"
        );
        assert!(
            broker
                .amqp_url()
                .ends_with(&format!(":{}/%2f", broker.port()))
        );
        let beam_pid = broker.os_pid();
        assert!(is_alive(beam_pid));

        let connection = connect(&broker).await.unwrap();
        publish_confirmed(&connection).await;

        broker.set_memory_alarm(true).await;
        assert!(broker.memory_alarm_active().await);
        broker.set_memory_alarm(false).await;

        broker.stop_app().await;
        assert!(
            connect(&broker).await.is_err(),
            "connect must fail while the app is stopped"
        );

        broker.start_app().await;
        let connection = connect(&broker).await.unwrap();
        publish_confirmed(&connection).await;
        let _ = connection.close(200, "done".into()).await;

        let dir = broker.dir.clone();
        drop(broker);
        assert!(!is_alive(beam_pid), "beam pid {beam_pid} survived Drop");
        assert!(!dir.exists(), "{dir:?} survived Drop");
    }
}
