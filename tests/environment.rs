//! The environment variables our binaries read their settings from, and the
//! rule every supervisor keeps: a child gets its settings as flags, never
//! from the environment of whatever started it.

use std::{collections::BTreeSet, process::Command};

use ratings_client::{RatingsClient, contract_policy};
use test_support::Cluster;

/// The binaries that read settings from the environment.
const BINARIES: [&str; 4] = ["registryd", "registryctl", "ratings-server", "market-web"];

#[test]
fn the_supervisors_list_is_every_setting_a_binary_reads_from_the_environment() {
    let mut read = BTreeSet::new();
    for binary in BINARIES {
        let output = Command::new(test_support::bin(binary))
            .arg("--help")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {binary} --help: {e}"));
        assert!(output.status.success(), "{binary} --help");
        let help = String::from_utf8_lossy(&output.stdout);
        for rest in help.split("[env: ").skip(1) {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect();
            read.insert(name);
        }
    }
    let listed: BTreeSet<String> = daemon::SETTINGS_FROM_ENV
        .iter()
        .map(|name| (*name).to_owned())
        .collect();
    assert_eq!(
        read, listed,
        "daemon::SETTINGS_FROM_ENV must name exactly the variables the binaries read"
    );
}

/// Run by [`an_exported_tls_dir_does_not_reach_plaintext_children`], in a
/// test process of its own whose environment has `MARKET_TLS_DIR` set to an
/// empty folder: the daemons it starts without `--tls-dir` must still serve
/// plaintext (a daemon that took the folder would fail to start, finding no
/// certificate in it).
#[tokio::test]
#[ignore = "run by an_exported_tls_dir_does_not_reach_plaintext_children, with MARKET_TLS_DIR set"]
async fn plaintext_daemons_under_an_exported_tls_dir() {
    assert!(
        std::env::var_os("MARKET_TLS_DIR").is_some(),
        "run with MARKET_TLS_DIR set"
    );
    let cluster = Cluster::start(&[]).await;
    let _ratings = cluster.ratings(1, &[]).await;
    let client =
        RatingsClient::discover(cluster.registries(), contract_policy()).expect("a valid policy");
    client.synced().await;
    let rating = client
        .get("camera")
        .await
        .expect("a plaintext call answered");
    assert_eq!(rating.tenths, 45);
}

#[test]
fn an_exported_tls_dir_does_not_reach_plaintext_children() {
    let tls_dir = tempfile::tempdir().expect("a temporary folder");
    let output = Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "plaintext_daemons_under_an_exported_tls_dir",
            "--exact",
            "--ignored",
        ])
        .env("MARKET_TLS_DIR", tls_dir.path())
        .output()
        .expect("this test binary runs again");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && report.contains("1 passed"),
        "the plaintext daemons ran with MARKET_TLS_DIR exported:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
