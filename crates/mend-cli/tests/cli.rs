//! The `mend` binary: exit codes, bad input, and `run --wait --json` reports that add up.

use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;

const ECHO: &str = r#"
name: echo
events:
  run: fan
nodes:
  fan:
    split: { items: .items }
    next: shape
  shape:
    switch:
      cases:
        - { when: "payload > 2", outcome: big }
      default: small
    next: { big: keep }
  keep:
    map: "{n: .}"
"#;

const BROKEN: &str = r#"
name: broken
events:
  run: call
nodes:
  call:
    http: { get: "http://127.0.0.1:9/nothing-listens-here" }
    retry: { attempts: 2, base: 10ms }
"#;

fn setup(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("topologies")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join("topologies").join(name), text).unwrap();
    }
    dir
}

fn mend(dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("mend").unwrap();
    cmd.current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("MEND_STORE")
        .env_remove("MEND_TOPOLOGIES");
    cmd
}

#[test]
fn run_wait_json_prints_a_report_whose_counts_add_up() {
    let dir = setup(&[("echo.yaml", ECHO)]);
    let out = mend(dir.path())
        .args([
            "run",
            "echo",
            "--wait",
            "--json",
            "--data",
            r#"{"items": [1, 2, 3, 4, 5]}"#,
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
    let m = &report["messages"];
    let n = |k: &str| m[k].as_u64().unwrap();
    assert_eq!(
        n("total"),
        n("done") + n("filtered") + n("trash") + n("open")
    );
    assert_eq!(
        (n("total"), n("done"), n("filtered"), n("open")),
        (9, 7, 2, 0)
    );
    assert_eq!(report["nodes"]["shape"]["big"], 3);
    assert_eq!(report["nodes"]["shape"]["small"], 2);
    assert_eq!(report["nodes"]["keep"]["ok"], 3);
    assert_eq!(report["state"], "done");
    assert!(
        dir.path().join("mend.db").exists(),
        "the default store is ./mend.db"
    );
}

#[test]
fn run_exits_1_when_something_ends_in_the_trash_and_says_why() {
    let dir = setup(&[("broken.yaml", BROKEN)]);
    let out = mend(dir.path())
        .args(["run", "broken", "--wait"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 in trash"), "{stdout}");
    assert!(
        stdout.contains("gave up after 2 attempts") && stdout.contains("could not connect"),
        "{stdout}"
    );
}

#[test]
fn data_that_is_not_json_exits_2_with_a_message() {
    let dir = setup(&[("echo.yaml", ECHO)]);
    let out = mend(dir.path())
        .args(["run", "echo", "--data", "{items: [1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--data is not valid JSON"), "{stderr}");
}

#[test]
fn unknown_topology_or_event_exits_2() {
    let dir = setup(&[("echo.yaml", ECHO)]);
    let out = mend(dir.path()).args(["run", "ecoh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("unknown topology `ecoh`; loaded topologies: echo")
    );
    let out = mend(dir.path())
        .args(["run", "echo", "--event", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no start event `nope`"));
}

#[test]
fn validate_prints_every_error_and_exits_2() {
    let bad = ECHO
        .replace("next: shape", "next: shaep")
        .replace("{n: .}", "{n: .");
    let dir = setup(&[("echo.yaml", &bad), ("broken.yaml", BROKEN)]);
    let out = mend(dir.path()).arg("validate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(lines[0].ends_with("echo.yaml:8:11: nodes.fan.next.item: unknown node `shaep`; this topology has: `fan`, `shape`, `keep`"), "{stderr}");
    assert!(lines[1].ends_with("echo.yaml:16:10: nodes.keep.map: jq syntax error: expected closing brace near `end of program`"), "{stderr}");
    assert_eq!(lines[2], "2 errors in topologies");

    let dir = setup(&[("echo.yaml", ECHO)]);
    let out = mend(dir.path()).arg("validate").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok  echo (version "));
}

#[test]
fn serve_refuses_a_public_address_without_authentication() {
    let dir = setup(&[("echo.yaml", ECHO)]);
    let out = mend(dir.path())
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to listen on 0.0.0.0:0"));
}

#[test]
fn trash_status_and_limiter_commands_work_on_the_store() {
    let limited = BROKEN.replace(
        "nodes:",
        "systems:\n  nowhere: { url: \"http://127.0.0.1:9\", rate: 5/s, max_concurrent: 2 }\nnodes:",
    );
    let dir = setup(&[("broken.yaml", &limited)]);
    let out = mend(dir.path()).args(["run", "broken"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = mend(dir.path())
        .args(["trash", "list", "--json"])
        .output()
        .unwrap();
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = list[0]["message_id"].as_str().unwrap().to_owned();
    assert_eq!(list[0]["attempts"].as_array().unwrap().len(), 2);
    let out = mend(dir.path())
        .args(["trash", "edit", &id, "--data", "{not json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data is not valid JSON"));
    let out = mend(dir.path())
        .args(["trash", "edit", &id, "--data", r#"{"fixed": true}"#])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = mend(dir.path())
        .args(["status", "--json"])
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["status"]["trash"], 0,
        "approved by the edit: {status}"
    );
    assert_eq!(
        status["status"]["queued"], 1,
        "waiting for an engine: {status}"
    );
    let out = mend(dir.path()).args(["limiter"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("broken/nowhere: rate 5/s") && text.contains("at most 2 at once"),
        "{text}"
    );
    let out = mend(dir.path())
        .args(["trash", "approve", &id])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "no longer in the trash");
}
