//! query: the denormalised posts-with-comments view, built from events, served in the
//! course's shape, pushed live over Server-Sent Events, rebuildable from the log.

pub mod cache;
pub mod metrics;
pub mod reactions;
pub mod routes;
pub mod store;

use actix_web::web;
use service_kit::config::{BusUserConfig, ConfigError, Env};
use service_kit::consumer::Consumer;
use service_kit::notify::Heard;
use service_kit::server::{Application, StartError};
use service_kit::startup::Startup;
use sqlx::migrate::Migrator;
use tokio::sync::broadcast;

pub static MIGRATOR: Migrator = sqlx::migrate!();
pub const DEFAULT_PORT: u16 = 4002;

pub fn config_from_env(env: &Env) -> Result<BusUserConfig, ConfigError> {
    BusUserConfig::from_env(env, DEFAULT_PORT)
}

pub async fn build(config: BusUserConfig) -> Result<Application, StartError> {
    let mut startup = Startup::connect(config, &MIGRATOR).await?;
    std::sync::LazyLock::force(&metrics::QUERY);
    let (changes, _) = broadcast::channel(4096);
    let cache = std::sync::Arc::new(cache::ViewCache::default());
    let (heard_changes, heard_cache) = (changes.clone(), cache.clone());
    startup.listen(&[reactions::VIEW_CHANGES], move |_, heard| {
        let change = match heard {
            Heard::Message(change) => change,
            Heard::Missed => contract::RESYNC.to_owned(),
        };
        // Invalidate first: a reader told of a change must not get the page before it.
        let changed = serde_json::from_str::<contract::StreamChange>(&change).ok();
        match changed.as_ref().and_then(contract::StreamChange::subject) {
            Some((seq, post)) => heard_cache.heard(seq, post),
            None => heard_cache.invalidate(),
        }
        // No receivers is fine: nobody is watching.
        let _ = heard_changes.send(change);
    });
    // This replica's own cache learns what changed the moment its delivery commits, so
    // a reader is never served the page from before what it was just told was applied.
    let own_cache = cache.clone();
    let consumer = startup.start_consumer(
        Consumer::new(
            startup.pool.clone(),
            startup.bus.clone(),
            reactions::ViewReactions::new(cache.clone()),
        )
        .after_commit(move || own_cache.committed()),
    );
    let (patching_cache, pool, mut stopping) = (
        cache.clone(),
        startup.pool.clone(),
        startup.shutdown_signal(),
    );
    tokio::spawn(async move {
        let read = |ids: Option<Vec<String>>| {
            let pool = pool.clone();
            async move { store::whole_view(&pool, ids.as_deref()).await }
        };
        tokio::select! {
            () = patching_cache.keep_patched(read) => {}
            () = stopping.triggered() => {}
        }
    });
    let state = web::Data::new(routes::QueryState {
        pool: startup.pool.clone(),
        changes,
        cache,
        shutdown: startup.shutdown_signal(),
    });
    startup.serve(move |cfg: &mut web::ServiceConfig| {
        consumer.register(cfg);
        cfg.app_data(state.clone()).configure(routes::routes);
    })
}
