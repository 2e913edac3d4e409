//! Configuration in two stages: [`RawConfig`] is what the TOML file says (every key
//! optional, unknown keys refused), [`Config`] is validated and complete. Only
//! `Config` reaches the server, and every error names the file, the key and the fix.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:5000";
pub const DEFAULT_DATA_DIR: &str = "./data";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    storage: RawStorage,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    data_dir: Option<PathBuf>,
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
}

/// Values given on the command line; they win over the file.
#[derive(Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    origin: String,
    message: String,
}

impl ConfigError {
    fn new(origin: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: origin.to_string(),
            message: message.into(),
        }
    }
}

impl RawConfig {
    /// Reads and parses a TOML file; syntax errors and unknown keys name the file.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(&origin, format!("cannot read the file ({e}); check the --config path"))
        })?;
        RawConfig::from_toml(&text, &origin)
    }

    fn from_toml(text: &str, origin: &str) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().to_string();
            ConfigError::new(origin, format!("{message}; see conf/portcullis.toml for every key"))
        })
    }

    /// Applies command-line overrides and defaults, and validates the result.
    pub fn resolve(self, origin: &str, overrides: Overrides) -> Result<Config, ConfigError> {
        let (listen, listen_origin) = match overrides.listen {
            Some(l) => (l, "--listen".to_string()),
            None => match self.server.listen {
                Some(l) => (l, format!("{origin}: server.listen")),
                None => (DEFAULT_LISTEN.to_string(), "default".to_string()),
            },
        };
        let listen = listen.parse().map_err(|_| {
            ConfigError::new(
                &listen_origin,
                format!("{listen:?} is not a socket address; write IP:PORT, e.g. {DEFAULT_LISTEN} or [::1]:5000"),
            )
        })?;
        let data_dir = overrides
            .data_dir
            .or(self.storage.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        Ok(Config { listen, data_dir })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_file() {
        let config = RawConfig::default().resolve("none", Overrides::default()).unwrap();
        assert_eq!(config.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn file_values_and_overrides() {
        let raw = RawConfig::from_toml(
            "[server]\nlisten = \"127.0.0.1:6000\"\n[storage]\ndata_dir = \"/srv/reg\"\n",
            "t.toml",
        )
        .unwrap();
        let overrides = Overrides {
            listen: Some("[::1]:7000".into()),
            data_dir: None,
        };
        let config = raw.resolve("t.toml", overrides).unwrap();
        assert_eq!(config.listen, "[::1]:7000".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("/srv/reg"));
    }

    #[test]
    fn errors_name_file_key_and_fix() {
        let err = RawConfig::from_toml("[server]\nlisen = 1\n", "t.toml").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("t.toml: "), "{text}");
        assert!(text.contains("lisen"), "{text}");

        let raw = RawConfig::from_toml("[server]\nlisten = \"localhost\"\n", "t.toml").unwrap();
        let text = raw.resolve("t.toml", Overrides::default()).unwrap_err().to_string();
        assert!(text.contains("t.toml: server.listen"), "{text}");
        assert!(text.contains("IP:PORT"), "{text}");
    }
}
