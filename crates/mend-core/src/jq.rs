//! jq programs (via `jaq`), compiled once when a topology loads.
//!
//! A program runs on a JSON value with named variables (`$headers`, `$response`, ...) and
//! yields zero or more JSON values. Values cross the boundary as JSON text: simple, exact, and
//! the payloads mend moves are small next to the HTTP calls around them.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data};
use jaq_json::Val;
use serde_json::Value;

type Filter = jaq_core::Filter<data::JustLut<Val>>;

/// A compiled jq program and the names of the variables it expects, in order.
pub struct Jq {
    source: String,
    vars: Vec<String>,
    filter: Filter,
}

impl std::fmt::Debug for Jq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jq").field("source", &self.source).finish()
    }
}

impl PartialEq for Jq {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.vars == other.vars
    }
}

impl Jq {
    /// Compiles `source`; `vars` are the global variable names without `$`.
    pub fn compile(source: &str, vars: &[&str]) -> Result<Self, String> {
        let program = File {
            code: source,
            path: (),
        };
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader.load(&arena, program).map_err(|errs| {
            let mut out = Vec::new();
            for (_, e) in errs {
                match e {
                    jaq_core::load::Error::Io(v) => out.extend(
                        v.into_iter()
                            .map(|(p, m)| format!("cannot load `{p}`: {m}")),
                    ),
                    jaq_core::load::Error::Lex(v) => {
                        out.extend(v.into_iter().map(|(expect, at)| {
                            format!("expected {} near `{}`", expect.as_str(), snippet(at))
                        }))
                    }
                    jaq_core::load::Error::Parse(v) => {
                        out.extend(v.into_iter().map(|(expect, at)| {
                            format!("expected {} near `{}`", expect.as_str(), snippet(at))
                        }))
                    }
                }
            }
            format!("jq syntax error: {}", out.join("; "))
        })?;
        let dollar: Vec<String> = vars.iter().map(|v| format!("${v}")).collect();
        let filter = Compiler::default()
            .with_funs(funs)
            .with_global_vars(dollar.iter().map(String::as_str))
            .compile(modules)
            .map_err(|errs| {
                let names: Vec<String> = errs
                    .into_iter()
                    .flat_map(|(_, v)| v.into_iter().map(|(name, u)| format!("{name} ({u:?})")))
                    .collect();
                format!("jq: undefined {}", names.join(", "))
            })?;
        Ok(Self {
            source: source.to_owned(),
            vars: vars.iter().map(|v| (*v).to_owned()).collect(),
            filter,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Runs the program on `input` with the variables' values in the order given at compile
    /// time, collecting every output.
    pub fn run(&self, input: &Value, vars: &[&Value]) -> Result<Vec<Value>, String> {
        let to_val = |v: &Value| {
            jaq_json::read::parse_single(v.to_string().as_bytes())
                .map_err(|e| format!("cannot pass JSON to jq: {e}"))
        };
        let input = to_val(input)?;
        let vars = vars
            .iter()
            .map(|v| to_val(v))
            .collect::<Result<Vec<_>, _>>()?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new(vars));
        let mut out = Vec::new();
        for item in self.filter.id.run((ctx, input)) {
            match item {
                Ok(v) => out.push(
                    serde_json::from_str(&v.to_string())
                        .map_err(|e| format!("jq produced a value that is not JSON ({e}): {v}"))?,
                ),
                Err(exn) => {
                    return Err(match exn.get_err() {
                        Ok(e) => format!("jq error: {e}"),
                        Err(other) => match other.get_halt() {
                            Ok(code) => format!("jq program halted with code {code}"),
                            Err(_) => "jq program stopped with an unhandled exception".to_owned(),
                        },
                    });
                }
            }
        }
        Ok(out)
    }
}

fn snippet(at: &str) -> String {
    let s: String = at.chars().take(20).collect();
    if s.is_empty() {
        "end of program".to_owned()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn runs_with_variables_and_reports_errors() {
        let jq = Jq::compile("{id: .id, n: ($headers.n | tonumber)}", &["headers"]).unwrap();
        let out = jq
            .run(&json!({"id": 3, "x": 1}), &[&json!({"n": "5"})])
            .unwrap();
        assert_eq!(out, vec![json!({"id": 3, "n": 5})]);
        let many = Jq::compile(".items[]", &[]).unwrap();
        assert_eq!(many.run(&json!({"items": [1, 2]}), &[]).unwrap().len(), 2);
        let err = Jq::compile(".items[", &[]).unwrap_err();
        assert!(err.starts_with("jq syntax error"), "{err}");
        let err = Jq::compile("$nope", &[]).unwrap_err();
        assert!(err.contains("undefined"), "{err}");
        let err = Jq::compile("error(\"boom\")", &[])
            .unwrap()
            .run(&json!(1), &[])
            .unwrap_err();
        assert!(err.contains("boom"), "{err}");
    }

    #[test]
    fn compiled_programs_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Jq>();
    }
}
