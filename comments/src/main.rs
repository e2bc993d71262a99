#[tokio::main]
async fn main() -> std::process::ExitCode {
    service_kit::server::run_main(
        "comments",
        comments::config_from_env,
        |c| c.service.telemetry.clone(),
        comments::build,
    )
    .await
}
