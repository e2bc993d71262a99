//! One port in front of everything, routing each request as the Ingress (or, with
//! `--routes gateway`, the HTTPRoutes) says: the manifests' backend Service names map to
//! the ready local instances behind them, round-robin (none ready: 503 with
//! `Retry-After`, as ingress-nginx answers). Bodies stream
//! both ways unbuffered, so Server-Sent Events pass through as they are written, and a
//! backend that dies mid-stream closes the browser's connection (its EventSource
//! reconnects). The Ingress's rate limits apply before routing, per client address, as
//! ingress-nginx applies them (`crate::ratelimit`).

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use harness::proxy::{error_body, no_ready_endpoint, proxy_client, Endpoints};

use crate::ratelimit::{InProgress, Limiter, Refusal};
use crate::routes::Routes;
use crate::Error;

/// Like ingress-nginx's default `proxy-body-size`.
const BODY_LIMIT: usize = 1024 * 1024;

struct Gateway {
    routes: Routes,
    limiter: Limiter,
    /// Kubernetes Service name → its ready instances.
    services: HashMap<String, Arc<Endpoints>>,
    client: reqwest::Client,
}

pub fn start(
    routes: Routes,
    services: HashMap<String, Arc<Endpoints>>,
    listener: std::net::TcpListener,
) -> Result<ServerHandle, Error> {
    let gateway = web::Data::new(Gateway {
        limiter: Limiter::new(routes.limits()),
        routes,
        services,
        client: proxy_client(),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(gateway.clone())
            .app_data(web::PayloadConfig::new(BODY_LIMIT))
            .default_service(web::to(route))
    })
    // As ingress-nginx (`tcp_nodelay on`): a streamed answer's last write goes at once.
    .tcp_nodelay(true)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    Ok(handle)
}

async fn route(req: HttpRequest, body: web::Bytes, gateway: web::Data<Gateway>) -> HttpResponse {
    let address = req
        .peer_addr()
        .map_or(std::net::Ipv4Addr::LOCALHOST.into(), |a| a.ip());
    let slot = match gateway.limiter.admit(address, std::time::Instant::now()) {
        Ok(slot) => slot,
        Err(refusal) => return refused(refusal),
    };
    let host = req.headers().get("host").and_then(|h| h.to_str().ok());
    let Some(backend) = gateway
        .routes
        .route(host, req.method().as_str(), req.uri().path())
    else {
        return HttpResponse::NotFound().body("default backend - 404\n");
    };
    let Some(endpoints) = gateway.services.get(&backend.service) else {
        return no_ready_endpoint(&backend.service);
    };
    let peer = req
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    // Set as ingress-nginx sets them: a client's own X-Forwarded-For is not trusted.
    let mut headers = vec![
        ("x-forwarded-for", peer.clone()),
        ("x-real-ip", peer),
        ("x-forwarded-host", host.unwrap_or_default().to_owned()),
        ("x-forwarded-proto", "http".to_owned()),
    ];
    if !req.headers().contains_key("x-request-id") {
        // As ingress-nginx does: the services log it with every line of the request.
        headers.push(("x-request-id", uuid_like()));
    }
    // The slot is held until the answer's body has been sent, as nginx's limit_conn
    // counts a request until it completes: an open live stream holds one.
    endpoints
        .forward(&gateway.client, &req, body, &headers)
        .await
        .map_body(|_, body| Held { body, _slot: slot })
        .map_into_boxed_body()
}

/// 429 with the services' JSON error and `Retry-After`.
fn refused(refusal: Refusal) -> HttpResponse {
    let message = match refusal {
        Refusal::TooManyRequests { .. } => "too many requests from this address; slow down",
        Refusal::TooManyConnections => "too many requests in progress from this address",
    };
    HttpResponse::TooManyRequests()
        .insert_header(("Retry-After", refusal.retry_after_seconds().to_string()))
        .json(error_body("rate_limited", message))
}

