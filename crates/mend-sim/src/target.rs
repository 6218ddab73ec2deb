//! The target marketplace: holds categories and products, and rejects what it cannot hold.
//!
//! It starts with every category of the [`Dataset`] that is not missing, and no product.
//! Routes (every error is JSON `{"error", "code"}`):
//! - `GET /categories/{id}`, `GET /products/{id}`: `200` with the record, or `404`.
//! - `POST /categories` with `{"id", "name", "parent_id"}` (`parent_id` may be `null` or
//!   absent): `201` when created, `200` when the id exists (the record is replaced: an
//!   idempotent upsert), `422 {"code": "missing_parent"}` when the parent does not exist,
//!   `422 {"code": "cycle"}` when the parent is the category itself or one of its
//!   descendants.
//! - `PUT /categories/{id}`: the same, with the id from the path (a body `id`, if given,
//!   must match).
//! - `POST /products` with `{"id", "name", "price", "sku", "category_id"}` and
//!   `PUT /products/{id}`: `201` / `200` as above, or `422 {"code": "missing_category"}`.
//! - A body that is not JSON, or lacks a field: `400 {"code": "bad_request"}`.
//! - `GET /stats`: the request counts (see [`crate::source`]), plus `"categories"` and
//!   `"products"` (how many are held) and `"data": {"categories": [ids], "products": [ids]}`.
//!   `/stats` is not counted, throttled nor faulted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::data::{Category, Dataset, Product};
use crate::gate::{Counts, Gate, Rejection, bad_id, by_id, lock, method_not_allowed, not_found};
use crate::options::SimOptions;

/// The target marketplace's router, seeded from `data`, behind the misbehaviour of
/// `options`.
///
/// Hangs injected by `options` last their full length; [`crate::start`] cuts them short on
/// shutdown.
pub fn router(data: &Dataset, options: SimOptions) -> Router {
    router_with(data, options, CancellationToken::new())
}

pub(crate) fn router_with(
    data: &Dataset,
    options: SimOptions,
    cancel: CancellationToken,
) -> Router {
    let gate = Gate::new(options, cancel);
    let held = Held {
        categories: data
            .present_categories()
            .map(|c| (c.id, c.clone()))
            .collect(),
        products: BTreeMap::new(),
    };
    let state = Target {
        held: Arc::new(Mutex::new(held)),
        gate: gate.clone(),
    };
    Router::new()
        .route("/categories", post(post_category))
        .route("/categories/{id}", get(get_category).put(put_category))
        .route("/products", post(post_product))
        .route("/products/{id}", get(get_product).put(put_product))
        .route("/stats", get(stats))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            gate,
            crate::gate::gate,
        ))
}

#[derive(Clone)]
struct Target {
    held: Arc<Mutex<Held>>,
    gate: Arc<Gate>,
}

/// What the marketplace holds.
#[derive(Debug)]
struct Held {
    categories: BTreeMap<u64, Category>,
    products: BTreeMap<u64, Product>,
}

