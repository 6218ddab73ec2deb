//! `mend graph`: topologies as Mermaid or DOT, with `requires` shown expanded. Edges between
//! nodes are solid; a park's resume is dashed; a detour (a park's sync, a send) crosses to the
//! other topology's start node, drawn bold.

use std::fmt::Write as _;

use mend_core::topology::{Catalog, NodeKind, Topology};

struct Edge {
    from: String,
    to: String,
    label: String,
    style: Style,
}

#[derive(Clone, Copy, PartialEq)]
enum Style {
    Flow,
    Resume,
    Detour,
}

fn id(topology: &str, node: &str) -> String {
    let clean = |s: &str| {
        s.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect::<String>()
    };
    format!("{}__{}", clean(topology), clean(node))
}

fn edges(catalog: &Catalog, t: &Topology) -> Vec<Edge> {
    let mut out = Vec::new();
    for (event, e) in &t.events {
        out.push(Edge {
            from: id(&t.name, &format!("event {event}")),
            to: id(&t.name, &e.node),
            label: String::new(),
            style: Style::Flow,
        });
    }
    for n in t.nodes.values() {
        for (outcome, target) in &n.edges {
            out.push(Edge {
                from: id(&t.name, &n.name),
                to: id(&t.name, target),
                label: outcome.clone(),
                style: Style::Flow,
            });
        }
        let detour = match &n.kind {
            NodeKind::Park(p) => {
                out.push(Edge {
                    from: id(&t.name, &n.name),
                    to: id(&t.name, &p.resume),
                    label: "resume".into(),
                    style: Style::Resume,
                });
                p.sync.as_ref()
            }
            NodeKind::Send(s) => Some(s),
            _ => None,
        };
        if let Some(s) = detour
            && let Some(target) = catalog.get(&s.topology)
            && let Some(e) = target.events.get(&s.event)
        {
            out.push(Edge {
                from: id(&t.name, &n.name),
                to: id(&target.name, &e.node),
                label: format!("{}/{}", s.topology, s.event),
                style: Style::Detour,
            });
        }
    }
    out
}

pub fn render(catalog: &Catalog, only: Option<&str>, format: &str) -> anyhow::Result<String> {
    let chosen: Vec<&Topology> = match only {
        Some(name) => vec![
            catalog
                .get(name)
                .map(|t| t.as_ref())
                .ok_or_else(|| anyhow::anyhow!("unknown topology `{name}`"))?,
        ],
        None => catalog.topologies.values().map(|t| t.as_ref()).collect(),
    };
    let mut out = String::new();
    let dot = format == "dot";
    if dot {
        out.push_str(
            "digraph mend {\n  rankdir=LR;\n  node [shape=box, fontname=\"sans-serif\"];\n",
        );
    } else {
        out.push_str("flowchart LR\n");
    }
    let mut all_edges = Vec::new();
    for t in &chosen {
        if dot {
            let _ = writeln!(
                out,
                "  subgraph \"cluster_{}\" {{\n    label=\"{}\";",
                t.name, t.name
            );
        } else {
            let _ = writeln!(out, "  subgraph {}[\"{}\"]", id(&t.name, ""), t.name);
        }
        for event in t.events.keys() {
            let node = id(&t.name, &format!("event {event}"));
            if dot {
                let _ = writeln!(out, "    {node} [label=\"{event}\", shape=ellipse];");
            } else {
                let _ = writeln!(out, "    {node}([\"{event}\"])");
            }
        }
        for n in t.nodes.values() {
            let label = match &n.origin {
                Some(o) => format!("{} ({}, from requires {o})", n.name, n.kind.kind_name()),
                None => format!("{} ({})", n.name, n.kind.kind_name()),
            };
            let node = id(&t.name, &n.name);
            if dot {
                let style = if n.origin.is_some() {
                    ", style=dashed"
                } else {
                    ""
                };
                let _ = writeln!(out, "    {node} [label=\"{label}\"{style}];");
            } else {
                let _ = writeln!(out, "    {node}[\"{label}\"]");
            }
        }
        out.push_str(if dot { "  }\n" } else { "  end\n" });
        all_edges.extend(edges(catalog, t));
    }
    for e in all_edges {
        if dot {
            let style = match e.style {
                Style::Flow => "",
                Style::Resume => ", style=dashed",
                Style::Detour => ", style=bold, color=\"#b35900\"",
            };
            let _ = writeln!(
                out,
                "  {} -> {} [label=\"{}\"{style}];",
                e.from, e.to, e.label
            );
        } else {
            let arrow = match (e.style, e.label.is_empty()) {
                (Style::Flow, true) => "-->".to_owned(),
                (Style::Flow, false) => format!("-- {} -->", e.label),
                (Style::Resume, _) => format!("-. {} .->", e.label),
                (Style::Detour, _) => format!("== \"detour: {}\" ==>", e.label),
            };
            let _ = writeln!(out, "  {} {arrow} {}", e.from, e.to);
        }
    }
    if dot {
        out.push_str("}\n");
    }
    Ok(out)
}
