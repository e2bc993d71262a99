//! The microblog as processes on this machine: every service of the topology (or some
//! of them), each as N instances on their own ports, wired to each other with the
//! environment they get in Kubernetes, started stage by stage (the bus first: the others
//! catch up from it before they are ready) and stopped in the reverse order (the bus
//! last, so the others can flush their outboxes to it on the way out).

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use actix_web::dev::ServerHandle;
use tokio::task::JoinHandle;

use crate::process::{Ended, HarnessError, Log, Prefix, Process, Program, STOP_GRACE};
use crate::proxy::{self, Endpoints};
use crate::topology::{self, Service};

/// Which port each instance listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// The topology's, as in Kubernetes (further instances of a service get free ports).
    Topology,
    /// Free ones, so that many runs can share a machine.
    Free,
}

/// Where the instances' logs go.
#[derive(Debug, Clone)]
pub enum Logs {
    /// One file per instance in this directory.
    Files(PathBuf),
    /// Prefixed lines on stdout, each service in its colour.
    Prefixed,
}

#[derive(Debug, Clone)]
pub struct StackOptions {
    /// The services to run, by name; the topology's order decides the start order.
    pub services: Vec<&'static str>,
    /// Instances of each service. Above one, each service gets a proxy on its port that
    /// spreads requests across its ready instances, as a Kubernetes Service does.
    pub replicas: usize,
    pub ports: Ports,
    /// The directory holding the service binaries (`target/<profile>`).
    pub binaries: PathBuf,
    pub logs: Logs,
    /// Restart an instance that crashes.
    pub supervised: bool,
    /// `EVENT_BUS_TOKEN`; none runs `/events` open, as tests may.
    pub token: Option<String>,
    pub log_format: &'static str,
    pub rust_log: String,
    /// How long each stage may take to become ready.
    pub ready_deadline: Duration,
    /// More variables for one service, `(service, name, value)`; they win over the wiring.
    pub env: Vec<(&'static str, String, String)>,
}

impl StackOptions {
    /// Every service once, on free ports, logging to files in `logs`, with production's
    /// log filter unless `RUST_LOG` says otherwise.
    pub fn whole(binaries: PathBuf, logs: &Path) -> Self {
        Self {
            services: topology::SERVICES.iter().map(|s| s.name).collect(),
            replicas: 1,
            ports: Ports::Free,
            binaries,
            logs: Logs::Files(logs.to_owned()),
            supervised: false,
            token: None,
            log_format: "json",
            rust_log: std::env::var("RUST_LOG").unwrap_or_else(|_| DEFAULT_RUST_LOG.into()),
            ready_deadline: Duration::from_secs(60),
            env: Vec::new(),
        }
    }

    /// Only these services.
    pub fn only(mut self, services: &[&'static str]) -> Self {
        self.services = services.to_vec();
        self
    }

    /// Sets `name` for `service`.
    pub fn with_env(mut self, service: &'static str, name: &str, value: impl Into<String>) -> Self {
        self.env.push((service, name.to_owned(), value.into()));
        self
    }
}

/// Production's log filter.
pub const DEFAULT_RUST_LOG: &str = "info,sqlx=warn,actix_server=warn";

/// One running (or stopped) instance of a service.
#[derive(Debug)]
pub struct Instance {
    pub service: &'static Service,
    pub index: usize,
    pub port: u16,
    pub process: Process,
}

impl Instance {
    pub fn url(&self) -> String {
        local_url(self.port)
    }

    pub fn start(&mut self) {
        self.process.start();
    }

    pub async fn wait_ready(&mut self, deadline: Duration) -> Result<(), HarnessError> {
        let url = format!("{}/readyz", self.url());
        self.process.wait_ready(&url, deadline).await
    }

    /// SIGTERM and wait (SIGKILL after the grace period).
    pub async fn stop(&mut self) -> Result<Ended, HarnessError> {
        self.process.stop(STOP_GRACE).await
    }

