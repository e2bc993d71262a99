//! `--observe`: a real Prometheus (the `prometheus` binary of Debian's package) scraping
//! every instance of every service, with the rules and alerts that ship in
//! infra/prometheus/rules.yml, its data under the devstack data directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::process::{Log, Prefix, Process, Program};
use harness::stack::{local_url, Stack};
use harness::topology::SERVICES;

use crate::Error;

/// Prometheus's own default port.
pub const PORT: u16 = 9090;
const READY_DEADLINE: Duration = Duration::from_secs(60);
const GRACE: Duration = Duration::from_secs(10);

/// The configuration: one job per service (its name, as a cluster's pods' app label
/// makes it), one target per instance, scraped every 5 s so a person sees changes soon.
pub fn config(stack: &Stack, rules: &Path) -> String {
    let mut text = String::from(
        "# Written by devstack --observe at each start; edit infra/prometheus/rules.yml instead.\n\
         global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n",
    );
    text.push_str(&format!(
        "rule_files:\n  - {}\nscrape_configs:\n",
        quoted(&rules.display().to_string())
    ));
    for service in &SERVICES {
        let targets: Vec<String> = stack
            .instances(service.name)
            .map(|instance| quoted(&format!("127.0.0.1:{}", instance.port)))
            .collect();
        text.push_str(&format!(
            "  - job_name: {}\n    static_configs:\n      - targets: [{}]\n",
            quoted(service.name),
            targets.join(", ")
        ));
    }
    text
}

/// YAML's double-quoted string (the JSON one is a subset of it).
fn quoted(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

pub struct Observer {
    process: Process,
}

impl Observer {
    /// Starts Prometheus on `PORT` and waits until it is ready.
    pub async fn start(root: &Path, data_dir: &Path, stack: &Stack) -> Result<Self, Error> {
        let binary = find_binary()?;
        if std::net::TcpListener::bind(("127.0.0.1", PORT)).is_err() {
            return Err(format!(
                "--observe: port {PORT} (Prometheus) is in use; is another Prometheus running? (`ss -ltnp | grep :{PORT}`)"
            )
            .into());
        }
        let dir = data_dir.join("prometheus");
        std::fs::create_dir_all(&dir)?;
        let config_file = dir.join("prometheus.yml");
        std::fs::write(
            &config_file,
            config(stack, &root.join("infra/prometheus/rules.yml")),
        )?;
        let program = Program {
            label: "prometheus".into(),
            binary,
            args: vec![
                format!("--config.file={}", config_file.display()),
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                "--storage.tsdb.retention.time=7d".into(),
                format!("--web.listen-address=127.0.0.1:{PORT}"),
                "--log.level=warn".into(),
            ],
            env: Vec::new(),
            log: Log::Prefixed(Prefix::new("prometheus", "90")),
            supervised: false,
        };
        let mut process = Process::new(program);
        process.start();
        process
            .wait_ready(&format!("{}/-/ready", url()), READY_DEADLINE)
            .await?;
        Ok(Self { process })
    }

    pub async fn stop(mut self) {
        let _ = self.process.stop(GRACE).await;
    }
}

pub fn url() -> String {
    local_url(PORT)
}

fn find_binary() -> Result<PathBuf, Error> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("prometheus"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            "--observe needs the prometheus binary: `apt-get install prometheus` (Debian's package; scripts/test installs it)".into()
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn yaml_strings_are_quoted_whatever_they_hold() {
        assert_eq!(
            quoted("/data/my rules: \"x\".yml"),
            r#""/data/my rules: \"x\".yml""#
        );
    }
}
