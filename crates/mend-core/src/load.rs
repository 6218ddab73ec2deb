//! Loading topology files: parse every file, compile templates and jq programs, check the
//! graph, and report every error at once with file, line, column and field.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use indexmap::IndexMap;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{
    AuthDoc, CacheDoc, CheckDoc, EventDoc, HttpDoc, Location, NextDoc, NodeDoc, RequiresDoc,
    SendDoc, Spanned, SplitDoc, TopologyDoc,
};
use crate::jq::Jq;
use crate::template::{TemplateBuilder, Tpl};
use crate::topology::{
    Auth, Body, CacheSpec, Case, Catalog, CheckSpec, Classifier, CronSpec, Event, HttpSpec,
    MAP_VARS, MapSpec, Node, NodeKind, Paging, ParkSpec, ReleaseSpec, SendSpec, SplitSpec,
    StatusMap, StatusPattern, SwitchSpec, System, Topology, Webhook, outcome,
};

/// One problem in one topology file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the place is not known.
    pub line: u64,
    pub column: u64,
    /// Dotted path of the offending field, e.g. `nodes.push.next.ok`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// All errors of one load, sorted by file and place.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Loads every `*.yaml` / `*.yml` file directly in `dir`.
pub fn load_dir(dir: &Path) -> Result<Catalog, ConfigErrors> {
    let read_err = |message: String| {
        ConfigErrors(vec![ConfigError {
            file: dir.to_path_buf(),
            line: 0,
            column: 0,
            field: String::new(),
            message,
        }])
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| read_err(format!("cannot read the topology directory: {e}")))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(read_err(
            "no topology files (*.yaml, *.yml) in this directory".into(),
        ));
    }
    let mut files = Vec::with_capacity(paths.len());
    for p in paths {
        let text = std::fs::read_to_string(&p)
            .map_err(|e| read_err(format!("cannot read {}: {e}", p.display())))?;
        files.push((p, text));
    }
    load_sources(files)
}

/// Loads topologies from (path, text) pairs; the paths only name the files in errors.
pub fn load_sources(files: Vec<(PathBuf, String)>) -> Result<Catalog, ConfigErrors> {
    let mut errors = Vec::new();
    let mut topologies: IndexMap<String, (Topology, Vec<PendingSend>)> = IndexMap::new();
    let mut name_places: IndexMap<String, PathBuf> = IndexMap::new();
    for (file, text) in files {
        let doc = match serde_saphyr::from_str::<TopologyDoc>(&text) {
            Ok(doc) => doc,
            Err(e) => {
                errors.push(parse_error(&file, &e));
                continue;
            }
        };
        let mut cx = Checker {
            file: file.clone(),
            errors: Vec::new(),
        };
        let name_loc = doc.name.referenced;
        let compiled = cx.topology(doc, &text);
        errors.append(&mut cx.errors);
        if let Some((topology, sends)) = compiled {
            if let Some(first) = name_places.get(&topology.name) {
                errors.push(at(
                    &file,
                    name_loc,
                    "name",
                    format!(
                        "topology `{}` is already defined in {}; topology names must be unique",
                        topology.name,
                        first.display()
                    ),
                ));
                continue;
            }
            name_places.insert(topology.name.clone(), file.clone());
            topologies.insert(topology.name.clone(), (topology, sends));
        }
    }
    // Cross-file checks: every `send` names a topology and a start event that exist.
    for (name, (topology, sends)) in &topologies {
        for s in sends {
            let target = if s.topology == *name {
                Some(topology)
            } else {
                topologies.get(&s.topology).map(|(t, _)| t)
            };
            match target {
                None => errors.push(at(
                    &topology.file,
                    s.topology_loc,
                    &s.field,
                    format!(
                        "sends to unknown topology `{}`; known topologies: {}",
                        s.topology,
                        list(topologies.keys())
                    ),
                )),
                Some(t) if !t.events.contains_key(&s.event) => errors.push(at(
                    &topology.file,
                    s.event_loc,
                    &s.field,
                    format!(
                        "sends to unknown start event `{}` of topology `{}`; it has: {}",
                        s.event,
                        t.name,
                        list(t.events.keys())
                    ),
                )),
                Some(_) => {}
            }
        }
    }
    // Files in load order, each file's errors top to bottom.
    let order: Vec<PathBuf> = name_places.values().cloned().collect();
    errors.sort_by_key(|e| {
        let file_rank = order
            .iter()
            .position(|f| *f == e.file)
            .unwrap_or(usize::MAX);
        (file_rank, e.file.clone(), e.line, e.column)
    });
    if errors.is_empty() {
        Ok(Catalog {
            topologies: topologies
                .into_iter()
                .map(|(k, (t, _))| (k, Arc::new(t)))
                .collect(),
        })
    } else {
        Err(ConfigErrors(errors))
    }
}

fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<String> = names.map(|n| format!("`{n}`")).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn at(file: &Path, loc: Location, field: &str, message: String) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        line: loc.line(),
        column: loc.column(),
        field: field.to_owned(),
        message,
    }
}

fn parse_error(file: &Path, e: &serde_saphyr::Error) -> ConfigError {
    let loc = e.location().unwrap_or(Location::UNKNOWN);
    // The rendered error repeats the place and draws a snippet; keep the first line's message.
    let rendered = e.without_snippet().to_string();
    let message = rendered
        .lines()
        .next()
        .unwrap_or("invalid YAML")
        .trim()
        .to_owned();
    let message = strip_place(&message);
    ConfigError {
        file: file.to_path_buf(),
        line: loc.line(),
        column: loc.column(),
        field: String::new(),
        message,
    }
}

/// Drops a trailing " at line X column Y" that the YAML parser appends.
fn strip_place(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

struct PendingSend {
    field: String,
    topology: String,
    topology_loc: Location,
    event: String,
    event_loc: Location,
}

struct Checker {
    file: PathBuf,
    errors: Vec<ConfigError>,
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn loc_or(s: &Spanned<String>, fallback: Location) -> Location {
    if s.referenced == Location::UNKNOWN {
        fallback
    } else {
        s.referenced
    }
}

impl Checker {
    fn err(&mut self, loc: Location, field: impl AsRef<str>, message: impl Into<String>) {
        self.errors
            .push(at(&self.file, loc, field.as_ref(), message.into()));
    }

    fn name(&mut self, loc: Location, field: &str, what: &str, name: &str) {
        if !valid_name(name) {
            self.err(
                loc,
                field,
                format!("{what} name `{name}` must start with a letter or digit and use only letters, digits, `-`, `_` and `.`"),
            );
        }
    }

    fn topology(&mut self, doc: TopologyDoc, source: &str) -> Option<(Topology, Vec<PendingSend>)> {
        let name = doc.name.value.clone();
        self.name(doc.name.referenced, "name", "topology", &name);
        let mut tb = TemplateBuilder::new();

        let mut systems = IndexMap::new();
        for (sname, sdoc) in &doc.systems {
            let field = format!("systems.{sname}");
            self.name(sdoc.referenced, &field, "system", sname);
            let s = &sdoc.value;
            if s.url.value.trim().is_empty() {
                self.err(
                    s.url.referenced,
                    format!("{field}.url"),
                    "the base URL is empty",
                );
            }
            let auth = s
                .auth
                .as_ref()
                .and_then(|a| self.auth(&a.value, a.referenced, &field));
            systems.insert(
                sname.clone(),
                System {
                    name: sname.clone(),
                    url: s.url.value.clone(),
                    timeout: s.timeout,
                    headers: s.headers.clone(),
                    auth,
                    rate: s.rate,
                    burst: s.burst,
                    max_concurrent: s.max_concurrent,
                },
            );
        }

        let mut nodes: IndexMap<String, Node> = IndexMap::new();
        let mut sends = Vec::new();
        let mut nexts: Vec<(String, &Spanned<NodeDoc>)> = Vec::new();
        for (nname, ndoc) in &doc.nodes {
            let field = format!("nodes.{nname}");
            self.name(ndoc.referenced, &field, "node", nname);
            let Some(kind) = self.kind(
                &name,
                nname,
                &ndoc.value,
                ndoc.referenced,
                &systems,
                &mut tb,
                &mut sends,
            ) else {
                continue;
            };
            if let Some(0) = ndoc.value.concurrency {
                self.err(
                    ndoc.referenced,
                    format!("{field}.concurrency"),
                    "concurrency must be at least 1",
                );
            }
            let retry = ndoc.value.retry.unwrap_or_default();
            if retry.attempts == 0 {
                self.err(
                    ndoc.referenced,
                    format!("{field}.retry.attempts"),
                    "attempts must be at least 1 (the first try counts)",
                );
            }
            nodes.insert(
                nname.clone(),
                Node {
                    name: nname.clone(),
                    kind,
                    edges: IndexMap::new(),
                    retry,
                    concurrency: ndoc.value.concurrency,
                    origin: None,
                },
            );
            nexts.push((nname.clone(), ndoc));
        }

        // Edges: every outcome named must be one the kind produces, every target must exist.
        let known_nodes: Vec<String> = doc.nodes.keys().cloned().collect();
        for (nname, ndoc) in nexts {
            let Some(next) = &ndoc.value.next else {
                continue;
            };
            let field = format!("nodes.{nname}.next");
            let node = &nodes[&nname];
            let produced = node.kind.outcomes();
            let mut edges = IndexMap::new();
            match &next.value {
                NextDoc::One(target) => match node.kind.main_outcome() {
                    Some(o) => {
                        edges.insert(o.to_owned(), (target.clone(), next.referenced));
                    }
                    None => self.err(
                        next.referenced,
                        &field,
                        format!(
                            "a {} node routes by outcome: write `next:` as a map from outcome to node (outcomes: {})",
                            node.kind.kind_name(),
                            produced.join(", ")
                        ),
                    ),
                },
                NextDoc::ByOutcome(map) => {
                    for (o, target) in map {
                        let loc = loc_or(target, next.referenced);
                        if o == outcome::RETRY {
                            self.err(loc, format!("{field}.{o}"), "`retry` is handled by the node's retry policy and cannot be routed");
                        } else if !produced.contains(o) {
                            self.err(
                                loc,
                                format!("{field}.{o}"),
                                format!(
                                    "a {} node never produces outcome `{o}`; it produces: {}",
                                    node.kind.kind_name(),
                                    produced.join(", ")
                                ),
                            );
                        } else {
                            edges.insert(o.clone(), (target.value.clone(), loc));
                        }
                    }
                }
            }
            let mut resolved = IndexMap::new();
            for (o, (target, loc)) in edges {
                if !known_nodes.contains(&target) {
                    self.err(
                        loc,
                        format!("{field}.{o}"),
                        format!(
                            "unknown node `{target}`; this topology has: {}",
                            list(known_nodes.iter())
                        ),
                    );
                } else {
                    resolved.insert(o, target);
                }
            }
            if let Some(n) = nodes.get_mut(&nname) {
                n.edges = resolved;
            }
        }

        let mut events = IndexMap::new();
        if doc.events.is_empty() {
            self.err(
                doc.name.referenced,
                "events",
                "a topology needs at least one start event, e.g. `events: { run: first-node }`",
            );
        }
        for (ename, edoc) in &doc.events {
            let field = format!("events.{ename}");
            self.name(edoc.referenced, &field, "event", ename);
            if let Some(e) = self.event(ename, &edoc.value, edoc.referenced, &field, &known_nodes) {
                events.insert(ename.clone(), e);
            }
        }

        // A park resumes at a node of this topology.
        for (nname, ndoc) in &doc.nodes {
            if let Some(p) = &ndoc.value.park
                && !known_nodes.contains(&p.value.resume.value)
            {
                self.err(
                    p.value.resume.referenced,
                    format!("nodes.{nname}.park.resume"),
                    format!(
                        "unknown node `{}`; this topology has: {}",
                        p.value.resume.value,
                        list(known_nodes.iter())
                    ),
                );
            }
        }

        // `requires` blocks become generated nodes in front of (or, optimistic, behind) their
        // node; edges and events that led to the node lead to its first check instead.
        let mut entries: IndexMap<String, String> = IndexMap::new();
        for (nname, ndoc) in &doc.nodes {
            if ndoc.value.requires.is_empty() || !nodes.contains_key(nname) {
                continue;
            }
            let entry = self.expand_requires(
                &name,
                nname,
                &ndoc.value.requires,
                &mut nodes,
                &systems,
                &mut tb,
                &mut sends,
            );
            if entry != *nname {
                entries.insert(nname.clone(), entry);
            }
        }
        if !entries.is_empty() {
            for node in nodes.values_mut().filter(|n| n.origin.is_none()) {
                for target in node.edges.values_mut() {
                    if let Some(entry) = entries.get(target) {
                        *target = entry.clone();
                    }
                }
            }
            for e in events.values_mut() {
                if let Some(entry) = entries.get(&e.node) {
                    e.node = entry.clone();
                }
            }
        }

        // Reachability: a node that no start event leads to is dead configuration.
        let mut seen: HashSet<&str> = HashSet::new();
        let mut queue: VecDeque<&str> = events.values().map(|e: &Event| e.node.as_str()).collect();
        while let Some(n) = queue.pop_front() {
            if !seen.insert(n) {
                continue;
            }
            if let Some(node) = nodes.get(n) {
                queue.extend(node.edges.values().map(String::as_str));
                if let NodeKind::Park(p) = &node.kind {
                    queue.push_back(p.resume.as_str());
                }
            }
        }
        // Only on an otherwise clean file: after a broken edge, "unreachable" is noise.
        let all_compiled = self.errors.is_empty();
        for (nname, ndoc) in &doc.nodes {
            if all_compiled
                && !seen.contains(nname.as_str())
                && events.len() == doc.events.len()
                && !events.is_empty()
            {
                self.err(
                    ndoc.referenced,
                    format!("nodes.{nname}"),
                    format!("node `{nname}` is unreachable: no start event or edge leads to it"),
                );
            }
        }
        if !self.errors.is_empty() {
            return None;
        }
        let version = {
            let digest = Sha256::digest(source.as_bytes());
            digest
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let topology = Topology {
            name,
            version,
            file: self.file.clone(),
            source: source.to_owned(),
            description: doc.description,
            systems,
            events,
            nodes,
            templates: tb.finish(),
        };
        Some((topology, sends))
    }

    fn auth(&mut self, a: &AuthDoc, loc: Location, field: &str) -> Option<Auth> {
        let field = format!("{field}.auth");
        match (
            a,
            &a.bearer_env,
            &a.header,
            &a.value_env,
            &a.basic_user_env,
            &a.basic_password_env,
        ) {
            (_, Some(env), None, None, None, None) => Some(Auth::Bearer { env: env.clone() }),
            (_, None, Some(name), Some(env), None, None) => Some(Auth::Header {
                name: name.clone(),
                env: env.clone(),
            }),
            (_, None, None, None, Some(u), Some(p)) => Some(Auth::Basic {
                user_env: u.clone(),
                password_env: p.clone(),
            }),
            _ => {
                self.err(loc, field, "use one form: `bearer_env: VAR`, `header: NAME` with `value_env: VAR`, or `basic_user_env` with `basic_password_env`");
                None
            }
        }
    }

    fn event(
        &mut self,
        ename: &str,
        e: &EventDoc,
        loc: Location,
        field: &str,
        nodes: &[String],
    ) -> Option<Event> {
        let node_loc = loc_or(&e.node, loc);
        let mut ok = true;
        if !nodes.contains(&e.node.value) {
            self.err(
                node_loc,
                format!("{field}.node"),
                format!(
                    "unknown node `{}`; this topology has: {}",
                    e.node.value,
                    list(nodes.iter())
                ),
            );
            ok = false;
        }
        let cron = match &e.cron {
            None => None,
            Some(c) => match croner::Cron::from_str(&c.value) {
                Ok(schedule) => Some(CronSpec {
                    expression: c.value.clone(),
                    schedule,
                }),
                Err(err) => {
                    self.err(
                        c.referenced,
                        format!("{field}.cron"),
                        format!("`{}` is not a cron schedule: {err}", c.value),
                    );
                    ok = false;
                    None
                }
            },
        };
        if let Some(w) = &e.webhook
            && w.token_env.trim().is_empty()
        {
            self.err(
                loc,
                format!("{field}.webhook.token_env"),
                "name the environment variable that holds the webhook token",
            );
            ok = false;
        }
        ok.then(|| Event {
            name: ename.to_owned(),
            node: e.node.value.clone(),
            cron,
            webhook: e.webhook.as_ref().map(|w| Webhook {
                token_env: w.token_env.clone(),
            }),
            data: e.data.clone(),
        })
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call site; splitting the context would only move the arguments"
    )]
    fn kind(
        &mut self,
        topology: &str,
        nname: &str,
        n: &NodeDoc,
        loc: Location,
        systems: &IndexMap<String, System>,
        tb: &mut TemplateBuilder,
        sends: &mut Vec<PendingSend>,
    ) -> Option<NodeKind> {
        let field = format!("nodes.{nname}");
        let given: Vec<&str> = [
            ("http", n.http.is_some()),
            ("switch", n.switch.is_some()),
            ("split", n.split.is_some()),
            ("map", n.map.is_some()),
            ("send", n.send.is_some()),
            ("check", n.check.is_some()),
            ("park", n.park.is_some()),
            ("release", n.release.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        if given.len() != 1 {
            let msg = if given.is_empty() {
                "a node needs exactly one kind: one of `http`, `switch`, `split`, `map`, `send`, `check`, `park`, `release`"
                    .to_owned()
            } else {
                format!(
                    "a node has exactly one kind, this one has {}",
                    given.join(" and ")
                )
            };
            self.err(loc, field, msg);
            return None;
        }
        if let Some(h) = &n.http {
            return self
                .http(
                    &h.value,
                    h.referenced,
                    &format!("{field}.http"),
                    systems,
                    tb,
                )
                .map(NodeKind::Http);
        }
        if let Some(s) = &n.switch {
            let mut cases = Vec::new();
            for (i, c) in s.value.cases.iter().enumerate() {
                let f = format!("{field}.switch.cases[{i}].when");
                match tb.expr(&c.when.value) {
                    Ok(when) => cases.push(Case {
                        when,
                        outcome: c.outcome.clone(),
                    }),
                    Err(e) => self.err(c.when.referenced, f, format!("template syntax error: {e}")),
                }
            }
            if s.value.cases.is_empty() {
                self.err(
                    s.referenced,
                    format!("{field}.switch.cases"),
                    "a switch needs at least one case",
                );
            }
            let default = s
                .value
                .default
                .clone()
                .unwrap_or_else(|| outcome::DEFAULT.to_owned());
            return Some(NodeKind::Switch(SwitchSpec { cases, default }));
        }
        if let Some(s) = &n.split {
            return self
                .split(
                    &s.value,
                    s.referenced,
                    &format!("{field}.split"),
                    systems,
                    tb,
                )
                .map(NodeKind::Split);
        }
        if let Some(m) = &n.map {
            let program = Jq::compile(&m.value, &MAP_VARS).unwrap_or_else(|e| {
                self.err(m.referenced, format!("{field}.map"), e);
                placeholder_jq()
            });
            return Some(NodeKind::Map(MapSpec { program }));
        }
        if let Some(s) = &n.send {
            return self
                .send_spec(topology, &format!("{field}.send"), s, tb, sends)
                .map(NodeKind::Send);
        }
        if let Some(c) = &n.check {
            let cache = cache_spec(c.value.cache.as_ref(), nname);
            return self
                .check_spec(
                    &c.value,
                    c.referenced,
                    &format!("{field}.check"),
                    (cache, None),
                    systems,
                    tb,
                )
                .map(NodeKind::Check);
        }
        if let Some(p) = &n.park {
            let f = format!("{field}.park");
            let key = self.text(tb, &p.value.key, &format!("{f}.key"));
            let sync = match &p.value.sync {
                Some(sd) => Some(self.send_spec(topology, &format!("{f}.sync"), sd, tb, sends)?),
                None => None,
            };
            return Some(NodeKind::Park(ParkSpec {
                key,
                resume: p.value.resume.value.clone(),
                sync,
                max_wait: p.value.max_wait,
                cache: p.value.cache.as_ref().map(|c| cache_spec(Some(c), nname)),
                coalesce: p.value.coalesce.unwrap_or(true),
            }));
        }
        let r = n.release.as_ref()?;
        let key = self.text(tb, &r.value.key, &format!("{field}.release.key"));
        Some(NodeKind::Release(ReleaseSpec {
            key,
            cache: r.value.cache.as_ref().map(|c| cache_spec(Some(c), nname)),
        }))
    }

    /// Expands the `requires` of node `nname` into generated nodes and returns the node that
    /// messages for `nname` should enter at.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site, all of it the loader's state"
    )]
    fn expand_requires(
        &mut self,
        topology: &str,
        nname: &str,
        requires: &IndexMap<String, Spanned<RequiresDoc>>,
        nodes: &mut IndexMap<String, Node>,
        systems: &IndexMap<String, System>,
        tb: &mut TemplateBuilder,
        sends: &mut Vec<PendingSend>,
    ) -> String {
        let mut next_entry = nname.to_owned();
        let mut generated: Vec<Node> = Vec::new();
        for (rname, r) in requires.iter().rev() {
            // Where a message goes once this requirement is met (or does not apply).
            let after = next_entry.clone();
            let field = format!("nodes.{nname}.requires.{rname}");
            let origin = Some(format!("{nname}.{rname}"));
            let optimistic = match r.value.mode.as_ref().map(|m| m.value.as_str()) {
                None | Some("check") => false,
                Some("optimistic") => true,
                Some(other) => {
                    let loc = r
                        .value
                        .mode
                        .as_ref()
                        .map(|m| m.referenced)
                        .unwrap_or(r.referenced);
                    self.err(
                        loc,
                        format!("{field}.mode"),
                        format!("`{other}` is not a mode; use `check` or `optimistic`"),
                    );
                    continue;
                }
            };
            let cache = cache_spec(r.value.cache.as_ref(), rname);
            let key = self.text(tb, &r.value.key, &format!("{field}.key"));
            let Some(sync) =
                self.send_spec(topology, &format!("{field}.sync"), &r.value.sync, tb, sends)
            else {
                continue;
            };
            let park_name = format!("{nname}.{rname}.park");
            let park_resume = if optimistic {
                nname.to_owned()
            } else {
                after.clone()
            };
            generated.push(Node {
                name: park_name.clone(),
                kind: NodeKind::Park(ParkSpec {
                    key: key.clone(),
                    resume: park_resume,
                    sync: Some(sync),
                    max_wait: r.value.max_wait,
                    cache: Some(cache.clone()),
                    coalesce: r.value.coalesce.unwrap_or(true),
                }),
                edges: IndexMap::new(),
                retry: Default::default(),
                concurrency: None,
                origin: origin.clone(),
            });
            if optimistic && (r.value.when.is_some() || r.value.check.is_some()) {
                self.err(
                    r.referenced,
                    field.clone(),
                    "optimistic mode pushes first and asks nothing before: remove `when` and `check`, or use `mode: check`",
                );
                continue;
            }
            if optimistic {
                let Some(miss) = &r.value.missing_response else {
                    self.err(r.referenced, format!("{field}.missing_response"), "optimistic mode needs `missing_response: { status, body_contains }`: how the target says the prerequisite is missing");
                    continue;
                };
                let status = match StatusPattern::parse(&miss.value.status) {
                    Ok(s) => s,
                    Err(e) => {
                        self.err(
                            miss.referenced,
                            format!("{field}.missing_response.status"),
                            e,
                        );
                        continue;
                    }
                };
                let outcome = format!("missing.{rname}");
                match nodes.get_mut(nname) {
                    Some(Node { kind: NodeKind::Http(h), edges, .. }) => {
                        h.classify.push(Classifier { status, body_contains: miss.value.body_contains.clone(), outcome: outcome.clone() });
                        edges.insert(outcome, park_name);
                    }
                    _ => self.err(r.referenced, field, "optimistic mode needs an `http` node: it pushes first and reads the answer"),
                }
                continue;
            }
            let Some(check) = &r.value.check else {
                self.err(r.referenced, format!("{field}.check"), "give the request that asks whether it exists, e.g. `check: { system: target, get: /categories/{{ payload.category_id }} }`, or use `mode: optimistic`");
                continue;
            };
            let Some(spec) = self.check_spec(
                &check.value,
                check.referenced,
                &format!("{field}.check"),
                (cache, Some(key)),
                systems,
                tb,
            ) else {
                continue;
            };
            let check_name = format!("{nname}.{rname}.check");
            generated.push(Node {
                name: check_name.clone(),
                kind: NodeKind::Check(spec),
                edges: IndexMap::from([
                    (outcome::EXISTS.to_owned(), after.clone()),
                    (outcome::MISSING.to_owned(), park_name),
                ]),
                retry: Default::default(),
                concurrency: None,
                origin: origin.clone(),
            });
            next_entry = check_name;
            if let Some(when) = &r.value.when {
                let cond = self.expr(tb, when, &format!("{field}.when"));
                let when_name = format!("{nname}.{rname}.when");
                generated.push(Node {
                    name: when_name.clone(),
                    kind: NodeKind::Switch(SwitchSpec {
                        cases: vec![Case {
                            when: cond,
                            outcome: "required".into(),
                        }],
                        default: "not-required".into(),
                    }),
                    edges: IndexMap::from([
                        ("required".to_owned(), next_entry.clone()),
                        ("not-required".to_owned(), after),
                    ]),
                    retry: Default::default(),
                    concurrency: None,
                    origin,
                });
                next_entry = when_name;
            }
        }
        for n in generated.into_iter().rev() {
            if nodes.contains_key(&n.name) {
                self.err(Location::UNKNOWN, format!("nodes.{}", n.name), format!("this name is taken by a node generated from `requires` of `{nname}`; rename the node"));
                continue;
            }
            nodes.insert(n.name.clone(), n);
        }
        next_entry
    }

    /// Compiles a text template, reporting a syntax error at its place.
    fn text(&mut self, tb: &mut TemplateBuilder, src: &Spanned<String>, field: &str) -> Tpl {
        tb.text(&src.value).unwrap_or_else(|e| {
            self.err(src.referenced, field, format!("template syntax error: {e}"));
            Tpl::Literal(String::new())
        })
    }

    fn expr(&mut self, tb: &mut TemplateBuilder, src: &Spanned<String>, field: &str) -> Tpl {
        tb.expr(&src.value).unwrap_or_else(|e| {
            self.err(src.referenced, field, format!("template syntax error: {e}"));
            Tpl::Literal(String::new())
        })
    }

    fn send_spec(
        &mut self,
        topology: &str,
        f: &str,
        s: &Spanned<SendDoc>,
        tb: &mut TemplateBuilder,
        sends: &mut Vec<PendingSend>,
    ) -> Option<SendSpec> {
        let data = match &s.value.data {
            None => None,
            Some(d) => match tb.json(&d.value) {
                Ok(t) => Some(t),
                Err(e) => {
                    self.err(
                        d.referenced,
                        format!("{f}.data"),
                        format!("template syntax error: {e}"),
                    );
                    return None;
                }
            },
        };
        let (target, target_loc) = match &s.value.topology {
            Some(t) => (t.value.clone(), t.referenced),
            None => (topology.to_owned(), s.referenced),
        };
        sends.push(PendingSend {
            field: f.to_owned(),
            topology: target.clone(),
            topology_loc: target_loc,
            event: s.value.event.value.clone(),
            event_loc: s.value.event.referenced,
        });
        Some(SendSpec {
            topology: target,
            event: s.value.event.value.clone(),
            data,
        })
    }

    fn check_spec(
        &mut self,
        c: &CheckDoc,
        loc: Location,
        field: &str,
        (cache, key): (CacheSpec, Option<Tpl>),
        systems: &IndexMap<String, System>,
        tb: &mut TemplateBuilder,
    ) -> Option<CheckSpec> {
        let http = self.http(&c.request(), loc, field, systems, tb)?;
        let key = match (key, &c.key) {
            (Some(k), _) => k,
            (None, Some(k)) => self.text(tb, k, &format!("{field}.key")),
            (None, None) => {
                self.err(
                    loc,
                    format!("{field}.key"),
                    "a check needs a cache `key`, e.g. `key: category:{{ payload.category_id }}`",
                );
                Tpl::Literal(String::new())
            }
        };
        let exists = c
            .exists
            .as_ref()
            .map(|e| self.expr(tb, e, &format!("{field}.exists")));
        let missing = c
            .missing
            .as_ref()
            .map(|e| self.expr(tb, e, &format!("{field}.missing")));
        Some(CheckSpec {
            http,
            key,
            exists,
            missing,
            cache,
        })
    }

    fn split(
        &mut self,
        s: &SplitDoc,
        loc: Location,
        field: &str,
        systems: &IndexMap<String, System>,
        tb: &mut TemplateBuilder,
    ) -> Option<SplitSpec> {
        let items_src = s.items.as_ref().map(|i| i.value.as_str()).unwrap_or(".");
        let items_loc = s.items.as_ref().map(|i| i.referenced).unwrap_or(loc);
        let items = Jq::compile(items_src, &MAP_VARS).unwrap_or_else(|e| {
            self.err(items_loc, format!("{field}.items"), e);
            placeholder_jq()
        });
        let http = match &s.http {
            Some(h) => Some(self.http(
                &h.value,
                h.referenced,
                &format!("{field}.http"),
                systems,
                tb,
            )?),
            None => None,
        };
        let paging = match &s.paging {
            None => Paging::None,
            Some(p) => match (&p.value.page, &p.value.next) {
                (Some(start), None) => Paging::Counter { start: *start },
                (None, Some(next)) => match Jq::compile(&next.value, &[]) {
                    Ok(j) => Paging::NextLink(j),
                    Err(e) => {
                        self.err(next.referenced, format!("{field}.paging.next"), e);
                        return None;
                    }
                },
                _ => {
                    self.err(p.referenced, format!("{field}.paging"), "use one of `page: 1` (a page counter) or `next: .path.to.link` (a next-page link)");
                    return None;
                }
            },
        };
        if !matches!(paging, Paging::None) && http.is_none() {
            self.err(
                loc,
                format!("{field}.paging"),
                "paging needs `http`: the pages are fetched with it",
            );
            return None;
        }
        if s.chunk == Some(0) {
            self.err(loc, format!("{field}.chunk"), "chunk must be at least 1");
        }
        Some(SplitSpec {
            items,
            http,
            paging,
            chunk: s.chunk.unwrap_or(500).max(1),
            max_pages: s.max_pages.unwrap_or(100_000),
        })
    }

    fn http(
        &mut self,
        h: &HttpDoc,
        loc: Location,
        field: &str,
        systems: &IndexMap<String, System>,
        tb: &mut TemplateBuilder,
    ) -> Option<HttpSpec> {
        if let Some(s) = &h.system
            && !systems.contains_key(&s.value)
        {
            self.err(
                s.referenced,
                format!("{field}.system"),
                format!(
                    "unknown system `{}`; this topology has: {}",
                    s.value,
                    list(systems.keys())
                ),
            );
        }
        let verbs: Vec<(&str, &Spanned<String>)> = [
            ("GET", &h.get),
            ("POST", &h.post),
            ("PUT", &h.put),
            ("PATCH", &h.patch),
            ("DELETE", &h.delete),
        ]
        .into_iter()
        .filter_map(|(m, v)| v.as_ref().map(|v| (m, v)))
        .collect();
        let (method, url) = match (verbs.as_slice(), &h.method, &h.url) {
            ([(m, u)], None, None) => ((*m).to_owned(), *u),
            ([], Some(m), Some(u)) => {
                let upper = m.value.to_ascii_uppercase();
                if !matches!(
                    upper.as_str(),
                    "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS"
                ) {
                    self.err(
                        m.referenced,
                        format!("{field}.method"),
                        format!("`{}` is not an HTTP method", m.value),
                    );
                }
                (upper, u)
            }
            ([], None, Some(u)) => ("GET".to_owned(), u),
            _ => {
                self.err(loc, field, "give the request as one of `get:`, `post:`, `put:`, `patch:`, `delete:` with the URL, or as `method:` and `url:`");
                return None;
            }
        };
        if h.system.is_none() {
            let u = url.value.trim_start();
            if !(u.starts_with("http://") || u.starts_with("https://") || u.starts_with("{{")) {
                self.err(url.referenced, format!("{field}.url"), format!("`{}` is relative but the request names no `system`; give a system or an absolute URL", url.value));
            }
        }
        let mut tpl = |this: &mut Self, src: &Spanned<String>, f: String| -> Option<Tpl> {
            match tb.text(&src.value) {
                Ok(t) => Some(t),
                Err(e) => {
                    this.err(src.referenced, f, format!("template syntax error: {e}"));
                    None
                }
            }
        };
        let url_tpl = tpl(self, url, format!("{field}.url"));
        let mut query = Vec::new();
        for (k, v) in &h.query {
            if let Some(t) = tpl(self, v, format!("{field}.query.{k}")) {
                query.push((k.clone(), t));
            }
        }
        let mut headers = Vec::new();
        for (k, v) in &h.headers {
            if let Some(t) = tpl(self, v, format!("{field}.headers.{k}")) {
                headers.push((k.clone(), t));
            }
        }
        let body = match (&h.body, &h.json) {
            (Some(_), Some(j)) => {
                self.err(
                    j.referenced,
                    format!("{field}.json"),
                    "give either `body` (text) or `json`, not both",
                );
                Body::None
            }
            (Some(b), None) => tpl(self, b, format!("{field}.body"))
                .map(Body::Text)
                .unwrap_or(Body::None),
            (None, Some(j)) => match tb.json(&j.value) {
                Ok(t) => Body::Json(t),
                Err(e) => {
                    self.err(
                        j.referenced,
                        format!("{field}.json"),
                        format!("template syntax error: {e}"),
                    );
                    Body::None
                }
            },
            (None, None) if matches!(method.as_str(), "POST" | "PUT" | "PATCH") => Body::Payload,
            (None, None) => Body::None,
        };
        let mut rules = Vec::new();
        for (pattern, o) in &h.outcomes {
            match StatusPattern::parse(pattern) {
                Ok(p) => {
                    if !valid_name(&o.value) {
                        self.err(
                            o.referenced,
                            format!("{field}.outcomes.{pattern}"),
                            format!("`{}` is not a valid outcome name", o.value),
                        );
                    }
                    rules.push((p, o.value.clone()));
                }
                Err(e) => self.err(o.referenced, format!("{field}.outcomes"), e),
            }
        }
        // Past this point the node's shape is known: keep it even with errors in its parts, so
        // the checks of edges and reachability still run and report their own problems.
        Some(HttpSpec {
            system: h.system.as_ref().map(|s| s.value.clone()),
            method,
            url: url_tpl.unwrap_or_else(|| Tpl::Literal(String::new())),
            query,
            headers,
            body,
            timeout: h.timeout,
            statuses: StatusMap::new(rules),
            idempotency_header: h.idempotency_header.clone(),
            classify: Vec::new(),
        })
    }
}

/// The cache of a check or park: named after `fallback` unless the document names it.
fn cache_spec(doc: Option<&CacheDoc>, fallback: &str) -> CacheSpec {
    let doc = doc.cloned().unwrap_or_default();
    CacheSpec {
        name: doc.name.unwrap_or_else(|| fallback.to_owned()),
        ttl: doc.ttl,
        negative_ttl: doc.negative_ttl,
        set_on_release: doc.on_release == crate::config::OnRelease::Exists,
    }
}

/// Stands in for a program that failed to compile, so the rest of the file is still checked.
/// A topology with any error is never returned, so it never runs.
fn placeholder_jq() -> Jq {
    Jq::compile(".", &[]).expect("`.` is a valid jq program")
}

/// The JSON a start event sends when fired without data.
pub fn event_default_data(event: &Event) -> Value {
    event
        .data
        .clone()
        .unwrap_or(Value::Object(Default::default()))
}
