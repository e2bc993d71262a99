//! The start-up every producer and consumer service shares: database and migrations,
//! the bus client, the outbox relay, the consumer with its catch-up, then serving.

use std::sync::Arc;

use actix_web::web;
use sqlx::migrate::Migrator;
use sqlx::PgPool;
use tokio::task::JoinHandle;

use crate::bus::BusClient;
use crate::config::{BusUserConfig, ServiceConfig};
use crate::consumer::{self, Consumer, ConsumerRoutes, Reactions};
use crate::db::{self, Database};
use crate::http::EventsAuth;
use crate::metrics::{self, Readings};
use crate::notify::{self, Heard};
use crate::outbox::{OutboxRelay, OutboxWaker};
use crate::server::{Application, Readiness, ServerSettings, StartError};
use crate::shutdown::Shutdown;

pub struct Startup {
    pub pool: PgPool,
    pub database: Database,
    pub bus: BusClient,
    config: BusUserConfig,
    readiness: Readiness,
    readings: Readings,
    shutdown: Shutdown,
    tasks: Vec<JoinHandle<()>>,
}

impl Startup {
    /// Opens the database (never waiting for it: the service's schema, with the shared
    /// tables, is brought up to date in the background as soon as it answers).
    pub async fn connect(config: BusUserConfig, migrations: &Migrator) -> Result<Self, StartError> {
        let shutdown = Shutdown::new();
        let (database, migrating) = Database::open(
            &config.service.database_url,
            db::with_shared_migrations(migrations),
            shutdown.signal(),
        )?;
        warn_if_open(&config.service);
        let bus = BusClient::new(
            &config.event_bus_url,
            config.service.event_bus_token.clone(),
        );
        Ok(Self {
            readiness: Readiness::database(database.clone()),
            readings: Readings::default(),
            pool: database.pool.clone(),
            database,
            bus,
            config,
            shutdown,
            tasks: vec![migrating],
        })
    }

    /// Starts the outbox relay; wake it after each commit that appended to the outbox.
    pub fn start_outbox_relay(&mut self) -> OutboxWaker {
        let relay = OutboxRelay::new(self.database.clone(), self.bus.clone());
        self.readiness.report_relay(relay.refusals());
        std::sync::LazyLock::force(&metrics::OUTBOX);
        self.readings.add(self.pool.clone(), |pool| async move {
            metrics::OUTBOX
                .pending
                .set(OutboxRelay::pending(&pool).await?);
            Ok(())
        });
        let waker = relay.waker();
        self.tasks.push(relay.spawn(self.shutdown.signal()));
        waker
    }

    /// Makes this service a consumer: not ready until it has caught up with the bus.
    pub fn start_consumer<H: Reactions>(&mut self, consumer: Consumer<H>) -> ConsumerRoutes<H> {
        let consumer = Arc::new(consumer);
        self.readiness.wait_for_catch_up();
        std::sync::LazyLock::force(&metrics::CONSUMER);
        let state = (consumer.clone(), self.readiness.clone());
        self.readings
            .add(state, |(consumer, readiness)| async move {
                let gauges = &metrics::CONSUMER;
                gauges.caught_up.set(i64::from(readiness.is_marked_ready()));
                let (cursor, parked) = consumer.position().await?;
                gauges.cursor.set(cursor);
                gauges.parked.set(parked);
                Ok(())
            });
        self.tasks.push(consumer::spawn_catch_up(
            consumer.clone(),
            self.readiness.clone(),
            self.shutdown.signal(),
        ));
        ConsumerRoutes::new(consumer, self.events_auth())
    }

    /// Who may deliver to this service's `/events`, from `EVENT_BUS_TOKEN`.
    pub fn events_auth(&self) -> EventsAuth {
        EventsAuth::from_token(self.config.service.event_bus_token.as_deref())
    }

    /// Hears what any replica of this service announces on `channels` (`notify`).
    pub fn listen<F>(&mut self, channels: &'static [&'static str], heard: F)
    where
        F: Fn(&str, Heard) + Send + 'static,
    {
        self.tasks.push(notify::spawn_listener(
            self.database.clone(),
            channels,
            self.shutdown.signal(),
            heard,
        ));
    }

    pub fn shutdown_signal(&self) -> crate::shutdown::ShutdownSignal {
        self.shutdown.signal()
    }

    /// Binds the port and serves `routes` (plus the health routes).
    pub fn serve<F>(self, routes: F) -> Result<Application, StartError>
    where
        F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
    {
        let mut settings = ServerSettings::on_port(self.config.service.port);
        settings.readings = self.readings;
        Ok(Application::start(
            settings,
            self.readiness,
            routes,
            self.shutdown,
            self.tasks,
        )?)
    }
}

/// The open mode is for local runs; say so where an operator would notice it in a cluster.
pub fn warn_if_open(config: &ServiceConfig) {
    if config.event_bus_token.is_none() {
        tracing::warn!("EVENT_BUS_TOKEN is not set: /events is open to anyone (fine on your machine, never in a cluster)");
    }
}
