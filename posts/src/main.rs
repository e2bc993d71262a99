#[tokio::main]
async fn main() -> std::process::ExitCode {
    service_kit::server::run_main(
        "posts",
        posts::config_from_env,
        |c| c.service.telemetry.clone(),
        posts::build,
    )
    .await
}
