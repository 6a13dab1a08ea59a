//! Real PostgreSQL servers for the cluster tests: a primary and synchronous
//! standbys (`pg_basebackup -R`), each a `postgres` process on an ephemeral
//! loopback port with its data in a temporary directory, stopped by PID.
//!
//! `initdb` refuses to run as root and CI runs as root, so as root every
//! PostgreSQL program runs under the `postgres` account (Debian's package
//! makes it; `nobody` otherwise), with the data directories handed to it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's PostgreSQL 15 binaries (`BREAKWATER_PG_BIN` for another).
fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("BREAKWATER_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: install Debian's postgresql (scripts/test does)",
        path.display()
    );
    path
}

/// (uid, gid) to run PostgreSQL as: ourselves unless we are root.
fn run_as() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    for wanted in ["postgres", "nobody"] {
        for line in passwd.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() > 3 && fields[0] == wanted {
                return Some((fields[2].parse().unwrap(), fields[3].parse().unwrap()));
            }
        }
    }
    panic!("no postgres or nobody account to run PostgreSQL as");
}

fn command(name: &str) -> Command {
    let mut command = Command::new(bin(name));
    if let Some((uid, gid)) = run_as() {
        command.uid(uid).gid(gid);
    }
    command
        .current_dir("/")
        .env_remove("PGDATA")
        .env("LC_ALL", "C");
    command
}

fn hand_over(path: &Path) {
    if let Some((uid, gid)) = run_as() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn checked(output: std::io::Result<std::process::Output>, what: &str) {
    let output = output.unwrap_or_else(|err| panic!("{what}: {err}"));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One PostgreSQL server.
pub struct Postgres {
    _dir: tempfile::TempDir,
    pub data: PathBuf,
    pub port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Postgres {
    fn empty_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix("bw-pg-")
            .tempdir()
            .expect("tempdir");
        hand_over(dir.path());
        let data = dir.path().join("data");
        (dir, data)
    }

    /// A new primary that waits for one synchronous standby at every
    /// commit (`ANY 1 (*)`): start a standby before the first write.
    pub fn primary() -> Postgres {
        let (dir, data) = Postgres::empty_dir();
        checked(
            command("initdb")
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "breakwater",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-locale",
                ])
                .output(),
            "initdb",
        );
        let port = free_port();
        let socket_dir = dir.path().to_path_buf();
        append(
            &data.join("postgresql.conf"),
            &format!(
                "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
                 wal_level = replica\nmax_wal_senders = 8\nwal_keep_size = '64MB'\n\
                 synchronous_commit = on\nsynchronous_standby_names = 'ANY 1 (*)'\n\
                 shared_buffers = '32MB'\nmax_connections = 60\nfsync = on\n",
                socket_dir.display()
            ),
        );
        Postgres::started(dir, data, port)
    }

    /// A synchronous standby of `primary`, started and streaming.
    pub fn standby_of(primary: &Postgres) -> Postgres {
        let (dir, data) = Postgres::empty_dir();
        checked(
            command("pg_basebackup")
                .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
                .args([
                    "-U",
                    "breakwater",
                    "-X",
                    "stream",
                    "-R",
                    "--checkpoint=fast",
                    "-D",
                ])
                .arg(&data)
                .output(),
            "pg_basebackup",
        );
        let port = free_port();
        append(
            &data.join("postgresql.conf"),
            &format!(
                "port = {port}\nunix_socket_directories = '{}'\nhot_standby = on\n",
                dir.path().display()
            ),
        );
        Postgres::started(dir, data, port)
    }

    /// The server of a prepared data directory, started.
    fn started(dir: tempfile::TempDir, data: PathBuf, port: u16) -> Postgres {
        let mut server = Postgres {
            log: dir.path().join("postgres.log"),
            _dir: dir,
            data,
            port,
            child: None,
        };
        server.start();
        server
    }

    /// Start (again) and wait until it takes connections.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        hand_over(&self.log);
        let child = command("postgres")
            .arg("-D")
            .arg(&self.data)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let started = Instant::now();
        while block_on(self.connect()).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("postgres exited ({status}): {}", self.log_text());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "postgres not ready in 60 s: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGINT (a fast shutdown), by PID, and wait for the exit.
    pub fn stop(&mut self) {
        self.signal_and_wait(libc::SIGINT);
    }

    /// SIGKILL, by PID: a crash of the database machine's postmaster.
    pub fn kill9(&mut self) {
        self.signal_and_wait(libc::SIGKILL);
        // Its backends notice the postmaster is gone and exit on their own;
        // give them a moment so the port is free for nobody else's use.
        std::thread::sleep(Duration::from_millis(300));
    }

    fn signal_and_wait(&mut self, signal: i32) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on the PID of the child we started.
        unsafe {
            libc::kill(child.id() as i32, signal);
        }
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `postgresql://breakwater@127.0.0.1:PORT/postgres`
    pub fn url(&self) -> String {
        format!("postgresql://breakwater@127.0.0.1:{}/postgres", self.port)
    }

    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=breakwater dbname=postgres connect_timeout=2",
                self.port
            ),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Rows of a query, each column as text (NULL as "").
    pub fn query(&self, sql: &str) -> Vec<Vec<String>> {
        block_on(async {
            let client = self.connect().await.expect("connect");
            let messages = client.simple_query(sql).await.expect(sql);
            messages
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                        (0..row.len())
                            .map(|i| row.get(i).unwrap_or("").to_string())
                            .collect(),
                    ),
                    _ => None,
                })
                .collect()
        })
    }

    /// `(queue_id, body)` of every message row, for byte comparisons.
    pub fn bodies(&self, filter: &str) -> Vec<(String, Vec<u8>)> {
        block_on(async {
            let client = self.connect().await.expect("connect");
            let sql = format!(
                "SELECT queue_id, body FROM breakwater_messages {filter} ORDER BY queue_id"
            );
            client
                .query(&sql, &[])
                .await
                .expect("bodies")
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect()
        })
    }

    /// Wait until `count` standbys stream synchronously (or as quorum).
    pub fn wait_for_sync_standbys(&self, count: usize) {
        let started = Instant::now();
        loop {
            let rows = self.query(
                "SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming' AND sync_state IN ('sync', 'quorum')",
            );
            if rows.len() >= count {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no synchronous standby after 60 s: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Make a standby the primary (`pg_promote()`), with no synchronous
    /// standby of its own: what Patroni does when one member is left.
    pub fn promote_alone(&self) {
        self.query("SELECT pg_promote(true, 30)");
        self.query("ALTER SYSTEM SET synchronous_standby_names = ''");
        self.query("SELECT pg_reload_conf()");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.signal_and_wait(libc::SIGQUIT);
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open conf");
    file.write_all(text.as_bytes()).expect("append conf");
}

/// Run a future on a small runtime of its own (the tests' servers run on
/// theirs).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}
