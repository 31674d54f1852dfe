//! Unit tests of the JSON URL rewrite: GitHub's own shapes (URL templates,
//! nested objects, Enterprise bases), escapes, look-alike hosts, keys,
//! encodings and the derived ETags.

use std::io::Write as _;

use super::*;

fn gh() -> Upstream {
    Upstream::parse("https://api.github.com").unwrap()
}

fn rewrite(body: &str, upstream: &Upstream) -> Option<String> {
    json_urls(body.as_bytes(), upstream, "http://cache:7445").map(|b| String::from_utf8(b).unwrap())
}

fn json_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h
}

#[test]
fn github_repository_urls_and_templates_point_at_the_cache() {
    let body = r#"{
  "id": 1296269,
  "full_name": "octocat/Hello-World",
  "html_url": "https://github.com/octocat/Hello-World",
  "url": "https://api.github.com/repos/octocat/Hello-World",
  "issues_url": "https://api.github.com/repos/octocat/Hello-World/issues{/number}",
  "owner": {"login": "octocat", "url": "https://api.github.com/users/octocat"},
  "search": "https://api.github.com/search/code?q={query}{&page,per_page}",
  "topics": ["https://api.github.com", "x"],
  "uploads": "https://uploads.github.com/repos/octocat/Hello-World/releases/1/assets{?name,label}"
}"#;
    let got = rewrite(body, &gh()).unwrap();
    let value: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(value["url"], "http://cache:7445/repos/octocat/Hello-World");
    assert_eq!(
        value["issues_url"],
        "http://cache:7445/repos/octocat/Hello-World/issues{/number}"
    );
    assert_eq!(value["owner"]["url"], "http://cache:7445/users/octocat");
    assert_eq!(
        value["search"],
        "http://cache:7445/search/code?q={query}{&page,per_page}"
    );
    assert_eq!(value["topics"][0], "http://cache:7445");
    // The web UI and other API hosts are not the upstream.
    assert_eq!(value["html_url"], "https://github.com/octocat/Hello-World");
    assert!(
        value["uploads"]
            .as_str()
            .unwrap()
            .starts_with("https://uploads.github.com/")
    );
    // Only the strings changed: formatting and everything else is kept.
    assert_eq!(
        got.replace("http://cache:7445", "https://api.github.com"),
        body
    );
}

