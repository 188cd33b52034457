//! A plain HTTP/1.1 client for the HTTP front door: one request per
//! connection, the answer read whole, or an event stream read as it comes.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// An answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The error body's `message`.
    pub fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no message: {:?}", self.body))
            .to_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request and reads the answer.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let response = open(addr, method, path, headers, body.into()).await;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// `POST path` with a JSON body.
pub async fn post(addr: SocketAddr, path: &str, body: &str) -> Reply {
    send(
        addr,
        "POST",
        path,
        &[("content-type", "application/json")],
        body.to_owned(),
    )
    .await
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(addr, "GET", path, headers, Bytes::new()).await
}

async fn open(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> hyper::Response<Incoming> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    sender
        .send_request(request.body(Full::new(body)).expect("request"))
        .await
        .expect("response")
}

/// A Server-Sent Events stream, read event by event.
pub struct Events {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    body: Incoming,
    buf: String,
}

/// One event: its name and data (comments are kept apart).
#[derive(Debug)]
pub struct Event {
    pub name: String,
    pub id: String,
    pub data: String,
    pub comments: Vec<String>,
}

impl Events {
    pub async fn open(addr: SocketAddr, path: &str) -> Self {
        Self::open_with(addr, path, &[]).await
    }

    /// As [`Events::open`], with more request headers.
    pub async fn open_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Self {
        let mut all = vec![("accept", "text/event-stream")];
        all.extend_from_slice(headers);
        let response = open(addr, "GET", path, &all, Bytes::new()).await;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        Self {
            status,
            headers,
            body: response.into_body(),
            buf: String::new(),
        }
    }

    /// The next block up to a blank line (an event or a comment), within
    /// `wait`; `None` when the stream ended.
    pub async fn next_block(&mut self, wait: Duration) -> Option<Event> {
        tokio::time::timeout(wait, async {
            loop {
                if let Some(end) = self.buf.find("\n\n") {
                    let block: String = self.buf.drain(..end + 2).collect();
                    let mut event = Event {
                        name: String::new(),
                        id: String::new(),
                        data: String::new(),
                        comments: Vec::new(),
                    };
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("event:") {
                            event.name = v.trim().to_owned();
                        } else if let Some(v) = line.strip_prefix("id:") {
                            event.id = v.trim().to_owned();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            event.data.push_str(v.trim_start());
                        } else if let Some(v) = line.strip_prefix(':') {
                            event.comments.push(v.to_owned());
                        }
                    }
                    return Some(event);
                }
                match self.body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            self.buf.push_str(&String::from_utf8_lossy(&data));
                        }
                    }
                    _ => return None,
                }
            }
        })
        .await
        .expect("an event in time")
    }

    /// The next event with a name, skipping keep-alive comments.
    pub async fn next_event(&mut self) -> Event {
        loop {
            let e = self
                .next_block(Duration::from_secs(10))
                .await
                .expect("stream open");
            if !e.name.is_empty() {
                return e;
            }
        }
    }
}
