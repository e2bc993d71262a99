#[tokio::main]
async fn main() -> std::process::ExitCode {
    service_kit::server::run_main(
        "event-bus",
        event_bus::BusConfig::from_env,
        |config| config.service.telemetry.clone(),
        event_bus::build,
    )
    .await
}