#[test]
fn look_alikes_keys_and_other_ports_are_left_alone() {
    for body in [
        r#"{"url": "https://api.github.com.evil.com/x"}"#,
        r#"{"url": "https://api.github.comx/x"}"#,
        r#"{"url": "https://api.github.com:8443/x"}"#,
        r#"{"url": "http://api.github.com/x"}"#,
        r#"{"url": "see https://api.github.com/x"}"#,
        r#"{"https://api.github.com/x": 1}"#,
        r#"{"https://api.github.com/x" : "api.github.com"}"#,
        r#"["api.github.com"]"#,
        "no json at all, api.github.com",
    ] {
        assert_eq!(rewrite(body, &gh()), None, "{body}");
    }
    // Matching is exact (upstreams write their own base in lower case);
    // the text after the base is kept as it is.
    assert_eq!(
        rewrite(r#"["HTTPS://API.GitHub.com/Repos/A"]"#, &gh()),
        None
    );
    assert_eq!(
        rewrite(r#"["https://api.github.com/Repos/A"]"#, &gh()).as_deref(),
        Some(r#"["http://cache:7445/Repos/A"]"#)
    );
    // An unterminated string: the body is left as it is.
    assert_eq!(rewrite(r#"["https://api.github.com/x"#, &gh()), None);
    assert_eq!(rewrite(r#"["https://api.github.com/x\"#, &gh()), None);
}

#[test]
fn escaped_strings_are_decoded_and_written_back_as_json() {
    let body = r#"{"url":"https:\/\/api.github.com\/repos\/a\/b","title":"say \"https://api.github.com/x\"","n":"https://api.github.com/r\u00e9"}"#;
    let got = rewrite(body, &gh()).unwrap();
    let value: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(value["url"], "http://cache:7445/repos/a/b");
    assert_eq!(value["title"], "say \"https://api.github.com/x\"");
    assert_eq!(value["n"], "http://cache:7445/ré");
}

#[test]
fn enterprise_bases_keep_their_web_and_upload_urls() {
    let ghe = Upstream::parse("https://ghe.example.com/api/v3").unwrap();
    let body = r#"{"url":"https://ghe.example.com/api/v3/repos/o/r","html_url":"https://ghe.example.com/o/r","x":"https://ghe.example.com/api/v3x/y","up":"https://ghe.example.com/api/uploads/repos/o/r","root":"https://ghe.example.com/api/v3"}"#;
    let got = rewrite(body, &ghe).unwrap();
    let value: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(value["url"], "http://cache:7445/repos/o/r");
    assert_eq!(value["root"], "http://cache:7445");
    assert_eq!(value["html_url"], "https://ghe.example.com/o/r");
    assert_eq!(value["x"], "https://ghe.example.com/api/v3x/y");
    assert_eq!(value["up"], "https://ghe.example.com/api/uploads/repos/o/r");
}

#[test]
fn only_readable_json_is_represented_anew() {
    let body = br#"{"url":"https://api.github.com/user"}"#;
    let want = br#"{"url":"http://cache:7445/user"}"#;
    let json = json_headers();
    assert_eq!(
        represent(&json, body, &gh(), "http://cache:7445", 1 << 20),
        Outcome::Rewritten(Bytes::from_static(want))
    );
    let mut vendor = HeaderMap::new();
    vendor.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.github+json"),
    );
    assert!(matches!(
        represent(&vendor, body, &gh(), "http://c", 1 << 20),
        Outcome::Rewritten(_)
    ));
    for other in [
        "text/plain",
        "application/vnd.github.diff",
        "application/octet-stream",
    ] {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(other));
        assert_eq!(
            represent(&h, body, &gh(), "http://c", 1 << 20),
            Outcome::Unchanged,
            "{other}"
        );
    }
    assert_eq!(
        represent(&HeaderMap::new(), body, &gh(), "http://c", 1 << 20),
        Outcome::Unchanged
    );

    // Gzip is decoded, rewritten and served decoded; broken gzip, unknown
    // codings and bodies inflating past the limit are left alone.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body).unwrap();
    let gz = gz.finish().unwrap();
    let mut gzipped = json_headers();
    gzipped.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    assert_eq!(
        represent(&gzipped, &gz, &gh(), "http://cache:7445", 1 << 20),
        Outcome::Rewritten(Bytes::from_static(want))
    );
    assert_eq!(
        represent(&gzipped, &gz, &gh(), "http://cache:7445", body.len() - 1),
        Outcome::Unchanged
    );
    assert_eq!(
        represent(&gzipped, &gz[..gz.len() / 2], &gh(), "http://c", 1 << 20),
        Outcome::Unchanged
    );
    let mut br = json_headers();
    br.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
    assert_eq!(
        represent(&br, body, &gh(), "http://c", 1 << 20),
        Outcome::Unchanged
    );
}

#[test]
fn the_upstream_is_asked_for_codings_the_cache_can_read() {
    let ask = |value: &str| {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(value).unwrap(),
        );
        upstream_accept_encoding(&h)
    };
    let gzip = Some(HeaderValue::from_static("gzip"));
    assert_eq!(ask("gzip, deflate"), gzip);
    assert_eq!(ask("br, gzip, deflate"), gzip);
    assert_eq!(ask("*"), gzip);
    assert_eq!(ask("gzip;q=0, deflate"), None);
    assert_eq!(ask("br"), None);
    assert_eq!(ask("identity"), None);
    assert_eq!(upstream_accept_encoding(&HeaderMap::new()), None);
}

#[test]
fn derived_etags_are_stable_per_base_and_keep_weakness() {
    let strong = HeaderValue::from_static("\"abc\"");
    let weak = HeaderValue::from_static("W/\"abc\"");
    let a = derived_etag(&strong, "http://a:1").unwrap();
    assert_eq!(derived_etag(&strong, "http://a:1").unwrap(), a);
    assert_ne!(derived_etag(&strong, "http://b:1").unwrap(), a);
    assert_ne!(a, strong);
    let a = a.to_str().unwrap();
    assert!(a.starts_with("\"abc-cr") && a.ends_with('"'), "{a}");
    let w = derived_etag(&weak, "http://a:1").unwrap();
    assert!(w.to_str().unwrap().starts_with("W/\"abc-cr"), "{w:?}");
    for bad in ["abc", "\"a\"b\"", "W/abc", ""] {
        assert_eq!(
            derived_etag(&HeaderValue::from_static(bad), "http://a:1"),
            None,
            "{bad}"
        );
    }
}
