//! Server start-up shared by every service: bind (port 0 in tests), health routes and
//! metrics, request logging, JSON body limit, and graceful shutdown that stops
//! accepting, lets in-flight requests finish, then stops the background tasks and waits
//! for them.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::db::Database;
use crate::error::ApiError;
use crate::http::{health_routes, log_requests, until_schema_ready, BodyLimit, DEFAULT_BODY_LIMIT};
use crate::metrics::{self, Readings};
use crate::outbox::Refusals;
use crate::shutdown::Shutdown;

/// What `/readyz` checks: the schema is up to date, the database answers now, and the
/// service says it is ready (e.g. a consumer has caught up with the bus).
#[derive(Clone)]
pub struct Readiness {
    database: Database,
    caught_up: Arc<AtomicBool>,
    /// A consumer is not ready while it refuses a diverged bus (recorded in its database,
    /// so every replica says so).
    consumer: bool,
    relay: Option<Arc<Refusals>>,
}

/// How long `/readyz` waits for the database: less than a probe's timeout.
const READINESS_TIMEOUT: Duration = Duration::from_secs(1);

impl Readiness {
    /// Ready as soon as the schema is up to date and the database answers.
    pub fn database(database: Database) -> Self {
        Self {
            database,
            caught_up: Arc::new(AtomicBool::new(true)),
            consumer: false,
            relay: None,
        }
    }

    /// Not ready until `mark_ready` is called, either.
    pub fn pending(database: Database) -> Self {
        let mut readiness = Self::database(database);
        readiness.wait_for_catch_up();
        readiness
    }

    /// Not ready until `mark_ready`, from now on (a consumer that must catch up first).
    pub fn wait_for_catch_up(&mut self) {
        self.caught_up = Arc::new(AtomicBool::new(false));
        self.consumer = true;
    }

    /// Shows the outbox relay's refusals in the health detail.
    pub fn report_relay(&mut self, refusals: Arc<Refusals>) {
        self.relay = Some(refusals);
    }

    /// What `/healthz` says beyond "alive".
    pub fn detail(&self) -> serde_json::Value {
        match &self.relay {
            Some(refusals) => serde_json::json!({ "status": "ok", "outbox": refusals.detail() }),
            None => serde_json::json!({ "status": "ok" }),
        }
    }

    pub fn mark_ready(&self) {
        self.caught_up.store(true, Ordering::Release);
    }

    pub fn is_marked_ready(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    pub fn schema_ready(&self) -> bool {
        self.database.schema_ready()
    }

    pub fn database_handle(&self) -> &Database {
        &self.database
    }

    pub async fn check(&self) -> Result<(), ApiError> {
        if !self.schema_ready() {
            return Err(ApiError::Unavailable(
                "starting: the database is not reachable yet".into(),
            ));
        }
        if !self.is_marked_ready() {
            return Err(ApiError::Unavailable(
                "still catching up with the event bus".into(),
            ));
        }
        let pool = &self.database.pool;
        let ping = async {
            if self.consumer {
                match crate::consumer::divergence(pool).await? {
                    Some(divergence) => Err(ApiError::Unavailable(format!(
                        "refusing the event bus until resynced: {divergence}"
                    ))),
                    None => Ok(()),
                }
            } else {
                sqlx::query("SELECT 1").execute(pool).await?;
                Ok(())
            }
        };
        match tokio::time::timeout(READINESS_TIMEOUT, ping).await {
            Ok(answer) => answer,
            Err(_) => Err(ApiError::Unavailable("the database does not answer".into())),
        }
    }
}

pub struct ServerSettings {
    pub port: u16,
    pub body_limit: usize,
    /// How long in-flight requests (and open streams) get to finish on shutdown.
    pub grace: Duration,
    /// What `GET /metrics` reads before it answers.
    pub readings: Readings,
}

impl ServerSettings {
    pub fn on_port(port: u16) -> Self {
        Self {
            port,
            body_limit: DEFAULT_BODY_LIMIT,
            grace: Duration::from_secs(10),
            readings: Readings::default(),
        }
    }
}

/// A running service: its HTTP server plus the background tasks it owns.
pub struct Application {
    port: u16,
    database: Database,
    server: Server,
    shutdown: Shutdown,
    tasks: Vec<JoinHandle<()>>,
    stop: Arc<Notify>,
}

/// Asks a running application to shut down gracefully (what SIGTERM does).
#[derive(Clone)]
pub struct StopHandle(Arc<Notify>);

impl StopHandle {
    pub fn stop(&self) {
        self.0.notify_one();
    }
}

impl Application {
    /// Binds and starts serving. `routes` registers the service's own routes and data;
    /// `tasks` are its background loops, all watching `shutdown`.
    pub fn start<F>(
        settings: ServerSettings,
        readiness: Readiness,
        routes: F,
        shutdown: Shutdown,
        tasks: Vec<JoinHandle<()>>,
    ) -> std::io::Result<Self>
    where
        F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
    {
        let database = readiness.database_handle().clone();
        let listener = TcpListener::bind(("0.0.0.0", settings.port))?;
        let port = listener.local_addr()?.port();
        let readiness = web::Data::new(readiness);
        let body_limit = BodyLimit(settings.body_limit);
        let readings = web::Data::new(settings.readings);
        LazyLock::force(&metrics::HTTP);
        LazyLock::force(&metrics::POOL);
        let server = HttpServer::new(move || {
            App::new()
                .wrap(from_fn(until_schema_ready))
                .wrap(from_fn(log_requests))
                .app_data(readiness.clone())
                .app_data(readings.clone())
                .app_data(body_limit)
                .configure(health_routes)
                .route("/metrics", web::get().to(metrics::endpoint))
                .configure(routes.clone())
        })
        // A streamed answer (a page of the log, an SSE stream) ends with a write of its
        // own; with Nagle's algorithm on, it waited for the reader's delayed ACK, 40 ms.
        .tcp_nodelay(true)
        .disable_signals()
        .shutdown_timeout(settings.grace.as_secs())
        .listen(listener)?
        .run();
        tracing::info!(port, "listening");
        Ok(Self {
            port,
            database,
            server,
            shutdown,
            tasks,
            stop: Arc::new(Notify::new()),
        })
    }

