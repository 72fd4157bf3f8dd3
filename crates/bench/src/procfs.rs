//! What the bench reads about processes and the machine: RSS, open descriptors and CPU time from
//! `/proc`, the machine's cores, memory and load, and the broker's version and OS pid.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;

/// One look at a process.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcSample {
    pub rss_kb: u64,
    pub open_fds: u64,
    /// User plus system CPU time since the process started.
    pub cpu_s: f64,
}

/// Reads `/proc/<pid>`; `None` when the process is gone or `/proc` is not there (not Linux).
pub fn sample(pid: u32, ticks_per_s: f64) -> Option<ProcSample> {
    let base = Path::new("/proc").join(pid.to_string());
    let status = std::fs::read_to_string(base.join("status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .unwrap_or_default();
    let open_fds = std::fs::read_dir(base.join("fd"))
        .map(|dir| dir.count() as u64)
        .unwrap_or_default();
    let stat = std::fs::read_to_string(base.join("stat")).ok()?;
    Some(ProcSample {
        rss_kb,
        open_fds,
        cpu_s: cpu_ticks(&stat)? as f64 / ticks_per_s,
    })
}

/// utime + stime of a `/proc/<pid>/stat` line. The command name is in parentheses and may contain
/// spaces, so fields are counted from the last `)`: state is then field 0, utime 11 and stime 12.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The machine's CPU counters (busy, total) in ticks, from the first line of `/proc/stat`; the
/// difference of two readings gives how busy all cores were in between.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already inside user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or_default() + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// `sysconf(_SC_CLK_TCK)` through `getconf`, since the crate has no libc binding; 100 is what Linux
/// uses on every common architecture.
pub fn ticks_per_second() -> f64 {
    run_quiet("getconf", &["CLK_TCK"])
        .and_then(|out| out.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// The machine the figures were taken on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub ram_mb: u64,
    pub kernel: String,
    pub rabbitmq_version: String,
    pub erlang_version: String,
    /// 1-, 5- and 15-minute load averages when the bench started: how busy the shared machine was.
    pub load_average_at_start: String,
    pub build: &'static str,
}

impl Machine {
    /// Reads the machine; the broker facts come from `rabbitmqctl` and are "unknown" without it.
    pub async fn read() -> Machine {
        let broker = tokio::task::spawn_blocking(|| {
            (
                rabbitmqctl(&["version"]),
                rabbitmqctl(&["eval", "erlang:system_info(otp_release)."]),
            )
        });
        let (rabbitmq, erlang) = tokio::time::timeout(Duration::from_secs(60), broker)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or((None, None));
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned()),
            ram_mb: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kb| kb.parse::<u64>().ok())
                .map_or(0, |kb| kb / 1024),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned()),
            rabbitmq_version: rabbitmq.map_or_else(|| "unknown".to_owned(), clean),
            erlang_version: erlang.map_or_else(|| "unknown".to_owned(), clean),
            load_average_at_start: std::fs::read_to_string("/proc/loadavg")
                .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
            build: if cfg!(debug_assertions) {
                "debug (unoptimised: figures are far below a release build)"
            } else {
                "release"
            },
        }
    }
}

/// The broker's OS pid, to read its CPU time; `None` when the broker is not local.
pub async fn broker_pid() -> Option<u32> {
    let pid = tokio::task::spawn_blocking(|| rabbitmqctl(&["eval", "os:getpid()."]));
    tokio::time::timeout(Duration::from_secs(60), pid)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
        .and_then(|out| clean(out).parse().ok())
}

fn clean(out: String) -> String {
    out.trim().trim_matches('"').to_owned()
}

/// `rabbitmqctl -q …`, bounded by `timeout` so a hung node cannot hang the bench.
fn rabbitmqctl(args: &[&str]) -> Option<String> {
    let mut full = vec!["30", "rabbitmqctl", "-q"];
    full.extend_from_slice(args);
    run_quiet("timeout", &full)
}

fn run_quiet(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_count_fields_after_the_command_name() {
        let stat = "4242 (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let own = sample(std::process::id(), ticks_per_second()).unwrap();
        assert!(own.rss_kb > 0);
        assert!(own.open_fds > 0);
        let (busy, total) = machine_ticks().unwrap();
        assert!(total >= busy && total > 0);
    }
}
