//! One port in front of everything, routing each request as the Ingress says: the
//! manifest's backend Service names map to the local processes. Bodies stream both ways
//! unbuffered, so Server-Sent Events pass through as they are written, and a backend
//! that dies mid-stream closes the browser's connection (its EventSource reconnects).

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

use crate::ingress::Ingress;
use crate::Error;

/// Like ingress-nginx's default `proxy-body-size`.
const BODY_LIMIT: usize = 1024 * 1024;

/// Connection-level headers a proxy must not pass on (RFC 9110 §7.6.1), plus the ones
/// the proxy sets itself (a client's own `X-Forwarded-For` is not trusted).
const NOT_PASSED_ON: [&str; 13] = [
    "connection",
    "proxy-connection",
    "x-forwarded-for",
    "x-real-ip",
    "x-forwarded-host",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

struct Routes {
    ingress: Ingress,
    /// Kubernetes Service name → local port.
    ports: HashMap<String, u16>,
    client: reqwest::Client,
}

pub fn start(
    ingress: Ingress,
    ports: HashMap<String, u16>,
    listener: std::net::TcpListener,
) -> Result<ServerHandle, Error> {
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true)
        // A backend's redirect goes back to the browser, as nginx passes it on.
        .redirect(reqwest::redirect::Policy::none())
        // Backends are always on this machine, whatever HTTP_PROXY says.
        .no_proxy()
        .build()?;
    let routes = web::Data::new(Routes {
        ingress,
        ports,
        client,
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(routes.clone())
            .app_data(web::PayloadConfig::new(BODY_LIMIT))
            .default_service(web::to(proxy))
    })
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    Ok(handle)
}

async fn proxy(req: HttpRequest, body: web::Bytes, routes: web::Data<Routes>) -> HttpResponse {
    let host = req.headers().get("host").and_then(|h| h.to_str().ok());
    let Some(backend) = routes.ingress.route(host, req.uri().path()) else {
        return HttpResponse::NotFound().body("default backend - 404\n");
    };
    let Some(port) = routes.ports.get(&backend.service) else {
        return HttpResponse::ServiceUnavailable().body(format!(
            "no local process for Service {}\n",
            backend.service
        ));
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let Ok(method) = reqwest::Method::from_bytes(req.method().as_str().as_bytes()) else {
        return HttpResponse::BadRequest().finish();
    };
    let mut upstream = routes
        .client
        .request(method, format!("http://127.0.0.1:{port}{path}"))
        .body(body);
    for (name, value) in req.headers() {
        if !NOT_PASSED_ON.contains(&name.as_str()) {
            upstream = upstream.header(name.as_str(), value.as_bytes());
        }
    }
    let peer = req
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    upstream = upstream
        .header("x-forwarded-for", &peer)
        .header("x-real-ip", &peer)
        .header("x-forwarded-host", host.unwrap_or_default())
        .header("x-forwarded-proto", "http");
    if !req.headers().contains_key("x-request-id") {
        // As ingress-nginx does: the services log it with every line of the request.
        upstream = upstream.header("x-request-id", uuid_like());
    }
    let response = match upstream.send().await {
        Ok(response) => response,
        Err(error) => {
            return HttpResponse::BadGateway().body(format!(
                "{} (127.0.0.1:{port}) is not answering: {error}\n",
                backend.service
            ))
        }
    };
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut reply = HttpResponse::build(status);
    for (name, value) in response.headers() {
        if NOT_PASSED_ON.contains(&name.as_str()) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            reply.append_header((name, value));
        }
    }
    reply.streaming(response.bytes_stream())
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
