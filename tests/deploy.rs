//! `deploy/` cannot rot silently: no Docker engine or cluster runs here, so
//! this checks the files statically. They parse; every binary they run is one
//! of ours; every flag they pass exists in that binary's `--help`; the ports
//! they expose are the ones the programs listen on; the image they run is the
//! one the Dockerfile builds.

use std::{collections::BTreeSet, path::Path};

use serde::Deserialize as _;
use serde_yaml_ng::Value;

/// The binaries the Dockerfile builds.
const BINARIES: [&str; 6] = [
    "registryd",
    "registryctl",
    "ratings-server",
    "recommendations-server",
    "market-web",
    "market",
];
/// The image every manifest runs our binaries from.
const IMAGE: &str = "market:latest";

fn deploy(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path);
    std::fs::read_to_string(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display()))
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|document| {
            let mut value = Value::deserialize(document).expect("valid YAML");
            // Compose's `<<: *anchor` merge keys.
            value.apply_merge().expect("valid merge keys");
            value
        })
        .filter(|value| !value.is_null())
        .collect()
}

/// `binary [subcommand] --help`.
fn help(binary: &str, subcommand: Option<&str>) -> String {
    let mut command = std::process::Command::new(test_support::bin(binary));
    command.args(subcommand).arg("--help");
    let output = command.output().expect("run --help");
    assert!(
        output.status.success(),
        "{binary} {subcommand:?} --help failed"
    );
    String::from_utf8(output.stdout).expect("utf-8 help")
}

/// Checks one command line (binary and arguments); returns its problems.
fn check_command(words: &[String], place: &str) -> Vec<String> {
    let Some(at) = words
        .iter()
        .position(|w| BINARIES.contains(&w.rsplit('/').next().unwrap_or(w)))
    else {
        return vec![format!("{place}: runs none of our binaries: {words:?}")];
    };
    let binary = words[at]
        .rsplit('/')
        .next()
        .unwrap_or(&words[at])
        .to_owned();
    let args = &words[at + 1..];
    // registryctl's options may come before or after its subcommand.
    let subcommand = (binary == "registryctl")
        .then(|| {
            args.iter()
                .find(|a| !a.starts_with('-') && !a.contains("://"))
                .cloned()
        })
        .flatten();
    let text = help(&binary, subcommand.as_deref());
    let global = help(&binary, None);
    args.iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap_or(a))
        .filter(|flag| {
            let known =
                |h: &str| h.contains(&format!("{flag} ")) || h.contains(&format!("{flag}\n"));
            !known(&text) && !known(&global)
        })
        .map(|flag| format!("{place}: {binary} has no {flag} (see `{binary} --help`)"))
        .collect()
}

