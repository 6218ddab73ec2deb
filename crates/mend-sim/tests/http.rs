//! The simulators over real HTTP on 127.0.0.1: the rejections the reference scenario hinges
//! on, paging, `/stats`, the rate limit, injected faults and shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use mend_sim::{Category, DataConfig, Dataset, Fault, Product, SimError, SimOptions, Simulators};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use serde_json::{Value, json};

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// One client per test: building a client loads the system's TLS roots, which is slow.
struct Http(reqwest::Client);

impl Http {
    fn new() -> Self {
        Self(reqwest::Client::new())
    }

    async fn get(&self, url: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, url, "").await
    }

    async fn post(&self, url: &str, body: &Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, url, body.to_string())
            .await
    }

    async fn put(&self, url: &str, body: &Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::PUT, url, body.to_string()).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let mut request = self.0.request(method.clone(), url);
        if method != reqwest::Method::GET {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        let response = request.send().await.expect("the simulator answers");
        let status = response.status();
        let bytes = response.bytes().await.expect("a body");
        (
            status,
            serde_json::from_slice(&bytes).expect("every answer is JSON"),
        )
    }
}

/// 1 (present) ─ 2 (missing) ─ 3 (missing); product 10 in category 3.
fn chain() -> Dataset {
    let category = |id, parent_id| Category {
        id,
        name: format!("Category {id}"),
        parent_id,
    };
    Dataset::new(
        vec![
            category(1, None),
            category(2, Some(1)),
            category(3, Some(2)),
        ],
        vec![Product {
            id: 10,
            name: "Solar Lamp".to_owned(),
            price: 19.99,
            sku: "SKU-000010".to_owned(),
            category_id: 3,
        }],
        [2],
    )
    .expect("the chain is consistent")
}

async fn start_chain(target: SimOptions) -> Simulators {
    mend_sim::start_with_dataset(
        chain(),
        SimOptions::default(),
        target,
        any_port(),
        any_port(),
    )
    .await
    .expect("the simulators start")
}

#[tokio::test]
async fn target_rejects_what_it_cannot_hold_and_upserts_idempotently() {
    let http = Http::new();
    let sims = start_chain(SimOptions::default()).await;
    let t = &sims.target_url;
    let product = json!({"id": 10, "name": "Solar Lamp", "price": 19.99, "sku": "SKU-000010", "category_id": 3});

    assert_eq!(
        http.get(&format!("{t}/categories/1")).await.0,
        StatusCode::OK
    );
    let (status, body) = http.get(&format!("{t}/categories/3")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "not_found");

    let (status, body) = http.post(&format!("{t}/products"), &product).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body,
        json!({"error": "category 3 does not exist", "code": "missing_category"})
    );

    let three = json!({"id": 3, "name": "Category 3", "parent_id": 2});
    let (status, body) = http.post(&format!("{t}/categories"), &three).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body,
        json!({"error": "parent category 2 does not exist", "code": "missing_parent"})
    );

    let two = json!({"id": 2, "name": "Category 2", "parent_id": 1});
    let (status, body) = http.post(&format!("{t}/categories"), &two).await;
    assert_eq!((status, &body), (StatusCode::CREATED, &two));
    assert_eq!(
        http.post(&format!("{t}/categories"), &two).await.0,
        StatusCode::OK
    );
    // PUT takes the id from the path; the body may leave it out.
    let (status, body) = http
        .put(
            &format!("{t}/categories/3"),
            &json!({"name": "Category 3", "parent_id": 2}),
        )
        .await;
    assert_eq!((status, &body), (StatusCode::CREATED, &three));
    // Making 1 a child of its own grandchild would be a cycle.
    let (status, body) = http
        .put(
            &format!("{t}/categories/1"),
            &json!({"name": "Category 1", "parent_id": 3}),
        )
        .await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("cycle"))
    );

    let (status, body) = http.post(&format!("{t}/products"), &product).await;
    assert_eq!((status, &body), (StatusCode::CREATED, &product));
    assert_eq!(
        http.post(&format!("{t}/products"), &product).await.0,
        StatusCode::OK
    );
    assert_eq!(
        http.put(&format!("{t}/products/10"), &product).await.0,
        StatusCode::OK
    );
    assert_eq!(
        http.get(&format!("{t}/products/10")).await,
        (StatusCode::OK, product.clone())
    );

    // Bad input is a 400 with a JSON reason, never a 422 (which means "missing").
    let (status, body) = http
        .send(
            reqwest::Method::POST,
            &format!("{t}/products"),
            "{\"id\": 1,",
        )
        .await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::BAD_REQUEST, &json!("bad_request"))
    );
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("malformed JSON body"))
    );
    let (status, body) = http
        .post(&format!("{t}/products"), &json!({"id": 11, "name": "x"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("missing field"))
    );
    let (status, body) = http.put(&format!("{t}/products/11"), &product).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not match"))
    );
    assert_eq!(
        http.get(&format!("{t}/categories/x")).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        http.get(&format!("{t}/nowhere")).await.0,
        StatusCode::NOT_FOUND
    );

    let (status, stats) = http.get(&format!("{t}/stats")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        stats["requests"],
        json!({
            "GET /categories/{id}": 3,
            "POST /categories": 3,
            "PUT /categories/{id}": 2,
            "POST /products": 5,
            "PUT /products/{id}": 2,
            "GET /products/{id}": 1,
            "GET (no route)": 1,
        })
    );
    assert_eq!(stats["requests_total"], 17);
    assert_eq!(
        stats["responses"]["POST /products"],
        json!({"200": 1, "201": 1, "400": 2, "422": 1})
    );
    assert_eq!(stats["categories"], 3);
    assert_eq!(stats["products"], 1);
    assert_eq!(
        stats["data"],
        json!({"categories": [1, 2, 3], "products": [10]})
    );

    sims.shutdown().await.expect("a clean stop");
}

