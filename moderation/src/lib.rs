//! moderation: decides every new comment (blocked words → rejected) exactly once and
//! announces it with `CommentModerated`.

pub mod domain;
pub mod reactions;
pub mod store;

use actix_web::web;
use service_kit::config::{BusUserConfig, ConfigError, Env};
use service_kit::consumer::Consumer;
use service_kit::server::{Application, StartError};
use service_kit::startup::Startup;
use sqlx::migrate::Migrator;

use domain::Blocklist;
use reactions::Moderator;

pub static MIGRATOR: Migrator = sqlx::migrate!();
pub const DEFAULT_PORT: u16 = 4003;

#[derive(Debug, Clone)]
pub struct ModerationConfig {
    pub base: BusUserConfig,
    pub blocklist: Blocklist,
}

pub fn config_from_env(env: &Env) -> Result<ModerationConfig, ConfigError> {
    Ok(ModerationConfig {
        base: BusUserConfig::from_env(env, DEFAULT_PORT)?,
        blocklist: env
            .optional("MODERATION_BLOCKLIST")
            .map_or_else(Blocklist::course_default, Blocklist::parse),
    })
}

pub async fn build(config: ModerationConfig) -> Result<Application, StartError> {
    let mut startup = Startup::connect(config.base, &MIGRATOR).await?;
    let outbox = startup.start_outbox_relay();
    let moderator = Moderator {
        blocklist: config.blocklist,
    };
    let consumer = startup.start_consumer(
        Consumer::new(startup.pool.clone(), startup.bus.clone(), moderator).waking(outbox),
    );
    startup.serve(move |cfg: &mut web::ServiceConfig| consumer.register(cfg))
}
