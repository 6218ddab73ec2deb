//! The web UI: plain HTML, CSS and JavaScript from `assets/`, embedded in the binary so that
//! `mend serve` needs no files beside it and no network (no CDN).
//!
//! Key items: [`routes`] serves `GET /` (the page) and `GET /assets/{*path}`; [`Assets`] is the
//! embedded folder. The page talks only to the JSON API under `/api`. Every answer carries an
//! `ETag` (the file's SHA-256) and `Cache-Control: no-cache`, so a browser revalidates with a
//! cheap `304` and never runs a stale script after an upgrade.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::ApiError;

/// The UI files, embedded at compile time (also in debug builds: `debug-embed`).
#[derive(rust_embed::Embed)]
#[folder = "assets/"]
struct Assets;

/// The UI's routes; merged into the API router, whatever its state type.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

fn serve(path: &str, request: &HeaderMap) -> Response {
    let Some(file) = Assets::get(path) else {
        return ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("no UI asset `{path}`"),
        }
        .into_response();
    };
    let etag = format!(
        "\"{}\"",
        file.metadata
            .sha256_hash()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type(path)),
            )],
            file.data.into_owned(),
        )
            .into_response()
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if path.ends_with(".html") {
        // The page loads only its own files and talks only to this server.
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
            ),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    response
}

/// The content type of the few kinds of file in `assets/`.
fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, routes::<()>()).await });
        base
    }

    #[tokio::test]
    async fn serves_the_page_and_its_assets_with_types_and_etags() {
        let base = server().await;
        let client = reqwest::Client::new();

        let page = client.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(page.status(), 200);
        assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(page.headers()["cache-control"], "no-cache");
        assert!(page.headers().contains_key("content-security-policy"));
        let etag = page.headers()["etag"].clone();
        let html = page.text().await.unwrap();
        assert!(html.contains("/assets/app.js"), "the page loads its script");
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "no CDN"
        );

        for (path, ty) in [
            ("app.js", "text/javascript; charset=utf-8"),
            ("app.css", "text/css; charset=utf-8"),
            ("favicon.svg", "image/svg+xml"),
        ] {
            let r = client
                .get(format!("{base}/assets/{path}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{path}");
            assert_eq!(r.headers()["content-type"], ty, "{path}");
        }

        let again = client
            .get(format!("{base}/"))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "an unchanged page is revalidated");

        let missing = client
            .get(format!("{base}/assets/nope.js"))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
        let body: serde_json::Value = serde_json::from_str(&missing.text().await.unwrap()).unwrap();
        assert_eq!(body["error"], "no UI asset `nope.js`");
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("a/b.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }
}
