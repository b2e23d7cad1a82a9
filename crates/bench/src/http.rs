//! A minimal HTTP/1.1 client for the page: keep-alive connections from a
//! pool, `GET` only, bodies framed by `Content-Length` (what axum sends for
//! a rendered page). Small on purpose, so that the load generator costs
//! little next to the server it measures.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
};

/// A pool of keep-alive connections to one server, all sending the same
/// request (one visitor's cookie, one path).
#[derive(Debug, Clone)]
pub(crate) struct Pool {
    addr: SocketAddr,
    request: Arc<[u8]>,
    idle: Arc<Mutex<Vec<BufReader<TcpStream>>>>,
}

impl Pool {
    /// `GET path` on `addr`, with `cookie` when given.
    pub(crate) fn new(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Self {
        let cookie = cookie
            .map(|c| format!("Cookie: {c}\r\n"))
            .unwrap_or_default();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{cookie}\r\n");
        Self {
            addr,
            request: request.into_bytes().into(),
            idle: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Sends the request on an idle connection (or a new one) and reads the
    /// whole answer: its status and `Set-Cookie` value, if any.
    pub(crate) async fn get(&self) -> anyhow::Result<(u16, Option<String>)> {
        let idle = self.idle.lock().expect("pool lock").pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => {
                let stream = TcpStream::connect(self.addr)
                    .await
                    .with_context(|| format!("cannot connect to {}", self.addr))?;
                stream.set_nodelay(true)?;
                BufReader::new(stream)
            }
        };
        let (status, cookie, keep, _) = exchange(&mut conn, &self.request).await?;
        if keep {
            self.idle.lock().expect("pool lock").push(conn);
        }
        Ok((status, cookie))
    }
}

/// `GET path` on `addr` over a connection of its own: the status and body.
pub(crate) async fn get_text(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let mut conn = BufReader::new(stream);
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let (status, _, _, body) = exchange(&mut conn, request.as_bytes()).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One request and its response on `conn`: the status, the `Set-Cookie`
/// value, whether the connection can be used again, and the body.
async fn exchange(
    conn: &mut BufReader<TcpStream>,
    request: &[u8],
) -> anyhow::Result<(u16, Option<String>, bool, Vec<u8>)> {
    conn.get_mut().write_all(request).await?;
    let mut line = String::new();
    if conn.read_line(&mut line).await? == 0 {
        bail!("the server closed the connection");
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {line:?}"))?;
    let mut length = None;
    let mut cookie = None;
    let mut keep = true;
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            bail!("the server closed the connection in the headers");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("set-cookie") {
            cookie = value.split(';').next().map(str::to_owned);
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            keep = false;
        }
    }
    let length = length.context("a response without Content-Length")?;
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await?;
    Ok((status, cookie, keep, body))
}
