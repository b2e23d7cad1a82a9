//! TLS and mutual TLS end to end: registryd, ratings-server, registryctl and
//! market-web speak gRPC over TLS with certificates made at test time; with
//! `--mtls`, a client without a certificate of the deployment's authority is
//! refused by the registry and by the ratings instances.

use std::{net::SocketAddr, path::Path};

use market_proto::{
    ratings::v1::{GetRatingRequest, ratings_client::RatingsClient},
    registry::v1::ResolveRequest,
};
use registry_client::Registries;
use test_support::{Pki, Proc, Web, socket_addr};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// A running TLS registry, its address and admin token.
struct TlsRegistry {
    _data: tempfile::TempDir,
    proc: Proc,
    url: String,
    admin_token: String,
}

async fn start_registry(tls_dir: &Path, mutual: bool) -> TlsRegistry {
    let data = tempfile::tempdir().expect("a data dir");
    let mut args = vec![
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--data-dir".to_owned(),
        data.path().display().to_string(),
        "--tls-dir".to_owned(),
        tls_dir.display().to_string(),
    ];
    if mutual {
        args.push("--mtls".to_owned());
    }
    let proc = Proc::spawn("registryd", &args);
    let url = proc.listening("registryd").await;
    assert!(
        url.starts_with("https://"),
        "a TLS registry announces {url}"
    );
    let addr = socket_addr(&url);
    let admin_token = std::fs::read_to_string(data.path().join("admin-token"))
        .expect("the admin token")
        .trim()
        .to_owned();
    TlsRegistry {
        _data: data,
        proc,
        url: format!("https://{addr}"),
        admin_token,
    }
}

impl TlsRegistry {
    /// Runs `registryctl` against `url` (this registry's, or a variant of
    /// it) with the admin token, TLS from `tls_dir`, and `args`; returns its
    /// success, stdout and stderr.
    async fn ctl(&self, url: &str, tls_dir: &Path, args: &[&str]) -> (bool, String, String) {
        let output = tokio::process::Command::new(test_support::bin("registryctl"))
            .arg("--registry")
            .arg(url)
            .arg("--admin-token")
            .arg(&self.admin_token)
            .arg("--tls-dir")
            .arg(tls_dir)
            .args(args)
            .env_remove("REGISTRY_TOKEN")
            .env_remove("MARKET_TLS_DIR")
            .output()
            .await
            .expect("run registryctl");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).trim().to_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

/// A failed call's code, message and every cause under it, so that a test
/// can tell a TLS refusal from any other failure.
fn explain(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut cause = std::error::Error::source(status);
    while let Some(error) = cause {
        text.push_str(&format!(": {error}"));
        cause = error.source();
    }
    text
}

/// A client's TLS settings from one of the test authority's folders.
fn client_tls(dir: &Path) -> ClientTlsConfig {
    daemon::Tls::from_dir(dir, false)
        .expect("an issued folder")
        .client()
}

/// A client that trusts the authority in `ca_pem` and presents no
/// certificate.
fn anonymous_tls(ca_pem: &str) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem))
}

/// Resolves `ratings` at `url` with `tls`: the number of instances, or the
/// error's text.
async fn resolve(url: &str, token: &str, tls: Option<ClientTlsConfig>) -> Result<usize, String> {
    let registries = Registries::with_tls([url], token, tls).map_err(|e| e.to_string())?;
    let (mut client, _) = registries.client();
    client
        .resolve(ResolveRequest {
            service: "ratings".into(),
        })
        .await
        .map(|response| response.into_inner().instances.len())
        .map_err(|status| explain(&status))
}

/// `Get("camera")` on one ratings instance with `tls`: the rating, or the
/// error's text.
async fn get_camera(addr: SocketAddr, tls: ClientTlsConfig) -> Result<i32, String> {
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .expect("an address")
        .tls_config(tls)
        .expect("TLS settings")
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    RatingsClient::new(channel)
        .get(GetRatingRequest {
            thing_id: "camera".into(),
        })
        .await
        .map(|response| response.into_inner().rating)
        .map_err(|status| explain(&status))
}

