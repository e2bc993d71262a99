#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::server::run_main(
        "comments",
        comments::config_from_env,
        |c| c.service.log_format,
        comments::build,
    )
    .await
}
