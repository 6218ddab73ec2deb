//! `mend demo` at a small size: its JSON report must show every product delivered, one sync
//! per missing category, target requests at the least possible (within 1%), and far fewer than
//! the naive design's.

use assert_cmd::Command;
use serde_json::Value;

#[test]
fn the_demo_report_adds_up_and_beats_the_naive_design() {
    let out = Command::cargo_bin("mend")
        .unwrap()
        .args([
            "demo",
            "--products",
            "400",
            "--categories",
            "40",
            "--missing-share",
            "0.3",
            "--workers",
            "8",
            "--json",
        ])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = |k: &str| {
        r[k].as_u64()
            .unwrap_or_else(|| panic!("`{k}` missing in {r:#}"))
    };
    assert_eq!(n("products_in_source"), 400);
    assert_eq!(n("products_in_target"), n("products_in_source"));
    assert!(
        n("missing_categories") > 0,
        "the data must lack some categories: {r:#}"
    );
    assert_eq!(n("category_syncs"), n("missing_categories"));
    assert_eq!(n("trash"), 0);
    let kinds: u64 = r["target_requests"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        kinds,
        n("target_requests_total"),
        "requests by kind add up to the total"
    );
    assert_eq!(r["target_requests"]["POST /products"], 400);
    assert_eq!(
        r["target_requests"]["POST /categories"].as_u64(),
        Some(n("missing_categories"))
    );
    let (total, lower) = (
        n("target_requests_total") as f64,
        n("lower_bound_target_requests") as f64,
    );
    assert!(
        total >= lower,
        "no run can beat the lower bound: {total} < {lower}"
    );
    assert!(
        total <= lower * 1.01,
        "within 1% of the least possible: {total} vs {lower}"
    );
    assert!(
        n("naive_target_requests_total") as f64 > total * 1.3,
        "{r:#}"
    );
    assert!(r["duration_ms"].is_u64());
}
