//! Templates and expressions, compiled once when a topology loads.
//!
//! Key types: [`TemplateBuilder`] collects every template of one topology into one
//! `minijinja` environment and reports syntax errors; [`Templates`] is the frozen set the
//! engine renders with; [`Tpl`] names one template and [`JsonTpl`] is a JSON value whose
//! strings are templates. An expression (`payload.price > 100`) is stored as a template that
//! prints the expression as JSON, so one engine serves both and nothing borrows the
//! environment.

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// One compiled template or expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Tpl {
    /// Text without any template syntax: rendered without touching the engine.
    Literal(String),
    /// A template registered under this name; renders to text.
    Text(String),
    /// An expression registered under this name; renders to a JSON value.
    Expr(String),
}

/// A JSON value whose string leaves are templates. A leaf that is exactly one `{{ expr }}`
/// keeps the expression's JSON type (a number stays a number, an object stays an object).
#[derive(Clone, Debug, PartialEq)]
pub enum JsonTpl {
    Literal(Value),
    Str(Tpl),
    Array(Vec<JsonTpl>),
    Object(Vec<(String, JsonTpl)>),
}

/// A template that failed to render: an undefined value, a bad filter argument, ...
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(pub String);

fn describe(e: &minijinja::Error) -> String {
    let mut msg = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        msg.push_str(&format!(" (template line {line})"));
    }
    msg
}

fn has_syntax(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// Collects the templates of one topology.
pub struct TemplateBuilder {
    env: Environment<'static>,
    next: usize,
}

impl Default for TemplateBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TemplateBuilder {
    pub fn new() -> Self {
        let mut env = Environment::new();
        // An undefined field in a URL or a body is a bug in the topology or the data, not an
        // empty string: fail loudly, but let `if x is defined` and `x | default(..)` work.
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        Self { env, next: 0 }
    }

    fn add(&mut self, source: String) -> Result<String, String> {
        self.next += 1;
        let name = format!("t{}", self.next);
        self.env
            .add_template_owned(name.clone(), source)
            .map_err(|e| describe(&e))?;
        Ok(name)
    }

    /// A text template, e.g. a URL path `/products/{{ payload.id }}`.
    pub fn text(&mut self, source: &str) -> Result<Tpl, String> {
        if !has_syntax(source) {
            return Ok(Tpl::Literal(source.to_owned()));
        }
        self.add(source.to_owned()).map(Tpl::Text)
    }

    /// An expression, e.g. `payload.price > 100`, evaluated to a JSON value.
    pub fn expr(&mut self, expr: &str) -> Result<Tpl, String> {
        if has_syntax(expr) {
            return Err(format!(
                "`{expr}` is an expression: write it without {{{{ }}}}, e.g. `payload.price > 100`"
            ));
        }
        self.add(format!("{{{{ ({expr}) | tojson }}}}"))
            .map(Tpl::Expr)
    }

    /// A JSON template: every string leaf is a text template, or a typed expression when the
    /// whole leaf is one `{{ ... }}`.
    pub fn json(&mut self, value: &Value) -> Result<JsonTpl, String> {
        Ok(match value {
            Value::String(s) => {
                let t = s.trim();
                let single = t.starts_with("{{")
                    && t.ends_with("}}")
                    && t.matches("{{").count() == 1
                    && t.matches("}}").count() == 1;
                if single {
                    let inner = &t[2..t.len() - 2];
                    JsonTpl::Str(
                        self.add(format!("{{{{ ({inner}) | tojson }}}}"))
                            .map(Tpl::Expr)?,
                    )
                } else if has_syntax(s) {
                    JsonTpl::Str(self.text(s)?)
                } else {
                    JsonTpl::Literal(value.clone())
                }
            }
            Value::Array(items) => JsonTpl::Array(
                items
                    .iter()
                    .map(|v| self.json(v))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => JsonTpl::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), self.json(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => JsonTpl::Literal(other.clone()),
        })
    }

    pub fn finish(self) -> Templates {
        Templates { env: self.env }
    }
}

/// The frozen templates of one topology.
pub struct Templates {
    env: Environment<'static>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Templates")
    }
}

/// The values a template sees, built once per message.
pub type TplContext = minijinja::Value;

/// Builds a template context from anything serializable.
pub fn context<T: serde::Serialize>(value: &T) -> TplContext {
    minijinja::Value::from(minijinja::value::Serde(value))
}

impl Templates {
    fn render_named(&self, name: &str, ctx: &TplContext) -> Result<String, RenderError> {
        let tpl = self
            .env
            .get_template(name)
            .map_err(|e| RenderError(describe(&e)))?;
        tpl.render(ctx).map_err(|e| RenderError(describe(&e)))
    }

    /// Renders to text. An expression renders to its JSON text unless it is a string.
    pub fn render(&self, tpl: &Tpl, ctx: &TplContext) -> Result<String, RenderError> {
        match tpl {
            Tpl::Literal(s) => Ok(s.clone()),
            Tpl::Text(name) => self.render_named(name, ctx),
            Tpl::Expr(_) => match self.eval(tpl, ctx)? {
                Value::String(s) => Ok(s),
                other => Ok(other.to_string()),
            },
        }
    }

    /// Evaluates to a JSON value: an expression keeps its type, text renders to a string.
    pub fn eval(&self, tpl: &Tpl, ctx: &TplContext) -> Result<Value, RenderError> {
        match tpl {
            Tpl::Literal(s) => Ok(Value::String(s.clone())),
            Tpl::Text(name) => self.render_named(name, ctx).map(Value::String),
            Tpl::Expr(name) => {
                let text = self.render_named(name, ctx)?;
                serde_json::from_str(&text)
                    .map_err(|e| RenderError(format!("expression did not give JSON: {e}")))
            }
        }
    }

    /// Evaluates a condition with the usual truthiness: false, null, 0, "" and empty
    /// collections are false.
    pub fn test(&self, tpl: &Tpl, ctx: &TplContext) -> Result<bool, RenderError> {
        Ok(truthy(&self.eval(tpl, ctx)?))
    }

    pub fn render_json(&self, tpl: &JsonTpl, ctx: &TplContext) -> Result<Value, RenderError> {
        Ok(match tpl {
            JsonTpl::Literal(v) => v.clone(),
            JsonTpl::Str(t) => self.eval(t, ctx)?,
            JsonTpl::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|t| self.render_json(t, ctx))
                    .collect::<Result<_, _>>()?,
            ),
            JsonTpl::Object(fields) => {
                let mut map = serde_json::Map::with_capacity(fields.len());
                for (k, t) in fields {
                    map.insert(k.clone(), self.render_json(t, ctx)?);
                }
                Value::Object(map)
            }
        })
    }
}

