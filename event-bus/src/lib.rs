//! The event bus: a durable, replayable log with gap-free sequence numbers, and one
//! delivery loop per subscriber with a durable cursor. Any number of replicas accept
//! publishes; one of them at a time (the leader) delivers.

pub mod config;
pub mod delivery;
pub mod leader;
pub mod metrics;
pub mod routes;
pub mod store;
mod tail;
pub mod writer;

use actix_web::web;
use service_kit::db::{self, Database};
use service_kit::http::EventsAuth;
use service_kit::notify::{self, Heard};
use service_kit::server::{Application, Readiness, ServerSettings, StartError};
use service_kit::shutdown::Shutdown;
use sqlx::migrate::Migrator;
use tokio::sync::watch;

pub use config::BusConfig;
use routes::BusState;
use store::{Store, LOG_APPENDED};
use writer::{advance_head, LogWriter};

pub static MIGRATOR: Migrator = sqlx::migrate!();

pub async fn build(config: BusConfig) -> Result<Application, StartError> {
    let shutdown = Shutdown::new();
    let (database, migrating) = Database::open(
        &config.service.database_url,
        db::only(&MIGRATOR),
        shutdown.signal(),
    )?;
    service_kit::startup::warn_if_open(&config.service);
    let store = Store::new(database.pool.clone());
    // The head as this replica knows it: moved by its own appends at once, and by every
    // replica's (its own included) when their commits are announced.
    let (head_tx, head) = watch::channel(0);
    let head_tx = std::sync::Arc::new(head_tx);
    let listening = follow_the_head(&database, &store, head_tx.clone(), &shutdown);
    let (writer, writer_task) = LogWriter::spawn(store.clone(), head_tx, shutdown.signal());
    let replica = leader::replica_name();
    let (subscribers, delivery) = (config.subscribers.clone(), config.delivery.clone());
    let (loop_store, loop_head) = (store.clone(), head.clone());
    let (leading, leading_task) = leader::spawn(
        database.clone(),
        replica.clone(),
        move |term| delivery::spawn_all(&subscribers, &loop_store, &loop_head, &delivery, &term),
        shutdown.signal(),
    );
    let subscriber_names: Vec<String> = config.subscribers.iter().map(|s| s.name.clone()).collect();
    let mut settings = ServerSettings::on_port(config.service.port);
    settings.body_limit = contract::PUBLISH_LIMIT;
    std::sync::LazyLock::force(&metrics::BUS);
    let state = (store.clone(), subscriber_names.clone(), leading.clone());
    settings
        .readings
        .add(state, |(store, names, leading)| async move {
            metrics::BUS.leading.set(i64::from(*leading.borrow()));
            metrics::BUS.read(&store, &names).await
        });
    let state = web::Data::new(BusState {
        writer,
        store,
        subscribers: subscriber_names,
        replica,
        leading,
    });
    let auth = EventsAuth::from_token(config.service.event_bus_token.as_deref());
    Application::start(
        settings,
        Readiness::database(database),
        move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(state.clone())
                .app_data(auth.clone())
                .configure(routes::routes);
        },
        shutdown,
        vec![migrating, listening, writer_task, leading_task],
    )
    .map_err(StartError::from)
}

/// Keeps `head` at the log's head: every append is announced with the new head, and
/// after (re)connecting the head is read from the database, since announcements made
/// meanwhile are lost.
fn follow_the_head(
    database: &Database,
    store: &Store,
    head: std::sync::Arc<watch::Sender<i64>>,
    shutdown: &Shutdown,
) -> tokio::task::JoinHandle<()> {
    let store = store.clone();
    notify::spawn_listener(
        database.clone(),
        &[LOG_APPENDED],
        shutdown.signal(),
        move |_, heard| match heard {
            Heard::Message(seq) => match seq.parse() {
                Ok(seq) if !store.is_being_committed(seq) => advance_head(&head, seq),
                _ => {}
            },
            Heard::Missed => {
                let (store, head) = (store.clone(), head.clone());
                tokio::spawn(async move {
                    if let Ok(seq) = store.head().await {
                        advance_head(&head, seq);
                    }
                });
            }
        },
    )
}