    /// SIGKILL, as a crash.
    pub async fn kill(&mut self) -> Result<Ended, HarnessError> {
        self.process.kill().await
    }
}

pub fn local_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// How the others reach one service: its address, and the ready instances behind it.
#[derive(Debug)]
struct Front {
    service: &'static Service,
    address: String,
    endpoints: Arc<Endpoints>,
    proxy: Option<ServerHandle>,
    prober: JoinHandle<()>,
}

#[derive(Debug)]
pub struct Stack {
    instances: Vec<Instance>,
    fronts: Vec<Front>,
    ready_deadline: Duration,
}

impl Stack {
    /// Decides ports and wiring for every instance; nothing starts yet. `database_url`
    /// gives each service's database.
    pub fn plan(
        options: &StackOptions,
        database_url: impl Fn(&Service) -> String,
    ) -> Result<Self, HarnessError> {
        let mut services: Vec<&'static Service> = Vec::new();
        for name in &options.services {
            let service = topology::service(name).ok_or_else(|| {
                HarnessError::Io(std::io::Error::other(format!(
                    "{name} is not a service of the topology"
                )))
            })?;
            services.push(service);
        }
        services.sort_by_key(|s| (s.stage(), topology_index(s)));
        let replicas = options.replicas.max(1);
        let proxied = replicas > 1;
        let mut ports = Vec::new();
        let mut fronts = Vec::new();
        for service in &services {
            let service_port = match options.ports {
                Ports::Topology => service.port,
                Ports::Free => crate::postgres::free_port()?,
            };
            let mut urls = Vec::new();
            for index in 0..replicas {
                // Behind a proxy on the Service's port, or alone on it.
                let port = if proxied {
                    crate::postgres::free_port()?
                } else {
                    service_port
                };
                ports.push((*service, index, port));
                urls.push(local_url(port));
            }
            let endpoints = Endpoints::new(service.k8s_service, urls);
            let proxy = if proxied {
                let listener = std::net::TcpListener::bind(("127.0.0.1", service_port))?;
                Some(proxy::serve_service(endpoints.clone(), listener)?)
            } else {
                None
            };
            fronts.push(Front {
                service,
                address: local_url(service_port),
                prober: endpoints.probe(),
                endpoints,
                proxy,
            });
        }
        let address = |service: &Service| {
            fronts
                .iter()
                .find(|f| f.service.name == service.name)
                .map(|f| f.address.clone())
        };
        let bus_url = address(topology::event_bus()).unwrap_or_default();
        let subscribers = services
            .iter()
            .filter(|s| s.consumes_events())
            .filter_map(|s| address(s).map(|url| format!("{}={url}/events", s.name)))
            .collect::<Vec<_>>()
            .join(",");
        let mut instances = Vec::new();
        for (service, index, port) in &ports {
            let binary = options.binaries.join(service.name);
            if !binary.is_file() {
                return Err(HarnessError::Io(std::io::Error::other(format!(
                    "{} is missing: build the services first (`cargo build --workspace --bins`)",
                    binary.display()
                ))));
            }
            let label = if replicas > 1 {
                format!("{}#{}", service.name, index + 1)
            } else {
                service.name.to_owned()
            };
            let log = match &options.logs {
                Logs::Files(dir) => Log::File(dir.join(format!("{label}.log"))),
                Logs::Prefixed => Log::Prefixed(Prefix::new(&label, service.color)),
            };
            let mut program = Program {
                label,
                binary,
                args: Vec::new(),
                env: Vec::new(),
                log,
                supervised: options.supervised,
            };
            program.set_env("PORT", port.to_string());
            program.set_env("DATABASE_URL", database_url(service));
            program.set_env("LOG_FORMAT", options.log_format);
            program.set_env("RUST_LOG", options.rust_log.clone());
            if let Some(token) = &options.token {
                program.set_env("EVENT_BUS_TOKEN", token.clone());
            }
            if service.uses_bus() {
                program.set_env("EVENT_BUS_URL", bus_url.clone());
            } else if !subscribers.is_empty() {
                program.set_env("EVENT_BUS_SUBSCRIBERS", subscribers.clone());
            }
            for (_, name, value) in options.env.iter().filter(|(s, _, _)| *s == service.name) {
                program.set_env(name, value.clone());
            }
            instances.push(Instance {
                service,
                index: *index,
                port: *port,
                process: Process::new(program),
            });
        }
        Ok(Self {
            instances,
            fronts,
            ready_deadline: options.ready_deadline,
        })
    }

    /// The stages present, in start order (instances are kept sorted by stage).
    fn stages(&self) -> Vec<u8> {
        let mut stages: Vec<u8> = self.instances.iter().map(|i| i.service.stage()).collect();
        stages.dedup();
        stages
    }

    /// Starts every instance, stage by stage, each stage ready before the next starts.
    pub async fn start(&mut self) -> Result<(), HarnessError> {
        let stages = self.stages();
        for stage in stages {
            let names: Vec<&'static str> = self
                .instances
                .iter()
                .filter(|i| i.service.stage() == stage)
                .map(|i| i.service.name)
                .collect();
            for instance in self
                .instances
                .iter_mut()
                .filter(|i| names.contains(&i.service.name))
            {
                instance.start();
            }
            let deadline = self.ready_deadline;
            for instance in self
                .instances
                .iter_mut()
                .filter(|i| names.contains(&i.service.name))
            {
                instance.wait_ready(deadline).await?;
                // Ready now: in rotation at once, not at the next probe.
                if let Some(front) = self.fronts.iter().find(|f| f.service == instance.service) {
                    front.endpoints.admit(&instance.url());
                }
            }
        }
        Ok(())
    }

