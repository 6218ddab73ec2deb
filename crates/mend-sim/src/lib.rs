//! Simulated systems of mend's reference scenario: a source shop whose product catalog is
//! synced into a target marketplace that rejects a product whose category it lacks, and a
//! category whose parent it lacks.
//!
//! Key types: [`Dataset`] (generated from a [`DataConfig`]) is the catalog and the set of
//! categories the target lacks, with the [`LowerBound`] of requests any run must send;
//! [`source::router`] and [`target::router`] are the two HTTP APIs; [`SimOptions`] makes a
//! simulator slow, rate limited or faulty, reproducibly; [`start`] serves both on loopback
//! and returns their URLs in [`Simulators`], which stops them when dropped.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mend_sim::SimError> {
//! use mend_sim::{DataConfig, SimOptions};
//! let loopback = "127.0.0.1:0".parse().expect("a literal address");
//! let target = SimOptions { rate_limit: Some(50), ..SimOptions::default() };
//! let sims = mend_sim::start(DataConfig::default(), SimOptions::default(), target, loopback, loopback).await?;
//! println!("source {} target {} bound {:?}", sims.source_url, sims.target_url, sims.dataset.lower_bound());
//! sims.shutdown().await
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub mod data;
mod gate;
pub mod options;
pub mod source;
pub mod target;

pub use data::{Category, DataConfig, Dataset, LowerBound, Product};
pub use options::{Fault, SimOptions};

/// Everything that can go wrong setting up or running the simulators.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The data config or a hand-built dataset is inconsistent.
    #[error("invalid simulation data: {0}")]
    InvalidData(String),
    /// A simulator's options are out of range.
    #[error("invalid {which} simulator options: {reason}")]
    InvalidOptions {
        /// `"source"` or `"target"`.
        which: &'static str,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// A simulator could not listen on its address.
    #[error(
        "cannot bind the {which} simulator to {addr}: {source}; pick a free port, or port 0 for any"
    )]
    Bind {
        /// `"source"` or `"target"`.
        which: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A simulator's server stopped with an error or panicked.
    #[error("the {which} simulator stopped abnormally: {reason}")]
    Stopped {
        /// `"source"` or `"target"`.
        which: &'static str,
        /// The server's error or the panic.
        reason: String,
    },
}

/// Both simulators, running. Dropping this (or its [`handle`](Self::handle)) stops them.
#[derive(Debug)]
pub struct Simulators {
    /// Base URL of the source shop, `http://127.0.0.1:PORT` (no trailing slash).
    pub source_url: String,
    /// Base URL of the target marketplace, `http://127.0.0.1:PORT` (no trailing slash).
    pub target_url: String,
    /// The address the source shop listens on.
    pub source_addr: SocketAddr,
    /// The address the target marketplace listens on.
    pub target_addr: SocketAddr,
    /// The catalog both serve.
    pub dataset: Arc<Dataset>,
    /// Stops both servers.
    pub handle: SimHandle,
}

impl Simulators {
    /// Stops both servers and waits until they have closed their connections.
    pub async fn shutdown(self) -> Result<(), SimError> {
        self.handle.shutdown().await
    }
}

/// Stops the simulators: on [`shutdown`](Self::shutdown), or without waiting when dropped.
///
/// Stopping cuts injected latency and hangs short, so in-flight requests end at once.
#[derive(Debug)]
pub struct SimHandle {
    cancel: CancellationToken,
    servers: Vec<(&'static str, JoinHandle<std::io::Result<()>>)>,
}

impl SimHandle {
    /// Stops both servers and waits for them; reports the first that stopped abnormally.
    pub async fn shutdown(mut self) -> Result<(), SimError> {
        self.cancel.cancel();
        let mut result = Ok(());
        for (which, server) in std::mem::take(&mut self.servers) {
            let stopped = match server.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(reason) = stopped
                && result.is_ok()
            {
                result = Err(SimError::Stopped { which, reason });
            }
        }
        result
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Generates the dataset from `data` and serves the source shop on `source_addr` and the
/// target marketplace on `target_addr` (port 0 picks a free port), each behind its options.
pub async fn start(
    data: DataConfig,
    source: SimOptions,
    target: SimOptions,
    source_addr: SocketAddr,
    target_addr: SocketAddr,
) -> Result<Simulators, SimError> {
    let dataset = Dataset::generate(&data)?;
    start_with_dataset(dataset, source, target, source_addr, target_addr).await
}

/// Like [`start`], over a dataset built by hand with [`Dataset::new`].
pub async fn start_with_dataset(
    dataset: Dataset,
    source: SimOptions,
    target: SimOptions,
    source_addr: SocketAddr,
    target_addr: SocketAddr,
) -> Result<Simulators, SimError> {
    source.validate("source")?;
    target.validate("target")?;
    let dataset = Arc::new(dataset);
    let cancel = CancellationToken::new();

    let source_listener = bind("source", source_addr).await?;
    let target_listener = bind("target", target_addr).await?;
    let source_addr = local_addr("source", &source_listener, source_addr)?;
    let target_addr = local_addr("target", &target_listener, target_addr)?;

    let source_router = source::router_with(dataset.clone(), source, cancel.clone());
    let target_router = target::router_with(&dataset, target, cancel.clone());
    let servers = vec![
        ("source", serve(source_listener, source_router, &cancel)),
        ("target", serve(target_listener, target_router, &cancel)),
    ];
    tracing::info!(
        source = %source_addr,
        target = %target_addr,
        categories = dataset.categories().len(),
        missing = dataset.missing().len(),
        products = dataset.products().len(),
        "Simulators are listening."
    );
    Ok(Simulators {
        source_url: format!("http://{source_addr}"),
        target_url: format!("http://{target_addr}"),
        source_addr,
        target_addr,
        dataset,
        handle: SimHandle { cancel, servers },
    })
}

async fn bind(which: &'static str, addr: SocketAddr) -> Result<TcpListener, SimError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Bind {
            which,
            addr,
            source,
        })
}

fn local_addr(
    which: &'static str,
    listener: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, SimError> {
    listener.local_addr().map_err(|source| SimError::Bind {
        which,
        addr,
        source,
    })
}

fn serve(
    listener: TcpListener,
    router: axum::Router,
    cancel: &CancellationToken,
) -> JoinHandle<std::io::Result<()>> {
    let stop = cancel.clone().cancelled_owned();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
    })
}