#[derive(Debug, Deserialize)]
struct CategoryBody {
    id: Option<u64>,
    name: String,
    parent_id: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ProductBody {
    id: Option<u64>,
    name: String,
    price: f64,
    sku: String,
    category_id: u64,
}

#[derive(Serialize)]
struct Stats {
    #[serde(flatten)]
    counts: Counts,
    categories: usize,
    products: usize,
    data: HeldIds,
}

#[derive(Serialize)]
struct HeldIds {
    categories: Vec<u64>,
    products: Vec<u64>,
}

async fn get_category(
    State(target): State<Target>,
    id: Result<Path<u64>, PathRejection>,
) -> Response {
    by_id("category", id, |id| {
        lock(&target.held).categories.get(&id).cloned()
    })
}

async fn get_product(
    State(target): State<Target>,
    id: Result<Path<u64>, PathRejection>,
) -> Response {
    by_id("product", id, |id| {
        lock(&target.held).products.get(&id).cloned()
    })
}

async fn post_category(State(target): State<Target>, body: Bytes) -> Result<Response, Rejection> {
    upsert_category(&target, None, &body)
}

async fn put_category(
    State(target): State<Target>,
    id: Result<Path<u64>, PathRejection>,
    body: Bytes,
) -> Response {
    match id {
        Ok(Path(id)) => upsert_category(&target, Some(id), &body).into_response(),
        Err(e) => bad_id(&e),
    }
}

async fn post_product(State(target): State<Target>, body: Bytes) -> Result<Response, Rejection> {
    upsert_product(&target, None, &body)
}

async fn put_product(
    State(target): State<Target>,
    id: Result<Path<u64>, PathRejection>,
    body: Bytes,
) -> Response {
    match id {
        Ok(Path(id)) => upsert_product(&target, Some(id), &body).into_response(),
        Err(e) => bad_id(&e),
    }
}

async fn stats(State(target): State<Target>) -> Response {
    let counts = target.gate.counts();
    let held = lock(&target.held);
    Json(Stats {
        counts,
        categories: held.categories.len(),
        products: held.products.len(),
        data: HeldIds {
            categories: held.categories.keys().copied().collect(),
            products: held.products.keys().copied().collect(),
        },
    })
    .into_response()
}

/// Creates or replaces a category; `Err` is the rejection to answer with.
fn upsert_category(
    target: &Target,
    path_id: Option<u64>,
    body: &[u8],
) -> Result<Response, Rejection> {
    let body: CategoryBody = parse(body, "category")?;
    let id = resolve_id(path_id, body.id)?;
    let mut held = lock(&target.held);
    if let Some(parent) = body.parent_id {
        if !held.categories.contains_key(&parent) {
            return Err(Rejection::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "missing_parent",
                format!("parent category {parent} does not exist"),
            ));
        }
        // The held categories form a forest, so this walk ends.
        let mut at = Some(parent);
        while let Some(p) = at {
            if p == id {
                return Err(Rejection::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "cycle",
                    format!(
                        "category {id} cannot have parent {parent}: it would be its own ancestor"
                    ),
                ));
            }
            at = held.categories.get(&p).and_then(|c| c.parent_id);
        }
    }
    let category = Category {
        id,
        name: body.name,
        parent_id: body.parent_id,
    };
    let status = match held.categories.insert(id, category.clone()) {
        Some(_) => StatusCode::OK,
        None => StatusCode::CREATED,
    };
    Ok((status, Json(category)).into_response())
}

/// Creates or replaces a product; `Err` is the rejection to answer with.
fn upsert_product(
    target: &Target,
    path_id: Option<u64>,
    body: &[u8],
) -> Result<Response, Rejection> {
    let body: ProductBody = parse(body, "product")?;
    let id = resolve_id(path_id, body.id)?;
    let mut held = lock(&target.held);
    if !held.categories.contains_key(&body.category_id) {
        return Err(Rejection::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_category",
            format!("category {} does not exist", body.category_id),
        ));
    }
    let product = Product {
        id,
        name: body.name,
        price: body.price,
        sku: body.sku,
        category_id: body.category_id,
    };
    let status = match held.products.insert(id, product.clone()) {
        Some(_) => StatusCode::OK,
        None => StatusCode::CREATED,
    };
    Ok((status, Json(product)).into_response())
}

fn parse<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Rejection> {
    serde_json::from_slice(body).map_err(|e| {
        let message = if e.is_data() {
            format!("invalid {what}: {e}")
        } else {
            format!("malformed JSON body: {e}")
        };
        Rejection::new(StatusCode::BAD_REQUEST, "bad_request", message)
    })
}

/// The id from the path (PUT) or the body (POST); both must agree when both are given.
fn resolve_id(path_id: Option<u64>, body_id: Option<u64>) -> Result<u64, Rejection> {
    match (path_id, body_id) {
        (Some(p), Some(b)) if p != b => Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("body id {b} does not match the id {p} in the path"),
        )),
        (Some(id), _) | (None, Some(id)) => Ok(id),
        (None, None) => Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "invalid body: missing field `id`",
        )),
    }
}
