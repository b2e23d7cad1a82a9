//! `deploy/` cannot rot silently: no Docker engine or cluster runs here, so
//! this checks the files statically. They parse; every binary they run is one
//! of ours; every flag they pass exists in that binary's `--help`; the ports
//! they expose are the ones the programs listen on; the image they run is the
//! one the Dockerfile builds; every service of the workspace runs in each
//! of them. A new service is found by its crate (`crates/<name>-server`),
//! with no edit here.

use std::{collections::BTreeSet, path::Path};

use serde::Deserialize as _;
use serde_yaml_ng::Value;

/// The binaries every deployment has, besides the services' servers.
const DAEMONS: [&str; 4] = ["registryd", "registryctl", "market-web", "market"];

/// Each service's server: the workspace's crates named `<service>-server`
/// with a binary.
fn servers() -> BTreeSet<String> {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates");
    let servers: BTreeSet<String> = std::fs::read_dir(&crates)
        .expect("crates/")
        .map(|entry| entry.expect("a crate").path())
        .filter(|path| path.join("src/main.rs").exists())
        .filter_map(|path| Some(path.file_name()?.to_str()?.to_owned()))
        .filter(|name| name.ends_with("-server"))
        .collect();
    assert!(
        servers.contains("ratings-server"),
        "found the servers: {servers:?}"
    );
    servers
}

/// Every binary the Dockerfile builds.
fn binaries() -> BTreeSet<String> {
    DAEMONS
        .iter()
        .map(|d| (*d).to_owned())
        .chain(servers())
        .collect()
}

/// The binary a command line runs, if it is one of ours.
fn binary_of(words: &[String]) -> Option<String> {
    let binaries = binaries();
    words
        .iter()
        .map(|w| w.rsplit('/').next().unwrap_or(w).to_owned())
        .find(|w| binaries.contains(w))
}

/// The servers that `ran` lacks, as a problem.
fn missing_servers(ran: &BTreeSet<String>, place: &str) -> Vec<String> {
    servers()
        .into_iter()
        .filter(|server| !ran.contains(server))
        .map(|server| format!("{place}: no {server} runs"))
        .collect()
}
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
    let binaries = binaries();
    let Some(at) = words
        .iter()
        .position(|w| binaries.contains(w.rsplit('/').next().unwrap_or(w)))
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
    let mut ran = BTreeSet::new();
    for (name, service) in services {
        let name = name.as_str().expect("a service name");
        let image = service["image"].as_str().unwrap_or_default();
        if image.starts_with("quay.io/coreos/etcd") {
            continue;
        }
        assert_eq!(image, IMAGE, "{name} runs the image the Dockerfile builds");
        let words = compose_words(&service["command"]);
        ran.extend(binary_of(&words));
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
    problems.extend(missing_servers(&ran, "compose"));
    for daemon in ["registryd", "registryctl", "market-web"] {
        if !ran.contains(daemon) {
            problems.push(format!("compose: no {daemon} runs"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_kubernetes_manifests_run_our_binaries_with_their_real_flags_and_ports() {
    let mut problems = Vec::new();
    let mut ran = BTreeSet::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("deploy/k8s")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "the manifests: {files:?}");
    for file in files {
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
                let mut words = strings(&container["command"]);
                words.extend(strings(&container["args"]));
                ran.extend(binary_of(&words));
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
    problems.extend(missing_servers(&ran, "k8s"));
    for daemon in ["registryd", "registryctl", "market-web"] {
        if !ran.contains(daemon) {
            problems.push(format!("k8s: no {daemon} runs"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_systemd_units_run_our_binaries_with_their_real_flags() {
    let mut problems = Vec::new();
    let mut ran = BTreeSet::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd");
    for entry in std::fs::read_dir(&dir).expect("deploy/systemd") {
        let unit = entry
            .expect("a unit")
            .file_name()
            .into_string()
            .expect("a name");
        let text = deploy(&format!("systemd/{unit}"));
        let exec = text
            .lines()
            .find_map(|line| line.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{unit} has an ExecStart"));
        let words: Vec<String> = exec.split_whitespace().map(str::to_owned).collect();
        problems.extend(check_command(&words, &format!("systemd/{unit}")));
        if let Some(binary) = binary_of(&words) {
            // An instance per unit: `<service>-server@N`.
            if binary.ends_with("-server") && unit != format!("{binary}@.service") {
                problems.push(format!(
                    "systemd/{unit} runs {binary}: name it {binary}@.service"
                ));
            }
            ran.insert(binary);
        }
    }
    problems.extend(missing_servers(&ran, "systemd"));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_dockerfile_builds_every_binary_the_manifests_run() {
    let dockerfile = deploy("Dockerfile");
    let build = dockerfile
        .lines()
        .skip_while(|line| !line.starts_with("RUN cargo build"))
        .take_while(|line| !line.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    for flag in ["--release", "--locked", "--workspace", "--bins"] {
        assert!(build.contains(flag), "the build has {flag}: {build}");
    }
    for daemon in DAEMONS {
        assert!(
            dockerfile.contains(&format!("/src/target/release/{daemon} ")),
            "the runtime image gets {daemon}"
        );
        // The binary exists in this workspace under that name.
        test_support::bin(daemon);
    }
    assert!(
        dockerfile.contains("/src/target/release/*-server "),
        "the runtime image gets every service's server"
    );
    for server in servers() {
        test_support::bin(&server);
    }
    assert!(
        dockerfile.contains("-t market:latest"),
        "the documented tag is the manifests' image"
    );
}
