//! One test per class of topology error: each asserts that the message names the file, the
//! line and the field, and says what was expected.

use std::path::PathBuf;

use mend_core::load::{ConfigError, load_sources};

fn errors(files: &[(&str, &str)]) -> Vec<ConfigError> {
    let files = files
        .iter()
        .map(|(n, t)| (PathBuf::from(n), (*t).to_owned()))
        .collect();
    match load_sources(files) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.0,
    }
}

fn one(file: &str, text: &str) -> ConfigError {
    let mut errs = errors(&[(file, text)]);
    assert_eq!(errs.len(), 1, "expected exactly one error, got: {errs:#?}");
    errs.remove(0)
}

const GOOD: &str = r#"name: shop
systems:
  target: { url: "http://127.0.0.1:1" }
events:
  run: list
nodes:
  list:
    http: { system: target, get: "/products/{{ payload.id }}" }
    next: { ok: done, missing: done }
  done:
    map: "{id: .id}"
"#;

#[test]
fn a_valid_topology_loads_with_a_version() {
    let catalog = load_sources(vec![(PathBuf::from("shop.yaml"), GOOD.to_owned())]).unwrap();
    let t = catalog.get("shop").unwrap();
    assert_eq!(t.version.len(), 16);
    assert_eq!(t.nodes["list"].edge("missing"), Some("done"));
}

#[test]
fn unknown_node_reference_names_line_and_field() {
    let text = GOOD.replace("missing: done", "missing: dnoe");
    let e = one("shop.yaml", &text);
    assert_eq!((e.line, e.field.as_str()), (9, "nodes.list.next.missing"));
    assert!(e.message.contains("unknown node `dnoe`"), "{e}");
    assert!(e.to_string().starts_with("shop.yaml:9:"), "{e}");
}

#[test]
fn unknown_event_node() {
    let e = one("shop.yaml", &GOOD.replace("run: list", "run: lsit"));
    assert_eq!((e.line, e.field.as_str()), (5, "events.run.node"));
    assert!(e.message.contains("unknown node `lsit`"), "{e}");
}

#[test]
fn unknown_system_reference() {
    let e = one(
        "shop.yaml",
        &GOOD.replace("system: target", "system: tagret"),
    );
    assert_eq!((e.line, e.field.as_str()), (8, "nodes.list.http.system"));
    assert!(
        e.message.contains("unknown system `tagret`") && e.message.contains("`target`"),
        "{e}"
    );
}

#[test]
fn send_to_unknown_topology_and_unknown_event() {
    let sender = r#"name: a
events: { run: go }
nodes:
  go:
    send: { topology: b, event: strat }
  "#;
    let b = "name: b\nevents: { start: x }\nnodes:\n  x: { map: \".\" }\n";
    let errs = errors(&[("a.yaml", sender), ("b.yaml", b)]);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!((errs[0].line, errs[0].field.as_str()), (5, "nodes.go.send"));
    assert!(
        errs[0]
            .message
            .contains("unknown start event `strat` of topology `b`"),
        "{}",
        errs[0]
    );
    let errs = errors(&[
        ("a.yaml", &sender.replace("topology: b", "topology: c")),
        ("b.yaml", b),
    ]);
    assert!(
        errs[0].message.contains("unknown topology `c`"),
        "{}",
        errs[0]
    );
    assert_eq!(errs[0].file, PathBuf::from("a.yaml"));
}

#[test]
fn unreachable_node() {
    let text = format!("{GOOD}  orphan:\n    map: \".\"\n");
    let e = one("shop.yaml", &text);
    assert_eq!((e.line, e.field.as_str()), (13, "nodes.orphan"));
    assert!(e.message.contains("unreachable"), "{e}");
}

#[test]
fn duplicate_node_names_and_duplicate_topologies() {
    let text = format!("{GOOD}  done:\n    map: \".\"\n");
    let e = one("shop.yaml", &text);
    assert_eq!(e.line, 12, "{e}");
    assert!(e.message.to_lowercase().contains("duplicate"), "{e}");
    let errs = errors(&[("one.yaml", GOOD), ("two.yaml", GOOD)]);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(
        (errs[0].file.to_str(), errs[0].line, errs[0].field.as_str()),
        (Some("two.yaml"), 1, "name")
    );
    assert!(
        errs[0].message.contains("already defined in one.yaml"),
        "{}",
        errs[0]
    );
}

#[test]
fn template_syntax_error() {
    let e = one(
        "shop.yaml",
        &GOOD.replace("{{ payload.id }}", "{{ payload.id "),
    );
    assert_eq!((e.line, e.field.as_str()), (8, "nodes.list.http.url"));
    assert!(e.message.contains("template syntax error"), "{e}");
}

#[test]
fn outcome_the_kind_never_produces() {
    let e = one("shop.yaml", &GOOD.replace("missing: done", "created: done"));
    assert_eq!((e.line, e.field.as_str()), (9, "nodes.list.next.created"));
    assert!(
        e.message.contains("never produces outcome `created`")
            && e.message.contains("ok, missing, failed"),
        "{e}"
    );
}

#[test]
fn unknown_field_and_wrong_type_are_parse_errors_with_place() {
    let e = one(
        "shop.yaml",
        &GOOD.replace("    next: { ok", "    nxet: { ok"),
    );
    assert_eq!(e.line, 9, "{e}");
    assert!(e.message.contains("nxet"), "{e}");
    let e = one("shop.yaml", &format!("{GOOD}    concurrency: many\n"));
    assert_eq!(e.line, 12, "{e}");
}

#[test]
fn bad_values_jq_cron_and_kinds() {
    let e = one("shop.yaml", &GOOD.replace("{id: .id}", "{id: .id"));
    assert_eq!((e.line, e.field.as_str()), (11, "nodes.done.map"));
    assert!(e.message.contains("jq syntax error"), "{e}");
    let e = one(
        "shop.yaml",
        &GOOD.replace("run: list", "run: { node: list, cron: \"61 * * * *\" }"),
    );
    assert_eq!((e.line, e.field.as_str()), (5, "events.run.cron"));
    let e = one(
        "shop.yaml",
        &GOOD.replace("    map: \"{id: .id}\"", "    description: nothing"),
    );
    assert_eq!(e.field, "nodes.done");
    assert!(e.message.contains("exactly one kind"), "{e}");
}

#[test]
fn all_errors_are_reported_at_once() {
    let text = GOOD
        .replace("system: target", "system: tagret")
        .replace("missing: done", "missing: dnoe")
        .replace("{id: .id}", "{id: .id");
    let errs = errors(&[("shop.yaml", &text)]);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    insta::assert_snapshot!(
        errs.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