/// The truthiness rule used by `switch` and `when` conditions.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_expr_and_json_templates_render_with_types() {
        let mut b = TemplateBuilder::new();
        let path = b.text("/products/{{ payload.id }}").unwrap();
        let cond = b.expr("payload.price > 100").unwrap();
        let body = b
            .json(&json!({"id": "{{ payload.id }}", "label": "p-{{ payload.id }}", "n": 3}))
            .unwrap();
        let t = b.finish();
        let ctx = context(&json!({"payload": {"id": 7, "price": 150}}));
        assert_eq!(t.render(&path, &ctx).unwrap(), "/products/7");
        assert!(t.test(&cond, &ctx).unwrap());
        assert_eq!(
            t.render_json(&body, &ctx).unwrap(),
            json!({"id": 7, "label": "p-7", "n": 3})
        );
    }

    #[test]
    fn syntax_errors_are_reported_and_undefined_fields_fail_at_render() {
        let mut b = TemplateBuilder::new();
        let err = b.text("/x/{{ payload.id ").unwrap_err();
        assert!(err.contains("syntax error"), "{err}");
        let tpl = b.text("/x/{{ payload.nope }}").unwrap();
        let t = b.finish();
        let err = t
            .render(&tpl, &context(&json!({"payload": {}})))
            .unwrap_err();
        assert!(err.0.contains("undefined"), "{}", err.0);
    }
}
