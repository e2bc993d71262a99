//! posts: creates posts and announces each with a `PostCreated` event via the outbox.

pub mod domain;
pub mod routes;
pub mod store;

use actix_web::web;
use service_kit::config::{BusUserConfig, ConfigError, Env};
use service_kit::server::{Application, StartError};
use service_kit::startup::Startup;
use sqlx::migrate::Migrator;

pub static MIGRATOR: Migrator = sqlx::migrate!();
pub const DEFAULT_PORT: u16 = 4000;

pub fn config_from_env(env: &Env) -> Result<BusUserConfig, ConfigError> {
    BusUserConfig::from_env(env, DEFAULT_PORT)
}

pub async fn build(config: BusUserConfig) -> Result<Application, StartError> {
    let mut startup = Startup::connect(config, &MIGRATOR).await?;
    let outbox = startup.start_outbox_relay();
    let state = web::Data::new(routes::PostsState {
        pool: startup.pool.clone(),
        outbox,
    });
    startup.serve(move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(state.clone()).configure(routes::routes);
    })
}
