//! The source shop: a read-only HTTP API over a [`Dataset`]'s categories and products.
//!
//! Routes (every error is JSON `{"error", "code"}`):
//! - `GET /categories/{id}`: `200 {"id", "name", "parent_id"}` (`parent_id` is `null` for a
//!   root) or `404`.
//! - `GET /products/{id}`: `200 {"id", "name", "price", "sku", "category_id"}` or `404`.
//! - `GET /categories?page=N&per_page=M` and `GET /products?page=N&per_page=M`: pages from
//!   1 (default 1), `per_page` default 100, at most 1000 (larger is cut to 1000); the answer
//!   is `{"items": [...], "page": N, "per_page": M, "next": "/products?page=N+1&per_page=M"}`
//!   with `"next": null` on the last page and past the end (where `items` is empty).
//! - `GET /stats`: `{"requests": {"GET /products": n, ...}, "requests_total": n,
//!   "responses": {"GET /products": {"200": n}, ...}}`, not itself counted.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::data::Dataset;
use crate::gate::{Gate, by_id, error, method_not_allowed, not_found};
use crate::options::SimOptions;

/// Page size when the client gives none.
pub const DEFAULT_PER_PAGE: usize = 100;
/// Largest page size; a larger `per_page` is cut to this.
pub const MAX_PER_PAGE: usize = 1000;

/// The source shop's router over `data`, behind the misbehaviour of `options`.
///
/// Hangs injected by `options` last their full length; [`crate::start`] cuts them short on
/// shutdown.
pub fn router(data: Arc<Dataset>, options: SimOptions) -> Router {
    router_with(data, options, CancellationToken::new())
}

pub(crate) fn router_with(
    data: Arc<Dataset>,
    options: SimOptions,
    cancel: CancellationToken,
) -> Router {
    let gate = Gate::new(options, cancel);
    let state = Source {
        data,
        gate: gate.clone(),
    };
    Router::new()
        .route("/categories", get(list_categories))
        .route("/categories/{id}", get(get_category))
        .route("/products", get(list_products))
        .route("/products/{id}", get(get_product))
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
struct Source {
    data: Arc<Dataset>,
    gate: Arc<Gate>,
}

/// The query of a list route.
#[derive(Debug, Deserialize)]
struct PageQuery {
    page: Option<usize>,
    per_page: Option<usize>,
}

#[derive(Serialize)]
struct Page<'a, T> {
    items: &'a [T],
    page: usize,
    per_page: usize,
    next: Option<String>,
}

async fn list_categories(
    State(source): State<Source>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    page_of("categories", source.data.categories(), query)
}

async fn list_products(
    State(source): State<Source>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    page_of("products", source.data.products(), query)
}

fn page_of<T: Serialize>(
    route: &str,
    all: &[T],
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("{e}; expected ?page=N&per_page=M with whole numbers"),
            );
        }
    };
    let page = query.page.unwrap_or(1);
    let per_page = query.per_page.unwrap_or(DEFAULT_PER_PAGE).min(MAX_PER_PAGE);
    if page == 0 || per_page == 0 {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "page and per_page start at 1",
        );
    }
    let start = (page - 1).saturating_mul(per_page).min(all.len());
    let end = start.saturating_add(per_page).min(all.len());
    let next = (end < all.len()).then(|| format!("/{route}?page={}&per_page={per_page}", page + 1));
    Json(Page {
        items: &all[start..end],
        page,
        per_page,
        next,
    })
    .into_response()
}

async fn get_category(
    State(source): State<Source>,
    id: Result<Path<u64>, PathRejection>,
) -> Response {
    by_id("category", id, |id| source.data.category(id))
}

async fn get_product(
    State(source): State<Source>,
    id: Result<Path<u64>, PathRejection>,
) -> Response {
    by_id("product", id, |id| source.data.product(id))
}

async fn stats(State(source): State<Source>) -> Response {
    Json(source.gate.counts()).into_response()
}
