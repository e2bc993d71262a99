//! The client every service uses to talk to the event bus: publish, and read the log
//! (catch-up, filling a hole in a delivery).

use std::time::Duration;

use contract::{Accepted, Envelope, PublishAnswer};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("event bus unreachable: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("event bus answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("event bus sent an unreadable answer: {0}")]
    Decode(#[from] serde_json::Error),
}

/// An HTTP client tuned for service-to-service calls on a cluster network.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// The header a read of the log names the head in: the newest seq committed when the
/// read began, so a reader knows where "caught up" was then (a page may end short).
pub const HEAD_HEADER: &str = "event-bus-head";

/// A page of the log, and the head when it was read (absent from a bus that predates it).
pub struct LogPage {
    pub events: Vec<Envelope>,
    pub head: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct BusClient {
    http: reqwest::Client,
    events_url: String,
    token: Option<String>,
}

impl BusClient {
    /// `base_url` is the bus's root, e.g. `http://event-bus-srv`.
    pub fn new(base_url: &str, token: Option<String>) -> Self {
        Self {
            http: http_client(Duration::from_secs(10)),
            events_url: format!("{}/events", base_url.trim_end_matches('/')),
            token,
        }
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Publishes a JSON array of publications, already serialised (the outbox stores
    /// them as text), as a call of the span `traceparent` names. Returns once the bus has
    /// committed them.
    pub async fn publish_json_array(
        &self,
        body: String,
        traceparent: Option<&str>,
    ) -> Result<Vec<Accepted>, BusError> {
        let mut request = self
            .authorized(self.http.post(&self.events_url))
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let response = request.body(body).send().await?;
        let bytes = checked(response).await?;
        Ok(serde_json::from_slice::<PublishAnswer>(&bytes)?.events)
    }

    pub async fn publish(
        &self,
        publications: &[contract::Publication],
    ) -> Result<Vec<Accepted>, BusError> {
        self.publish_json_array(serde_json::to_string(publications)?, None)
            .await
    }

    /// Up to `limit` events with `seq > after`, in seq order.
    pub async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<Envelope>, BusError> {
        Ok(self.page_after(after, limit).await?.events)
    }

    /// The same, with the log's head as the bus saw it just before reading the page.
    pub async fn page_after(&self, after: i64, limit: u32) -> Result<LogPage, BusError> {
        // A read is safe to send again, and a pooled connection that the bus closed just
        // as it was reused (it restarted, or timed the connection out) fails the request
        // with "connection closed before message completed": that is not an outage, and
        // one more try on a new connection tells.
        match self.read_page(after, limit).await {
            Err(BusError::Transport(error)) => {
                tracing::debug!(error = %crate::error::error_chain(&error), "reading the bus's log failed; trying once more");
                self.read_page(after, limit).await
            }
            read => read,
        }
    }

    async fn read_page(&self, after: i64, limit: u32) -> Result<LogPage, BusError> {
        let response = self
            .authorized(self.http.get(&self.events_url))
            .query(&[("after", after.to_string()), ("limit", limit.to_string())])
            .send()
            .await?;
        let head = response
            .headers()
            .get(HEAD_HEADER)
            .and_then(|value| value.to_str().ok()?.parse().ok());
        let bytes = checked(response).await?;
        Ok(LogPage {
            events: serde_json::from_slice(&bytes)?,
            head,
        })
    }
}

async fn checked(response: reqwest::Response) -> Result<bytes::Bytes, BusError> {
    let status = response.status();
    let bytes = response.bytes().await?;
    if status.is_success() {
        Ok(bytes)
    } else {
        Err(BusError::Status {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A bus that drops the first connection without an answer, as a restarted bus drops
    /// the connections pooled to it, and answers an empty page on the next.
    async fn closing_once() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut first, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = first.read(&mut request).await.unwrap();
            drop(first);
            let (mut second, _) = listener.accept().await.unwrap();
            let _ = second.read(&mut request).await.unwrap();
            second
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nevent-bus-head: 7\r\ncontent-length: 2\r\n\r\n[]")
                .await
                .unwrap();
        });
        url
    }

    #[tokio::test]
    async fn a_read_whose_connection_closes_unanswered_is_sent_once_more() {
        let bus = BusClient::new(&closing_once().await, None);
        let page = bus.page_after(0, 10).await.unwrap();
        assert!(page.events.is_empty());
        assert_eq!(page.head, Some(7));
    }
}
