//! The event bus: a durable, replayable log with gap-free sequence numbers, and one
//! delivery loop per subscriber with a durable cursor.

pub mod config;
pub mod delivery;
pub mod routes;
pub mod store;
pub mod writer;

use actix_web::web;
use service_kit::db;
use service_kit::http::EventsAuth;
use service_kit::server::{Application, Readiness, ServerSettings, StartError};
use service_kit::shutdown::Shutdown;
use sqlx::migrate::Migrator;
use tokio::sync::watch;

pub use config::BusConfig;
use routes::BusState;
use store::Store;
use writer::LogWriter;

pub static MIGRATOR: Migrator = sqlx::migrate!();

pub async fn build(config: BusConfig) -> Result<Application, StartError> {
    let pool = db::open(&config.service.database_url, &MIGRATOR).await?;
    service_kit::startup::warn_if_open(&config.service);
    let store = Store::new(pool.clone());
    let (head_tx, head) = watch::channel(store.head().await?);
    let shutdown = Shutdown::new();
    let (writer, writer_task) = LogWriter::spawn(store.clone(), head_tx, shutdown.signal());
    let (subscriptions, mut tasks) = delivery::spawn_all(
        &config.subscribers,
        &store,
        &head,
        &config.delivery,
        &shutdown.signal(),
    );
    tasks.push(writer_task);
    let state = web::Data::new(BusState {
        writer,
        store,
        head,
        subscriptions,
    });
    let auth = EventsAuth::from_token(config.service.event_bus_token.as_deref());
    let mut settings = ServerSettings::on_port(config.service.port);
    settings.body_limit = contract::EVENTS_BODY_LIMIT;
    Application::start(
        settings,
        Readiness::database(pool),
        move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(state.clone())
                .app_data(auth.clone())
                .configure(routes::routes);
        },
        shutdown,
        tasks,
    )
    .map_err(StartError::from)
}
