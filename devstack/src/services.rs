//! What runs locally, under the names and ports it has in Kubernetes, so the Ingress
//! manifest's backends resolve to local processes.

pub struct Service {
    /// The crate and binary name, and the prefix of its log lines.
    pub name: &'static str,
    /// Its Kubernetes Service (what the Ingress names as a backend).
    pub k8s_service: &'static str,
    pub port: u16,
    pub database: &'static str,
    pub color: &'static str,
}

/// In start order: the bus first, since every other service catches up from it.
pub const SERVICES: [Service; 5] = [
    Service {
        name: "event-bus",
        k8s_service: "event-bus-srv",
        port: 4005,
        database: "event_bus",
        color: "35",
    },
    Service {
        name: "posts",
        k8s_service: "posts-clusterip-srv",
        port: 4000,
        database: "posts",
        color: "32",
    },
    Service {
        name: "comments",
        k8s_service: "comments-srv",
        port: 4001,
        database: "comments",
        color: "33",
    },
    Service {
        name: "moderation",
        k8s_service: "moderation-srv",
        port: 4003,
        database: "moderation",
        color: "31",
    },
    Service {
        name: "query",
        k8s_service: "query-srv",
        port: 4002,
        database: "query",
        color: "36",
    },
];

/// The bus delivers to every service that consumes events (posts only produces).
pub const SUBSCRIBERS: [&str; 3] = ["comments", "moderation", "query"];

pub const CLIENT_SERVICE: &str = "client-srv";
pub const CLIENT_PORT: u16 = 3000;

pub fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// The environment a service gets in Kubernetes, pointed at local addresses.
pub fn env(service: &Service, database_url: String, token: &str) -> Vec<(String, String)> {
    let bus = SERVICES[0].port;
    let mut env = vec![
        ("PORT".into(), service.port.to_string()),
        ("DATABASE_URL".into(), database_url),
        ("EVENT_BUS_URL".into(), url(bus)),
        ("EVENT_BUS_TOKEN".into(), token.to_owned()),
        ("LOG_FORMAT".into(), "pretty".into()),
        (
            "RUST_LOG".into(),
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info,sqlx=warn,actix_server=warn".into()),
        ),
    ];
    if service.name == "event-bus" {
        let subscribers = SERVICES
            .iter()
            .filter(|s| SUBSCRIBERS.contains(&s.name))
            .map(|s| format!("{}={}/events", s.name, url(s.port)))
            .collect::<Vec<_>>()
            .join(",");
        env.push(("EVENT_BUS_SUBSCRIBERS".into(), subscribers));
    }
    if service.name == "moderation" {
        if let Ok(words) = std::env::var("MODERATION_BLOCKLIST") {
            env.push(("MODERATION_BLOCKLIST".into(), words));
        }
    }
    env
}
