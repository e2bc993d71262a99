//! Builds the React client when its sources are newer than its last build.

use std::path::Path;
use std::time::SystemTime;

use tokio::process::Command;

use crate::Error;
use harness::process::say;

/// What the build reads; a change to any of these makes `dist/` stale.
const SOURCES: [&str; 9] = [
    "src",
    "public",
    "index.html",
    "package.json",
    "package-lock.json",
    "vite.config.ts",
    "tsconfig.json",
    "tsconfig.app.json",
    "tsconfig.node.json",
];

pub async fn build_if_stale(client: &Path) -> Result<(), Error> {
    let built = modified(&client.join("dist/index.html"));
    let newest_source = SOURCES.iter().filter_map(|s| newest(&client.join(s))).max();
    let installed = modified(&client.join("node_modules/.package-lock.json"));
    let lockfile = modified(&client.join("package-lock.json"));
    if installed.is_none() || installed < lockfile {
        say("devstack: installing the client's npm packages (npm ci)");
        npm(client, &["ci", "--no-audit", "--no-fund"]).await?;
    }
    if built.is_none() || built < newest_source {
        say("devstack: building the client (npm run build)");
        npm(client, &["run", "build"]).await?;
    } else {
        say("devstack: the client is up to date");
    }
    Ok(())
}

/// The headers the client's nginx adds to every answer, read from the file it includes
/// (`client/security-headers.conf`): one `add_header NAME "VALUE" always;` per line.
pub fn security_headers(client: &Path) -> Result<Vec<(String, String)>, Error> {
    let file = client.join("security-headers.conf");
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let headers = parse_security_headers(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(headers)
}

fn parse_security_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut headers = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let header = line
            .strip_prefix("add_header ")
            .and_then(|rest| rest.strip_suffix("\" always;"))
            .and_then(|rest| rest.split_once(" \""))
            .filter(|(name, value)| !name.contains(' ') && !value.contains('"'))
            .ok_or_else(|| format!("line {}: not `add_header NAME \"VALUE\" always;`", n + 1))?;
        headers.push((header.0.to_owned(), header.1.to_owned()));
    }
    if headers.is_empty() {
        return Err("no add_header line".into());
    }
    Ok(headers)
}

async fn npm(dir: &Path, args: &[&str]) -> Result<(), Error> {
    let status = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| format!("cannot run npm ({e}); install Node.js 20 or newer with npm"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "`npm {}` in {} failed ({status})",
            args.join(" "),
            dir.display()
        )
        .into())
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    path.metadata().and_then(|m| m.modified()).ok()
}

/// The newest modification time of a file or of anything under a directory.
fn newest(path: &Path) -> Option<SystemTime> {
    let meta = path.metadata().ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| newest(&e.path()))
        .chain(meta.modified().ok())
        .max()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_clients_security_headers_are_read_from_the_file_its_nginx_includes() {
        let headers =
            security_headers(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../client")).unwrap();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .unwrap()
        };
        let policy = get("Content-Security-Policy");
        assert!(policy.contains("default-src 'self'"), "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
        assert!(!policy.contains("unsafe-inline"), "{policy}");
        assert_eq!(get("X-Content-Type-Options"), "nosniff");
        assert_eq!(get("Referrer-Policy"), "no-referrer");
        assert!(parse_security_headers("add_header X-A \"b\";").is_err());
        assert!(parse_security_headers("# nothing").is_err());
    }
}