#[tokio::test]
async fn the_market_runs_over_mutual_tls_and_refuses_clients_without_a_certificate() {
    let pki = Pki::new("market test CA");
    let rogue = Pki::new("someone else's CA");

    let registry = start_registry(&pki.issue("registryd"), true).await;
    let ctl_dir = pki.issue("registryctl");
    let (ok, token, stderr) = registry
        .ctl(&registry.url, &ctl_dir, &["create-service", "ratings"])
        .await;
    assert!(ok, "registryctl over mTLS: {stderr}");
    assert!(token.starts_with("svc_"), "{token}");

    let ratings_dir = pki.issue("ratings");
    let ratings = Proc::spawn(
        "ratings-server",
        [
            "--listen",
            "127.0.0.1:0",
            "--registry",
            &registry.url,
            "--token",
            &token,
            "--tls-dir",
            &ratings_dir.display().to_string(),
            "--mtls",
        ],
    );
    let announced = ratings.listening("ratings-1").await;
    assert!(
        announced.starts_with("https://"),
        "a TLS instance registers an https:// address, not {announced}"
    );
    ratings.registered("ratings-1").await;
    let ratings_addr: SocketAddr = socket_addr(&announced);

    // The shop finds the instance through the registry and calls it, both
    // over mutual TLS, and the page shows the rating.
    let web = Web::start(&[
        "--registry",
        &registry.url,
        "--token",
        &token,
        "--tls-dir",
        &pki.issue("market-web").display().to_string(),
    ])
    .await;
    let (status, page) = web.get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains("rating: 4.5/5"), "no live rating:\n{page}");
    ratings.wait_for_line("GET camera => 45").await;

    // Clients with the authority's certificate are served.
    assert_eq!(
        resolve(&registry.url, &token, Some(client_tls(&ctl_dir))).await,
        Ok(1)
    );
    assert_eq!(get_camera(ratings_addr, client_tls(&ctl_dir)).await, Ok(45));

    // Refused: no certificate, a certificate of another authority, and
    // plaintext. The token is valid in each case; TLS refuses first.
    let foreign = client_tls(&rogue.issue("intruder"));
    let foreign_trusting_ours = {
        let dir = rogue.issue("intruder-2");
        std::fs::write(dir.join("ca.crt"), pki.ca_pem()).expect("swap the CA");
        client_tls(&dir)
    };
    for (what, tls) in [
        ("no client certificate", anonymous_tls(pki.ca_pem())),
        ("a certificate of another authority", foreign_trusting_ours),
    ] {
        let refused = resolve(&registry.url, &token, Some(tls.clone())).await;
        assert_refused_in_handshake("registry", what, &refused);
        let refused = get_camera(ratings_addr, tls).await;
        assert_refused_in_handshake("ratings", what, &refused);
    }
    let plaintext = resolve(&registry.url.replace("https://", "http://"), &token, None).await;
    assert!(
        plaintext.is_err(),
        "registry served plaintext: {plaintext:?}"
    );
    // And a client does not trust a server outside its authority.
    let distrusting = resolve(&registry.url, &token, Some(foreign)).await;
    eprintln!("REFUSED by the client, a foreign server: {distrusting:?}");
    assert!(
        distrusting
            .as_ref()
            .is_err_and(|e| e.contains("invalid peer certificate: UnknownIssuer")),
        "a client trusted a foreign server, or failed for another reason"
    );

    // A plaintext address with TLS on is named, not tried.
    let plaintext_url = registry.url.replace("https://", "http://");
    let (ok, _, stderr) = registry.ctl(&plaintext_url, &ctl_dir, &["services"]).await;
    assert!(!ok);
    assert!(
        stderr.contains("TLS is on but the registry address") && stderr.contains("https://"),
        "{stderr}"
    );
    drop(registry.proc);
}

#[tokio::test]
async fn without_mtls_a_tls_listener_serves_clients_without_a_certificate() {
    let pki = Pki::new("market test CA");
    let registry = start_registry(&pki.issue("registryd"), false).await;
    let (ok, token, stderr) = registry
        .ctl(
            &registry.url,
            &pki.issue("registryctl"),
            &["create-service", "ratings"],
        )
        .await;
    assert!(ok, "{stderr}");
    assert_eq!(
        resolve(&registry.url, &token, Some(anonymous_tls(pki.ca_pem()))).await,
        Ok(0)
    );
    // A client that does not trust the authority still refuses the server.
    let other = Pki::new("someone else's CA");
    let refused = resolve(&registry.url, &token, Some(anonymous_tls(other.ca_pem()))).await;
    assert!(refused.is_err(), "a client trusted a foreign server");
}

/// `daemon` refused a client with `what` during the TLS handshake.
fn assert_refused_in_handshake<T: std::fmt::Debug>(
    daemon: &str,
    what: &str,
    refused: &Result<T, String>,
) {
    eprintln!("REFUSED {daemon}, {what}: {refused:?}");
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("transport error")),
        "{daemon} served a client with {what}, or refused it for another reason"
    );
}
