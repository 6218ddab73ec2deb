//! Process reports for people: a progress view while waiting and a short table at the end.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use mend_store::ProcessReport;

/// Progress on stderr: a bar on a terminal, a plain line every few seconds otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    last_line: Instant,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = (enabled && terminal).then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} messages {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        Self {
            bar,
            plain: enabled && !terminal,
            last_line: Instant::now(),
        }
    }

    pub fn update(&mut self, r: &ProcessReport) {
        let finished = r.messages.total - r.messages.open;
        if let Some(bar) = &self.bar {
            bar.set_length(r.messages.total);
            bar.set_position(finished);
            bar.set_message(if r.messages.trash > 0 {
                format!("({} in trash)", r.messages.trash)
            } else {
                String::new()
            });
        } else if self.plain && self.last_line.elapsed().as_secs() >= 2 {
            eprintln!(
                "progress: {finished}/{} messages finished, {} in trash",
                r.messages.total, r.messages.trash
            );
            self.last_line = Instant::now();
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn state(r: &ProcessReport) -> &'static str {
    if r.is_done() { "done" } else { "running" }
}

fn duration(r: &ProcessReport) -> String {
    match r.finished_at {
        Some(end) => format!("{:.2}s", (end - r.created_at) as f64 / 1000.0),
        None => "still running".into(),
    }
}

pub fn summary(r: &ProcessReport) -> String {
    format!(
        "process {} {}/{}: {} in {}; {} messages: {} done, {} filtered, {} in trash",
        r.id,
        r.topology,
        r.event,
        state(r),
        duration(r),
        r.messages.total,
        r.messages.done,
        r.messages.filtered,
        r.messages.trash
    )
}

pub fn human(r: &ProcessReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "process   {}", r.id);
    let _ = writeln!(
        out,
        "topology  {} (version {}), event {}",
        r.topology, r.version, r.event
    );
    let _ = writeln!(out, "state     {}, duration {}", state(r), duration(r));
    let m = &r.messages;
    let _ = writeln!(
        out,
        "messages  {} total: {} done, {} filtered, {} in trash, {} open",
        m.total, m.done, m.filtered, m.trash, m.open
    );
    let width = r.nodes.keys().map(String::len).max().unwrap_or(4).max(4);
    let _ = writeln!(out, "\n{:width$}  outcomes", "node");
    for (node, outcomes) in &r.nodes {
        let list: Vec<String> = outcomes.iter().map(|(o, n)| format!("{o}: {n}")).collect();
        let _ = writeln!(out, "{node:width$}  {}", list.join(", "));
    }
    if !r.trash.is_empty() {
        let _ = writeln!(out, "\ntrash ({})", m.trash);
        for t in r.trash.iter().take(20) {
            let _ = writeln!(
                out,
                "  {} at {}: {}",
                t.message_id,
                t.node,
                t.error.as_deref().unwrap_or("no error recorded")
            );
        }
        if r.trash.len() > 20 {
            let _ = writeln!(out, "  ... and {} more", r.trash.len() - 20);
        }
    }
    if !r.children.is_empty() {
        let _ = writeln!(
            out,
            "\nstarted {} other process(es) (sends and prerequisite syncs)",
            r.children.len()
        );
    }
    out
}