#[tokio::test]
async fn source_pages_follow_next_until_null() {
    let http = Http::new();
    let config = DataConfig {
        products: 23,
        categories: 7,
        missing_share: 0.5,
        seed: 3,
    };
    let sims = mend_sim::start(
        config,
        SimOptions::default(),
        SimOptions::default(),
        any_port(),
        any_port(),
    )
    .await
    .expect("the simulators start");
    let s = &sims.source_url;

    let mut next = Some("/products?per_page=10".to_owned());
    let mut pages = Vec::new();
    let mut products = Vec::new();
    while let Some(path) = next {
        let (status, page) = http.get(&format!("{s}{path}")).await;
        assert_eq!(status, StatusCode::OK);
        pages.push(page["items"].as_array().map_or(0, Vec::len));
        products.extend(page["items"].as_array().into_iter().flatten().cloned());
        next = page["next"].as_str().map(str::to_owned);
    }
    assert_eq!(pages, [10, 10, 3]);
    let expected: Vec<Value> = sims
        .dataset
        .products()
        .iter()
        .map(|p| serde_json::to_value(p).expect("products serialize"))
        .collect();
    assert_eq!(products, expected);

    let (_, past) = http.get(&format!("{s}/products?page=4&per_page=10")).await;
    assert_eq!(
        past,
        json!({"items": [], "page": 4, "per_page": 10, "next": null})
    );
    let (_, all) = http.get(&format!("{s}/categories")).await;
    assert_eq!(
        (all["items"].as_array().map(Vec::len), &all["next"]),
        (Some(7), &Value::Null)
    );
    let (_, big) = http.get(&format!("{s}/categories?per_page=5000")).await;
    assert_eq!(big["per_page"], 1000);
    assert_eq!(
        http.get(&format!("{s}/products?page=0")).await.0,
        StatusCode::BAD_REQUEST
    );
    let (status, body) = http.get(&format!("{s}/products?page=two")).await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::BAD_REQUEST, &json!("bad_request"))
    );

    // Category 1 is always a root.
    let (status, one) = http.get(&format!("{s}/categories/1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["parent_id"], Value::Null);
    assert_eq!(http.get(&format!("{s}/products/23")).await.1, expected[22]);
    assert_eq!(
        http.get(&format!("{s}/products/24")).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, stats) = http.get(&format!("{s}/stats")).await;
    assert_eq!(stats["requests"]["GET /products"], 6);
    assert_eq!(stats["requests_total"], 11);

    // The target starts with the present categories and no product.
    let (_, stats) = http.get(&format!("{}/stats", sims.target_url)).await;
    let present: Vec<u64> = sims.dataset.present_categories().map(|c| c.id).collect();
    assert_eq!(
        stats["data"],
        json!({"categories": present, "products": []})
    );
    assert!(
        !sims.dataset.missing().is_empty(),
        "seed 3 leaves something missing"
    );

    // Dropping the simulators stops them.
    let target = sims.target_url.clone();
    drop(sims);
    let mut refused = false;
    for _ in 0..200 {
        if http.0.get(format!("{target}/stats")).send().await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the target still answers after the drop");
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let http = Http::new();
    let limited = SimOptions {
        rate_limit: Some(5),
        ..SimOptions::default()
    };
    let sims = start_chain(limited).await;
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let request = http.0.get(format!("{}/categories/1", sims.target_url));
        burst.spawn(async move { request.send().await });
    }
    let (mut ok, mut limited) = (0, 0);
    while let Some(done) = burst.join_next().await {
        let response = done.expect("the task ran").expect("the simulator answers");
        match response.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                assert_eq!(
                    response.headers().get(RETRY_AFTER).map(|v| v.as_bytes()),
                    Some(&b"1"[..])
                );
            }
            other => panic!("unexpected status {other}"),
        }
    }
    // The bucket starts full with 5 tokens; 20 requests at once cannot all fit.
    assert!(ok >= 5, "{ok} passed");
    assert!(limited >= 1, "{ok} passed, none limited");
    assert_eq!(ok + limited, 20);

    let (_, stats) = http.get(&format!("{}/stats", sims.target_url)).await;
    assert_eq!(stats["requests"]["GET /categories/{id}"], 20);
    assert_eq!(stats["responses"]["GET /categories/{id}"]["429"], limited);
    sims.shutdown().await.expect("a clean stop");
}

