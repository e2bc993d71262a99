//! Configuration from the environment (12-factor), read once at start-up into typed
//! structs. A missing or malformed variable is a start-up error that names it.

use std::collections::HashMap;
use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("environment variable {0} is required but not set")]
    Missing(&'static str),
    #[error("environment variable {name} is malformed ({value:?}): {reason}")]
    Malformed {
        name: &'static str,
        value: String,
        reason: String,
    },
}

/// A snapshot of the variables a service reads; tests build one from pairs.
#[derive(Debug, Clone, Default)]
pub struct Env(HashMap<String, String>);

impl Env {
    pub fn from_process() -> Self {
        Self(std::env::vars().collect())
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    /// The variable's value; empty counts as unset, as it does in a k8s manifest.
    pub fn optional(&self, name: &'static str) -> Option<&str> {
        self.0.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    pub fn required(&self, name: &'static str) -> Result<&str, ConfigError> {
        self.optional(name).ok_or(ConfigError::Missing(name))
    }

    pub fn parsed_or<T>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.optional(name) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|e: T::Err| ConfigError::Malformed {
                name,
                value: raw.to_owned(),
                reason: e.to_string(),
            }),
        }
    }

    /// An `http(s)://host[:port]` base URL, without a trailing slash.
    pub fn url(&self, name: &'static str) -> Result<String, ConfigError> {
        let raw = self.required(name)?;
        parse_http_url(raw).map_err(|reason| ConfigError::Malformed {
            name,
            value: raw.to_owned(),
            reason,
        })
    }
}

fn parse_http_url(raw: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(raw).map_err(|e| e.to_string())?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err("expected an http:// or https:// URL with a host".into());
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "pretty" => Ok(Self::Pretty),
            _ => Err("expected json or pretty".into()),
        }
    }
}

/// What every service reads: where to listen, its database, how to log and trace, and
/// the shared secret that authenticates traffic on `/events` (optional locally).
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub port: u16,
    pub database_url: String,
    pub telemetry: TelemetryConfig,
    pub event_bus_token: Option<String>,
}

/// How a service logs, and where it exports its traces (nowhere unless set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: an OTLP/HTTP receiver's base URL (spans go to its
    /// `/v1/traces`), as OpenTelemetry's SDKs read it.
    pub otlp_endpoint: Option<String>,
}

impl ServiceConfig {
    pub fn from_env(env: &Env, default_port: u16) -> Result<Self, ConfigError> {
        Ok(Self {
            port: env.parsed_or("PORT", default_port)?,
            database_url: env.required("DATABASE_URL")?.to_owned(),
            telemetry: TelemetryConfig {
                log_format: env.parsed_or("LOG_FORMAT", LogFormat::Pretty)?,
                otlp_endpoint: otlp_endpoint(env)?,
            },
            event_bus_token: env.optional("EVENT_BUS_TOKEN").map(str::to_owned),
        })
    }
}

fn otlp_endpoint(env: &Env) -> Result<Option<String>, ConfigError> {
    const OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
    let Some(raw) = env.optional(OTLP_ENDPOINT) else {
        return Ok(None);
    };
    parse_http_url(raw)
        .map(Some)
        .map_err(|reason| ConfigError::Malformed {
            name: OTLP_ENDPOINT,
            value: raw.to_owned(),
            reason,
        })
}

/// One entry of `EVENT_BUS_SUBSCRIBERS` (`name=url,name=url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    pub name: String,
    pub url: String,
}

