//! What the tests that run `mend serve` as a child share: the child itself (killed when
//! dropped, its log printed when a test fails), free ports, a read-only view of the store, and
//! JSON GETs.
#![allow(dead_code, reason = "each test binary uses only part of it")]

use std::fs::File;
use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use serde_json::Value;

/// How long a test waits for the server before it calls it a hang.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// A `mend serve` child, killed when dropped (also when the test panics). Its stderr goes to a
/// log file, whose end is printed if the test fails.
pub struct Mend {
    child: Child,
    log: PathBuf,
}

impl Mend {
    /// `mend serve` on 127.0.0.1:`port` with the store and topologies in `dir`, a 1 s lease,
    /// and `extra` arguments.
    pub fn start(dir: &Path, port: u16, log_name: &str, extra: &[&str]) -> Mend {
        let log = dir.join(log_name);
        let stderr = File::create(&log).expect("create the mend log file");
        let child = Command::new(env!("CARGO_BIN_EXE_mend"))
            .arg("--store")
            .arg(dir.join("mend.db"))
            .arg("--topologies")
            .arg(dir.join("topologies"))
            .args(["serve", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--lease", "1s"])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start mend serve");
        Mend { child, log }
    }

    /// SIGKILL on Unix: no shutdown path runs, as in a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "mend serve exited early with {status}; its log:\n{}",
                tail(&self.log)
            );
        }
    }
}

impl Drop for Mend {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- end of {} ---\n{}", self.log.display(), tail(&self.log));
        }
    }
}

pub fn tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap().port()
}

/// A read-only connection to the store, as a second reader beside a running mend.
pub fn open_store(path: &Path) -> Connection {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open the store read-only");
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

/// GETs `url` and parses the JSON answer; `None` while the server is not answering.
pub fn get_json(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    url: &str,
) -> Option<Value> {
    rt.block_on(async {
        let resp = client.get(url).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        serde_json::from_slice(&resp.bytes().await.ok()?).ok()
    })
}

pub fn wait_healthy(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    base: &str,
    mend: &mut Mend,
) {
    let start = Instant::now();
    loop {
        mend.assert_running();
        if get_json(rt, client, &format!("{base}/health")).is_some() {
            return;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "mend serve did not answer /health within {TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
