//! Server settings: the switches that turn profiling features on and off. Stored
//! in the catalog (so they survive restarts and moves), changed by admins, read
//! as the SQL table `settings`, and streamed to agents.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{BooleanArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingKind {
    Bool,
    Duration,
    /// An `http://` or `https://` URL, or empty for none.
    Url,
}

#[derive(Debug, Clone, Copy)]
pub struct SettingDef {
    pub key: &'static str,
    pub default: &'static str,
    pub kind: SettingKind,
    pub for_agents: bool,
    pub description: &'static str,
}

pub const PROFILING_ENABLED: &str = "profiling.enabled";
pub const LEARNING_PERIOD: &str = "profiling.learning_period";
pub const EVE_ENABLED: &str = "runtime_scanner.eve_enabled";
pub const EVE_CONNECTOR_ENABLED: &str = "eve_connector.enabled";
pub const FINGERPRINT_RETENTION: &str = "storage.fingerprint_retention";
pub const ALERTS_WEBHOOK_URL: &str = "alerts.webhook_url";

pub const SETTINGS: &[SettingDef] = &[
    SettingDef {
        key: PROFILING_ENABLED,
        default: "true",
        kind: SettingKind::Bool,
        for_agents: true,
        description: "Agents capture and send fingerprints.",
    },
    SettingDef {
        key: LEARNING_PERIOD,
        default: "24h",
        kind: SettingKind::Duration,
        for_agents: false,
        description: "Observed time after which an image profile is done learning (overridable per image).",
    },
    SettingDef {
        key: EVE_ENABLED,
        default: "false",
        kind: SettingKind::Bool,
        for_agents: true,
        description: "Compute which packages are in use at runtime (agents inventory container filesystems).",
    },
    SettingDef {
        key: EVE_CONNECTOR_ENABLED,
        default: "false",
        kind: SettingKind::Bool,
        for_agents: false,
        description: "Serve runtime results to third-party tools through the export API.",
    },
    SettingDef {
        key: FINGERPRINT_RETENTION,
        default: "0s",
        kind: SettingKind::Duration,
        for_agents: false,
        description: "Raw fingerprints and windows older than this are deleted; profiles stay. 0s keeps them forever.",
    },
    SettingDef {
        key: ALERTS_WEBHOOK_URL,
        default: "",
        kind: SettingKind::Url,
        for_agents: false,
        description: "Every anomaly is POSTed here as JSON (retried with backoff); empty sends none.",
    },
];

/// Settings whose value is a secret (a webhook URL often carries a token): shown only to
/// admin tokens, masked in the `settings` table, never logged.
pub const SECRET_SETTINGS: &[&str] = &[ALERTS_WEBHOOK_URL];

/// What a secret setting shows in its place when it is set.
pub const HIDDEN_VALUE: &str = "(set; shown to admin tokens only)";

/// The value of `key` as a caller may see it: secrets are masked unless `reveal`.
pub fn display_value(stored: &BTreeMap<String, String>, key: &str, reveal: bool) -> String {
    let v = value(stored, key);
    if !reveal && !v.is_empty() && SECRET_SETTINGS.contains(&key) {
        HIDDEN_VALUE.to_string()
    } else {
        v.to_string()
    }
}

/// A URL for logs: scheme and host only (path, query and credentials can hold secrets).
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    if scheme.is_empty() {
        "(url)".to_string()
    } else {
        format!("{scheme}://{host}/…")
    }
}

pub fn def(key: &str) -> Option<&'static SettingDef> {
    SETTINGS.iter().find(|d| d.key == key)
}

/// Checks `value` for `key` and returns it in canonical form.
pub fn validate(key: &str, value: &str) -> Result<String, String> {
    let Some(d) = def(key) else {
        let known: Vec<_> = SETTINGS.iter().map(|d| d.key).collect();
        return Err(format!(
            "unknown setting {key:?}; settings are: {}",
            known.join(", ")
        ));
    };
    match d.kind {
        SettingKind::Bool => match value.trim().to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => Ok("true".into()),
            "false" | "off" | "no" | "0" => Ok("false".into()),
            _ => Err(format!("{key} takes true or false, not {value:?}")),
        },
        SettingKind::Duration => {
            parse_duration(value).map_err(|e| format!("{key}: {e}"))?;
            Ok(value.trim().to_string())
        }
        SettingKind::Url => {
            let v = value.trim();
            if v.is_empty() {
                return Ok(String::new());
            }
            let url = url::Url::parse(v).map_err(|e| format!("{key}: {v:?} is not a URL: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(format!(
                    "{key}: {v:?} must be an http:// or https:// URL with a host"
                ));
            }
            Ok(v.to_string())
        }
    }
}