pub fn subscribers(env: &Env) -> Result<Vec<Subscriber>, ConfigError> {
    const NAME: &str = "EVENT_BUS_SUBSCRIBERS";
    let Some(raw) = env.optional(NAME) else {
        return Ok(Vec::new());
    };
    let malformed = |reason: String| ConfigError::Malformed {
        name: NAME,
        value: raw.to_owned(),
        reason,
    };
    let mut list: Vec<Subscriber> = Vec::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, url) = entry
            .split_once('=')
            .ok_or_else(|| malformed(format!("entry {entry:?} is not name=url")))?;
        let name = name.trim();
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name {
            return Err(malformed(format!(
                "subscriber name {name:?} must be [A-Za-z0-9_-]+"
            )));
        }
        if list.iter().any(|s| s.name == name) {
            return Err(malformed(format!("subscriber {name:?} is listed twice")));
        }
        let url = parse_http_url(url.trim()).map_err(|e| malformed(format!("{name}: {e}")))?;
        list.push(Subscriber {
            name: name.to_owned(),
            url,
        });
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_database_url_is_named() {
        let env = Env::from_pairs([("PORT", "7100")]);
        let err = ServiceConfig::from_env(&env, 7100).unwrap_err();
        assert_eq!(err, ConfigError::Missing("DATABASE_URL"));
        assert!(err.to_string().contains("DATABASE_URL"));
    }

    #[test]
    fn malformed_port_is_named_with_its_value() {
        let env = Env::from_pairs([("PORT", "forty"), ("DATABASE_URL", "postgres://x")]);
        let err = ServiceConfig::from_env(&env, 7100).unwrap_err();
        assert!(
            matches!(err, ConfigError::Malformed { name: "PORT", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("forty"));
    }

    #[test]
    fn defaults_apply_when_unset() {
        let env = Env::from_pairs([("DATABASE_URL", "postgres://x"), ("EVENT_BUS_TOKEN", "")]);
        let config = ServiceConfig::from_env(&env, 7105).unwrap();
        assert_eq!(config.port, 7105);
        assert_eq!(config.telemetry.log_format, LogFormat::Pretty);
        assert_eq!(config.telemetry.otlp_endpoint, None);
        assert_eq!(config.event_bus_token, None);
    }

    #[test]
    fn an_otlp_endpoint_must_be_an_http_url() {
        let env = |endpoint| {
            Env::from_pairs([
                ("DATABASE_URL", "postgres://x"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ])
        };
        let config = ServiceConfig::from_env(&env("http://collector:4318/"), 1).unwrap();
        assert_eq!(
            config.telemetry.otlp_endpoint.as_deref(),
            Some("http://collector:4318")
        );
        let err = ServiceConfig::from_env(&env("collector:4317"), 1).unwrap_err();
        assert!(
            err.to_string().contains("OTEL_EXPORTER_OTLP_ENDPOINT"),
            "{err}"
        );
    }

    #[test]
    fn subscribers_parse_in_order() {
        let env = Env::from_pairs([(
            "EVENT_BUS_SUBSCRIBERS",
            "query=http://query-srv:7102/events, comments=http://comments-srv:7101/events/",
        )]);
        let subs = subscribers(&env).unwrap();
        assert_eq!(
            subs,
            vec![
                Subscriber {
                    name: "query".into(),
                    url: "http://query-srv:7102/events".into()
                },
                Subscriber {
                    name: "comments".into(),
                    url: "http://comments-srv:7101/events".into()
                },
            ]
        );
    }

    #[test]
    fn malformed_subscribers_are_rejected() {
        for raw in [
            "query",
            "query=ftp://x",
            "a b=http://x",
            "q=http://x,q=http://y",
        ] {
            let env = Env::from_pairs([("EVENT_BUS_SUBSCRIBERS", raw)]);
            let err = subscribers(&env).unwrap_err();
            assert!(
                err.to_string().contains("EVENT_BUS_SUBSCRIBERS"),
                "{raw}: {err}"
            );
        }
    }
}

/// What every service that publishes or consumes events reads: its own settings plus
/// where the bus is (`EVENT_BUS_URL`, e.g. `http://event-bus-srv`).
#[derive(Debug, Clone)]
pub struct BusUserConfig {
    pub service: ServiceConfig,
    pub event_bus_url: String,
}

impl BusUserConfig {
    pub fn from_env(env: &Env, default_port: u16) -> Result<Self, ConfigError> {
        Ok(Self {
            service: ServiceConfig::from_env(env, default_port)?,
            event_bus_url: env.url("EVENT_BUS_URL")?,
        })
    }
}
