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
use crate::supervisor::{supervise, Prefix, Program};

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
            "--data" => options.data = Some(args.next().ok_or("--data needs a directory")?.into()),
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
    let ingress = Ingress::load(&root.join("infra/k8s/ingress-srv.yaml"))?;
    let ports = local_ports(&ingress)?;
    let mut wanted: Vec<u16> = ports.values().copied().collect();
    wanted.push(options.port);
    for port in wanted {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            return Err(format!("port {port} is in use; is another devstack (or the course's app) running? (`ss -ltnp | grep {port}`)").into());
        }
    }
    let binaries = build_services(root).await?;
    client::build_if_stale(&root.join("client")).await?;
    let databases: Vec<&str> = SERVICES.iter().map(|s| s.database).collect();
    let data = options
        .data
        .clone()
        .unwrap_or_else(|| root.join(".devstack"));
    let postgres = Postgres::start(&data, options.fresh, &databases).await?;
    let outcome = serve(root, &options, &data, ingress, ports, &binaries, &postgres).await;
    let stopped = postgres.stop().await;
    println!(
        "devstack: stopped. Your data is kept in {}; `--fresh` starts empty.",
        data.display()
    );
    outcome.and(stopped)
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
    command.arg("build").current_dir(root);
    if release {
        command.arg("--release");
    }
    for service in &SERVICES {
        command.args(["-p", service.name]);
    }
    println!(
        "devstack: building the services (cargo build{})",
        if release { " --release" } else { "" }
    );
    let status = command.status().await?;
    if !status.success() {
        return Err(format!("building the services failed ({status})").into());
    }
    Ok(SERVICES
        .iter()
        .map(|s| (s.name, target.join(s.name)))
        .collect())
}

async fn serve(
    root: &Path,
    options: &Options,
    data_dir: &Path,
    ingress: Ingress,
    ports: HashMap<String, u16>,
    binaries: &HashMap<&'static str, PathBuf>,
    postgres: &Postgres,
) -> Result<(), Error> {
    // The bus stops last, so the others can flush their outboxes to it on the way out.
    let (stop, stopping) = watch::channel(false);
    let (stop_bus, bus_stopping) = watch::channel(false);
    // Deliveries and publishes carry a bearer token in Kubernetes; so they do here.
    let token = format!("devstack-{:016x}", fastrand::u64(..));
    let mut supervised = Vec::new();
    for (i, service) in SERVICES.iter().enumerate() {
        let program = Program {
            prefix: Prefix::new(service.name, service.color),
            binary: binaries[service.name].clone(),
            env: services::env(service, postgres.url(service.database), &token),
        };
        let is_bus = i == 0;
        let stop_signal = if is_bus {
            bus_stopping.clone()
        } else {
            stopping.clone()
        };
        supervised.push(supervise(program, stop_signal));
        if is_bus {
            // The others catch up from the bus before they report ready.
            wait_ready(service.name, service.port).await;
        }
    }
    let hosts: Vec<String> = ingress.hosts().map(str::to_owned).collect();
    let client = gateway::serve_client(root.join("client/dist"), CLIENT_PORT)?;
    let gateway = gateway::start(ingress, ports, options.port)?;
    for service in &SERVICES {
        wait_ready(service.name, service.port).await;
    }
    let url = format!("http://localhost:{}/", options.port);
    println!();
    println!("  The microblog is up: {url}");
    for host in hosts {
        println!(
            "  (also as http://{host}:{} once /etc/hosts maps {host} to 127.0.0.1)",
            options.port
        );
    }
    println!(
        "  Ctrl-C stops everything; your data stays in {}",
        data_dir.display()
    );
    println!();
    termination().await;
    println!("devstack: stopping (SIGTERM to every service, then waiting for each)");
    gateway.stop(false).await;
    client.stop(false).await;
    let _ = stop.send(true);
    let mut supervised = supervised.into_iter();
    let bus = supervised.next();
    for task in supervised {
        let _ = task.await;
    }
    let _ = stop_bus.send(true);
    if let Some(bus) = bus {
        let _ = bus.await;
    }
    Ok(())
}

async fn wait_ready(name: &str, port: u16) {
    let url = format!("{}/readyz", services::url(port));
    let started = Instant::now();
    let mut warned = false;
    loop {
        let ready = reqwest::get(&url)
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ready {
            return;
        }
        if !warned && started.elapsed() > Duration::from_secs(60) {
            println!("devstack: {name} is not ready after 60 s; still waiting (see its log lines)");
            warned = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn termination() {
    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match sigterm.as_mut() {
                Some(s) => { s.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
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
