//! Which manifests route the gateway's requests: the Ingress of the base (what `skaffold
//! dev` deploys, applied as ingress-nginx applies it) or the HTTPRoutes of the gateway
//! overlay (`--routes gateway`, applied as Gateway API and Envoy Gateway apply them).
//! Either way a route the cluster would take wrongly is taken wrongly here too.

use std::path::Path;

use crate::httproute::HttpRoutes;
use crate::ingress::{Backend, Ingress};
use crate::ratelimit::Limits;
use crate::Error;

pub const INGRESS_FILE: &str = "infra/k8s/ingress-srv.yaml";
pub const GATEWAY_OVERLAY: &str = "infra/overlays/gateway";

/// The host a `Host` header names, as both rule sets match it: without the port, in
/// lower case.
pub fn host_name(header: &str) -> String {
    header
        .split(':')
        .next()
        .unwrap_or(header)
        .to_ascii_lowercase()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteSource {
    Ingress,
    Gateway,
}

impl RouteSource {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "ingress" => Some(Self::Ingress),
            "gateway" => Some(Self::Gateway),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub enum Routes {
    Ingress(Ingress),
    Gateway(HttpRoutes),
}

impl Routes {
    pub fn load(root: &Path, source: RouteSource) -> Result<Self, Error> {
        Ok(match source {
            RouteSource::Ingress => Self::Ingress(Ingress::load(&root.join(INGRESS_FILE))?),
            RouteSource::Gateway => Self::Gateway(HttpRoutes::load(&root.join(GATEWAY_OVERLAY))?),
        })
    }

    pub fn route(&self, host: Option<&str>, method: &str, path: &str) -> Option<&Backend> {
        match self {
            // ingress-nginx's locations do not look at the method.
            Self::Ingress(ingress) => ingress.route(host, path),
            Self::Gateway(routes) => routes.route(host, method, path),
        }
    }

    /// Every backend named, with the path that names it.
    pub fn backends(&self) -> Vec<(&str, &Backend)> {
        match self {
            Self::Ingress(ingress) => ingress.backends().collect(),
            Self::Gateway(routes) => routes.backends().collect(),
        }
    }

    pub fn hosts(&self) -> Vec<String> {
        match self {
            Self::Ingress(ingress) => ingress.hosts().map(str::to_owned).collect(),
            Self::Gateway(routes) => routes.hosts().map(str::to_owned).collect(),
        }
    }

    pub fn limits(&self) -> Limits {
        match self {
            Self::Ingress(ingress) => ingress.limits,
            Self::Gateway(_) => Limits::NONE,
        }
    }

    /// What routes, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Ingress(ingress) => format!("Ingress {} ({INGRESS_FILE})", ingress.name),
            Self::Gateway(_) => format!("the HTTPRoutes of {GATEWAY_OVERLAY}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use harness::topology::{CLIENT, PUBLIC_ROUTES, SERVICES};

    fn repo(source: RouteSource) -> Routes {
        Routes::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."), source).unwrap()
    }

    /// The one route table (the topology's public routes), checked against both rule
    /// sets: every path goes to the same service under the Ingress and the HTTPRoutes,
    /// whatever the method and on the manifests' host as on any other.
    #[test]
    fn the_ingress_and_the_httproutes_route_every_public_path_to_its_service() {
        let port_of = |k8s_service: &str| {
            SERVICES
                .iter()
                .find(|s| s.k8s_service == k8s_service)
                .map_or(CLIENT.port, |s| s.port)
        };
        for source in [RouteSource::Ingress, RouteSource::Gateway] {
            let routes = repo(source);
            for host in [Some("posts.com"), Some("localhost:8080"), None] {
                for method in ["GET", "POST"] {
                    for (path, expected) in PUBLIC_ROUTES {
                        let backend = routes
                            .route(host, method, path)
                            .map(|b| (b.service.as_str(), b.port));
                        assert_eq!(
                            backend,
                            Some((expected, port_of(expected))),
                            "{} routes {method} {path} (host {host:?})",
                            routes.describe()
                        );
                    }
                }
            }
            assert_eq!(routes.hosts(), ["posts.com"], "{}", routes.describe());
        }
    }

    #[test]
    fn only_the_ingress_sets_rate_limits() {
        assert!(repo(RouteSource::Ingress).limits().rps.is_some());
        assert_eq!(repo(RouteSource::Gateway).limits(), Limits::NONE);
    }
}
