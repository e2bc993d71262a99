//! `cargo run -p devstack`: the whole microblog on this machine, with no Docker and no
//! cluster. A private PostgreSQL, the five services built and supervised, the React
//! client, and a gateway on one port that routes by `infra/k8s/ingress-srv.yaml`.

mod client;
mod gateway;
mod ingress;
mod postgres;
mod services;
mod supervisor;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::ingress::Ingress;
use crate::postgres::Postgres;
use crate::services::{CLIENT_PORT, CLIENT_SERVICE, SERVICES};
use crate::supervisor::{say, supervise, Prefix, Program};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: cargo run -p devstack -- [--port N] [--fresh] [--data DIR]

  --port N     the gateway's port (default 8080)
  --fresh      delete the local data and start empty
  --data DIR   where the local data lives (default .devstack/ in the repository)

Runs PostgreSQL (data in .devstack/), the five services, the client, and a gateway that
routes by infra/k8s/ingress-srv.yaml. Ctrl-C stops everything.";

struct Options {
    port: u16,
    fresh: bool,
    data: Option<PathBuf>,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        port: 8080,
        fresh: false,
        data: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--fresh" => options.fresh = true,
            "--port" => {
                options.port = args
                    .next()
                    .and_then(|p| p.parse().ok())
                    .ok_or("--port needs a port number")?
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
    Ok(options)
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
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
    let ingress = Ingress::load(&root.join("infra/k8s/ingress-srv.yaml"))?;
    let ports = local_ports(&ingress)?;
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
        client: std::net::TcpListener::bind(("127.0.0.1", CLIENT_PORT))
            .map_err(|_| in_use(CLIENT_PORT))?,
    };
    let binaries = unless_interrupted(&interrupted, build_services(root)).await?;
    unless_interrupted(&interrupted, client::build_if_stale(&root.join("client"))).await?;
    let databases: Vec<&str> = SERVICES.iter().map(|s| s.database).collect();
    let data = options
        .data
        .clone()
        .unwrap_or_else(|| root.join(".devstack"));
    // Not raced against Ctrl-C: abandoning pg_ctl half-way could leave a server behind.
    let postgres = Postgres::start(&data, options.fresh, &databases).await?;
    let outcome = if *interrupted.borrow() {
        Err("interrupted".into())
    } else {
        let stack = Stack {
            root,
            options: &options,
            data_dir: &data,
            binaries: &binaries,
            postgres: &postgres,
        };
        stack.serve(ingress, ports, listeners, interrupted).await
    };
    let stopped = postgres.stop().await;
    say(&format!(
        "devstack: stopped. Your data is kept in {}; `--fresh` starts empty.",
        data.display()
    ));
    outcome.and(stopped)
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

async fn unless_interrupted<T>(
    interrupted: &watch::Receiver<bool>,
    step: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let mut interrupted = interrupted.clone();
    tokio::select! {
        result = step => result,
        _ = interrupted.wait_for(|i| *i) => Err("interrupted".into()),
    }
}

/// Every backend the Ingress names must be a local process on the Service's port, or
/// the manifest is wrong — and then the local run fails as the cluster would.
fn local_ports(ingress: &Ingress) -> Result<HashMap<String, u16>, Error> {
    let mut ports: HashMap<String, u16> = SERVICES
        .iter()
        .map(|s| (s.k8s_service.to_owned(), s.port))
        .collect();
    ports.insert(CLIENT_SERVICE.to_owned(), CLIENT_PORT);
    for (path, backend) in ingress.backends() {
        match ports.get(&backend.service) {
            Some(port) if *port == backend.port => {}
            Some(port) => {
                return Err(format!(
                    "Ingress {}: path {path:?} goes to {}:{}, but that Service listens on {port}",
                    ingress.name, backend.service, backend.port
                )
                .into())
            }
            None => {
                return Err(format!(
                "Ingress {}: path {path:?} goes to Service {:?}, which does not exist (known: {})",
                ingress.name,
                backend.service,
                ports.keys().cloned().collect::<Vec<_>>().join(", ")
            )
                .into())
            }
        }
    }
    Ok(ports)
}

/// Builds the services with the same cargo and profile that built devstack itself.
async fn build_services(root: &Path) -> Result<HashMap<&'static str, PathBuf>, Error> {
    let exe = std::env::current_exe()?;
    let target = exe.parent().ok_or("devstack's own directory")?.to_owned();
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
    Ok(SERVICES
        .iter()
        .map(|s| (s.name, target.join(s.name)))
        .collect())
}

struct Listeners {
    gateway: std::net::TcpListener,
    client: std::net::TcpListener,
}

struct Stack<'a> {
    root: &'a Path,
    options: &'a Options,
    data_dir: &'a Path,
    binaries: &'a HashMap<&'static str, PathBuf>,
    postgres: &'a Postgres,
}

/// What is running, so that every way out stops it in order.
#[derive(Default)]
struct Running {
    supervised: Vec<tokio::task::JoinHandle<()>>,
    stop_services: Option<watch::Sender<bool>>,
    stop_bus: Option<watch::Sender<bool>>,
    servers: Vec<actix_web::dev::ServerHandle>,
}

