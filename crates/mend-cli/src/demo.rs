//! `mend demo` and `mend simulate`: the reference scenario on the simulated shop and
//! marketplace. The demo RUNs `products` on a fresh embedded store, then `products-naive` on a
//! fresh marketplace with the same data, and compares what each sent to the target with the
//! least a run must send (computed from the generated data, not from what the engine did).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use clap::Args;
use mend_core::load::load_sources;
use mend_engine::{Engine, EngineConfig};
use mend_sim::{DataConfig, Dataset, SimOptions};
use mend_store_sqlite::{Durability, SqliteStore};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{Failure, Reports, follow, runtime, usage};

/// The example topologies, built in so the demo runs from any directory.
const TOPOLOGIES: [(&str, &str); 4] = [
    (
        "products.yaml",
        include_str!("../../../examples/catalog-sync/products.yaml"),
    ),
    (
        "category-sync.yaml",
        include_str!("../../../examples/catalog-sync/category-sync.yaml"),
    ),
    (
        "products-naive.yaml",
        include_str!("../../../examples/catalog-sync/products-naive.yaml"),
    ),
    (
        "category-sync-naive.yaml",
        include_str!("../../../examples/catalog-sync/category-sync-naive.yaml"),
    ),
];

/// The generated data and how the simulated systems behave.
#[derive(Args, Clone, Debug)]
pub struct SimArgs {
    /// Products in the shop.
    #[arg(long, default_value_t = 2000)]
    products: usize,
    /// Categories in the shop.
    #[arg(long, default_value_t = 120)]
    categories: usize,
    /// Share of the categories the marketplace lacks at the start (0 to 1).
    #[arg(long, default_value_t = 0.3)]
    missing_share: f64,
    /// Seed of the generated data and of fault injection.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Latency the marketplace adds to every answer, in ms.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Requests per second the marketplace accepts before answering 429 + Retry-After.
    #[arg(long)]
    rate_limit: Option<u32>,
    /// Share of marketplace requests answered 503 (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    fail_share: f64,
    /// Share of marketplace requests that hang before answering (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    timeout_share: f64,
}

impl SimArgs {
    fn data(&self) -> DataConfig {
        DataConfig {
            products: self.products,
            categories: self.categories,
            missing_share: self.missing_share,
            seed: self.seed,
        }
    }

