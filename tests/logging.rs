//! `--log-format json`: every line every daemon writes is one JSON object a
//! log pipeline can index, with the seed's wording as its message and the
//! event's fields beside it.

use std::time::Duration;

use serde_json::Value as Json;
use test_support::{Cluster, Instance, Proc, Signal, Web};

const JSON: [&str; 2] = ["--log-format", "json"];

/// Every line `proc` printed, each parsed: a log line, or a readiness line
/// on stdout (also JSON, for supervisors).
fn lines(proc: &Proc, name: &str) -> Vec<Json> {
    let lines = proc.child().lines_after(0);
    assert!(!lines.is_empty(), "{name} printed nothing");
    lines
        .iter()
        .map(|line| {
            let value: Json = serde_json::from_str(line).unwrap_or_else(|error| {
                panic!("{name} printed a line that is not JSON ({error}): {line}")
            });
            if value.get("ready").is_none() {
                for key in ["timestamp", "level", "target"] {
                    assert!(value[key].is_string(), "{name}: no {key} in {line}");
                }
                assert!(
                    value["fields"]["message"].is_string(),
                    "{name}: no message in {line}"
                );
            }
            value
        })
        .collect()
}

/// The log lines whose message contains `needle`.
fn with_message<'a>(lines: &'a [Json], needle: &str) -> Vec<&'a Json> {
    lines
        .iter()
        .filter(|line| {
            line["fields"]["message"]
                .as_str()
                .is_some_and(|message| message.contains(needle))
        })
        .collect()
}

async fn stop(proc: &mut Proc) {
    proc.signal(Signal::SIGTERM);
    let status = proc.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "{status}: {}", proc.output());
}

#[tokio::test]
async fn every_line_of_every_daemon_is_json_with_its_fields() {
    let mut cluster = Cluster::start(&JSON).await;
    let url = cluster.registry.url();
    let mut ratings = cluster.ratings(1, &JSON).await;
    // One instance of every other service the shop has a panel for, each
    // `<service>-server` (the workspace's naming, as in tests/deploy.rs).
    let mut others = Vec::new();
    for panel in market_web::panels::PANELS {
        let token = cluster.registry.create_service(panel.service).await;
        let binary = format!("{}-server", panel.service);
        let instance = Instance::start(&binary, panel.service, &url, &token, 1, &JSON).await;
        others.push((panel.service, binary, instance));
    }
    let services: Vec<&str> = std::iter::once("ratings")
        .chain(others.iter().map(|(service, _, _)| *service))
        .collect();
    let consumer = cluster
        .registry
        .create_consumer("market-web", &services)
        .await;
    let mut web = Web::start(&[
        "--registry",
        &url,
        "--token",
        &consumer,
        "--log-format",
        "json",
    ])
    .await;
    let (status, body) = web.get("/").await;
    assert_eq!(status, 200, "{body}");
    for (service, _, _) in &others {
        assert!(body.contains(&format!(r#"id="{service}""#)), "{body}");
    }

    // Stopped, so that their shutdown lines are in too.
    stop(&mut web.proc).await;
    stop(&mut ratings.proc).await;
    for (_, _, instance) in &mut others {
        stop(&mut instance.proc).await;
    }
    stop(&mut cluster.registry.proc).await;

    let web = lines(&web.proc, "market-web");
    let ratings = lines(&ratings.proc, "ratings-server");
    let registry = lines(&cluster.registry.proc, "registryd");

    // The seed's wording is the message; the event's fields are fields.
    let served = with_message(&ratings, "GET basketball => ");
    assert_eq!(served.len(), 1, "one Get of basketball: {ratings:?}");
    assert_eq!(served[0]["fields"]["thing"], "basketball", "{}", served[0]);
    assert_eq!(served[0]["level"], "INFO");
    assert_eq!(
        with_message(&web, "market-web listening on http://").len(),
        1,
        "{web:?}"
    );
    assert!(
        !with_message(&web, "market-web stopped").is_empty(),
        "{web:?}"
    );
    for (service, binary, instance) in &others {
        let printed = lines(&instance.proc, binary);
        let id = format!("{service}-1");
        assert!(!with_message(&printed, &id).is_empty(), "{printed:?}");
    }
    assert!(
        registry.iter().any(|line| line.get("level").is_some()),
        "{registry:?}"
    );
}

#[tokio::test]
async fn a_log_format_that_does_not_exist_is_refused_with_the_ones_that_do() {
    let mut proc = Proc::spawn("registryd", ["--log-format", "yaml"]);
    let status = proc.wait_exit(Duration::from_secs(10)).await;
    assert!(!status.success());
    // Its last lines may still be on their way when it has exited.
    proc.wait_for_line("invalid value 'yaml' for '--log-format")
        .await;
    proc.wait_for_line("[possible values: text, json]").await;
}
