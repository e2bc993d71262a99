//! `cargo run -p devstack`: the whole microblog on this machine, with no Docker and no
//! cluster. A private PostgreSQL, the five services built and supervised, the React
//! client, and a gateway on one port that routes by `infra/k8s/ingress-srv.yaml` (or by
//! the gateway overlay's HTTPRoutes, `--routes gateway`).
//! `devstack topology --json` prints the service topology for scripts.

mod client;
mod gateway;
mod httproute;
mod ingress;
mod observe;
mod postgres;
mod ratelimit;
mod routes;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use harness::postgres::Server;
use harness::process::say;
use harness::proxy::Endpoints;
use harness::stack::{local_url, Logs, Ports, Stack, StackOptions};
use harness::topology::{self, CLIENT, SERVICES};
use tokio::sync::watch;

use crate::observe::Observer;
use crate::routes::{RouteSource, Routes};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str =
    "usage: cargo run -p devstack -- [--port N] [--replicas N] [--routes ingress|gateway] [--observe]
                                [--fresh] [--data DIR]
       cargo run -p devstack -- topology --json

  --port N      the gateway's port (default 8080)
  --replicas N  instances of every service (default 1; up to 8), behind a proxy on the
                service's port that spreads requests across the ready ones
  --routes R    what the gateway routes by: ingress (default) applies infra/k8s/ingress-srv.yaml
                as ingress-nginx does, with its rate limits; gateway applies the HTTPRoutes of
                infra/overlays/gateway as Gateway API (Envoy Gateway) does, without limits
  --observe     also run Prometheus (Debian's prometheus package) on port 9090, scraping
                every instance, with the rules and alerts of infra/prometheus/rules.yml
  --fresh       delete the local data and start empty
  --data DIR    where the local data lives (default .devstack/ in the repository)

Runs PostgreSQL (data in .devstack/), the five services, the client, and a gateway that
routes by infra/k8s/ingress-srv.yaml (or the HTTPRoutes). Ctrl-C stops everything.
`topology --json` prints the services (names, Services, ports, databases, roles, the
environment each reads) and the public route table, for scripts and the offline checks.";

/// A service that is not ready within this time ends the run: it is crash-looping.
const READY_DEADLINE: Duration = Duration::from_secs(120);

struct Options {
    port: u16,
    replicas: usize,
    routes: RouteSource,
    observe: bool,
    fresh: bool,
    data: Option<PathBuf>,
}

enum Command {
    Run(Options),
    Topology,
}

fn command() -> Result<Command, String> {
    let mut options = Options {
        port: 8080,
        replicas: 1,
        routes: RouteSource::Ingress,
        observe: false,
        fresh: false,
        data: None,
    };
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("topology") {
        args.next();
        return match args.next().as_deref() {
            Some("--json") if args.next().is_none() => Ok(Command::Topology),
            _ => Err("topology takes exactly --json".into()),
        };
    }
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--fresh" => options.fresh = true,
            "--observe" => options.observe = true,
            "--port" => {
                options.port = args
                    .next()
                    .and_then(|p| p.parse().ok())
                    .ok_or("--port needs a port number")?
            }
            "--replicas" => {
                options.replicas = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| (1..=8).contains(n))
                    .ok_or("--replicas needs a number from 1 to 8")?
            }
            "--routes" => {
                options.routes = args
                    .next()
                    .as_deref()
                    .and_then(RouteSource::parse)
                    .ok_or("--routes needs ingress or gateway")?
            }
            "--data" => {
                let dir = PathBuf::from(args.next().ok_or("--data needs a directory")?);
                // PostgreSQL resolves relative paths against its own data directory.
                options.data = Some(
                    std::path::absolute(&dir)
                        .map_err(|e| format!("--data {}: {e}", dir.display()))?,
                );
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Command::Run(options))
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match command() {
        Ok(Command::Run(options)) => options,
        Ok(Command::Topology) => {
            say(&topology::to_json().to_string());
            return ExitCode::SUCCESS;
        }
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("devstack: {problem}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_owned();
    match run(&root, options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("devstack: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(root: &Path, options: Options) -> Result<(), Error> {
    // First of all, so that Ctrl-C at any point stops what has started, in order, instead
    // of killing devstack and orphaning its children.
    let interrupted = interruption()?;
    let routes = Routes::load(root, options.routes)?;
    let ports = local_ports(&routes)?;
    if ports.values().any(|p| *p == options.port) || options.port == 0 {
        return Err(format!(
            "--port {} is taken by a service; choose another",
            options.port
        )
        .into());
    }
    for port in ports.values() {
        if std::net::TcpListener::bind(("127.0.0.1", *port)).is_err() {
            return Err(in_use(*port).into());
        }
    }
    // Held from now on: nothing can take these ports while the services build.
    let listeners = Listeners {
        gateway: std::net::TcpListener::bind(("127.0.0.1", options.port))
            .map_err(|_| in_use(options.port))?,
        client: std::net::TcpListener::bind(("127.0.0.1", CLIENT.port))
            .map_err(|_| in_use(CLIENT.port))?,
    };
    let binaries = unless_interrupted(&interrupted, build_services(root)).await?;
    unless_interrupted(&interrupted, client::build_if_stale(&root.join("client"))).await?;
    let databases: Vec<&str> = SERVICES.iter().map(|s| s.database).collect();
    let data = options
        .data
        .clone()
        .unwrap_or_else(|| root.join(".devstack"));
    // Not raced against Ctrl-C: abandoning pg_ctl half-way could leave a server behind.
    let postgres = postgres::start(&data, options.fresh, &databases).await?;
    let outcome = if *interrupted.borrow() {
        Err("interrupted".into())
    } else {
        let local = Local {
            root,
            options: &options,
            data_dir: &data,
            binaries,
            postgres: &postgres,
        };
        local.serve(routes, ports, listeners, interrupted).await
    };
    let stopped = postgres.stop().await;
    say(&format!(
        "devstack: stopped. Your data is kept in {}; `--fresh` starts empty.",
        data.display()
    ));
    outcome.and(stopped.map_err(Error::from))
}

fn in_use(port: u16) -> String {
    format!("port {port} is in use; is another devstack (or the course's app) running? (`ss -ltnp | grep :{port}`)")
}

/// Turns Ctrl-C and SIGTERM into a flag every step of the run watches.
fn interruption() -> Result<watch::Receiver<bool>, Error> {
    let (interrupt, interrupted) = watch::channel(false);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
        let _ = interrupt.send(true);
    });
    Ok(interrupted)
}

async fn unless_interrupted<T, E: Into<Error>>(
    interrupted: &watch::Receiver<bool>,
    step: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Error> {
    let mut interrupted = interrupted.clone();
    tokio::select! {
        result = step => result.map_err(Into::into),
        _ = interrupted.wait_for(|i| *i) => Err("interrupted".into()),
    }
}

/// Every backend the routes name must be a local process on the Service's port, or
/// the manifest is wrong — and then the local run fails as the cluster would.
fn local_ports(routes: &Routes) -> Result<HashMap<String, u16>, Error> {
    let mut ports: HashMap<String, u16> = SERVICES
        .iter()
        .map(|s| (s.k8s_service.to_owned(), s.port))
        .collect();
    ports.insert(CLIENT.k8s_service.to_owned(), CLIENT.port);
    for (path, backend) in routes.backends() {
        match ports.get(&backend.service) {
            Some(port) if *port == backend.port => {}
            Some(port) => {
                return Err(format!(
                    "{}: path {path:?} goes to {}:{}, but that Service listens on {port}",
                    routes.describe(),
                    backend.service,
                    backend.port
                )
                .into())
            }
            None => {
                return Err(format!(
                    "{}: path {path:?} goes to Service {:?}, which does not exist (known: {})",
                    routes.describe(),
                    backend.service,
                    ports.keys().cloned().collect::<Vec<_>>().join(", ")
                )
                .into())
            }
        }
    }
    Ok(ports)
}

/// Builds the services with the same cargo and profile that built devstack itself;
/// returns the directory that holds them.
async fn build_services(root: &Path) -> Result<PathBuf, Error> {
    let target = harness::stack::binaries_of_this_build()?;
    let release = target.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = tokio::process::Command::new(cargo);
    command
        .args(["build", "--locked"])
        .current_dir(root)
        .kill_on_drop(true);
    if release {
        command.arg("--release");
    }
    for service in &SERVICES {
        command.args(["-p", service.name]);
    }
    say(&format!(
        "devstack: building the services (cargo build{})",
        if release { " --release" } else { "" }
    ));
    let status = command.status().await?;
    if !status.success() {
        return Err(format!("building the services failed ({status})").into());
    }
    Ok(target)
}

struct Listeners {
    gateway: std::net::TcpListener,
    client: std::net::TcpListener,
}

/// What the local run is made of.
struct Local<'a> {
    root: &'a Path,
    options: &'a Options,
    data_dir: &'a Path,
    binaries: PathBuf,
    postgres: &'a Server,
}

impl Local<'_> {
    /// Runs everything until Ctrl-C, then stops it in order: the gateway and the client
    /// first, then the services (the bus last), whichever way the run ends.
    async fn serve(
        &self,
        routes: Routes,
        ports: HashMap<String, u16>,
        listeners: Listeners,
        mut interrupted: watch::Receiver<bool>,
    ) -> Result<(), Error> {
        // Deliveries and publishes carry a bearer token in Kubernetes; so they do here.
        let token = format!("devstack-{:016x}", fastrand::u64(..));
        let mut stack = Stack::plan(&self.stack_options(&token), |service| {
            format!("{}/{}", self.postgres.url(), service.database)
        })?;
        let hosts = routes.hosts();
        let routed_by = routes.describe();
        let mut servers = Vec::new();
        // Up at once, like an ingress in front of pods that are still starting: the page
        // loads, and the API answers 503 with Retry-After until an instance is ready.
        let client = Endpoints::new(CLIENT.k8s_service, vec![local_url(CLIENT.port)]);
        let client_probe = client.probe();
        let mut outcome =
            self.start_servers(routes, &ports, &stack, client, listeners, &mut servers);
        if outcome.is_ok() {
            outcome = unless_interrupted(&interrupted, stack.start()).await;
        }
        let mut observer = None;
        if outcome.is_ok() && self.options.observe {
            let started = Observer::start(self.root, self.data_dir, &stack);
            match unless_interrupted(&interrupted, started).await {
                Ok(started) => observer = Some(started),
                Err(error) => outcome = Err(error),
            }
        }
        if outcome.is_ok() {
            self.announce(&token, &hosts, &routed_by);
            let _ = interrupted.wait_for(|i| *i).await;
        }
        say("devstack: stopping (SIGTERM to every service, then waiting for each)");
        if let Some(observer) = observer {
            observer.stop().await;
        }
        for server in servers {
            server.stop(false).await;
        }
        client_probe.abort();
        stack.stop().await;
        outcome
    }

    /// The harness's whole microblog, as a person at a terminal runs it: the topology's
    /// ports, coloured prefixed logs, crashes restarted, a bus token; the moderation
    /// blocklist and an OTLP endpoint passed through from devstack's environment.
    fn stack_options(&self, token: &str) -> StackOptions {
        let mut options = StackOptions::whole(self.binaries.clone(), self.data_dir);
        options.replicas = self.options.replicas;
        options.ports = Ports::Topology;
        options.logs = Logs::Prefixed;
        options.supervised = true;
        options.token = Some(token.to_owned());
        options.log_format = "pretty";
        options.ready_deadline = READY_DEADLINE;
        if let Ok(endpoint) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            for service in &SERVICES {
                options = options.with_env(
                    service.name,
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    endpoint.clone(),
                );
            }
        }
        match std::env::var("MODERATION_BLOCKLIST") {
            Ok(words) => options.with_env("moderation", "MODERATION_BLOCKLIST", words),
            Err(_) => options,
        }
    }

    fn start_servers(
        &self,
        routes: Routes,
        ports: &HashMap<String, u16>,
        stack: &Stack,
        client: Arc<Endpoints>,
        listeners: Listeners,
        servers: &mut Vec<actix_web::dev::ServerHandle>,
    ) -> Result<(), Error> {
        servers.push(gateway::serve_client(
            self.root.join("client/dist"),
            client::security_headers(&self.root.join("client"))?,
            listeners.client,
        )?);
        let mut services: HashMap<String, Arc<Endpoints>> = ports
            .keys()
            .filter(|name| *name != CLIENT.k8s_service)
            .map(|name| (name.clone(), stack.endpoints(name)))
            .collect();
        services.insert(CLIENT.k8s_service.to_owned(), client);
        servers.push(gateway::start(routes, services, listeners.gateway)?);
        Ok(())
    }

    fn announce(&self, token: &str, hosts: &[String], routed_by: &str) {
        let port = self.options.port;
        say("");
        say(&format!(
            "  The microblog is up: http://localhost:{port}/ (routed by {routed_by})"
        ));
        for host in hosts {
            say(&format!(
                "  (also as http://{host}:{port} once /etc/hosts maps {host} to 127.0.0.1)"
            ));
        }
        say(&format!(
            "  PostgreSQL: {}/<service>   Event bus token: {token}",
            self.postgres.url()
        ));
        if self.options.observe {
            say(&format!(
                "  Prometheus: {}/ (targets: /targets, alerts: /alerts; rules from infra/prometheus/rules.yml)",
                observe::url()
            ));
        }
        say(&format!(
            "  Ctrl-C stops everything; your data stays in {}",
            self.data_dir.display()
        ));
        say("");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn query() -> &'static topology::Service {
        topology::service("query").unwrap()
    }

    /// The repository's Ingress with query's backend replaced.
    fn ingress_to(service: &str, port: u16) -> Routes {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/k8s/ingress-srv.yaml");
        let text = std::fs::read_to_string(file)
            .unwrap()
            .replace(
                &format!("name: {}", query().k8s_service),
                &format!("name: {service}"),
            )
            .replace(
                &format!("number: {}", query().port),
                &format!("number: {port}"),
            );
        Routes::Ingress(ingress::Ingress::parse(&text).unwrap())
    }

    #[test]
    fn every_backend_of_the_gateway_overlay_runs_locally() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let routes = Routes::load(&root, RouteSource::Gateway).unwrap();
        assert_eq!(
            local_ports(&routes).unwrap()[query().k8s_service],
            query().port
        );
    }

    #[test]
    fn every_backend_of_the_repo_manifest_runs_locally() {
        let ports = local_ports(&ingress_to(query().k8s_service, query().port)).unwrap();
        assert_eq!(ports[query().k8s_service], query().port);
        assert_eq!(ports[CLIENT.k8s_service], CLIENT.port);
    }

    #[test]
    fn a_backend_that_does_not_exist_stops_the_local_run() {
        let missing = local_ports(&ingress_to("qurey-srv", query().port)).unwrap_err();
        assert!(missing.to_string().contains("\"qurey-srv\""), "{missing}");
        let wrong_port =
            local_ports(&ingress_to(query().k8s_service, query().port + 1)).unwrap_err();
        assert!(
            wrong_port
                .to_string()
                .contains(&format!("listens on {}", query().port)),
            "{wrong_port}"
        );
    }
}