    /// Starts every instance of `service` (again) and waits until each is ready.
    pub async fn start_service(&mut self, service: &str) -> Result<(), HarnessError> {
        let count = self.instances(service).count();
        for index in 0..count {
            self.start_instance(service, index).await?;
        }
        Ok(())
    }

    /// Takes instance `index` of `service` out of its Service's rotation, waits for the
    /// requests it is answering, then stops it with SIGTERM (SIGKILL after the grace).
    pub async fn stop_instance(
        &mut self,
        service: &str,
        index: usize,
    ) -> Result<Ended, HarnessError> {
        let endpoints = self.endpoints(service);
        let instance = self.instance_mut(service, index)?;
        endpoints.drain(&instance.url(), STOP_GRACE).await;
        instance.stop().await
    }

    /// Starts instance `index` of `service` (again), waits until it is ready, and puts
    /// it back into its Service's rotation.
    pub async fn start_instance(
        &mut self,
        service: &str,
        index: usize,
    ) -> Result<(), HarnessError> {
        let deadline = self.ready_deadline;
        let endpoints = self.endpoints(service);
        let instance = self.instance_mut(service, index)?;
        instance.start();
        instance.wait_ready(deadline).await?;
        endpoints.admit(&instance.url());
        Ok(())
    }

    fn instance_mut(&mut self, service: &str, index: usize) -> Result<&mut Instance, HarnessError> {
        self.instances
            .iter_mut()
            .find(|i| i.service.name == service && i.index == index)
            .ok_or_else(|| HarnessError::NotRunning {
                what: format!("{service}#{}", index + 1),
            })
    }

    /// The ready instances behind `service`, as its Kubernetes Service has them.
    pub fn endpoints(&self, service: &str) -> Arc<Endpoints> {
        self.fronts
            .iter()
            .find(|f| f.service.name == service || f.service.k8s_service == service)
            .map(|f| f.endpoints.clone())
            .unwrap_or_else(|| Endpoints::new(service, Vec::new()))
    }

    /// Stops every running instance with SIGTERM, the last stage first (the instances of
    /// one stage together), then the Services' proxies; how each instance ended.
    pub async fn stop(&mut self) -> Vec<(String, Ended)> {
        let stages = self.stages();
        let mut ended = Vec::new();
        for stage in stages.into_iter().rev() {
            let stopping = self
                .instances
                .iter_mut()
                .filter(|i| i.service.stage() == stage && !i.process.has_ended())
                .map(|instance| async move {
                    let how = instance.stop().await;
                    (instance.process.program.label.clone(), how)
                });
            for (label, how) in futures_util::future::join_all(stopping).await {
                if let Ok(how) = how {
                    ended.push((label, how));
                }
            }
        }
        for front in &mut self.fronts {
            if let Some(proxy) = front.proxy.take() {
                proxy.stop(false).await;
            }
        }
        ended
    }

    /// Where the others reach `service`: its Service's address (its proxy, or its one
    /// instance).
    pub fn url(&self, service: &str) -> String {
        self.fronts
            .iter()
            .find(|f| f.service.name == service)
            .map(|f| f.address.clone())
            .unwrap_or_else(|| panic!("{service} is not part of this stack"))
    }

    pub fn instances<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a Instance> + 'a {
        self.instances
            .iter()
            .filter(move |i| i.service.name == service)
    }

    pub fn instances_mut<'a>(
        &'a mut self,
        service: &'a str,
    ) -> impl Iterator<Item = &'a mut Instance> + 'a {
        self.instances
            .iter_mut()
            .filter(move |i| i.service.name == service)
    }

    pub fn all(&self) -> impl Iterator<Item = &Instance> {
        self.instances.iter()
    }

    /// Sets `name` for every instance of `service`, from its next start on.
    pub fn set_env(&mut self, service: &str, name: &str, value: &str) {
        for instance in self.instances_mut(service) {
            instance.process.program.set_env(name, value);
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for front in &self.fronts {
            front.prober.abort();
        }
    }
}

fn topology_index(service: &Service) -> usize {
    topology::SERVICES
        .iter()
        .position(|s| s.name == service.name)
        .unwrap_or(usize::MAX)
}

/// The directory of the binaries built with the same profile as the running executable:
/// `target/<profile>` for a binary there, and for a test in `target/<profile>/deps`.
pub fn binaries_of_this_build() -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| std::io::Error::other("the executable has no directory"))?;
    Ok(if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_owned()
    } else {
        dir.to_owned()
    })
}
