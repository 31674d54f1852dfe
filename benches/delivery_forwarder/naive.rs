//! The baseline: a naive poller of the same API, as a script would write
//! it. Every poll lists the first page without a conditional header, walks
//! further pages until it meets a delivery it has seen, fetches each new
//! delivery's detail, and posts the payload to its target. It spends one
//! list call per page per poll plus one detail call per delivery, whether
//! anything changed or not.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn get(
    client: &HttpClient,
    url: &str,
    token: &str,
) -> anyhow::Result<(Value, Option<String>)> {
    let request = Request::builder()
        .method(Method::GET)
        .uri(url)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::ACCEPT, "application/vnd.github+json")
        .body(Full::new(Bytes::new()))?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request)).await??;
    let next = response
        .headers()
        .get(header::LINK)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Some(v.split_once('<')?.1.split_once('>')?.0.to_owned()));
    let body = response.into_body().collect().await?.to_bytes();
    Ok((serde_json::from_slice(&body)?, next))
}

/// Polls `base`'s hook every `interval` until `stop`, posting each new
/// delivery to `target`.
pub async fn run(
    base: String,
    hooks_path: String,
    token: String,
    target: String,
    interval: Duration,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    // Starts at the newest delivery, like the forwarder.
    let first = format!("{base}{hooks_path}/deliveries?per_page=100");
    let (page, _) = get(&client, &first, &token).await?;
    let mut last_id = page[0]["id"].as_u64().unwrap_or(0);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return Ok(()),
        }
        let mut new = Vec::new();
        let mut url = first.clone();
        'pages: loop {
            let (page, next) = get(&client, &url, &token).await?;
            for item in page.as_array().into_iter().flatten() {
                let id = item["id"].as_u64().unwrap_or(0);
                if id <= last_id {
                    break 'pages;
                }
                new.push(id);
            }
            match next {
                Some(next) => url = next,
                None => break,
            }
        }
        for id in new.into_iter().rev() {
            let (detail, _) = get(
                &client,
                &format!("{base}{hooks_path}/deliveries/{id}"),
                &token,
            )
            .await?;
            let body = Bytes::from(detail["request"]["payload"].to_string());
            let request = Request::builder()
                .method(Method::POST)
                .uri(&target)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(body))?;
            let response = client.request(request).await?;
            let _ = response.into_body().collect().await;
            last_id = id;
        }
    }
}
