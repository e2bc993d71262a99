#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::server::run_main(
        "posts",
        posts::config_from_env,
        |c| c.service.log_format,
        posts::build,
    )
    .await
}
