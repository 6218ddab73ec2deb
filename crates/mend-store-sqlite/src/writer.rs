//! The single writer: one thread owns the write connection and applies jobs in batches, one
//! transaction per batch (group commit). A job's caller hears back only after its batch
//! committed, so an acknowledged write is durable, and many steps share one disk sync.
//!
//! Each job runs inside a savepoint: a job that fails rolls back alone, the rest of the batch
//! still commits.

use std::sync::mpsc;
use std::thread::JoinHandle;

use mend_store::{Result, StoreError};
use rusqlite::Connection;
use tokio::sync::oneshot;

/// Called once the batch's transaction ended, with how it ended.
type Responder = Box<dyn FnOnce(Result<()>) + Send>;
/// Runs inside the batch's transaction (or learns why there is none); says whether it
/// succeeded.
type Job = Box<dyn FnOnce(Result<&Connection>) -> (bool, Responder) + Send>;

/// Most jobs in one transaction: bounds the time one batch holds the write lock.
const MAX_BATCH: usize = 1024;

pub(crate) struct Writer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub(crate) fn start(conn: Connection) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("mend-sqlite-writer".into())
            .spawn(move || run(conn, rx))
            .expect("spawning the writer thread only fails when the OS is out of threads");
        Self {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Runs `f` in the next batch and returns its result once the batch committed.
    pub(crate) async fn exec<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = conn.and_then(f);
            let ok = result.is_ok();
            let respond: Responder = Box::new(move |commit| {
                let _ = reply.send(commit.and(result));
            });
            (ok, respond)
        });
        self.tx
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(job)
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel ends the thread after the jobs already sent.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn run(conn: Connection, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut responders = Vec::with_capacity(jobs.len());
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let err = backend(e);
            for job in jobs {
                let (_, respond) = job(Err(err.clone()));
                respond(Err(err.clone()));
            }
            continue;
        }
        for job in jobs {
            if let Err(e) = conn.execute_batch("SAVEPOINT job") {
                let err = backend(e);
                let (_, respond) = job(Err(err.clone()));
                respond(Err(err));
                continue;
            }
            let (ok, respond) = job(Ok(&conn));
            let end = if ok {
                "RELEASE job"
            } else {
                "ROLLBACK TO job; RELEASE job"
            };
            if let Err(e) = conn.execute_batch(end) {
                tracing::error!(error = %e, "cannot close a savepoint");
            }
            responders.push(respond);
        }
        let commit = conn.execute_batch("COMMIT").map_err(backend);
        if commit.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for respond in responders {
            respond(commit.clone());
        }
    }
}
