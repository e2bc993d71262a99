//! The public API as a client calls it, for the system tests and the load tool: create a
//! post, comment on it, read JSON, follow the query service's live stream.

use std::time::Duration;

use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum ApiCallError {
    #[error("{what}: {source}")]
    Transport {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what} answered {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{what}: {problem}")]
    Answer { what: String, problem: String },
}

/// An HTTP client on keep-alive connections, as a browser or a load tool holds them.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
}

impl Default for ApiClient {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiClient {
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self { http }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `POST /posts/create` on `posts` (a base URL); the created post, after a 201.
    pub async fn create_post(&self, posts: &str, title: &str) -> Result<Value, ApiCallError> {
        let what = format!("POST {posts}/posts/create");
        let request = self
            .http
            .post(format!("{posts}/posts/create"))
            .json(&json!({ "title": title }));
        expect_json(request, 201, &what).await
    }

    /// Comments on a post on `comments` (a base URL); the new comment from the answer.
    pub async fn create_comment(
        &self,
        comments: &str,
        post_id: &str,
        content: &str,
    ) -> Result<Value, ApiCallError> {
        let url = format!("{comments}/posts/{post_id}/comments");
        let what = format!("POST {url}");
        let request = self.http.post(&url).json(&json!({ "content": content }));
        let all = expect_json(request, 201, &what).await?;
        all.as_array()
            .and_then(|all| all.iter().find(|c| c["content"] == content))
            .cloned()
            .ok_or_else(|| ApiCallError::Answer {
                what,
                problem: format!("the answer lacks the new comment: {all}"),
            })
    }

    /// `GET url`: the status and the JSON body.
    pub async fn get(&self, url: &str) -> Result<(u16, Value), ApiCallError> {
        let what = format!("GET {url}");
        let response =
            self.http
                .get(url)
                .send()
                .await
                .map_err(|source| ApiCallError::Transport {
                    what: what.clone(),
                    source,
                })?;
        let status = response.status().as_u16();
        Ok((status, json_body(response, &what).await?))
    }

    /// `GET url`, which must answer 200: its JSON body.
    pub async fn get_json(&self, url: &str) -> Result<Value, ApiCallError> {
        expect_json(self.http.get(url), 200, &format!("GET {url}")).await
    }

    /// The query service's Server-Sent Events stream (`query` is its base URL).
    pub async fn live_stream(&self, query: &str) -> Result<LiveStream, ApiCallError> {
        let url = format!("{query}/posts/stream");
        let what = format!("GET {url}");
        // A stream outlives any one request's timeout.
        let request = self.http.get(&url).timeout(Duration::from_secs(24 * 3600));
        let response = send(request, &what).await?;
        if response.status() != 200 {
            return Err(ApiCallError::Status {
                what,
                status: response.status().as_u16(),
                body: response.text().await.unwrap_or_default(),
            });
        }
        Ok(LiveStream {
            response,
            buffer: Vec::new(),
            pending: Vec::new(),
        })
    }
}

async fn expect_json(
    request: reqwest::RequestBuilder,
    expected: u16,
    what: &str,
) -> Result<Value, ApiCallError> {
    let response = request
        .send()
        .await
        .map_err(|source| ApiCallError::Transport {
            what: what.to_owned(),
            source,
        })?;
    let status = response.status().as_u16();
    if status != expected {
        return Err(ApiCallError::Status {
            what: what.to_owned(),
            status,
            body: response.text().await.unwrap_or_default(),
        });
    }
    json_body(response, what).await
}

async fn send(
    request: reqwest::RequestBuilder,
    what: &str,
) -> Result<reqwest::Response, ApiCallError> {
    request
        .send()
        .await
        .map_err(|source| ApiCallError::Transport {
            what: what.to_owned(),
            source,
        })
}

async fn json_body(response: reqwest::Response, what: &str) -> Result<Value, ApiCallError> {
    let bytes = response
        .bytes()
        .await
        .map_err(|source| ApiCallError::Transport {
            what: what.to_owned(),
            source,
        })?;
    serde_json::from_slice(&bytes).map_err(|error| ApiCallError::Answer {
        what: what.to_owned(),
        problem: format!(
            "the body is not JSON ({error}): {:?}",
            String::from_utf8_lossy(&bytes)
        ),
    })
}

/// An open live stream: each `data:` line of each event, as JSON.
pub struct LiveStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
    pending: Vec<Value>,
}

impl LiveStream {
    pub fn content_type(&self) -> Option<&str> {
        self.response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
    }

    /// The next change the server pushed; `None` once the stream ended.
    pub async fn next_change(&mut self) -> Result<Option<Value>, ApiCallError> {
        loop {
            if !self.pending.is_empty() {
                return Ok(Some(self.pending.remove(0)));
            }
            let chunk = self
                .response
                .chunk()
                .await
                .map_err(|source| ApiCallError::Transport {
                    what: "reading the live stream".into(),
                    source,
                })?;
            let Some(chunk) = chunk else {
                return Ok(None);
            };
            self.buffer.extend_from_slice(&chunk);
            while let Some(end) = find_frame_end(&self.buffer) {
                let frame: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let frame = String::from_utf8_lossy(&frame);
                for data in frame.lines().filter_map(|l| l.strip_prefix("data: ")) {
                    let change = serde_json::from_str(data).map_err(|e| ApiCallError::Answer {
                        what: "the live stream".into(),
                        problem: format!("a change that is not JSON ({e}): {data:?}"),
                    })?;
                    self.pending.push(change);
                }
            }
        }
    }
}

/// Events end with a blank line.
fn find_frame_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|w| w == b"\n\n")
}
