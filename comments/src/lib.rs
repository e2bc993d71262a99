//! comments: creates comments on known posts, and turns moderation decisions into
//! versioned `CommentUpdated` events.

pub mod domain;
pub mod reactions;
pub mod routes;
pub mod store;

use actix_web::web;
use service_kit::config::{BusUserConfig, ConfigError, Env};
use service_kit::consumer::Consumer;
use service_kit::server::{Application, StartError};
use service_kit::startup::Startup;
use sqlx::migrate::Migrator;
use tokio::sync::watch;

pub static MIGRATOR: Migrator = sqlx::migrate!();
pub const DEFAULT_PORT: u16 = 4001;

pub fn config_from_env(env: &Env) -> Result<BusUserConfig, ConfigError> {
    BusUserConfig::from_env(env, DEFAULT_PORT)
}

pub async fn build(config: BusUserConfig) -> Result<Application, StartError> {
    let mut startup = Startup::connect(config, &MIGRATOR).await?;
    let outbox = startup.start_outbox_relay();
    let (posts_learned, learned) = watch::channel(0u64);
    startup.listen(&[reactions::POSTS_LEARNED], move |_, _| {
        // A post learned, or notifications missed while reconnecting: look again.
        posts_learned.send_modify(|n| *n += 1);
    });
    let consumer = startup.start_consumer(
        Consumer::new(
            startup.pool.clone(),
            startup.bus.clone(),
            reactions::CommentsReactions,
        )
        .waking(outbox.clone()),
    );
    let state = web::Data::new(routes::CommentsState {
        pool: startup.pool.clone(),
        outbox,
        posts_learned: learned,
    });
    startup.serve(move |cfg: &mut web::ServiceConfig| {
        consumer.register(cfg);
        cfg.app_data(state.clone()).configure(routes::routes);
    })
}
