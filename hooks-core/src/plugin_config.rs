//! A plugin's own settings: the `[config]` table of its sidecar, handed to every backend
//! (exec: `VIRT_HOOK_CONFIG_<KEY>` variables; WASM: the same variables in its sandbox;
//! native: the ABI's config table; typed components: the event's `config`).

use std::fmt;

/// The most keys a `[config]` table may have.
pub const MAX_CONFIG_KEYS: usize = 64;
/// The longest key, in bytes.
pub const MAX_CONFIG_KEY: usize = 64;
/// The most bytes of all keys and values together.
pub const MAX_CONFIG_BYTES: usize = 64 << 10;

/// The prefix of the environment variable that carries a key to an exec or WASM hook.
pub const CONFIG_ENV_PREFIX: &str = "VIRT_HOOK_CONFIG_";

/// One value: a string, an integer, a float or a boolean, as the sidecar wrote it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum ConfigValue {
    /// A string (no NUL byte).
    String(String),
    /// An integer.
    Integer(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Boolean(bool),
}

impl fmt::Display for ConfigValue {
    /// The text every backend receives: a string as written, a number in decimal,
    /// `true`/`false`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigValue::String(s) => f.write_str(s),
            ConfigValue::Integer(n) => write!(f, "{n}"),
            ConfigValue::Float(x) => write!(f, "{x}"),
            ConfigValue::Boolean(b) => write!(f, "{b}"),
        }
    }
}

/// A plugin's `[config]` table, sorted by key. Its keys are the plugin's: hookctl
/// checks only their form and the sizes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginConfig {
    entries: Vec<(String, ConfigValue)>,
}

impl PluginConfig {
    /// An empty table.
    pub fn new() -> Self {
        PluginConfig::default()
    }

    /// A table from entries, checked as a sidecar's would be.
    ///
    /// ```
    /// use virt_hooks_core::backend::{ConfigValue, PluginConfig};
    /// let config = PluginConfig::from_entries([("max_vcpus", ConfigValue::Integer(8))]).unwrap();
    /// assert_eq!(config.get("max_vcpus").map(|v| v.to_string()).as_deref(), Some("8"));
    /// assert_eq!(config.env().next(), Some(("VIRT_HOOK_CONFIG_MAX_VCPUS".to_owned(), "8".to_owned())));
    /// assert!(PluginConfig::from_entries([("a b", ConfigValue::Boolean(true))]).is_err());
    /// ```
    ///
    /// # Errors
    /// What is wrong, naming the key: see [`PluginConfig::check_key`], a string with a
    /// NUL byte, two keys that name the same variable, or more than the limits
    /// ([`MAX_CONFIG_KEYS`], [`MAX_CONFIG_BYTES`]).
    pub fn from_entries<K: Into<String>>(entries: impl IntoIterator<Item = (K, ConfigValue)>) -> Result<Self, String> {
        let mut entries: Vec<(String, ConfigValue)> = entries.into_iter().map(|(k, v)| (k.into(), v)).collect();
        if entries.len() > MAX_CONFIG_KEYS {
            return Err(format!("{} keys, at most {MAX_CONFIG_KEYS}", entries.len()));
        }
        let mut total = 0usize;
        for (key, value) in &entries {
            Self::check_key(key)?;
            if let ConfigValue::String(s) = value {
                if s.contains('\0') {
                    return Err(format!("`{key}`: a NUL byte in its value"));
                }
            }
            total += key.len() + value.to_string().len();
        }
        if total > MAX_CONFIG_BYTES {
            return Err(format!("{total} bytes of keys and values, at most {MAX_CONFIG_BYTES}"));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        // Keys that differ only in case or `-`/`_` name the same variable.
        let mut names: Vec<String> = entries.iter().map(|(k, _)| env_suffix(k)).collect();
        names.sort();
        if let Some(pair) = names.windows(2).find(|p| p[0] == p[1]) {
            let same: Vec<&str> = entries
                .iter()
                .filter(|(k, _)| env_suffix(k) == pair[0])
                .map(|(k, _)| k.as_str())
                .collect();
            let (last, others) = same.split_last().unwrap_or((&"", &[]));
            let (named, verb) = if others.len() == 1 {
                (format!("`{}` and `{last}`", others[0]), "both")
            } else {
                (format!("`{}` and `{last}`", others.join("`, `")), "all")
            };
            return Err(format!("{named} would {verb} be {CONFIG_ENV_PREFIX}{}", pair[0]));
        }
        Ok(PluginConfig { entries })
    }

    /// Whether `key` may be a config key: a letter, then letters, digits, `_` or `-`,
    /// at most [`MAX_CONFIG_KEY`] bytes.
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn check_key(key: &str) -> Result<(), String> {
        let mut chars = key.chars();
        if key.len() > MAX_CONFIG_KEY {
            // The start of it, whole characters only.
            let start: String = key.chars().take(16).collect();
            return Err(format!(
                "key `{}…` is longer than {MAX_CONFIG_KEY} bytes",
                start.escape_debug()
            ));
        }
        let shown = key.escape_debug().to_string();
        if !chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "key `{shown}`: a key is a letter followed by letters, digits, `_` or `-`"
            ));
        }
        Ok(())
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&ConfigValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The entries, sorted by key.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &ConfigValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The environment an exec or WASM hook gets: `VIRT_HOOK_CONFIG_<KEY>` (the key in
    /// upper case, `-` as `_`) with the value as text.
    pub fn env(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.entries
            .iter()
            .map(|(k, v)| (format!("{CONFIG_ENV_PREFIX}{}", env_suffix(k)), v.to_string()))
    }
}

