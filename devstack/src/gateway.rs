//! One port in front of everything, routing each request as the Ingress says: the
//! manifest's backend Service names map to the ready local instances behind them, round-
//! robin (none ready: 503 with `Retry-After`, as ingress-nginx answers). Bodies stream
//! both ways unbuffered, so Server-Sent Events pass through as they are written, and a
//! backend that dies mid-stream closes the browser's connection (its EventSource
//! reconnects).

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use harness::proxy::{no_ready_endpoint, proxy_client, Endpoints};

use crate::ingress::Ingress;
use crate::Error;

/// Like ingress-nginx's default `proxy-body-size`.
const BODY_LIMIT: usize = 1024 * 1024;

struct Routes {
    ingress: Ingress,
    /// Kubernetes Service name → its ready instances.
    services: HashMap<String, Arc<Endpoints>>,
    client: reqwest::Client,
}

pub fn start(
    ingress: Ingress,
    services: HashMap<String, Arc<Endpoints>>,
    listener: std::net::TcpListener,
) -> Result<ServerHandle, Error> {
    let routes = web::Data::new(Routes {
        ingress,
        services,
        client: proxy_client(),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(routes.clone())
            .app_data(web::PayloadConfig::new(BODY_LIMIT))
            .default_service(web::to(route))
    })
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    Ok(handle)
}

async fn route(req: HttpRequest, body: web::Bytes, routes: web::Data<Routes>) -> HttpResponse {
    let host = req.headers().get("host").and_then(|h| h.to_str().ok());
    let Some(backend) = routes.ingress.route(host, req.uri().path()) else {
        return HttpResponse::NotFound().body("default backend - 404\n");
    };
    let Some(endpoints) = routes.services.get(&backend.service) else {
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
    endpoints
        .forward(&routes.client, &req, body, &headers)
        .await
}

fn uuid_like() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// The client's static files, standing in for `client-srv`: what the client image's web
/// server does, including the single-page-app fallback to index.html.
pub fn serve_client(
    dist: std::path::PathBuf,
    listener: std::net::TcpListener,
) -> Result<ServerHandle, Error> {
    let dist = Arc::new(dist);
    let server = HttpServer::new(move || {
        let index = dist.join("index.html");
        App::new().service(
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