/// The port in a `--listen=0.0.0.0:5000` or `--listen 0.0.0.0:5000` argument.
fn listen_ports(words: &[String]) -> BTreeSet<u64> {
    let mut ports = BTreeSet::new();
    for (i, word) in words.iter().enumerate() {
        let value = match word.strip_prefix("--listen=") {
            Some(value) => Some(value.to_owned()),
            None if word == "--listen" => words.get(i + 1).cloned(),
            None => None,
        };
        if let Some(port) = value.and_then(|v| v.rsplit(':').next().and_then(|p| p.parse().ok())) {
            ports.insert(port);
        }
    }
    ports
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A compose command, with `sh -c "… exec BIN args"` unwrapped.
fn compose_words(command: &Value) -> Vec<String> {
    let words = strings(command);
    if words.first().map(String::as_str) == Some("sh") {
        return words
            .get(2)
            .map(|script| script.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
    }
    words
}

#[test]
fn the_compose_file_runs_our_binaries_with_their_real_flags() {
    let compose = documents(&deploy("compose.yaml"));
    let services = compose[0]["services"].as_mapping().expect("services");
    let mut problems = Vec::new();
    let mut ours = 0;
    for (name, service) in services {
        let name = name.as_str().expect("a service name");
        let image = service["image"].as_str().unwrap_or_default();
        if image.starts_with("quay.io/coreos/etcd") {
            continue;
        }
        assert_eq!(image, IMAGE, "{name} runs the image the Dockerfile builds");
        ours += 1;
        let words = compose_words(&service["command"]);
        problems.extend(check_command(&words, &format!("compose {name}")));
        for port in strings(&service["ports"]) {
            let inside: u64 = port
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("a port");
            if !listen_ports(&words).contains(&inside) {
                problems.push(format!(
                    "compose {name}: publishes {inside}, listens on {:?}",
                    listen_ports(&words)
                ));
            }
        }
    }
    assert_eq!(
        ours, 11,
        "two registryd, three setup jobs, three ratings, two recommendations, market-web"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_kubernetes_manifests_run_our_binaries_with_their_real_flags_and_ports() {
    let mut problems = Vec::new();
    let mut containers_checked = 0;
    for file in [
        "etcd.yaml",
        "registryd.yaml",
        "ratings.yaml",
        "recommendations.yaml",
        "market-web.yaml",
        "secret.example.yaml",
    ] {
        for document in documents(&deploy(&format!("k8s/{file}"))) {
            let kind = document["kind"].as_str().expect("a kind").to_owned();
            assert!(
                document["metadata"]["name"].is_string(),
                "{file}: {kind} has a name"
            );
            let containers = &document["spec"]["template"]["spec"]["containers"];
            for container in containers.as_sequence().into_iter().flatten() {
                let image = container["image"].as_str().unwrap_or_default();
                if image.starts_with("quay.io/coreos/etcd") {
                    continue;
                }
                assert_eq!(
                    image, IMAGE,
                    "{file}: {kind} runs the image the Dockerfile builds"
                );
                containers_checked += 1;
                let mut words = strings(&container["command"]);
                words.extend(strings(&container["args"]));
                let place = format!("k8s/{file} {kind}");
                problems.extend(check_command(&words, &place));
                let listening = listen_ports(&words);
                let declared: BTreeSet<u64> = container["ports"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["containerPort"].as_u64())
                    .collect();
                if declared != listening && !(declared.is_empty() && listening.is_empty()) {
                    problems.push(format!(
                        "{place}: declares ports {declared:?}, listens on {listening:?}"
                    ));
                }
                for probe in ["readinessProbe", "livenessProbe"] {
                    let probe = &container[probe];
                    let port = probe["grpc"]["port"]
                        .as_u64()
                        .or_else(|| probe["httpGet"]["port"].as_u64());
                    if let Some(port) = port
                        && !declared.contains(&port)
                    {
                        problems.push(format!(
                            "{place}: probes port {port}, declares {declared:?}"
                        ));
                    }
                }
            }
        }
    }
    assert_eq!(
        containers_checked, 7,
        "registryd, three setup jobs, ratings, recommendations, market-web"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_systemd_units_run_our_binaries_with_their_real_flags() {
    let mut problems = Vec::new();
    for unit in [
        "registryd.service",
        "ratings-server@.service",
        "recommendations-server@.service",
        "market-web.service",
    ] {
        let text = deploy(&format!("systemd/{unit}"));
        let exec = text
            .lines()
            .find_map(|line| line.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{unit} has an ExecStart"));
        let words: Vec<String> = exec.split_whitespace().map(str::to_owned).collect();
        problems.extend(check_command(&words, &format!("systemd/{unit}")));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_dockerfile_builds_every_binary_the_manifests_run() {
    let dockerfile = deploy("Dockerfile");
    let built: BTreeSet<&str> = dockerfile
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "--bin")
        .map(|w| w[1])
        .collect();
    let expected: BTreeSet<&str> = BINARIES.into_iter().collect();
    assert_eq!(built, expected);
    for binary in BINARIES {
        assert!(
            dockerfile.contains(&format!("/src/target/release/{binary}")),
            "the runtime image gets {binary}"
        );
        // The binary exists in this workspace under that name.
        test_support::bin(binary);
    }
    assert!(
        dockerfile.contains("-t market:latest"),
        "the documented tag is the manifests' image"
    );
}
