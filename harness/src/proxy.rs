//! What a Kubernetes Service does for the instances of one service, on this machine:
//! its ready endpoints (probed on `/readyz`, as the kubelet's readiness probe feeds the
//! endpoints), and a proxy on the Service's port that spreads requests across them
//! round-robin, as kube-proxy does. With no ready endpoint a request is answered 503
//! with the JSON error and `Retry-After`, as ingress-nginx answers for a Service
//! without ready endpoints. The local gateway forwards through the same code.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use tokio::task::JoinHandle;

/// How often each endpoint's readiness is probed (the manifests probe every few
/// seconds; here a stopped instance leaves the rotation quickly).
const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Like ingress-nginx's default `proxy-body-size`; the bus's deliveries are larger.
const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Connection-level headers a proxy must not pass on (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

#[derive(Debug)]
struct Endpoint {
    url: String,
    ready: AtomicBool,
    /// Taken out of rotation on purpose (it is about to stop), whatever its probe says.
    draining: AtomicBool,
    in_flight: AtomicUsize,
}

/// The instances behind one Service.
#[derive(Debug)]
pub struct Endpoints {
    pub service: String,
    endpoints: Vec<Endpoint>,
    next: AtomicUsize,
}

impl Endpoints {
    pub fn new(service: &str, urls: Vec<String>) -> Arc<Self> {
        Arc::new(Self {
            service: service.to_owned(),
            endpoints: urls
                .into_iter()
                .map(|url| Endpoint {
                    url,
                    ready: AtomicBool::new(false),
                    draining: AtomicBool::new(false),
                    in_flight: AtomicUsize::new(0),
                })
                .collect(),
            next: AtomicUsize::new(0),
        })
    }

    /// Probes every endpoint's `/readyz` until the returned task is aborted.
    pub fn probe(self: &Arc<Self>) -> JoinHandle<()> {
        let endpoints = self.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(1))
                .build()
                .unwrap_or_else(|_| reqwest::Client::new());
            loop {
                for endpoint in &endpoints.endpoints {
                    let ready = client
                        .get(format!("{}/readyz", endpoint.url))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    endpoint.ready.store(ready, Ordering::Release);
                }
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
        })
    }

    fn in_rotation(endpoint: &Endpoint) -> bool {
        endpoint.ready.load(Ordering::Acquire) && !endpoint.draining.load(Ordering::Acquire)
    }

    /// The next ready endpoint, round-robin, skipping `tried`.
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        let count = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count)
            .map(|offset| (start + offset) % count)
            .find(|i| !tried.contains(i) && Self::in_rotation(&self.endpoints[*i]))
    }

    pub fn ready_count(&self) -> usize {
        self.endpoints
            .iter()
            .filter(|e| Self::in_rotation(e))
            .count()
    }

    /// Takes the endpoint at `url` out of rotation and waits until the requests already
    /// sent to it are answered: what Kubernetes' endpoint removal and a preStop pause give
    /// a pod before SIGTERM.
    pub async fn drain(&self, url: &str, deadline: Duration) {
        let Some(endpoint) = self.endpoints.iter().find(|e| e.url == url) else {
            return;
        };
        endpoint.draining.store(true, Ordering::Release);
        let until = tokio::time::Instant::now() + deadline;
        while endpoint.in_flight.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Puts the endpoint at `url`, which has just answered `/readyz`, back into rotation
    /// without waiting for the next probe.
    pub fn admit(&self, url: &str) {
        if let Some(endpoint) = self.endpoints.iter().find(|e| e.url == url) {
            endpoint.ready.store(true, Ordering::Release);
            endpoint.draining.store(false, Ordering::Release);
        }
    }

    /// Forwards the request to a ready endpoint. A connection refused (the instance is
    /// gone, and the request never reached it) is retried on the next one.
    pub async fn forward(
        &self,
        client: &reqwest::Client,
        req: &HttpRequest,
        body: web::Bytes,
        extra_headers: &[(&str, String)],
    ) -> HttpResponse {
        let mut tried = Vec::new();
        while let Some(index) = self.pick(&tried) {
            tried.push(index);
            let endpoint = &self.endpoints[index];
            endpoint.in_flight.fetch_add(1, Ordering::AcqRel);
            let sent = send(client, req, body.clone(), &endpoint.url, extra_headers).await;
            endpoint.in_flight.fetch_sub(1, Ordering::AcqRel);
            match sent {
                Ok(response) => return relay(response),
                Err(error) if error.is_connect() => {
                    endpoint.ready.store(false, Ordering::Release);
                    continue;
                }
                Err(error) => {
                    return HttpResponse::BadGateway().json(error_body(
                        "bad_gateway",
                        &format!(
                            "{} ({}) did not answer: {error}",
                            self.service, endpoint.url
                        ),
                    ))
                }
            }
        }
        no_ready_endpoint(&self.service)
    }
}

/// `{"error":{"code","message"}}`, the services' own error shape.
pub fn error_body(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({ "error": { "code": code, "message": message } })
}

/// 503 with `Retry-After`: the Service exists, but none of its instances is ready.
pub fn no_ready_endpoint(service: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .insert_header(("Retry-After", "1"))
        .json(error_body(
            "unavailable",
            &format!("{service} has no ready instance yet; try again shortly"),
        ))
}

async fn send(
    client: &reqwest::Client,
    req: &HttpRequest,
    body: web::Bytes,
    base: &str,
    extra_headers: &[(&str, String)],
) -> Result<reqwest::Response, reqwest::Error> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
        .unwrap_or(reqwest::Method::GET);
    let mut upstream = client.request(method, format!("{base}{path}")).body(body);
    for (name, value) in req.headers() {
        let set_here = extra_headers.iter().any(|(n, _)| *n == name.as_str());
        if !HOP_BY_HOP.contains(&name.as_str()) && name != "content-length" && !set_here {
            upstream = upstream.header(name.as_str(), value.as_bytes());
        }
    }
    for (name, value) in extra_headers {
        upstream = upstream.header(*name, value);
    }
    upstream.send().await
}

/// The backend's answer as it comes: status, headers, and a streamed body (SSE passes
/// through unbuffered; a backend dying mid-stream closes the client's connection).
fn relay(response: reqwest::Response) -> HttpResponse {
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut reply = HttpResponse::build(status);
    for (name, value) in response.headers() {
        if HOP_BY_HOP.contains(&name.as_str()) || name == "content-length" {
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

/// An HTTP client for proxying: never follows redirects (they go back to the caller),
/// never uses a proxy (the backends are on this machine).
pub fn proxy_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Serves the Service's port: every request goes to one of its ready instances.
pub fn serve_service(
    endpoints: Arc<Endpoints>,
    listener: std::net::TcpListener,
) -> std::io::Result<ServerHandle> {
    let client = proxy_client();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::from(endpoints.clone()))
            .app_data(web::Data::new(client.clone()))
            .app_data(web::PayloadConfig::new(BODY_LIMIT))
            .default_service(web::to(pass_on))
    })
    .workers(2)
    // kube-proxy forwards packets as they come; a proxy that buffered small writes for
    // a delayed ACK would add 40 ms that Kubernetes does not.
    .tcp_nodelay(true)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    Ok(handle)
}

async fn pass_on(
    req: HttpRequest,
    body: web::Bytes,
    endpoints: web::Data<Endpoints>,
    client: web::Data<reqwest::Client>,
) -> HttpResponse {
    endpoints.forward(&client, &req, body, &[]).await
}
