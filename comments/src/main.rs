#[tokio::main]
async fn main() -> std::process::ExitCode {
    service_kit::server::run_main(
        "comments",
        comments::config_from_env,
        |c| c.service.log_format,
        comments::build,
    )
    .await
}
