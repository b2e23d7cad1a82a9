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
    ///
    /// A server closes a keep-alive connection that stays idle too long
    /// (market-web after 10 s without a request), which a caller measured
    /// in turn with others can outwait. So, as HTTP clients do, a `GET`
    /// that fails on an idle connection is sent again once, on a new one.
    pub(crate) async fn get(&self) -> anyhow::Result<(u16, Option<String>)> {
        let idle = self.idle.lock().expect("pool lock").pop();
        if let Some(conn) = idle
            && let Ok(answer) = self.send(conn).await
        {
            return Ok(answer);
        }
        let stream = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("cannot connect to {}", self.addr))?;
        stream.set_nodelay(true)?;
        self.send(BufReader::new(stream)).await
    }

    /// The request on `conn`, which goes back to the pool if the server
    /// keeps it open.
    async fn send(&self, mut conn: BufReader<TcpStream>) -> anyhow::Result<(u16, Option<String>)> {
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A server that answers one request per connection and then closes it,
    /// without saying so: as market-web does to a connection left idle.
    async fn one_answer_per_connection() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("its address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut buf = [0; 1024];
                while !request.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_get_on_a_connection_the_server_closed_goes_again_on_a_new_one() {
        let pool = Pool::new(one_answer_per_connection().await, "/", None);
        for _ in 0..3 {
            let (status, _) = pool.get().await.expect("a 200 each time");
            assert_eq!(status, 200);
        }
    }
}