/// A JSON object, in key order.
impl serde::Serialize for PluginConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (key, value) in &self.entries {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

fn env_suffix(key: &str) -> String {
    key.chars()
        .map(|c| if c == '-' { '_' } else { c.to_ascii_uppercase() })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(pairs: &[(&str, ConfigValue)]) -> Result<PluginConfig, String> {
        PluginConfig::from_entries(pairs.iter().cloned())
    }

    #[test]
    fn keys_that_would_be_the_same_variable_are_refused_by_name() {
        let err = entries(&[
            ("max-vcpus", ConfigValue::Integer(1)),
            ("max_vcpus", ConfigValue::Integer(2)),
        ])
        .unwrap_err();
        assert!(err.contains("`max-vcpus`") && err.contains("`max_vcpus`"), "{err}");
        let err = entries(&[
            ("Bridge", ConfigValue::Integer(1)),
            ("a", ConfigValue::Integer(1)),
            ("bridge", ConfigValue::Integer(2)),
        ])
        .unwrap_err();
        assert!(err.contains("VIRT_HOOK_CONFIG_BRIDGE"), "{err}");
    }

    #[test]
    fn hostile_keys_and_values_are_refused() {
        // A long key of characters of several bytes once cut its message mid-character.
        let wide = "\u{fffd}".repeat(22);
        for key in [
            "",
            "1st",
            "a b",
            "a=b",
            "ä",
            "a\nb",
            "PATH;x",
            &"k".repeat(MAX_CONFIG_KEY + 1),
            &wide,
        ] {
            assert!(
                entries(&[(key, ConfigValue::Boolean(true))]).is_err(),
                "{key:?} accepted"
            );
        }
        assert!(entries(&[("k", ConfigValue::String("a\0b".into()))])
            .unwrap_err()
            .contains("NUL"));
        let many: Vec<(String, ConfigValue)> = (0..=MAX_CONFIG_KEYS)
            .map(|i| (format!("k{i}"), ConfigValue::Integer(0)))
            .collect();
        assert!(PluginConfig::from_entries(many).is_err());
        let huge = entries(&[("k", ConfigValue::String("x".repeat(MAX_CONFIG_BYTES)))]).unwrap_err();
        assert!(huge.contains("at most"), "{huge}");
    }

    #[test]
    fn values_reach_backends_as_text_sorted_by_key() {
        let config = entries(&[
            ("zeta", ConfigValue::Float(0.5)),
            ("bridge", ConfigValue::String("br0".into())),
            ("dry-run", ConfigValue::Boolean(false)),
            ("max_vcpus", ConfigValue::Integer(-3)),
        ])
        .unwrap();
        let env: Vec<(String, String)> = config.env().collect();
        assert_eq!(
            env,
            [
                ("VIRT_HOOK_CONFIG_BRIDGE", "br0"),
                ("VIRT_HOOK_CONFIG_DRY_RUN", "false"),
                ("VIRT_HOOK_CONFIG_MAX_VCPUS", "-3"),
                ("VIRT_HOOK_CONFIG_ZETA", "0.5"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(
            serde_json::to_string(&config).unwrap(),
            r#"{"bridge":"br0","dry-run":false,"max_vcpus":-3,"zeta":0.5}"#
        );
    }
}
