//! `mend serve` as a child process: `mend run --server` against it, and a clean stop on
//! SIGTERM that leaves no message claimed.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const SLOW: &str = r#"
name: slow
events:
  run: fan
nodes:
  fan:
    split: { items: .items, chunk: 50 }
    next: shape
  shape:
    map: "{n: .}"
"#;

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(dir: &Path, port: u16) -> Serve {
    let child = Command::new(env!("CARGO_BIN_EXE_mend"))
        .current_dir(dir)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "mend serve did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Serve(child)
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("topologies")).unwrap();
    std::fs::write(dir.path().join("topologies/slow.yaml"), SLOW).unwrap();
    dir
}

#[test]
fn run_against_a_server_waits_and_reports() {
    let dir = setup();
    let port = free_port();
    let _server = serve(dir.path(), port);
    let data = serde_json::json!({"items": (0..120).collect::<Vec<_>>()}).to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_mend"))
        .current_dir(dir.path())
        .args([
            "run",
            "slow",
            "--server",
            &format!("http://127.0.0.1:{port}"),
            "--wait",
            "--json",
            "--data",
            &data,
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["state"], "done");
    assert_eq!(report["nodes"]["shape"]["ok"], 120);
    assert_eq!(
        report["messages"]["total"], 123,
        "1 split input, 2 continuations, 120 items"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_mend"))
        .current_dir(dir.path())
        .args([
            "run",
            "nope",
            "--server",
            &format!("http://127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown topology `nope`"));
}

#[test]
fn sigterm_stops_serve_cleanly_with_nothing_left_claimed() {
    let dir = setup();
    let port = free_port();
    let mut server = serve(dir.path(), port);
    let data = serde_json::json!({"items": (0..3000).collect::<Vec<_>>()}).to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_mend"))
        .current_dir(dir.path())
        .args([
            "run",
            "slow",
            "--server",
            &format!("http://127.0.0.1:{port}"),
            "--data",
            &data,
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(200));
    let term = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = server.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "mend serve did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "a clean stop exits 0");
    let conn = rusqlite::Connection::open(dir.path().join("mend.db")).unwrap();
    let running: i64 = conn
        .query_row(
            "SELECT count(*) FROM messages WHERE state = 'running'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        running, 0,
        "every claim is finished or released on a clean stop"
    );
    let (total, open, done): (i64, i64, i64) = conn
        .query_row("SELECT total, open, done FROM processes", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(total, open + done);
    eprintln!("stopped with {done} of {total} messages done");
    let live: i64 = conn
        .query_row(
            "SELECT count(*) FROM messages WHERE state IN ('queued', 'retry')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        live, open,
        "the open counter matches the messages left to do"
    );
}
