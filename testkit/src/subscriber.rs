//! A real HTTP subscriber for bus tests: records every envelope delivered to it, and can
//! be told to fail with a status or to refuse connections altogether for a while.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

use contract::{Envelope, OneOrMany};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriberMode {
    Accept,
    /// Answer every delivery with this status and record nothing.
    Fail(u16),
}

#[derive(Default)]
struct State {
    received: Vec<Envelope>,
    deliveries: usize,
    authorization: Option<String>,
    /// The types it says it takes, as a consumer does; none: all, as the course's do.
    wants: Option<Vec<String>>,
    /// Each successful delivery: its `Event-Bus-Covers` header, if it had one, and seqs.
    batches: Vec<(Option<String>, Vec<i64>)>,
    /// The cursor it answers with, as a consumer that read the log itself is further on.
    claimed_cursor: Option<i64>,
}

pub struct RecordingSubscriber {
    port: u16,
    state: Arc<Mutex<State>>,
    mode: Arc<Mutex<SubscriberMode>>,
    server: Option<ServerHandle>,
}

impl RecordingSubscriber {
    pub fn start() -> Self {
        let mut subscriber = Self {
            port: 0,
            state: Arc::default(),
            mode: Arc::new(Mutex::new(SubscriberMode::Accept)),
            server: None,
        };
        subscriber.listen();
        subscriber
    }

    fn listen(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("bind subscriber");
        self.port = listener.local_addr().expect("subscriber address").port();
        let state = self.state.clone();
        let mode = self.mode.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::from(state.clone()))
                .app_data(web::Data::from(mode.clone()))
                .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
                .route("/events", web::post().to(receive))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0)
        .listen(listener)
        .expect("listen subscriber")
        .run();
        self.server = Some(server.handle());
        tokio::spawn(server);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/events", self.port)
    }

    pub fn set_mode(&self, mode: SubscriberMode) {
        *self.mode.lock().expect("mode lock") = mode;
    }

    /// Closes the port: deliveries now fail with "connection refused".
    pub async fn go_down(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop(false).await;
        }
    }

    /// Listens again on the same port.
    pub fn come_back(&mut self) {
        if self.server.is_none() {
            self.listen();
        }
    }

    pub fn received(&self) -> Vec<Envelope> {
        self.state.lock().expect("state lock").received.clone()
    }

    pub fn seqs(&self) -> Vec<i64> {
        self.state
            .lock()
            .expect("state lock")
            .received
            .iter()
            .map(|e| e.seq)
            .collect()
    }

    pub fn count(&self) -> usize {
        self.state.lock().expect("state lock").received.len()
    }

    /// Delivery requests answered successfully (a batch counts once).
    pub fn deliveries(&self) -> usize {
        self.state.lock().expect("state lock").deliveries
    }

    /// Answers as a consumer that takes only `types`.
    pub fn wanting(&self, types: &[&str]) {
        self.state.lock().expect("state lock").wants =
            Some(types.iter().map(|t| (*t).to_owned()).collect());
    }

    /// Answers every delivery as a consumer whose cursor is `seq`.
    pub fn claiming_cursor(&self, seq: i64) {
        self.state.lock().expect("state lock").claimed_cursor = Some(seq);
    }

    /// Each successful delivery's `Event-Bus-Covers` header and seqs, in order.
    pub fn batches(&self) -> Vec<(Option<String>, Vec<i64>)> {
        self.state.lock().expect("state lock").batches.clone()
    }

    pub fn last_authorization(&self) -> Option<String> {
        self.state.lock().expect("state lock").authorization.clone()
    }
}

async fn receive(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<Mutex<State>>,
    mode: web::Data<Mutex<SubscriberMode>>,
) -> HttpResponse {
    let current = *mode.lock().expect("mode lock");
    if let SubscriberMode::Fail(status) = current {
        return HttpResponse::build(
            actix_web::http::StatusCode::from_u16(status)
                .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR),
        )
        .finish();
    }
    let Ok(OneOrMany(batch)) = serde_json::from_slice::<OneOrMany<Envelope>>(&body) else {
        return HttpResponse::BadRequest().finish();
    };
    let mut state = state.lock().expect("state lock");
    state.deliveries += 1;
    state.authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let seqs = batch.iter().map(|e| e.seq).collect();
    state.received.extend(batch);
    let covers = req
        .headers()
        .get("event-bus-covers")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state.batches.push((covers, seqs));
    let mut answer = serde_json::json!({ "status": "OK" });
    if let Some(wants) = &state.wants {
        answer["wants"] = serde_json::json!(wants);
    }
    if let Some(cursor) = state.claimed_cursor {
        answer["cursor"] = serde_json::json!(cursor);
    }
    HttpResponse::Ok().json(answer)
}
