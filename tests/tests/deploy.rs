//! The compose file cannot drift from the binaries: every setting it passes exists.

use clap::CommandFactory;

/// Every `NAME` starting with `prefix` in `text`.
fn names<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        found.push(&tail[..end]);
        rest = &tail[end..];
    }
    found
}

/// Every `--flag` in `text`, but on lines that run another program (Valkey's own flags).
fn flags(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|line| !line.contains("valkey-server"))
        .flat_map(|line| {
            line.split(|c: char| c.is_whitespace() || c == '"' || c == '[' || c == ']' || c == ',')
        })
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .map(|word| word.split('=').next().unwrap_or(word))
        .collect()
}

#[test]
fn every_env_var_and_flag_in_the_compose_file_exists_in_the_binaries() {
    let compose = include_str!("../../docker-compose.yml");
    let dockerfile = include_str!("../../Dockerfile");
    let daemon_help = gonest_sessiond::Cli::command()
        .render_long_help()
        .to_string();
    let app_help = example_app::Cli::command().render_long_help().to_string();

    let daemon_vars: Vec<_> = names(compose, "GONEST_SESSIOND_")
        .into_iter()
        .chain(names(dockerfile, "GONEST_SESSIOND_"))
        .collect();
    assert!(daemon_vars.len() >= 4, "{daemon_vars:?}");
    for var in daemon_vars {
        assert!(
            daemon_help.contains(&format!("env: {var}=")),
            "gonest-sessiond has no {var}"
        );
    }
    let app_vars: Vec<_> = names(compose, "EXAMPLE_APP_")
        .into_iter()
        .chain(names(dockerfile, "EXAMPLE_APP_"))
        .collect();
    assert!(app_vars.len() >= 2, "{app_vars:?}");
    for var in app_vars {
        assert!(
            app_help.contains(&format!("env: {var}=")),
            "example-app has no {var}"
        );
    }
    for flag in flags(compose) {
        assert!(
            daemon_help.contains(flag) || app_help.contains(flag),
            "no binary takes {flag}"
        );
    }
    // The health check runs the daemon's own subcommand.
    assert!(compose.contains("\"/usr/local/bin/gonest-sessiond\", \"health\""));
    let subcommands = gonest_sessiond::Cli::command();
    assert!(subcommands.find_subcommand("health").is_some());
}

#[test]
fn the_scanners_find_what_they_should() {
    assert_eq!(
        names(
            "A: GONEST_SESSIOND_X_Y: 1 GONEST_SESSIOND_Z",
            "GONEST_SESSIOND_"
        ),
        ["GONEST_SESSIOND_X_Y", "GONEST_SESSIOND_Z"]
    );
    assert_eq!(
        flags("command: [\"--listen\", \"0.0.0.0:1\", \"--data-dir=/d\"]"),
        ["--listen", "--data-dir"]
    );
    // A made-up variable is caught.
    let help = gonest_sessiond::Cli::command()
        .render_long_help()
        .to_string();
    assert!(!help.contains("env: GONEST_SESSIOND_NO_SUCH_FLAG="));
}