/// A response body that frees its request's slot when it is done or dropped.
struct Held<B> {
    body: B,
    _slot: InProgress,
}

impl<B: actix_web::body::MessageBody + Unpin> actix_web::body::MessageBody for Held<B> {
    type Error = B::Error;

    fn size(&self) -> actix_web::body::BodySize {
        self.body.size()
    }

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<web::Bytes, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

fn uuid_like() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// The client's static files, standing in for `client-srv`: what the client image's web
/// server does, including the single-page-app fallback to index.html and its security
/// headers (`client::security_headers`).
pub fn serve_client(
    dist: std::path::PathBuf,
    headers: Vec<(String, String)>,
    listener: std::net::TcpListener,
) -> Result<ServerHandle, Error> {
    let dist = Arc::new(dist);
    let server = HttpServer::new(move || {
        let index = dist.join("index.html");
        let security = headers.iter().fold(
            actix_web::middleware::DefaultHeaders::new(),
            |all, header| all.add(header.clone()),
        );
        App::new().wrap(security).service(
            actix_files::Files::new("/", dist.as_path())
                .index_file("index.html")
                .default_handler(actix_web::dev::fn_service(
                    move |req: actix_web::dev::ServiceRequest| {
                        let index = index.clone();
                        async move {
                            let (req, _) = req.into_parts();
                            let file = actix_files::NamedFile::open(index)?;
                            let response = file.into_response(&req);
                            Ok(actix_web::dev::ServiceResponse::new(req, response))
                        }
                    },
                )),
        )
    })
    .disable_signals()
    .workers(1)
    .listen(listener)?
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    Ok(handle)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    use crate::routes::RouteSource;

    fn manifest() -> Routes {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        Routes::load(&root, RouteSource::Ingress).unwrap()
    }

    /// The repository's Ingress in front of one stand-in backend for every Service; the
    /// gateway's URL.
    async fn gateway() -> String {
        let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let backend_url = format!("http://{}", backend.local_addr().unwrap());
        let server = HttpServer::new(|| App::new().default_service(web::to(HttpResponse::Ok)))
            .workers(1)
            .listen(backend)
            .unwrap()
            .run();
        tokio::spawn(server);
        let routes = manifest();
        let services = routes
            .backends()
            .into_iter()
            .map(|(_, backend)| {
                let endpoints = Endpoints::new(&backend.service, vec![backend_url.clone()]);
                endpoints.admit(&backend_url);
                (backend.service.clone(), endpoints)
            })
            .collect();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        start(routes, services, listener).unwrap();
        url
    }

    #[actix_web::test]
    async fn over_the_manifests_limit_a_client_gets_429_with_the_json_error_and_retry_after() {
        let url = gateway().await;
        let limits = manifest().limits();
        let burst = limits.burst as usize;
        assert!(burst > 0, "the manifest sets a rate limit");
        let client = reqwest::Client::new();
        let mut statuses = Vec::new();
        // As fast as one client can: the burst passes whole, then the limit refuses.
        let mut refused = None;
        for _ in 0..burst * 2 {
            let response = client.get(format!("{url}/posts")).send().await.unwrap();
            statuses.push(response.status().as_u16());
            if response.status() == 429 {
                refused = Some(response);
                break;
            }
        }
        assert!(
            statuses[..=burst].iter().all(|s| *s == 200),
            "refused inside the burst: {statuses:?}"
        );
        let refused = refused.expect("never refused beyond the burst");
        let retry_after: u64 = refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry_after >= 1);
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limited");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("slow down"));
    }

    #[actix_web::test]
    async fn at_the_manifests_steady_rate_a_client_is_never_refused() {
        let url = gateway().await;
        let client = reqwest::Client::new();
        let rps = manifest().limits().rps.unwrap();
        let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / rps));
        for n in 0..60 {
            every.tick().await;
            let status = client
                .get(format!("{url}/posts"))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 200, "request {n} at {rps} per second");
        }
    }
}
