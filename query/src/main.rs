#[tokio::main]
async fn main() -> std::process::ExitCode {
    service_kit::server::run_main(
        "query",
        query::config_from_env,
        |c| c.service.telemetry.clone(),
        query::build,
    )
    .await
}
