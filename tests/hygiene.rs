//! What the repository must never hold: a file named like a secret (a token,
//! a private key, credentials). A registry's admin token once slipped in
//! with a data dir made by running `registryd` in the checkout; SECURITY.md
//! says why such a file must never be shared.

use std::{path::Path, process::Command};

/// Whether a file's name says it holds a secret. Source and documentation
/// files may be named after what they handle (`admin_token.rs`), and
/// examples say so in their name (`secret.example.yaml`).
fn named_like_a_secret(path: &str) -> bool {
    let name = Path::new(path)
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or(path)
        .to_ascii_lowercase();
    if name.contains(".example") {
        return false;
    }
    let extension = Path::new(&name)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("");
    const KEY_FILES: [&str; 7] = ["pem", "key", "p12", "pfx", "jks", "keystore", "kdbx"];
    const KEY_NAMES: [&str; 7] = [
        "id_rsa",
        "id_ecdsa",
        "id_ed25519",
        ".env",
        ".netrc",
        ".npmrc",
        ".pypirc",
    ];
    const WORDS: [&str; 6] = [
        "token",
        "secret",
        "password",
        "passwd",
        "credential",
        "private",
    ];
    const CODE_AND_DOCS: [&str; 7] = ["rs", "proto", "md", "html", "py", "sh", "toml"];
    KEY_FILES.contains(&extension)
        || KEY_NAMES.iter().any(|key| name.starts_with(key))
        || (WORDS.iter().any(|word| name.contains(word)) && !CODE_AND_DOCS.contains(&extension))
}

#[test]
fn secrets_are_told_by_their_names() {
    for secret in [
        "data/admin-token",
        "deploy/tls/server.key",
        "certs/ca-key.pem",
        "home/.ssh/id_ed25519",
        ".env.local",
        "deploy/k8s/secret.yaml",
        "registry.token",
    ] {
        assert!(named_like_a_secret(secret), "{secret} is a secret");
    }
    for harmless in [
        "crates/registryd/src/admin_token.rs",
        "deploy/k8s/secret.example.yaml",
        "SECURITY.md",
        "crates/market-web/static/camera.png",
        "proto/market/registry/v1/registry.proto",
    ] {
        assert!(!named_like_a_secret(harmless), "{harmless} is no secret");
    }
}

#[test]
fn no_tracked_file_is_named_like_a_secret() {
    let root = env!("CARGO_MANIFEST_DIR");
    let listed = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        .expect("git runs: the check reads what the repository tracks");
    assert!(
        listed.status.success(),
        "git ls-files failed in {root}: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let tracked = String::from_utf8(listed.stdout).expect("UTF-8 paths");
    let files: Vec<&str> = tracked.split('\0').filter(|p| !p.is_empty()).collect();
    assert!(
        files.len() > 10,
        "the repository's files are listed: {files:?}"
    );
    let secrets: Vec<&str> = files
        .into_iter()
        .filter(|path| named_like_a_secret(path))
        .collect();
    assert!(
        secrets.is_empty(),
        "files named like secrets are tracked; remove them (`git rm --cached`) and keep them out with .gitignore: {secrets:?}"
    );
}
