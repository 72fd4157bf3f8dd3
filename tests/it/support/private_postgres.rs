//! A private PostgreSQL cluster for tests that need a server configured otherwise than the shared
//! one (TLS only, here). Made with `initdb` in a temp dir, run as the `postgres` user (the server
//! refuses to run as root), stopped and deleted on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::private_broker::TlsFiles;

pub struct PrivatePostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

/// The newest installed server's binaries (`/usr/lib/postgresql/<version>/bin`).
fn server_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (scripts/ensure-postgres)")
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("an initdb under /usr/lib/postgresql")
}

fn as_postgres(bin: &Path, program: &str, args: &[&str]) {
    let output = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join(program))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("runuser runs");
    assert!(
        output.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl PrivatePostgres {
    /// A cluster on a free port that accepts TCP connections over TLS only (`hostssl`; plain TCP
    /// is rejected), with `files` as its certificate and key; trust authentication.
    pub fn start_tls_only(files: &TlsFiles) -> PrivatePostgres {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(crate::support::in_process::unique("weiling-it-pg"));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = server_bin();
        let data = dir.join("data");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let cert = write("server.crt", &files.cert);
        let key = write("server.key", &files.key);
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(chown.success(), "chown {dir:?}");
        // The server refuses a key others can read.
        let chmod = Command::new("chmod").arg("600").arg(&key).status().unwrap();
        assert!(chmod.success());
        let data_arg = data.display().to_string();
        as_postgres(
            &bin,
            "initdb",
            &[
                "-D",
                &data_arg,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nfsync = off\n",
            dir.display(),
            cert.display(),
            key.display()
        );
        let append = |name: &str, text: &str| {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join(name))
                .unwrap();
            file.write_all(text.as_bytes()).unwrap();
        };
        append("postgresql.conf", &conf);
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        let log = dir.join("server.log").display().to_string();
        as_postgres(
            &bin,
            "pg_ctl",
            &["-D", &data_arg, "-l", &log, "-w", "start"],
        );
        PrivatePostgres { dir, bin, port }
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`; TLS parameters are the caller's to add.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