impl Running {
    async fn stop(self) {
        say("devstack: stopping (SIGTERM to every service, then waiting for each)");
        for server in self.servers {
            server.stop(false).await;
        }
        // The bus stops last, so the others can flush their outboxes to it on the way out.
        if let Some(stop) = self.stop_services {
            let _ = stop.send(true);
        }
        let mut supervised = self.supervised.into_iter();
        let bus = supervised.next();
        for task in supervised {
            let _ = task.await;
        }
        if let Some(stop) = self.stop_bus {
            let _ = stop.send(true);
        }
        if let Some(bus) = bus {
            let _ = bus.await;
        }
    }
}

impl Stack<'_> {
    async fn serve(
        &self,
        ingress: Ingress,
        ports: HashMap<String, u16>,
        listeners: Listeners,
        mut interrupted: watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let mut running = Running::default();
        let outcome = self
            .start(ingress, ports, listeners, &interrupted, &mut running)
            .await;
        if outcome.is_ok() {
            let _ = interrupted.wait_for(|i| *i).await;
        }
        running.stop().await;
        outcome
    }

    async fn start(
        &self,
        ingress: Ingress,
        ports: HashMap<String, u16>,
        listeners: Listeners,
        interrupted: &watch::Receiver<bool>,
        running: &mut Running,
    ) -> Result<(), Error> {
        let (stop_services, services_stopping) = watch::channel(false);
        let (stop_bus, bus_stopping) = watch::channel(false);
        running.stop_services = Some(stop_services);
        running.stop_bus = Some(stop_bus);
        // Deliveries and publishes carry a bearer token in Kubernetes; so they do here.
        let token = format!("devstack-{:016x}", fastrand::u64(..));
        for (i, service) in SERVICES.iter().enumerate() {
            let program = Program {
                prefix: Prefix::new(service.name, service.color),
                binary: self.binaries[service.name].clone(),
                env: services::env(service, self.postgres.url(service.database), &token),
            };
            let is_bus = i == 0;
            let stopping = if is_bus {
                &bus_stopping
            } else {
                &services_stopping
            };
            running
                .supervised
                .push(supervise(program, stopping.clone()));
            if is_bus {
                // The others catch up from the bus before they report ready.
                wait_ready(service.name, service.port, interrupted).await?;
            }
        }
        let hosts: Vec<String> = ingress.hosts().map(str::to_owned).collect();
        running.servers.push(gateway::serve_client(
            self.root.join("client/dist"),
            listeners.client,
        )?);
        running
            .servers
            .push(gateway::start(ingress, ports, listeners.gateway)?);
        for service in &SERVICES {
            wait_ready(service.name, service.port, interrupted).await?;
        }
        let port = self.options.port;
        say("");
        say(&format!("  The microblog is up: http://localhost:{port}/"));
        for host in hosts {
            say(&format!(
                "  (also as http://{host}:{port} once /etc/hosts maps {host} to 127.0.0.1)"
            ));
        }
        say(&format!(
            "  PostgreSQL: {}<service>   Event bus token: {token}",
            self.postgres.url("")
        ));
        say(&format!(
            "  Ctrl-C stops everything; your data stays in {}",
            self.data_dir.display()
        ));
        say("");
        Ok(())
    }
}

/// Waits for `/readyz`, or until Ctrl-C, or a deadline that a crash-looping service hits.
async fn wait_ready(
    name: &str,
    port: u16,
    interrupted: &watch::Receiver<bool>,
) -> Result<(), Error> {
    const DEADLINE: Duration = Duration::from_secs(120);
    let url = format!("{}/readyz", services::url(port));
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    let started = Instant::now();
    loop {
        if *interrupted.borrow() {
            return Err("interrupted".into());
        }
        let ready = client
            .get(&url)
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ready {
            return Ok(());
        }
        if started.elapsed() > DEADLINE {
            return Err(format!(
                "{name} is not ready after {} s; its log lines above say why",
                DEADLINE.as_secs()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ingress_to(service: &str, port: u16) -> Ingress {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/k8s/ingress-srv.yaml");
        let text = std::fs::read_to_string(file)
            .unwrap()
            .replace("name: query-srv", &format!("name: {service}"))
            .replace("number: 4002", &format!("number: {port}"));
        Ingress::parse(&text).unwrap()
    }

    #[test]
    fn every_backend_of_the_repo_manifest_runs_locally() {
        let ports = local_ports(&ingress_to("query-srv", 4002)).unwrap();
        assert_eq!(ports["query-srv"], 4002);
        assert_eq!(ports["client-srv"], 3000);
    }

    #[test]
    fn a_backend_that_does_not_exist_stops_the_local_run() {
        let missing = local_ports(&ingress_to("qurey-srv", 4002)).unwrap_err();
        assert!(missing.to_string().contains("\"qurey-srv\""), "{missing}");
        let wrong_port = local_ports(&ingress_to("query-srv", 4003)).unwrap_err();
        assert!(
            wrong_port.to_string().contains("listens on 4002"),
            "{wrong_port}"
        );
    }
}
