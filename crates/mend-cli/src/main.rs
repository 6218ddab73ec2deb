//! `mend`: the command line. Data goes to stdout (JSON with `--json`); progress, warnings and
//! errors go to stderr.
//!
//! Exit codes: 0 success; 1 a process left messages in the trash, or a runtime failure;
//! 2 usage, validation or bad input.

mod demo;
mod graph;
mod report;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::{Args, Parser, Subcommand};
use mend_core::ids::{MessageId, ProcessId};
use mend_core::load::load_dir;
use mend_core::topology::Catalog;
use mend_engine::{Engine, EngineConfig};
use mend_store::{ProcessReport, ProcessStore};
use mend_store_sqlite::SqliteStore;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "mend",
    version,
    about = "An integration engine for self-correcting integrations"
)]
struct Cli {
    /// The SQLite store file.
    #[arg(long, global = true, env = "MEND_STORE", default_value = "mend.db")]
    store: PathBuf,
    /// Directory of topology files (*.yaml).
    #[arg(
        long,
        global = true,
        env = "MEND_TOPOLOGIES",
        default_value = "topologies"
    )]
    topologies: PathBuf,
    /// Log format on stderr: `text` or `json`. Levels come from RUST_LOG (default: warn; info
    /// for `serve`).
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check topology files and print every error with file, line and field.
    Validate {
        /// Directory to check (default: --topologies).
        dir: Option<PathBuf>,
    },
    /// Send a start event and work the process (embedded), or send it to a server.
    Run(RunArgs),
    /// Run the engine continuously (cron events fire) with the HTTP API.
    Serve(ServeArgs),
    /// Release a key by hand: every message parked under it resumes.
    Release {
        /// The key, e.g. `category:42`.
        key: String,
        #[arg(long)]
        json: bool,
    },
    /// Failed messages: list, show, approve (re-run at the failed node), reject.
    Trash {
        #[command(subcommand)]
        command: TrashCommand,
    },
    /// Counts across the store and the running processes.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Per system: its limits and the messages waiting for capacity.
    Limiter {
        #[arg(long)]
        json: bool,
    },
    /// Keys with parked messages or a sync in flight.
    Parked {
        #[arg(long)]
        json: bool,
    },
    /// Print topologies as a Mermaid (default) or DOT graph, `requires` expanded.
    Graph {
        /// Only this topology.
        topology: Option<String>,
        #[arg(long, default_value = "mermaid", value_parser = ["mermaid", "dot"])]
        format: String,
    },
    /// Run the simulated shop and marketplace until Ctrl-C.
    Simulate(demo::SimulateArgs),
    /// The reference scenario: simulators, RUN products, and a report against the least
    /// possible and against a naive design.
    Demo(demo::DemoArgs),
}

#[derive(Subcommand)]
enum TrashCommand {
    /// Newest first.
    List {
        #[arg(long)]
        topology: Option<String>,
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        process: Option<ProcessId>,
        /// Only entries whose error contains this text.
        #[arg(long)]
        error: Option<String>,
        /// Only entries that failed within this long (e.g. 1h, 30m).
        #[arg(long)]
        since: Option<mend_core::duration::Dur>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// One entry: payload, headers, error and every attempt.
    Show {
        id: MessageId,
        #[arg(long)]
        json: bool,
    },
    /// Change the payload (and/or headers), keep the old ones in the audit trail, then
    /// approve. Without --data, opens $EDITOR on the payload.
    Edit {
        id: MessageId,
        /// The new payload, as JSON.
        #[arg(long)]
        data: Option<String>,
        /// The new headers, as a JSON object of strings.
        #[arg(long)]
        headers: Option<String>,
    },
    /// Re-run the message at the node where it failed, in its process, with fresh attempts.
    Approve { id: MessageId },
    /// Close it for good. Rejecting a prerequisite's sync ends what waits on it.
    Reject { id: MessageId },
}

#[derive(Args)]
struct RunArgs {
    /// The topology to start.
    topology: String,
    /// The start event.
    #[arg(long, default_value = "run")]
    event: String,
    /// The start message's payload, as JSON.
    #[arg(long)]
    data: Option<String>,
    /// Show progress while the process runs, then its report.
    #[arg(long)]
    wait: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Send the event to a running `mend serve` instead of working it here.
    #[arg(long)]
    server: Option<String>,
    /// The server's API token (with --server).
    #[arg(long, env = "MEND_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Require `Authorization: Bearer TOKEN` on every /api route. Needed to listen on an
    /// address other than loopback.
    #[arg(long, env = "MEND_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args, Clone)]
struct EngineArgs {
    /// Messages worked on at once.
    #[arg(long, default_value_t = 32)]
    workers: u32,
    /// How long a claim holds without renewal (a crashed engine's messages return after it).
    #[arg(long, default_value = "30s")]
    lease: mend_core::duration::Dur,
}

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        error: error.into(),
    }
}

