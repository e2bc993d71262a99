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
use crate::db;
use crate::http::EventsAuth;
use crate::outbox::{OutboxRelay, OutboxWaker};
use crate::server::{Application, Readiness, ServerSettings, StartError};
use crate::shutdown::Shutdown;

pub struct Startup {
    pub pool: PgPool,
    pub bus: BusClient,
    config: BusUserConfig,
    readiness: Readiness,
    shutdown: Shutdown,
    tasks: Vec<JoinHandle<()>>,
}

impl Startup {
    /// Connects (waiting up to 60 s for the database) and migrates the service's schema
    /// together with the shared tables.
    pub async fn connect(config: BusUserConfig, migrations: &Migrator) -> Result<Self, StartError> {
        let pool = db::open(
            &config.service.database_url,
            &db::with_shared_migrations(migrations),
        )
        .await?;
        warn_if_open(&config.service);
        let bus = BusClient::new(
            &config.event_bus_url,
            config.service.event_bus_token.clone(),
        );
        Ok(Self {
            readiness: Readiness::database(pool.clone()),
            pool,
            bus,
            config,
            shutdown: Shutdown::new(),
            tasks: Vec::new(),
        })
    }

    /// Starts the outbox relay; wake it after each commit that appended to the outbox.
    pub fn start_outbox_relay(&mut self) -> OutboxWaker {
        let relay = OutboxRelay::new(self.pool.clone(), self.bus.clone());
        let waker = relay.waker();
        self.tasks.push(relay.spawn(self.shutdown.signal()));
        waker
    }

    /// Makes this service a consumer: not ready until it has caught up with the bus.
    pub fn start_consumer<H: Reactions>(&mut self, consumer: Consumer<H>) -> ConsumerRoutes<H> {
        let consumer = Arc::new(consumer);
        self.readiness = Readiness::pending(self.pool.clone());
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

    pub fn shutdown_signal(&self) -> crate::shutdown::ShutdownSignal {
        self.shutdown.signal()
    }

    /// Binds the port and serves `routes` (plus the health routes).
    pub fn serve<F>(self, routes: F) -> Result<Application, StartError>
    where
        F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
    {
        Ok(Application::start(
            ServerSettings::on_port(self.config.service.port),
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