    /// Resolves once the schema is up to date: from then on the service answers requests
    /// (before, everything but the health checks is 503).
    pub async fn started(&self) {
        self.database.schema_up_to_date().await;
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.stop.clone())
    }

    /// Serves until SIGTERM/SIGINT (or a `StopHandle`), then shuts down in order.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Self {
            server,
            shutdown,
            tasks,
            stop,
            ..
        } = self;
        let handle = server.handle();
        let mut server = tokio::spawn(server);
        let server_result = tokio::select! {
            result = &mut server => Some(result),
            _ = stop.notified() => None,
            _ = termination_signal() => None,
        };
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        shutdown.drain();
        if server_result.is_none() {
            handle.stop(true).await;
        }
        shutdown.trigger();
        for task in tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "background task failed");
            }
        }
        tracing::info!("stopped");
        match server_result {
            Some(Ok(result)) => result,
            Some(Err(join_error)) => Err(std::io::Error::other(join_error)),
            None => match server.await {
                Ok(result) => result,
                Err(join_error) => Err(std::io::Error::other(join_error)),
            },
        }
    }
}

async fn termination_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut sigterm) => {
            tokio::select! {
                _ = ctrl_c => {},
                _ = sigterm.recv() => {},
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the database URL: {0}")]
    Database(#[from] sqlx::Error),
    #[error("binding the HTTP port: {0}")]
    Io(#[from] std::io::Error),
}

/// The whole of a service's `main`: read config (exit 2 naming the bad variable), start
/// logging, build, serve until SIGTERM, exit 0 after a clean shutdown.
pub async fn run_main<C, Fut>(
    name: &str,
    read_config: impl FnOnce(&crate::config::Env) -> Result<C, crate::config::ConfigError>,
    telemetry: impl FnOnce(&C) -> crate::config::TelemetryConfig,
    build: impl FnOnce(C) -> Fut,
) -> std::process::ExitCode
where
    Fut: std::future::Future<Output = Result<Application, StartError>>,
{
    let config = match read_config(&crate::config::Env::from_process()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{name}: configuration error: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    crate::telemetry::init(name, &telemetry(&config));
    let application = match build(config).await {
        Ok(application) => application,
        Err(error) => {
            tracing::error!(error = %crate::error::error_chain(&error), "{name} failed to start");
            return std::process::ExitCode::FAILURE;
        }
    };
    let stopped = application.run_until_stopped().await;
    // The spans of the last requests, before the process ends.
    crate::otlp::flush().await;
    match stopped {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "{name} stopped with an error");
            std::process::ExitCode::FAILURE
        }
    }
}
