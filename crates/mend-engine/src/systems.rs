//! Systems resolved for running: `${VAR}` in base URLs read from the environment, auth headers
//! built from environment variables. Done once when the engine starts, so a missing variable
//! stops the start with a clear message instead of failing every request.

use std::collections::HashMap;
use std::time::Duration;

use mend_core::topology::{Auth, Catalog};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::EngineError;

#[derive(Clone, Debug)]
pub(crate) struct ResolvedSystem {
    pub base_url: String,
    pub headers: HeaderMap,
    /// HTTP basic credentials (user, password).
    pub basic: Option<(String, String)>,
    pub timeout: Option<Duration>,
}

/// (topology, system) → resolved system.
pub(crate) type Systems = HashMap<(String, String), ResolvedSystem>;

pub(crate) fn resolve_all(
    catalog: &Catalog,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Systems, EngineError> {
    let mut out = HashMap::new();
    let mut problems = Vec::new();
    for (tname, t) in &catalog.topologies {
        for (sname, s) in &t.systems {
            let place = format!(
                "system `{sname}` of topology `{tname}` ({})",
                t.file.display()
            );
            // Report every problem of every system, not only the first.
            let base_url = match interpolate(&s.url, env) {
                Ok(u) if u.starts_with("http://") || u.starts_with("https://") => u,
                Ok(u) => {
                    problems.push(format!(
                        "{place}: url `{u}` must start with http:// or https://"
                    ));
                    String::new()
                }
                Err(var) => {
                    problems.push(format!(
                        "{place}: environment variable {var} is not set (used in its url)"
                    ));
                    String::new()
                }
            };
            let mut headers = HeaderMap::new();
            let mut basic = None;
            let mut add = |name: &str, value: String, problems: &mut Vec<String>| match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                (Ok(n), Ok(mut v)) => {
                    v.set_sensitive(name.eq_ignore_ascii_case("authorization"));
                    headers.insert(n, v);
                }
                _ => problems.push(format!(
                    "{place}: header `{name}` has an invalid name or value"
                )),
            };
            for (k, v) in &s.headers {
                add(k, v.clone(), &mut problems);
            }
            let var = |name: &str, problems: &mut Vec<String>| {
                let v = env(name);
                if v.is_none() {
                    problems.push(format!(
                        "{place}: environment variable {name} is not set (used by its auth)"
                    ));
                }
                v
            };
            match &s.auth {
                None => {}
                Some(Auth::Bearer { env }) => {
                    if let Some(token) = var(env, &mut problems) {
                        add("authorization", format!("Bearer {token}"), &mut problems);
                    }
                }
                Some(Auth::Header { name, env }) => {
                    if let Some(value) = var(env, &mut problems) {
                        add(name, value, &mut problems);
                    }
                }
                Some(Auth::Basic {
                    user_env,
                    password_env,
                }) => {
                    if let (Some(u), Some(p)) = (
                        var(user_env, &mut problems),
                        var(password_env, &mut problems),
                    ) {
                        basic = Some((u, p));
                    }
                }
            }
            out.insert(
                (tname.clone(), sname.clone()),
                ResolvedSystem {
                    base_url,
                    headers,
                    basic,
                    timeout: s.timeout.map(|d| d.0),
                },
            );
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(EngineError::Config(problems.join("\n")))
    }
}

/// Replaces `${VAR}` and `${VAR:-default}`; returns the name of the first unset variable.
pub(crate) fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match env(name)
            .filter(|v| !v.is_empty())
            .or(default.map(str::to_owned))
        {
            Some(v) => out.push_str(&v),
            None => return Err(name.to_owned()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_with_defaults_and_names_missing_variables() {
        let env = |k: &str| (k == "HOST").then(|| "127.0.0.1:9".to_owned());
        assert_eq!(
            interpolate("http://${HOST}/x", &env).unwrap(),
            "http://127.0.0.1:9/x"
        );
        assert_eq!(interpolate("${NOPE:-http://d}", &env).unwrap(), "http://d");
        assert_eq!(interpolate("${NOPE}", &env).unwrap_err(), "NOPE");
    }
}