fn runtime(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 1,
        error: error.into(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

fn init_logs(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let default = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    if cli.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn dispatch(cli: Cli) -> Result<u8, Failure> {
    match cli.command {
        Command::Validate { ref dir } => validate(dir.as_deref().unwrap_or(&cli.topologies)),
        Command::Run(ref args) if args.server.is_some() => run_remote(args).await,
        Command::Run(ref args) => run_embedded(&cli, args).await,
        Command::Serve(ref args) => serve(&cli, args).await,
        Command::Release { ref key, json } => release(&cli, key, json).await,
        Command::Parked { json } => parked(&cli, json).await,
        Command::Trash { ref command } => trash(&cli, command).await,
        Command::Status { json } => status(&cli, json).await,
        Command::Limiter { json } => limiter(&cli, json).await,
        Command::Graph {
            ref topology,
            ref format,
        } => {
            let catalog = load(&cli.topologies)?;
            print!(
                "{}",
                graph::render(&catalog, topology.as_deref(), format).map_err(usage)?
            );
            Ok(0)
        }
        Command::Simulate(ref args) => demo::simulate(args).await,
        Command::Demo(ref args) => demo::demo(args).await,
    }
}

fn load(dir: &Path) -> Result<Catalog, Failure> {
    load_dir(dir).map_err(|errors| {
        let n = errors.0.len();
        usage(anyhow!(
            "{errors}\n{n} error{} in {}",
            if n == 1 { "" } else { "s" },
            dir.display()
        ))
    })
}

fn validate(dir: &Path) -> Result<u8, Failure> {
    let catalog = load(dir)?;
    for t in catalog.topologies.values() {
        println!(
            "ok  {} (version {}, {} nodes, events: {})",
            t.name,
            t.version,
            t.nodes.len(),
            t.events.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(0)
}

fn parse_data(data: Option<&str>) -> Result<Value, Failure> {
    match data {
        None => Ok(Value::Object(Default::default())),
        Some(text) => {
            serde_json::from_str(text).map_err(|e| usage(anyhow!("--data is not valid JSON: {e}")))
        }
    }
}

fn engine_config(args: &EngineArgs, cron: bool) -> EngineConfig {
    EngineConfig {
        workers: args.workers,
        lease: args.lease.0,
        cron,
        ..EngineConfig::default()
    }
}

async fn open_engine(
    cli: &Cli,
    args: &EngineArgs,
    cron: bool,
) -> Result<Engine<SqliteStore>, Failure> {
    let catalog = Arc::new(load(&cli.topologies)?);
    let store = SqliteStore::open(&cli.store)
        .with_context(|| format!("cannot open the store {}", cli.store.display()))
        .map_err(runtime)?;
    Engine::new(store, catalog, engine_config(args, cron))
        .await
        .map_err(|e| match e {
            mend_engine::EngineError::Config(_) => usage(e),
            other => runtime(other),
        })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn run_embedded(cli: &Cli, args: &RunArgs) -> Result<u8, Failure> {
    let payload = parse_data(args.data.as_deref())?;
    let engine = open_engine(cli, &args.engine, false).await?;
    let id = engine
        .start(&args.topology, &args.event, payload, Default::default())
        .await
        .map_err(|e| match e {
            mend_engine::StartError::Store(_) => runtime(e),
            other => usage(other),
        })?;
    eprintln!("process {id} started ({}/{})", args.topology, args.event);
    let token = CancellationToken::new();
    let worker = {
        let engine = engine.clone();
        let token = token.clone();
        tokio::spawn(async move { engine.run(token).await })
    };
    let reports = Reports::Local(engine.store().clone());
    let outcome = tokio::select! {
        r = follow(&reports, id, args.wait && !args.json) => r,
        _ = shutdown_signal() => Err(runtime(anyhow!("interrupted; process {id} is kept in the store and continues at the next `mend run` or `mend serve`"))),
    };
    token.cancel();
    match worker.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(runtime(e)),
        Err(e) => return Err(runtime(anyhow!("the engine task failed: {e}"))),
    }
    let (report, tree) = outcome?;
    finish(&report, &tree, args)
}

/// Where reports come from: the store itself, or a server's API.
enum Reports {
    Local(SqliteStore),
    Remote {
        client: reqwest::Client,
        base: String,
    },
}

impl Reports {
    async fn get(&self, id: ProcessId) -> Result<Option<ProcessReport>, Failure> {
        match self {
            Reports::Local(store) => store.process_report(id).await.map_err(runtime),
            Reports::Remote { client, base } => {
                let resp = client
                    .get(format!("{base}/api/processes/{id}"))
                    .send()
                    .await
                    .map_err(|e| runtime(anyhow!("lost the server at {base}: {e}")))?;
                let status = resp.status();
                if status == reqwest::StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                let bytes = resp.bytes().await.map_err(runtime)?;
                if !status.is_success() {
                    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    let msg = body
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("no message");
                    return Err(runtime(anyhow!("the server answered {status}: {msg}")));
                }
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| runtime(anyhow!("unexpected report from the server: {e}")))
            }
        }
    }
}

/// What a process and every process it started (directly or not) add up to: RUN waits for
/// all the work it caused, and its exit code counts every trash entry of it.
struct Tree {
    done: bool,
    processes: u64,
    trash: u64,
    /// Started processes (not the root) per topology.
    by_topology: std::collections::BTreeMap<String, u64>,
}

async fn tree(reports: &Reports, root: &ProcessReport) -> Result<Tree, Failure> {
    let mut t = Tree {
        done: root.is_done(),
        processes: 1,
        trash: root.messages.trash,
        by_topology: Default::default(),
    };
    let mut pending: Vec<ProcessId> = root.children.clone();
    while let Some(id) = pending.pop() {
        let r = reports
            .get(id)
            .await?
            .ok_or_else(|| runtime(anyhow!("process {id} vanished")))?;
        t.done &= r.is_done();
        t.processes += 1;
        t.trash += r.messages.trash;
        *t.by_topology.entry(r.topology.clone()).or_default() += 1;
        pending.extend(r.children);
    }
    Ok(t)
}

/// Waits until the process and everything it started are done, showing progress on stderr
/// when asked.
async fn follow(
    reports: &Reports,
    id: ProcessId,
    progress: bool,
) -> Result<(ProcessReport, Tree), Failure> {
    let mut view = report::Progress::new(progress);
    loop {
        let report = reports
            .get(id)
            .await?
            .ok_or_else(|| runtime(anyhow!("process {id} is not in the store")))?;
        view.update(&report);
        if report.is_done() {
            let t = tree(reports, &report).await?;
            if t.done {
                view.finish();
                return Ok((report, t));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn finish(report: &ProcessReport, tree: &Tree, args: &RunArgs) -> Result<u8, Failure> {
    if args.json {
        let mut value = mend_server::report_json(report);
        if let Value::Object(map) = &mut value {
            map.insert(
                "tree".into(),
                serde_json::json!({ "processes": tree.processes, "trash": tree.trash }),
            );
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else if args.wait {
        print!("{}", report::human(report));
        if tree.processes > 1 {
            println!(
                "with the processes it started: {} processes, {} in trash",
                tree.processes, tree.trash
            );
        }
    } else {
        println!("{}", report::summary(report));
    }
    Ok(if tree.trash > 0 { 1 } else { 0 })
}

async fn run_remote(args: &RunArgs) -> Result<u8, Failure> {
    let payload = parse_data(args.data.as_deref())?;
    let base = args
        .server
        .as_deref()
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_owned();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = args.api_token.as_deref().filter(|t| !t.is_empty()) {
        let value =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                usage(anyhow!(
                    "the API token has characters a header cannot carry"
                ))
            })?;
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .map_err(runtime)?;
    let url = format!(
        "{base}/api/topologies/{}/events/{}",
        args.topology, args.event
    );
    let resp = client
        .post(&url)
        .header("content-type", "application/json")
        .body(payload.to_string())
        .send()
        .await
        .with_context(|| format!("cannot reach the server at {base}"))
        .map_err(runtime)?;
    let status = resp.status();
    let body: Value = resp
        .bytes()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    if !status.is_success() {
        let msg = body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no message");
        let f = if status.is_client_error() {
            usage(anyhow!("{status}: {msg}"))
        } else {
            runtime(anyhow!("{status}: {msg}"))
        };
        return Err(f);
    }
    let id: ProcessId = body
        .get("process_id")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| runtime(anyhow!("the server answered without a process id: {body}")))?;
    eprintln!("process {id} started on {base}");
    if !args.wait {
        println!("{id}");
        return Ok(0);
    }
    let reports = Reports::Remote { client, base };
    let (report, tree) = follow(&reports, id, !args.json).await?;
    finish(&report, &tree, args)
}

fn open_store(cli: &Cli) -> Result<SqliteStore, Failure> {
    if !cli.store.exists() {
        return Err(usage(anyhow!(
            "no store at {} (give --store)",
            cli.store.display()
        )));
    }
    SqliteStore::open(&cli.store)
        .with_context(|| format!("cannot open the store {}", cli.store.display()))
        .map_err(runtime)
}

async fn release(cli: &Cli, key: &str, json: bool) -> Result<u8, Failure> {
    use mend_store::ParkStore;
    let store = open_store(cli)?;
    let released = store
        .release(mend_store::Release {
            key: key.to_owned(),
            source: "operator (mend release)".into(),
            cache: Vec::new(),
        })
        .await
        .map_err(runtime)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&released).unwrap_or_default()
        );
    } else {
        println!(
            "released {}: {} message(s) resumed{}",
            released.key,
            released.resumed,
            if released.was_pending {
                ", its sync is no longer awaited"
            } else {
                ""
            }
        );
    }
    Ok(0)
}

async fn trash(cli: &Cli, command: &TrashCommand) -> Result<u8, Failure> {
    use mend_store::{TrashAction, TrashFilter, TrashStore};
    let store = open_store(cli)?;
    match command {
        TrashCommand::List {
            topology,
            node,
            process,
            error,
            since,
            limit,
            json,
        } => {
            let filter = TrashFilter {
                topology: topology.clone(),
                node: node.clone(),
                process_id: *process,
                error: error.clone(),
                since: since.map(|d| mend_core::clock::now_ms() - d.as_millis()),
                until: None,
                limit: Some(*limit),
            };
            let entries = store.list_trash(filter).await.map_err(runtime)?;
            if *json {
                print_json(&entries);
            } else if entries.is_empty() {
                println!("the trash is empty");
            } else {
                for e in entries {
                    println!(
                        "{}  {}/{}  {} attempt(s)  {}",
                        e.message_id,
                        e.topology,
                        e.node,
                        e.attempts.len(),
                        e.error.as_deref().unwrap_or("no error recorded")
                    );
                }
            }
            Ok(0)
        }
        TrashCommand::Show { id, json } => {
            let entry = store
                .trash_entry(*id)
                .await
                .map_err(runtime)?
                .ok_or_else(|| usage(anyhow!("message {id} is not in the trash")))?;
            if *json {
                print_json(&entry);
            } else {
                println!(
                    "message  {}\nprocess  {}\nnode     {}/{}",
                    entry.message_id, entry.process_id, entry.topology, entry.node
                );
                println!("error    {}", entry.error.as_deref().unwrap_or("-"));
                println!(
                    "payload  {}",
                    serde_json::to_string_pretty(&entry.payload).unwrap_or_default()
                );
                if !entry.headers.is_empty() {
                    println!(
                        "headers  {}",
                        serde_json::to_string(&entry.headers).unwrap_or_default()
                    );
                }
                for a in &entry.attempts {
                    println!(
                        "attempt {} at {}: {}{}{}",
                        a.attempt,
                        a.at,
                        a.outcome,
                        a.status.map(|s| format!(" HTTP {s}")).unwrap_or_default(),
                        a.error
                            .as_ref()
                            .map(|e| format!(" — {e}"))
                            .unwrap_or_default()
                    );
                    if let Some(x) = &a.response_excerpt {
                        println!("  response: {x}");
                    }
                }
            }
            Ok(0)
        }
        TrashCommand::Edit { id, data, headers } => {
            use mend_store::OpsStore;
            let entry = store
                .trash_entry(*id)
                .await
                .map_err(runtime)?
                .ok_or_else(|| usage(anyhow!("message {id} is not in the trash")))?;
            let payload = match data {
                Some(text) => Some(
                    serde_json::from_str(text)
                        .map_err(|e| usage(anyhow!("--data is not valid JSON: {e}")))?,
                ),
                None if headers.is_some() => None,
                None => Some(edit_in_editor(&entry.payload)?),
            };
            let headers: Option<mend_core::message::Headers> = match headers {
                Some(text) => Some(serde_json::from_str(text).map_err(|e| {
                    usage(anyhow!("--headers must be a JSON object of strings: {e}"))
                })?),
                None => None,
            };
            if store
                .edit_trash(*id, payload, headers, "operator (mend trash edit)")
                .await
                .map_err(runtime)?
            {
                println!("edited and approved {id}");
                Ok(0)
            } else {
                Err(usage(anyhow!("message {id} is not in the trash")))
            }
        }
        TrashCommand::Approve { id } | TrashCommand::Reject { id } => {
            let action = if matches!(command, TrashCommand::Approve { .. }) {
                TrashAction::Approve
            } else {
                TrashAction::Reject
            };
            let verb = if action == TrashAction::Approve {
                "approved"
            } else {
                "rejected"
            };
            if store
                .act_on_trash(*id, action, "operator (mend trash)")
                .await
                .map_err(runtime)?
            {
                println!("{verb} {id}");
                Ok(0)
            } else {
                Err(usage(anyhow!("message {id} is not in the trash")))
            }
        }
    }
}

/// Opens $EDITOR (or vi) on the payload and reads it back, insisting on valid JSON.
fn edit_in_editor(payload: &Value) -> Result<Value, Failure> {
    let file = tempfile::Builder::new()
        .suffix(".json")
        .tempfile()
        .context("cannot make a temporary file for the editor")
        .map_err(runtime)?;
    std::fs::write(
        file.path(),
        serde_json::to_string_pretty(payload).unwrap_or_default(),
    )
    .map_err(runtime)?;
    let editor = std::env::var("EDITOR").unwrap_or_else(|_| "vi".into());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("editor")
        .arg(file.path())
        .status()
        .with_context(|| format!("cannot start the editor `{editor}`"))
        .map_err(runtime)?;
    if !status.success() {
        return Err(usage(anyhow!(
            "the editor exited with {status}; nothing changed"
        )));
    }
    let text = std::fs::read_to_string(file.path()).map_err(runtime)?;
    serde_json::from_str(&text).map_err(|e| {
        usage(anyhow!(
            "the edited payload is not valid JSON ({e}); nothing changed"
        ))
    })
}

async fn status(cli: &Cli, json: bool) -> Result<u8, Failure> {
    use mend_store::{OpsStore, ProcessFilter, ProcessState};
    let store = open_store(cli)?;
    let s = store.status().await.map_err(runtime)?;
    let running = store
        .list_processes(ProcessFilter {
            state: Some(ProcessState::Running),
            limit: Some(20),
            ..Default::default()
        })
        .await
        .map_err(runtime)?;
    if json {
        print_json(&serde_json::json!({ "status": s, "running": running }));
        return Ok(0);
    }
    println!(
        "processes  {} running, {} done",
        s.processes_running, s.processes_done
    );
    println!(
        "messages   {} queued, {} running, {} waiting to retry, {} limited, {} parked, {} in trash",
        s.queued, s.running, s.retry, s.limited, s.parked, s.trash
    );
    for p in running {
        let m = &p.messages;
        println!(
            "  {}  {}/{}  {}/{} finished, {} parked, {} in trash",
            p.id,
            p.topology,
            p.event,
            m.total - m.open,
            m.total,
            m.parked,
            m.trash
        );
    }
    Ok(0)
}

async fn limiter(cli: &Cli, json: bool) -> Result<u8, Failure> {
    use mend_store::ParkStore;
    let catalog = load(&cli.topologies)?;
    let store = open_store(cli)?;
    let waiting = store.limited().await.map_err(runtime)?;
    let mut rows = Vec::new();
    for t in catalog.topologies.values() {
        for s in t.systems.values() {
            let nodes: Vec<&String> = t
                .nodes
                .values()
                .filter(|n| n.system() == Some(s.name.as_str()))
                .map(|n| &n.name)
                .collect();
            let mine: Vec<&mend_store::LimitedCount> = waiting
                .iter()
                .filter(|w| w.topology == t.name && nodes.contains(&&w.node))
                .collect();
            rows.push(serde_json::json!({
                "topology": t.name, "system": s.name, "rate": s.rate.map(|r| r.to_string()),
                "burst": s.burst, "max_concurrent": s.max_concurrent,
                "waiting": mine, "oldest_wait": mine.iter().map(|w| w.oldest).min(),
            }));
        }
    }
    if json {
        print_json(&rows);
        return Ok(0);
    }
    let now = mend_core::clock::now_ms();
    for r in &rows {
        let limit = match (r["rate"].as_str(), r["max_concurrent"].as_u64()) {
            (None, None) => "no limit".to_owned(),
            (rate, conc) => format!(
                "{}{}",
                rate.map(|x| format!(
                    "rate {x} (burst {})",
                    r["burst"]
                        .as_u64()
                        .map(|b| b.to_string())
                        .unwrap_or("default".into())
                ))
                .unwrap_or_default(),
                conc.map(|c| format!(" at most {c} at once"))
                    .unwrap_or_default()
            ),
        };
        let waits: Vec<String> = r["waiting"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| {
                format!(
                    "{} waiting at {}",
                    w["count"],
                    w["node"].as_str().unwrap_or("")
                )
            })
            .collect();
        let oldest = r["oldest_wait"]
            .as_i64()
            .map(|o| format!(", oldest {:.1}s", (now - o) as f64 / 1000.0))
            .unwrap_or_default();
        println!(
            "{}/{}: {}; {}{}",
            r["topology"].as_str().unwrap_or(""),
            r["system"].as_str().unwrap_or(""),
            limit.trim(),
            if waits.is_empty() {
                "nothing waiting".to_owned()
            } else {
                waits.join(", ")
            },
            oldest
        );
    }
    Ok(0)
}

fn print_json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

async fn parked(cli: &Cli, json: bool) -> Result<u8, Failure> {
    use mend_store::ParkStore;
    let store = open_store(cli)?;
    let keys = store.parked_keys().await.map_err(runtime)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&keys).unwrap_or_default()
        );
        return Ok(0);
    }
    if keys.is_empty() {
        println!("nothing is parked");
        return Ok(0);
    }
    let now = mend_core::clock::now_ms();
    let width = keys.iter().map(|k| k.key.len()).max().unwrap_or(3).max(3);
    println!("{:width$}  {:>7}  {:>12}  sync", "key", "parked", "oldest");
    for k in keys {
        let age = k
            .oldest
            .map(|t| format!("{:.1}s ago", (now - t) as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let sync = match (k.sync_process_id, k.sync_pending_since) {
            (Some(p), Some(since)) => {
                format!("process {p}, for {:.1}s", (now - since) as f64 / 1000.0)
            }
            (None, Some(_)) => "pending, no sync process".into(),
            _ => "none in flight".into(),
        };
        println!("{:width$}  {:>7}  {:>12}  {}", k.key, k.parked, age, sync);
    }
    Ok(0)
}

async fn serve(cli: &Cli, args: &ServeArgs) -> Result<u8, Failure> {
    let api_token = args.api_token.clone().filter(|t| !t.trim().is_empty());
    if !args.listen.ip().is_loopback() && api_token.is_none() {
        return Err(usage(anyhow!(
            "refusing to listen on {} without an API token: set MEND_API_TOKEN (or --api-token), or listen on 127.0.0.1",
            args.listen
        )));
    }
    let engine = open_engine(cli, &args.engine, true).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))
        .map_err(runtime)?;
    let addr = listener.local_addr().map_err(runtime)?;
    tracing::info!(%addr, store = %cli.store.display(), topologies = engine.catalog().topologies.len(), "mend serve listening");
    eprintln!("mend serve: listening on http://{addr}");
    let token = CancellationToken::new();
    let worker = {
        let engine = engine.clone();
        let token = token.clone();
        // If the engine stops on its own (it cannot reach the store), the server stops too:
        // an API without an engine would accept work nobody does.
        tokio::spawn(async move {
            let result = engine.run(token.clone()).await;
            token.cancel();
            result
        })
    };
    let config = mend_server::ServerConfig { api_token };
    let stop = token.clone();
    let served = mend_server::serve(listener, engine.clone(), config, async move {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = stop.cancelled() => {}
        }
    })
    .await;
    token.cancel();
    let engine_result = worker.await;
    served.context("the HTTP server failed").map_err(runtime)?;
    match engine_result {
        Ok(Ok(())) => Ok(0),
        Ok(Err(e)) => Err(runtime(e)),
        Err(e) => Err(runtime(anyhow!("the engine task failed: {e}"))),
    }
}
