use std::time::Duration;

use service_kit::config::{subscribers, ConfigError, Env, ServiceConfig, Subscriber};

use crate::delivery::DeliverySettings;

pub const DEFAULT_PORT: u16 = 4005;

#[derive(Debug, Clone)]
pub struct BusConfig {
    pub service: ServiceConfig,
    pub subscribers: Vec<Subscriber>,
    pub delivery: DeliverySettings,
}

impl BusConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let service = ServiceConfig::from_env(env, DEFAULT_PORT)?;
        let batch_size: i64 = env.parsed_or("EVENT_BUS_BATCH_SIZE", 500)?;
        if !(1..=10_000).contains(&batch_size) {
            return Err(ConfigError::Malformed {
                name: "EVENT_BUS_BATCH_SIZE",
                value: batch_size.to_string(),
                reason: "must be between 1 and 10000".into(),
            });
        }
        let retry_max_ms: u64 = env.parsed_or("EVENT_BUS_RETRY_MAX_MS", 5_000)?;
        Ok(Self {
            subscribers: subscribers(env)?,
            delivery: DeliverySettings {
                batch_size,
                retry_base: Duration::from_millis(50).min(Duration::from_millis(retry_max_ms)),
                retry_cap: Duration::from_millis(retry_max_ms.max(1)),
                timeout: Duration::from_secs(10),
                token: service.event_bus_token.clone(),
            },
            service,
        })
    }
}