/// The value of `key` in `stored`, or its default.
pub fn value<'a>(stored: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    stored
        .get(key)
        .map(String::as_str)
        .or_else(|| def(key).map(|d| d.default))
        .unwrap_or("")
}

pub fn bool_value(stored: &BTreeMap<String, String>, key: &str) -> bool {
    value(stored, key) == "true"
}

/// A duration setting; a stored value that does not parse (validation prevents
/// it) counts as the setting's default.
pub fn duration_value(stored: &BTreeMap<String, String>, key: &str) -> Duration {
    parse_duration(value(stored, key))
        .or_else(|_| parse_duration(def(key).map_or("", |d| d.default)))
        .unwrap_or_default()
}

/// Durations are written as in the wire contract: `250ms`, `30s`, `5m`, `24h`, `30d`.
pub use imprint_proto::duration::parse_duration;

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
        Field::new("default_value", DataType::Utf8, false),
        Field::new("for_agents", DataType::Boolean, false),
        Field::new("description", DataType::Utf8, false),
    ]))
}

/// The `settings` table's one batch.
pub fn batch(stored: &BTreeMap<String, String>) -> RecordBatch {
    let col = |f: &dyn Fn(&SettingDef) -> String| {
        Arc::new(StringArray::from(
            SETTINGS.iter().map(f).collect::<Vec<_>>(),
        ))
    };
    RecordBatch::try_new(
        schema(),
        vec![
            col(&|d| d.key.to_string()),
            // SQL is open to read tokens: secrets are masked here always.
            col(&|d| display_value(stored, d.key, false)),
            col(&|d| d.default.to_string()),
            Arc::new(BooleanArray::from(
                SETTINGS.iter().map(|d| d.for_agents).collect::<Vec<_>>(),
            )),
            col(&|d| d.description.to_string()),
        ],
    )
    .expect("columns match the schema")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_and_urls_redacted() {
        let stored = BTreeMap::from([(
            ALERTS_WEBHOOK_URL.to_string(),
            "https://u:p@hooks.example.com/T0/secret?k=1".to_string(),
        )]);
        assert_eq!(
            display_value(&stored, ALERTS_WEBHOOK_URL, false),
            HIDDEN_VALUE
        );
        assert!(display_value(&stored, ALERTS_WEBHOOK_URL, true).ends_with("?k=1"));
        assert_eq!(
            display_value(&BTreeMap::new(), ALERTS_WEBHOOK_URL, false),
            ""
        );
        assert_eq!(
            redact_url("https://u:p@hooks.example.com/T0/secret?k=1"),
            "https://hooks.example.com/…"
        );
        let b = batch(&stored);
        let values = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        assert!(values.iter().flatten().all(|v| !v.contains("secret")));
    }

    #[test]
    fn values_validate_and_default() {
        assert_eq!(validate(PROFILING_ENABLED, "off"), Ok("false".into()));
        assert!(
            validate(PROFILING_ENABLED, "maybe")
                .unwrap_err()
                .contains("true or false")
        );
        assert!(
            validate("nope", "1")
                .unwrap_err()
                .contains("profiling.enabled")
        );
        assert_eq!(validate(LEARNING_PERIOD, "12h"), Ok("12h".into()));
        assert!(validate(LEARNING_PERIOD, "12").is_err());
        assert_eq!(
            validate(ALERTS_WEBHOOK_URL, " http://127.0.0.1:9/hook "),
            Ok("http://127.0.0.1:9/hook".into())
        );
        assert_eq!(validate(ALERTS_WEBHOOK_URL, ""), Ok(String::new()));
        assert!(validate(ALERTS_WEBHOOK_URL, "ftp://x/").is_err());
        assert!(validate(ALERTS_WEBHOOK_URL, "not a url").is_err());
        let mut stored = BTreeMap::new();
        assert!(bool_value(&stored, PROFILING_ENABLED));
        stored.insert(PROFILING_ENABLED.to_string(), "false".to_string());
        assert!(!bool_value(&stored, PROFILING_ENABLED));
        assert_eq!(batch(&stored).num_rows(), SETTINGS.len());
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    }
}