#[tokio::test]
async fn injected_503s_are_reproducible() {
    let http = Http::new();
    let faulty = SimOptions {
        fail_share: 0.3,
        seed: 5,
        ..SimOptions::default()
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let sims = start_chain(faulty.clone()).await;
        let mut statuses = Vec::new();
        for id in 0..40 {
            statuses.push(
                http.get(&format!("{}/categories/{}", sims.target_url, id % 4))
                    .await
                    .0,
            );
        }
        let (_, stats) = http.get(&format!("{}/stats", sims.target_url)).await;
        assert_eq!(stats["requests_total"], 40);
        sims.shutdown().await.expect("a clean stop");
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1]);
    let failed = runs[0]
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert!((1..40).contains(&failed), "{failed} of 40 failed");
    for (n, status) in runs[0].iter().enumerate() {
        let predicted = faulty.fault_for(n as u64) == Fault::Unavailable;
        assert_eq!(
            *status == StatusCode::SERVICE_UNAVAILABLE,
            predicted,
            "request {n}"
        );
    }
}

#[tokio::test]
async fn a_held_answer_applies_its_write_and_shutdown_cuts_it_short() {
    let http = Http::new();
    let hanging = SimOptions {
        timeout_share: 1.0,
        ..SimOptions::default()
    };
    let sims = start_chain(hanging).await;
    let url = format!("{}/categories", sims.target_url);
    let held = Http(http.0.clone());
    let pending = tokio::spawn(async move {
        held.post(
            &url,
            &json!({"id": 50, "name": "New root", "parent_id": null}),
        )
        .await
    });

    // The write lands although its answer is held (for 30 s by default).
    let mut landed = false;
    for _ in 0..500 {
        let (_, stats) = http.get(&format!("{}/stats", sims.target_url)).await;
        if stats["data"]["categories"]
            .as_array()
            .is_some_and(|c| c.contains(&json!(50)))
        {
            landed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(landed, "the held request was not processed");
    assert!(!pending.is_finished(), "the answer was not held");

    // Stopping releases the held answer instead of waiting 30 s for it.
    tokio::time::timeout(Duration::from_secs(20), sims.shutdown())
        .await
        .expect("shutdown does not wait for the hang")
        .expect("a clean stop");
    let (status, _) = pending.await.expect("the request task ran");
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn bad_options_and_taken_ports_are_clear_errors() {
    let bad = SimOptions {
        timeout_share: 2.0,
        ..SimOptions::default()
    };
    let err =
        mend_sim::start_with_dataset(chain(), SimOptions::default(), bad, any_port(), any_port())
            .await
            .expect_err("a share of 2 is refused");
    assert!(
        matches!(
            err,
            SimError::InvalidOptions {
                which: "target",
                ..
            }
        ),
        "{err}"
    );

    let sims = start_chain(SimOptions::default()).await;
    let err = mend_sim::start_with_dataset(
        chain(),
        SimOptions::default(),
        SimOptions::default(),
        sims.source_addr,
        any_port(),
    )
    .await
    .expect_err("the port is taken");
    assert!(
        matches!(
            err,
            SimError::Bind {
                which: "source",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&sims.source_addr.to_string()));
    sims.shutdown().await.expect("a clean stop");
}
