#[tokio::main]
async fn main() -> std::process::ExitCode {
    service_kit::server::run_main(
        "moderation",
        moderation::config_from_env,
        |c| c.base.service.telemetry.clone(),
        moderation::build,
    )
    .await
}