    fn target(&self) -> SimOptions {
        SimOptions {
            latency: Duration::from_millis(self.latency_ms),
            rate_limit: self.rate_limit,
            fail_share: self.fail_share,
            timeout_share: self.timeout_share,
            // Longer than the example topologies' 10 s timeout: a hang is a timeout for mend.
            hang: Duration::from_secs(15),
            seed: self.seed,
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    sim: SimArgs,
    /// Messages the engine works on at once.
    #[arg(long, default_value_t = 16)]
    workers: u32,
    /// Skip the naive run.
    #[arg(long)]
    no_naive: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone, Debug)]
pub struct SimulateArgs {
    #[command(flatten)]
    sim: SimArgs,
    /// Address of the source shop.
    #[arg(long, default_value = "127.0.0.1:8081")]
    source_listen: SocketAddr,
    /// Address of the target marketplace.
    #[arg(long, default_value = "127.0.0.1:8082")]
    target_listen: SocketAddr,
}

fn sim_error(e: mend_sim::SimError) -> Failure {
    match e {
        mend_sim::SimError::InvalidData(_) | mend_sim::SimError::InvalidOptions { .. } => usage(e),
        other => runtime(other),
    }
}

pub async fn simulate(args: &SimulateArgs) -> Result<u8, Failure> {
    let sims = mend_sim::start(
        args.sim.data(),
        SimOptions::default(),
        args.sim.target(),
        args.source_listen,
        args.target_listen,
    )
    .await
    .map_err(sim_error)?;
    let bound = sims.dataset.lower_bound();
    println!("SOURCE_URL={}", sims.source_url);
    println!("TARGET_URL={}", sims.target_url);
    eprintln!(
        "shop: {} products, {} categories; marketplace lacks {} of them ({} needed by products). Ctrl-C stops.",
        sims.dataset.products().len(),
        sims.dataset.categories().len(),
        sims.dataset.missing().len(),
        bound.category_creates,
    );
    crate::shutdown_signal().await;
    sims.shutdown().await.map_err(runtime)?;
    Ok(0)
}

/// What one run did, as seen by the target and the store.
struct RunResult {
    products_in_target: u64,
    category_syncs: u64,
    requests: BTreeMap<String, u64>,
    requests_total: u64,
    /// Answers 429 (rate limited) and 5xx (injected faults): what retries cost.
    throttled: u64,
    server_errors: u64,
    trash: u64,
    duration: Duration,
}

async fn run_once(
    dataset: &Dataset,
    topology: &str,
    args: &DemoArgs,
) -> Result<RunResult, Failure> {
    let sims = mend_sim::start_with_dataset(
        dataset.clone(),
        SimOptions::default(),
        args.sim.target(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .map_err(sim_error)?;
    let dir = tempfile::tempdir()
        .context("cannot make a temporary directory")
        .map_err(runtime)?;
    let files = TOPOLOGIES
        .iter()
        .map(|(n, t)| {
            (
                PathBuf::from("examples/catalog-sync").join(n),
                (*t).to_owned(),
            )
        })
        .collect();
    let catalog = load_sources(files)
        .map_err(|e| runtime(anyhow!("the built-in topologies do not load: {e}")))?;
    // The demo's store is thrown away afterwards: crash durability buys nothing here.
    let store =
        SqliteStore::open_with(&dir.path().join("mend.db"), Durability::Normal).map_err(runtime)?;
    let (source_url, target_url) = (sims.source_url.clone(), sims.target_url.clone());
    let env = move |k: &str| match k {
        "SOURCE_URL" => Some(source_url.clone()),
        "TARGET_URL" => Some(target_url.clone()),
        _ => None,
    };
    let config = EngineConfig {
        workers: args.workers,
        poll: Duration::from_millis(50),
        ..EngineConfig::default()
    };
    let engine = Engine::with_env(store, Arc::new(catalog), config, &env)
        .await
        .map_err(runtime)?;
    let token = CancellationToken::new();
    let worker = {
        let (engine, token) = (engine.clone(), token.clone());
        tokio::spawn(async move { engine.run(token).await })
    };
    let started = Instant::now();
    let id = engine
        .start(topology, "run", json!({}), Default::default())
        .await
        .map_err(runtime)?;
    if !args.json {
        eprintln!("RUN {topology} (process {id})");
    }
    let reports = Reports::Local(engine.store().clone());
    let (_, tree) = follow(&reports, id, !args.json).await?;
    let duration = started.elapsed();
    token.cancel();
    worker
        .await
        .map_err(|e| runtime(anyhow!("the engine task failed: {e}")))?
        .map_err(runtime)?;
    let stats: Value = {
        let resp = reqwest::get(format!("{}/stats", sims.target_url))
            .await
            .map_err(runtime)?;
        let bytes = resp.bytes().await.map_err(runtime)?;
        serde_json::from_slice(&bytes).map_err(runtime)?
    };
    sims.shutdown().await.map_err(runtime)?;
    let requests: BTreeMap<String, u64> = stats["requests"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let mut throttled = 0;
    let mut server_errors = 0;
    for by_status in stats["responses"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
    {
        for (status, n) in by_status.as_object().into_iter().flatten() {
            let n = n.as_u64().unwrap_or(0);
            match status.parse::<u16>() {
                Ok(429) => throttled += n,
                Ok(500..=599) => server_errors += n,
                _ => {}
            }
        }
    }
    Ok(RunResult {
        throttled,
        server_errors,
        products_in_target: stats["products"].as_u64().unwrap_or(0),
        category_syncs: tree
            .by_topology
            .iter()
            .filter(|(t, _)| t.starts_with("category-sync"))
            .map(|(_, n)| n)
            .sum(),
        requests_total: stats["requests_total"].as_u64().unwrap_or(0),
        requests,
        trash: tree.trash,
        duration,
    })
}

pub async fn demo(args: &DemoArgs) -> Result<u8, Failure> {
    let dataset = Dataset::generate(&args.sim.data()).map_err(sim_error)?;
    let bound = dataset.lower_bound();
    let smart = run_once(&dataset, "products", args).await?;
    let naive = if args.no_naive {
        None
    } else {
        Some(run_once(&dataset, "products-naive", args).await?)
    };
    let products_in_source = dataset.products().len() as u64;
    let ok = smart.products_in_target == products_in_source
        && smart.category_syncs == bound.category_creates
        && smart.trash == 0;
    let over = (smart.requests_total as f64 / bound.total.max(1) as f64 - 1.0) * 100.0;
    if args.json {
        let report = json!({
            "products_in_source": products_in_source,
            "products_in_target": smart.products_in_target,
            "categories_in_source": dataset.categories().len(),
            "missing_categories": bound.category_creates,
            "category_syncs": smart.category_syncs,
            "target_requests": smart.requests,
            "target_requests_total": smart.requests_total,
            "target_answers_429": smart.throttled,
            "target_answers_5xx": smart.server_errors,
            "lower_bound_target_requests": bound.total,
            "lower_bound": {
                "checks": bound.checks,
                "category_creates": bound.category_creates,
                "product_creates": bound.product_creates,
            },
            "naive_target_requests_total": naive.as_ref().map(|n| n.requests_total),
            "naive": naive.as_ref().map(|n| json!({
                "products_in_target": n.products_in_target,
                "category_syncs": n.category_syncs,
                "target_requests": n.requests,
                "target_requests_total": n.requests_total,
                "trash": n.trash,
                "duration_ms": n.duration.as_millis() as u64,
            })),
            "trash": smart.trash,
            "duration_ms": smart.duration.as_millis() as u64,
            "workers": args.workers,
            "seed": args.sim.seed,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        let mark = |good: bool| if good { "ok" } else { "MISMATCH" };
        println!();
        println!(
            "mend demo: {} products in {} categories; the marketplace lacks {} categories the products need (seed {})",
            products_in_source,
            dataset.categories().len(),
            bound.category_creates,
            args.sim.seed
        );
        println!();
        let n = naive.as_ref();
        let col = |f: &dyn Fn(&RunResult) -> String| n.map(f).unwrap_or_else(|| "-".into());
        println!("{:<28} {:>16} {:>16}", "", "self-correcting", "naive");
        println!(
            "{:<28} {:>16} {:>16}   {}",
            "products in target",
            format!("{} / {}", smart.products_in_target, products_in_source),
            col(&|r| format!("{} / {}", r.products_in_target, products_in_source)),
            mark(smart.products_in_target == products_in_source)
        );
        println!(
            "{:<28} {:>16} {:>16}   {} (missing categories incl. ancestors: {})",
            "category syncs",
            smart.category_syncs,
            col(&|r| r.category_syncs.to_string()),
            mark(smart.category_syncs == bound.category_creates),
            bound.category_creates
        );
        println!(
            "{:<28} {:>16} {:>16}",
            "target requests",
            smart.requests_total,
            col(&|r| r.requests_total.to_string())
        );
        let kinds: std::collections::BTreeSet<&String> = smart
            .requests
            .keys()
            .chain(
                n.map(|r| r.requests.keys().collect::<Vec<_>>())
                    .unwrap_or_default(),
            )
            .collect();
        for k in kinds {
            println!(
                "{:<28} {:>16} {:>16}",
                format!("  {k}"),
                smart.requests.get(k).copied().unwrap_or(0),
                col(&|r| r.requests.get(k).copied().unwrap_or(0).to_string())
            );
        }
        println!(
            "{:<28} {:>16} {:>16}   ({:+.2}% over it: {} checks, {} category creates, {} product creates)",
            "least possible",
            bound.total,
            "",
            over,
            bound.checks,
            bound.category_creates,
            bound.product_creates
        );
        if smart.throttled + smart.server_errors > 0 {
            println!(
                "{:<28} {:>16} {:>16}",
                "  answered 429 / 5xx",
                format!("{} / {}", smart.throttled, smart.server_errors),
                col(&|r| format!("{} / {}", r.throttled, r.server_errors))
            );
        }
        println!(
            "{:<28} {:>16} {:>16}",
            "in the trash",
            smart.trash,
            col(&|r| r.trash.to_string())
        );
        println!(
            "{:<28} {:>16} {:>16}",
            "duration",
            format!("{:.2}s", smart.duration.as_secs_f64()),
            col(&|r| format!("{:.2}s", r.duration.as_secs_f64()))
        );
        println!();
    }
    Ok(if ok { 0 } else { 1 })
}
