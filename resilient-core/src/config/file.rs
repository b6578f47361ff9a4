//! [`StorageConfig`] from TOML, with environment overrides (feature `toml`).

use std::path::Path;

use toml::{Table, Value};

use super::StorageConfig;
use crate::error::{Error, Result};

/// Prefix of the environment variables that override a configuration file.
pub const ENV_PREFIX: &str = "RESILIENT_STORAGE_";

impl StorageConfig {
    /// Parses a TOML document and checks every field. Errors name the field (`breaker.open_for`,
    /// `backends[0].url`) and never echo a URL or any other value.
    pub fn from_toml_str(toml: &str) -> Result<Self> {
        Self::from_toml_with_env(toml, std::iter::empty::<(String, String)>())
    }

    /// Reads and parses a TOML file; see [`from_toml_str`](Self::from_toml_str).
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_toml_str(&read(path.as_ref())?)
    }

    /// The configuration a deployed service usually wants: the TOML file at `path` (or the
    /// defaults when `None`), then every `RESILIENT_STORAGE_*` variable of this process's
    /// environment on top. See [`from_toml_with_env`](Self::from_toml_with_env) for how
    /// variables name fields.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let toml = match path {
            Some(path) => read(path)?,
            None => String::new(),
        };
        Self::from_toml_with_env(&toml, std::env::vars())
    }

    /// Parses `toml`, then applies each `(name, value)` pair whose name starts with
    /// [`ENV_PREFIX`]; other pairs are ignored. After the prefix, `__` separates nested names
    /// and numbers index `backends` (one past the last entry adds one):
    ///
    /// | Variable | Field |
    /// |---|---|
    /// | `RESILIENT_STORAGE_ATTEMPT_TIMEOUT=300ms` | `attempt_timeout` |
    /// | `RESILIENT_STORAGE_BREAKER__CONSECUTIVE_FAILURES=5` | `breaker.consecutive_failures` |
    /// | `RESILIENT_STORAGE_BACKENDS__0__URL=redis://:secret@cache:6379` | `backends[0].url` |
    ///
    /// A value that reads as a TOML integer, float or boolean is one; anything else is a
    /// string (write `'"5"'` to force the string `5`). Credentials are best kept out of the
    /// file and passed this way.
    pub fn from_toml_with_env<K, V>(
        toml: &str,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut table: Table = toml.parse().map_err(|e: toml::de::Error| {
            // The message alone: toml's full report quotes the offending line, which may hold
            // a password.
            let line = e
                .span()
                .map(|span| 1 + toml[..span.start.min(toml.len())].matches('\n').count());
            let field = line.map_or_else(|| "toml".to_owned(), |l| format!("toml line {l}"));
            Error::config(field, e.message().trim().to_owned())
        })?;
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter_map(|(k, v)| {
                let name = k.as_ref().strip_prefix(ENV_PREFIX)?.to_owned();
                Some((name, v.as_ref().to_owned()))
            })
            .collect();
        // Backends by index in order, so `BACKENDS__1__*` may follow `BACKENDS__0__*`.
        overrides.sort();
        for (name, value) in overrides {
            apply(&mut table, &name, &value)?;
        }
        let config: StorageConfig =
            serde_path_to_error::deserialize(Value::Table(table)).map_err(|e| {
                let field = match e.path().to_string() {
                    path if path == "." => "config".to_owned(),
                    path => path,
                };
                Error::config(field, without_quoted_values(&e.into_inner().to_string()))
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field as [`StorageBuilder::build`](crate::StorageBuilder::build) would,
    /// without connecting: durations, breaker and health settings, key policy, and that each
    /// backend URL parses and names a scheme a linked backend serves.
    pub fn validate(&self) -> Result<()> {
        self.clone().into_builder()?.validate()
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::config("config file", format!("{}: {e}", path.display())))
}

/// Sets the field a variable names (after the prefix) in `table`.
fn apply(table: &mut Table, name: &str, raw: &str) -> Result<()> {
    let variable = format!("{ENV_PREFIX}{name}");
    let bad = |reason: String| Error::config(variable.clone(), reason);
    let path: Vec<String> = name.split("__").map(str::to_lowercase).collect();
    if path.iter().any(String::is_empty) {
        return Err(bad("empty name between `__` separators".into()));
    }
    let value = parse_value(raw);
    let mut slot = Slot::Table(table);
    let (last, parents) = path.split_last().expect("split yields at least one part");
    for (i, part) in parents.iter().enumerate() {
        // A missing entry followed by an index is a list, as `backends` is.
        let list = path[i + 1].parse::<usize>().is_ok();
        slot = slot.child(part, list, &bad)?;
    }
    slot.set(last, value, &bad)
}

/// Where an override is going: a table or an array.
enum Slot<'a> {
    Table(&'a mut Table),
    Array(&'a mut Vec<Value>),
}

impl<'a> Slot<'a> {
    fn child(self, part: &str, list: bool, bad: &impl Fn(String) -> Error) -> Result<Slot<'a>> {
        let value = match self {
            Slot::Table(table) => table.entry(part.to_owned()).or_insert_with(|| {
                if list {
                    Value::Array(Vec::new())
                } else {
                    Value::Table(Table::new())
                }
            }),
            Slot::Array(array) => {
                let index = index(part, array.len(), bad)?;
                if index == array.len() {
                    array.push(Value::Table(Table::new()));
                }
                &mut array[index]
            }
        };
        match value {
            Value::Table(table) => Ok(Slot::Table(table)),
            Value::Array(array) => Ok(Slot::Array(array)),
            _ => Err(bad(format!("`{part}` is not a table or a list"))),
        }
    }

    fn set(self, part: &str, value: Value, bad: &impl Fn(String) -> Error) -> Result<()> {
        match self {
            Slot::Table(table) => {
                table.insert(part.to_owned(), value);
            }
            Slot::Array(array) => {
                let index = index(part, array.len(), bad)?;
                if index == array.len() {
                    array.push(value);
                } else {
                    array[index] = value;
                }
            }
        }
        Ok(())
    }
}

fn index(part: &str, len: usize, bad: &impl Fn(String) -> Error) -> Result<usize> {
    match part.parse::<usize>() {
        Ok(i) if i <= len => Ok(i),
        Ok(i) => Err(bad(format!(
            "index {i} skips entries: the list has {len}, so the next is {len}"
        ))),
        Err(_) => Err(bad(format!("`{part}` is not an index into a list"))),
    }
}

/// An integer, float or boolean when the text is one in TOML; otherwise the text as a string.
fn parse_value(raw: &str) -> Value {
    let trimmed = raw.trim();
    if let Ok(table) = format!("v = {trimmed}").parse::<Table>()
        && let Some(value) = table.get("v")
        && matches!(
            value,
            Value::Integer(_) | Value::Float(_) | Value::Boolean(_) | Value::String(_)
        )
    {
        return value.clone();
    }
    Value::String(raw.to_owned())
}

/// A serde message with every quoted value replaced by `"…"`: a type error on a URL field
/// must not print the URL.
fn without_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, part) in parts.enumerate() {
        if i % 2 == 0 {
            out.push_str("\"…");
        } else {
            out.push('"');
            out.push_str(part);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_toml_scalars_or_strings() {
        assert_eq!(parse_value("5"), Value::Integer(5));
        assert_eq!(parse_value("true"), Value::Boolean(true));
        assert_eq!(parse_value("1.5"), Value::Float(1.5));
        assert_eq!(parse_value("\"5\""), Value::String("5".into()));
        assert_eq!(parse_value("300ms"), Value::String("300ms".into()));
        assert_eq!(
            parse_value("redis://h:6379"),
            Value::String("redis://h:6379".into())
        );
    }

    #[test]
    fn quoted_values_are_left_out_of_messages() {
        assert_eq!(
            without_quoted_values(r#"invalid type: string "redis://u:pw@h", expected u32"#),
            r#"invalid type: string "…", expected u32"#
        );
        assert_eq!(without_quoted_values("no quotes"), "no quotes");
    }
}
