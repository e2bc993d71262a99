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
