//! The local Service proxy against real HTTP servers: requests alternate between the
//! ready instances, an instance that stops answering `/readyz` leaves the rotation, and
//! with none ready the answer is 503 with the JSON error and `Retry-After`.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use harness::proxy::{serve_service, Endpoints};
use harness::stack::local_url;

/// An instance that names itself on `/who` and is ready while `ready` says so.
fn instance(name: &'static str, ready: Arc<AtomicBool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = local_url(listener.local_addr().unwrap().port());
    let server = HttpServer::new(move || {
        let ready = ready.clone();
        App::new()
            .route(
                "/who",
                web::get().to(move || async move { HttpResponse::Ok().body(name) }),
            )
            .route(
                "/readyz",
                web::get().to(move || {
                    let ready = ready.load(Ordering::Acquire);
                    async move {
                        if ready {
                            HttpResponse::Ok().finish()
                        } else {
                            HttpResponse::ServiceUnavailable().finish()
                        }
                    }
                }),
            )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    url
}

fn proxy(endpoints: &Arc<Endpoints>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = local_url(listener.local_addr().unwrap().port());
    serve_service(endpoints.clone(), listener).unwrap();
    url
}

async fn until_ready_count(endpoints: &Endpoints, count: usize) {
    testkit::eventually(Duration::from_secs(10), "the probes to settle", || async {
        endpoints.ready_count() == count
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_alternate_between_ready_instances_only() {
    let (one, two) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(true)),
    );
    let urls = vec![instance("one", one.clone()), instance("two", two.clone())];
    let endpoints = Endpoints::new("who-srv", urls);
    let _probe = endpoints.probe();
    let url = proxy(&endpoints);
    until_ready_count(&endpoints, 2).await;
    let client = reqwest::Client::new();
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(
            client
                .get(format!("{url}/who"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    answers.sort();
    assert_eq!(answers, ["one", "one", "two", "two"]);

    two.store(false, Ordering::Release);
    until_ready_count(&endpoints, 1).await;
    for _ in 0..4 {
        let who = client
            .get(format!("{url}/who"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(
            who, "one",
            "a request went to an instance that is not ready"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_ready_instance_the_answer_is_503_json_with_retry_after() {
    let not_ready = Arc::new(AtomicBool::new(false));
    let endpoints = Endpoints::new("who-srv", vec![instance("one", not_ready)]);
    let _probe = endpoints.probe();
    let url = proxy(&endpoints);
    let response = reqwest::get(format!("{url}/who")).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "unavailable");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("who-srv"));
}
