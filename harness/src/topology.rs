//! The one table of what the microblog runs: each service's name, Kubernetes Service,
//! port, database, role and the environment it reads. The local runner, the system
//! tests and the load tool start from it; the scripts read it as `devstack topology
//! --json`; the offline Kubernetes checks compare the manifests with it; a test pins
//! each service's own default port to it. Adding a service is one row here plus its
//! crate.

use serde_json::{json, Value};

/// What a service is to the others, which decides how it is wired and started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The log every other service publishes to and catches up from: up first, down last.
    EventBus,
    /// Publishes events only; the bus delivers nothing to it.
    Producer,
    /// Takes deliveries on `POST /events` (and may publish too): a bus subscriber.
    Consumer,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Service {
    /// The crate, the binary, the log prefix; the image is `microblog/<name>` and the
    /// Deployment `<name>-depl`.
    pub name: &'static str,
    /// Its Kubernetes Service: what the Ingress names as a backend and other services call.
    pub k8s_service: &'static str,
    pub port: u16,
    pub database: &'static str,
    pub role: Role,
    /// Variables it reads beyond the ones its role implies (`Service::env`).
    pub own_env: &'static [&'static str],
    /// ANSI colour of its log prefix in the local runner.
    pub color: &'static str,
}

/// The client: not a Rust service, but the Ingress's catch-all backend.
#[derive(Debug)]
pub struct Client {
    pub name: &'static str,
    pub k8s_service: &'static str,
    pub port: u16,
}

pub const SERVICES: [Service; 5] = [
    Service {
        name: "event-bus",
        k8s_service: "event-bus-srv",
        port: 4005,
        database: "event_bus",
        role: Role::EventBus,
        own_env: &[
            "EVENT_BUS_SUBSCRIBERS",
            "EVENT_BUS_BATCH_SIZE",
            "EVENT_BUS_RETRY_MAX_MS",
        ],
        color: "35",
    },
    Service {
        name: "posts",
        k8s_service: "posts-clusterip-srv",
        port: 4000,
        database: "posts",
        role: Role::Producer,
        own_env: &[],
        color: "32",
    },
    Service {
        name: "comments",
        k8s_service: "comments-srv",
        port: 4001,
        database: "comments",
        role: Role::Consumer,
        own_env: &[],
        color: "33",
    },
    Service {
        name: "moderation",
        k8s_service: "moderation-srv",
        port: 4003,
        database: "moderation",
        role: Role::Consumer,
        own_env: &["MODERATION_BLOCKLIST"],
        color: "31",
    },
    Service {
        name: "query",
        k8s_service: "query-srv",
        port: 4002,
        database: "query",
        role: Role::Consumer,
        own_env: &[],
        color: "36",
    },
];

pub const CLIENT: Client = Client {
    name: "client",
    k8s_service: "client-srv",
    port: 3000,
};

/// Where the Ingress (and the local gateway, which applies it) must send each public
/// request path: the course's routes, and `/events` (nor the operators' `/parked` and
/// `/metrics`) never reachable from outside.
pub const PUBLIC_ROUTES: [(&str, &str); 15] = [
    ("/posts/create", "posts-clusterip-srv"),
    ("/posts/0190b8a4/comments", "comments-srv"),
    ("/posts/abc123/comments", "comments-srv"),
    ("/posts", "query-srv"),
    ("/posts/", "query-srv"),
    ("/posts/0190b8a4", "query-srv"),
    ("/posts/stream", "query-srv"),
    ("/", "client-srv"),
    ("/index.html", "client-srv"),
    ("/assets/index-abc.js", "client-srv"),
    ("/events", "client-srv"),
    ("/events/", "client-srv"),
    ("/subscriptions", "client-srv"),
    ("/parked", "client-srv"),
    ("/metrics", "client-srv"),
];

/// What every service reads.
const COMMON_ENV: [&str; 6] = [
    "PORT",
    "DATABASE_URL",
    "LOG_FORMAT",
    "RUST_LOG",
    "EVENT_BUS_TOKEN",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

impl Service {
    /// Starts before every service of a higher stage, stops after them.
    pub fn stage(&self) -> u8 {
        match self.role {
            Role::EventBus => 0,
            Role::Producer | Role::Consumer => 1,
        }
    }

    /// Whether it talks to the bus (and so reads `EVENT_BUS_URL`).
    pub fn uses_bus(&self) -> bool {
        self.role != Role::EventBus
    }

    /// Whether the bus delivers to it.
    pub fn consumes_events(&self) -> bool {
        self.role == Role::Consumer
    }

    /// Every environment variable it reads at start-up, sorted.
    pub fn env(&self) -> Vec<&'static str> {
        let mut env: Vec<&str> = COMMON_ENV.to_vec();
        if self.uses_bus() {
            env.push("EVENT_BUS_URL");
        }
        env.extend(self.own_env);
        env.sort_unstable();
        env
    }

    pub fn deployment(&self) -> String {
        deployment_of(self.name)
    }

    pub fn image(&self) -> String {
        image_of(self.name)
    }
}

/// Every workload's Deployment is `<name>-depl`, its image `microblog/<name>`.
fn deployment_of(name: &str) -> String {
    format!("{name}-depl")
}

fn image_of(name: &str) -> String {
    format!("microblog/{name}")
}

/// The service called `name`.
pub fn service(name: &str) -> Option<&'static Service> {
    SERVICES.iter().find(|s| s.name == name)
}

/// The event bus.
pub fn event_bus() -> &'static Service {
    SERVICES
        .iter()
        .find(|s| s.role == Role::EventBus)
        .unwrap_or(&SERVICES[0])
}

/// The whole topology as JSON, for the scripts and the offline checks.
pub fn to_json() -> Value {
    let services: Vec<Value> = SERVICES
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "k8sService": s.k8s_service,
                "deployment": s.deployment(),
                "image": s.image(),
                "port": s.port,
                "database": s.database,
                "usesBus": s.uses_bus(),
                "consumesEvents": s.consumes_events(),
                "stage": s.stage(),
                "env": s.env(),
            })
        })
        .collect();
    let routes: Vec<Value> = PUBLIC_ROUTES
        .iter()
        .map(|(path, service)| json!({ "path": path, "service": service }))
        .collect();
    json!({
        "services": services,
        "client": {
            "name": CLIENT.name,
            "k8sService": CLIENT.k8s_service,
            "deployment": deployment_of(CLIENT.name),
            "image": image_of(CLIENT.name),
            "port": CLIENT.port,
        },
        "routes": routes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ports_services_and_databases_are_unique() {
        let unique = |values: Vec<String>| {
            let mut sorted = values.clone();
            sorted.sort();
            sorted.dedup();
            sorted.len() == values.len()
        };
        let all = |f: fn(&Service) -> String| SERVICES.iter().map(f).collect::<Vec<_>>();
        assert!(unique(all(|s| s.name.to_owned())));
        assert!(unique(all(|s| s.k8s_service.to_owned())));
        assert!(unique(all(|s| s.database.to_owned())));
        let mut ports = all(|s| s.port.to_string());
        ports.push(CLIENT.port.to_string());
        assert!(unique(ports));
        assert_eq!(
            SERVICES.iter().filter(|s| s.role == Role::EventBus).count(),
            1,
            "exactly one event bus"
        );
    }

    #[test]
    fn every_public_route_goes_to_a_known_service() {
        for (path, target) in PUBLIC_ROUTES {
            assert!(
                target == CLIENT.k8s_service || SERVICES.iter().any(|s| s.k8s_service == target),
                "{path} goes to {target}, which is not in the topology"
            );
        }
    }
}
