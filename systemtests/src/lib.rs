//! The whole microblog as real processes: the five binaries `cargo build` makes, each with
//! its own fresh database on the test cluster, wired as in Kubernetes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::migrate::Migrator;
use testkit::{cluster::free_port, eventually, TestDatabase};

pub const SERVICES: [&str; 5] = ["event-bus", "posts", "comments", "moderation", "query"];

pub struct Stack {
    ports: HashMap<&'static str, u16>,
    databases: HashMap<&'static str, TestDatabase>,
    children: HashMap<&'static str, Child>,
    logs: PathBuf,
}

fn binary(name: &str) -> PathBuf {
    // Test binaries live in target/<profile>/deps; the services in target/<profile>.
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

impl Stack {
    pub async fn start() -> Self {
        testkit::init_test_logging();
        let empty = Migrator::DEFAULT;
        let mut databases = HashMap::new();
        let mut ports = HashMap::new();
        for service in SERVICES {
            databases.insert(service, TestDatabase::new(&empty).await);
            ports.insert(service, free_port().expect("free port"));
        }
        let logs =
            std::env::temp_dir().join(format!("microblog-systemtest-{}", std::process::id()));
        std::fs::create_dir_all(&logs).expect("log directory");
        let mut stack = Self {
            ports,
            databases,
            children: HashMap::new(),
            logs,
        };
        for service in SERVICES {
            stack.spawn(service);
        }
        for service in SERVICES {
            stack.wait_ready(service).await;
        }
        stack
    }

    pub fn url(&self, service: &str) -> String {
        format!("http://127.0.0.1:{}", self.ports[service])
    }

    pub fn database(&self, service: &str) -> &TestDatabase {
        &self.databases[service]
    }

    fn env(&self, service: &'static str) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PORT", self.ports[service].to_string()),
            ("DATABASE_URL", self.databases[service].url.clone()),
            ("LOG_FORMAT", "json".to_owned()),
            ("RUST_LOG", "info".to_owned()),
            ("EVENT_BUS_URL", self.url("event-bus")),
        ];
        if service == "event-bus" {
            let subscribers = ["comments", "moderation", "query"]
                .map(|s| format!("{s}={}/events", self.url(s)))
                .join(",");
            env.push(("EVENT_BUS_SUBSCRIBERS", subscribers));
            env.push(("EVENT_BUS_RETRY_MAX_MS", "300".to_owned()));
        }
        env
    }

    pub fn spawn(&mut self, service: &'static str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{service}.log")))
            .expect("log file");
        let child = Command::new(binary(service))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env(service))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start service");
        self.children.insert(service, child);
    }

    pub async fn wait_ready(&self, service: &str) {
        let url = format!("{}/readyz", self.url(service));
        let client = http();
        eventually(
            Duration::from_secs(60),
            &format!("{service} ready"),
            || async {
                client
                    .get(&url)
                    .send()
                    .await
                    .map(|r| r.status() == 200)
                    .unwrap_or(false)
            },
        )
        .await;
    }

    fn signal(&mut self, service: &str, signal: &str) {
        if let Some(mut child) = self.children.remove(service) {
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
            let status = child.wait().expect("wait for service");
            if signal == "-TERM" {
                assert!(
                    status.success(),
                    "{service} did not exit 0 on SIGTERM: {status}"
                );
            }
        }
    }

    /// SIGTERM, and the service must exit 0.
    pub fn stop(&mut self, service: &str) {
        self.signal(service, "-TERM");
    }

    pub fn kill(&mut self, service: &str) {
        self.signal(service, "-KILL");
    }

    pub async fn restart(&mut self, service: &'static str) {
        self.spawn(service);
        self.wait_ready(service).await;
    }

    /// Replaces a service's database with an empty one (as if its volume were lost).
    pub async fn wipe_database(&mut self, service: &'static str) {
        self.databases
            .insert(service, TestDatabase::new(&Migrator::DEFAULT).await);
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, mut child) in self.children.drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.logs);
        } else {
            eprintln!("service logs kept in {}", self.logs.display());
        }
    }
}

/// GET a URL and read its JSON body.
pub async fn get_json(url: &str) -> serde_json::Value {
    let response = http()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    response
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: body is not JSON: {e}"))
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// `POST /posts/create` through the posts service; asserts 201 and returns the post.
pub async fn create_post(stack: &Stack, title: &str) -> Value {
    let url = format!("{}/posts/create", stack.url("posts"));
    let response = http()
        .post(&url)
        .json(&json!({ "title": title }))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    assert_eq!(response.status(), 201, "POST {url}");
    response.json().await.expect("created post is JSON")
}

/// Comments on a post; asserts 201 and returns the new comment from the answer.
pub async fn create_comment(stack: &Stack, post_id: &str, content: &str) -> Value {
    let url = format!("{}/posts/{post_id}/comments", stack.url("comments"));
    let response = http()
        .post(&url)
        .json(&json!({ "content": content }))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    assert_eq!(response.status(), 201, "POST {url}");
    let comments: Value = response.json().await.expect("comments are JSON");
    comments
        .as_array()
        .and_then(|all| all.iter().find(|c| c["content"] == content))
        .cloned()
        .unwrap_or_else(|| panic!("the answer lacks the new comment: {comments}"))
}

/// The query service's whole view.
pub async fn view(stack: &Stack) -> Value {
    get_json(&format!("{}/posts", stack.url("query"))).await
}

/// A comment's status in the view, if the view has it yet.
pub async fn comment_status(stack: &Stack, post_id: &str, comment_id: &str) -> Option<String> {
    let response = http()
        .get(format!("{}/posts/{post_id}", stack.url("query")))
        .send()
        .await
        .ok()?;
    let post: Value = response.json().await.ok()?;
    post["comments"]
        .as_array()?
        .iter()
        .find(|c| c["id"] == comment_id)?["status"]
        .as_str()
        .map(str::to_owned)
}

/// The query service's Server-Sent Events stream, open for up to two minutes.
pub async fn open_live_stream(stack: &Stack) -> reqwest::Response {
    let url = format!("{}/posts/stream", stack.url("query"));
    http()
        .get(&url)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}
