//! The three ways of listing the namespace's ConfigMaps, each checked and
//! then measured alike, per representation (JSON, gzipped JSON, protobuf):
//!
//! 1. the first answers must be right (200, every ConfigMap, the cache's
//!    second answer a `fresh_hit`), else the bench fails;
//! 2. sequential latency: one request after another on one kept-alive
//!    connection, bounded in count and time;
//! 3. throughput under wrk, rounds round-robin over the configurations so
//!    a burst of other load on the shared cores spreads over all of them;
//!    each figure is the median of its rounds. Around each run the bench
//!    reads the apiserver's SelfSubjectAccessReview count, the cache's
//!    fresh hits and the CPU of the cache, etcd and the apiserver.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail};
use bench_support::{
    procs::{self, OtherLoad},
    report,
    wrk::{self, Settings},
};
use http::StatusCode;
use tokio::runtime::Runtime;

use crate::{
    cache::Cache,
    client::{self, Answer, HttpClient},
    setup::Cluster,
};

/// One way to the ConfigMaps.
pub struct Config<'a> {
    pub name: &'static str,
    /// `https://127.0.0.1:PORT` (the apiserver) or `http://…` (a cache).
    pub base: String,
    /// The cache serving it, `None` for the apiserver.
    pub cache: Option<&'a Cache>,
}

/// What the LIST asks for, beside the caller's token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Json,
    Gzip,
    Protobuf,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Json, Variant::Gzip, Variant::Protobuf];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Json => "JSON",
            Variant::Gzip => "JSON, gzip",
            Variant::Protobuf => "protobuf",
        }
    }

    pub fn headers(self) -> Vec<(String, String)> {
        let pairs: &[(&str, &str)] = match self {
            Variant::Json => &[("Accept", "application/json")],
            Variant::Gzip => &[("Accept", "application/json"), ("Accept-Encoding", "gzip")],
            Variant::Protobuf => &[("Accept", "application/vnd.kubernetes.protobuf")],
        };
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    /// Whether `answer` is this representation of a list of `objects`
    /// ConfigMaps. Only JSON is counted item by item; gzip and protobuf
    /// are recognised by their headers and magic bytes, and their size is
    /// compared with the apiserver's own answer by the caller.
    fn check(self, answer: &Answer, objects: usize) -> anyhow::Result<()> {
        if answer.status != StatusCode::OK {
            bail!(
                "answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body[..answer.body.len().min(300)]).trim()
            );
        }
        let content_type = answer.header("content-type");
        match self {
            Variant::Json => {
                if !content_type.starts_with("application/json") {
                    bail!("answered Content-Type {content_type:?}, not JSON");
                }
                let list: serde_json::Value =
                    serde_json::from_slice(&answer.body).context("the body is not JSON")?;
                let items = list["items"].as_array().map_or(0, Vec::len);
                if list["kind"] != "ConfigMapList" || items != objects {
                    bail!(
                        "answered kind {} with {items} items, not a ConfigMapList of {objects}",
                        list["kind"]
                    );
                }
            }
            Variant::Gzip => {
                if answer.header("content-encoding") != "gzip"
                    || !answer.body.starts_with(b"\x1f\x8b")
                {
                    bail!(
                        "answered Content-Encoding {:?}, not a gzipped body",
                        answer.header("content-encoding")
                    );
                }
            }
            Variant::Protobuf => {
                if !content_type.starts_with("application/vnd.kubernetes.protobuf")
                    || !answer.body.starts_with(b"k8s\0")
                {
                    bail!("answered Content-Type {content_type:?}, not Kubernetes protobuf");
                }
            }
        }
        Ok(())
    }
}

pub struct Params {
    /// ConfigMaps in the namespace.
    pub objects: usize,
    /// Sequential requests per configuration and variant: at most this
    /// many, for at most `sequential_budget`.
    pub sequential_count: usize,
    pub sequential_budget: Duration,
    /// The headline (JSON) load, its rounds and warm-up.
    pub settings: Settings,
    pub rounds: usize,
    pub warmup_seconds: u32,
    /// The other representations: the same load, shorter, one round.
    pub other_seconds: u32,
}

/// One wrk run of one configuration.
pub struct Sample {
    pub report: wrk::Report,
    /// SelfSubjectAccessReviews the apiserver answered during the run.
    pub reviews: Option<u64>,
    /// The cache's (fresh hits, all answers) during the run.
    pub served: Option<(u64, u64)>,
    /// CPU seconds of the cache and of etcd + the apiserver over the run.
    pub cache_cpu: Option<f64>,
    pub plane_cpu: f64,
    /// CPU of processes that are not the bench's, % of the machine.
    pub other: f64,
}

/// Everything measured of one configuration in one representation.
pub struct Row {
    pub variant: Variant,
    pub name: &'static str,
    /// Sequential latencies, sorted.
    pub latencies: Vec<Duration>,
    /// SelfSubjectAccessReviews the apiserver answered while they ran.
    pub sequential_reviews: Option<u64>,
    pub samples: Vec<Sample>,
    pub failures: Vec<String>,
}

impl Row {
    fn median(&self, pick: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        let values: Vec<f64> = self.samples.iter().filter_map(pick).collect();
        report::median(&values)
    }

    pub fn requests_per_second(&self) -> Option<f64> {
        self.median(|s| Some(s.report.requests_per_second()))
    }

    pub fn mib_per_second(&self) -> Option<f64> {
        self.median(|s| Some(s.report.mib_per_second()))
    }

    pub fn load_p50_us(&self) -> Option<f64> {
        self.median(|s| Some(s.report.p50_us as f64))
    }

    pub fn load_p99_us(&self) -> Option<f64> {
        self.median(|s| Some(s.report.p99_us as f64))
    }

    pub fn p50(&self) -> Option<Duration> {
        report::percentile(&self.latencies, 50.0)
    }

    pub fn p99(&self) -> Option<Duration> {
        report::percentile(&self.latencies, 99.0)
    }

    /// CPU time per request in microseconds, of what `pick` measures.
    pub fn cpu_us_per_request(&self, pick: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        self.median(|s| {
            pick(s)
                .filter(|_| s.report.requests > 0)
                .map(|seconds| seconds * 1e6 / s.report.requests as f64)
        })
    }

    /// Reviews per sequential request.
    pub fn sequential_reviews_per_request(&self) -> Option<f64> {
        self.sequential_reviews
            .filter(|_| !self.latencies.is_empty())
            .map(|r| r as f64 / self.latencies.len() as f64)
    }

    /// Reviews per request over every wrk run.
    pub fn reviews_per_request(&self) -> Option<f64> {
        let reviews: Option<u64> = self.samples.iter().map(|s| s.reviews).sum();
        let requests: u64 = self.samples.iter().map(|s| s.report.requests).sum();
        reviews
            .filter(|_| requests > 0)
            .map(|r| r as f64 / requests as f64)
    }

    /// Fresh hits among the cache's answers over every run.
    pub fn hit_ratio(&self) -> Option<f64> {
        let (hits, all) = self
            .samples
            .iter()
            .filter_map(|s| s.served)
            .fold((0, 0), |(h, a), (hits, all)| (h + hits, a + all));
        (all > 0).then(|| hits as f64 / all as f64)
    }

    /// Responses outside 2xx/3xx and socket errors over every run.
    pub fn bad_responses(&self) -> (u64, u64) {
        self.samples.iter().fold((0, 0), |(status, socket), s| {
            (
                status + s.report.non_2xx_3xx,
                socket + s.report.socket_errors(),
            )
        })
    }

    /// Whether everything measured went through with good answers only.
    pub fn clean(&self) -> bool {
        self.failures.is_empty()
            && !self.latencies.is_empty()
            && !self.samples.is_empty()
            && self.bad_responses() == (0, 0)
    }
}

/// What every step needs.
pub struct Context<'a> {
    pub rt: &'a Runtime,
    pub dir: &'a Path,
    pub wrk: &'a Path,
    pub client: &'a HttpClient,
    pub cluster: &'a Cluster,
    pub path: &'a str,
}

impl Context<'_> {
    fn auth(&self) -> (String, String) {
        (
            "Authorization".to_owned(),
            format!("Bearer {}", self.cluster.caller_token),
        )
    }
}

/// Checks, then measures, every variant on every configuration.
pub fn run(cx: &Context, configs: &[Config], params: &Params) -> anyhow::Result<Vec<Row>> {
    let hook = wrk::write_hook(cx.dir)?;
    let mut rows = Vec::new();
    for variant in Variant::ALL {
        let mut headers = variant.headers();
        headers.push(cx.auth());
        let expected = check_all(cx, configs, variant, &headers, params.objects)
            .with_context(|| format!("{} before measuring", variant.name()))?;
        println!(
            "  {}: every config answered 200 with the list ({} bytes{}); the caches' second answers were fresh_hit",
            variant.name(),
            expected,
            if variant == Variant::Json {
                format!(", {} items", params.objects)
            } else {
                String::new()
            }
        );
        let mut variant_rows: Vec<Row> = configs
            .iter()
            .map(|config| Row {
                variant,
                name: config.name,
                latencies: Vec::new(),
                sequential_reviews: Some(0),
                samples: Vec::new(),
                failures: Vec::new(),
            })
            .collect();
        let (settings, rounds, warmup) = if variant == Variant::Json {
            (
                params.settings.clone(),
                params.rounds,
                params.warmup_seconds,
            )
        } else {
            (
                Settings {
                    seconds: params.other_seconds,
                    ..params.settings.clone()
                },
                1,
                0,
            )
        };
        sequential(
            cx,
            &mut variant_rows,
            configs,
            &headers,
            params,
            rounds.max(1),
            expected,
        )?;
        if warmup > 0 {
            let warmup = Settings {
                seconds: warmup,
                ..settings.clone()
            };
            for (row, config) in variant_rows.iter_mut().zip(configs) {
                procs::check_interrupted()?;
                let tag = format!("{}-{}-warmup", slug(variant.name()), slug(config.name));
                let url = format!("{}{}", config.base, cx.path);
                if let Err(err) = wrk::run(cx.wrk, &hook, cx.dir, &tag, &warmup, &url, &headers) {
                    row.failures.push(format!("warm-up: {err:#}"));
                }
            }
        }
        for round in 0..rounds {
            for (row, config) in variant_rows.iter_mut().zip(configs) {
                procs::check_interrupted()?;
                let tag = format!("{}-{}-{round}", slug(variant.name()), slug(config.name));
                match one_run(cx, &hook, &tag, &settings, config, &headers) {
                    Ok(sample) => row.samples.push(sample),
                    Err(err) => row.failures.push(format!("{err:#}")),
                }
            }
        }
        rows.extend(variant_rows);
    }
    Ok(rows)
}

/// Sequential latency of every configuration, in `slices` round-robin
/// slices of the count and time budget, so a burst of other load on the
/// shared cores spreads over all of them (as wrk's rounds do), with the
/// reviews the apiserver answered meanwhile.
fn sequential(
    cx: &Context,
    rows: &mut [Row],
    configs: &[Config],
    headers: &[(String, String)],
    params: &Params,
    slices: usize,
    expected: usize,
) -> anyhow::Result<()> {
    for _ in 0..slices {
        for (row, config) in rows.iter_mut().zip(configs) {
            procs::check_interrupted()?;
            if !row.failures.is_empty() {
                continue;
            }
            let url = format!("{}{}", config.base, cx.path);
            let reviews_before = cx.rt.block_on(cx.cluster.access_reviews(cx.client)).ok();
            match cx.rt.block_on(cx.client.sequential(
                &url,
                headers,
                params.sequential_count.div_ceil(slices),
                params.sequential_budget / slices as u32,
                expected,
            )) {
                Ok(took) => row.latencies.extend(took),
                Err(err) => row.failures.push(format!("sequential: {err:#}")),
            }
            let reviews = cx
                .rt
                .block_on(cx.cluster.access_reviews(cx.client))
                .ok()
                .zip(reviews_before)
                .map(|(after, before)| after.saturating_sub(before));
            row.sequential_reviews = row.sequential_reviews.zip(reviews).map(|(a, b)| a + b);
        }
    }
    for row in rows {
        row.latencies.sort();
    }
    Ok(())
}

/// The first answers of every configuration, checked; returns the size of
/// the apiserver's, which the caches' must match within 1%.
fn check_all(
    cx: &Context,
    configs: &[Config],
    variant: Variant,
    headers: &[(String, String)],
    objects: usize,
) -> anyhow::Result<usize> {
    let mut expected = None;
    for config in configs {
        let url = format!("{}{}", config.base, cx.path);
        let answer = cx.rt.block_on(async {
            if config.cache.is_some() {
                // The first fills the entry (a miss, unless an earlier
                // request did); the second must come from the store.
                let first = cx.client.get(&url, headers).await?;
                variant.check(&first, objects).context("first answer")?;
            }
            cx.client.get(&url, headers).await
        })?;
        variant
            .check(&answer, objects)
            .with_context(|| config.name.to_owned())?;
        if config.cache.is_some() {
            let served = answer.header("cluster-relay-cache");
            if served != "fresh_hit" {
                bail!(
                    "{}: the second answer was served {served:?}, not fresh_hit",
                    config.name
                );
            }
        }
        match expected {
            None => expected = Some(answer.body.len()),
            Some(bytes) if !client::about(bytes, answer.body.len()) => bail!(
                "{} answered {} bytes, the first config {bytes}",
                config.name,
                answer.body.len()
            ),
            Some(_) => {}
        }
    }
    expected.context("no configuration to check")
}

fn one_run(
    cx: &Context,
    hook: &Path,
    tag: &str,
    settings: &Settings,
    config: &Config,
    headers: &[(String, String)],
) -> anyhow::Result<Sample> {
    // A failed read leaves its column empty; it does not fail the run.
    let reviews_before = cx.rt.block_on(cx.cluster.access_reviews(cx.client)).ok();
    let served_before = config.cache.and_then(|cache| cache.served().ok());
    let load = OtherLoad::start();
    let cache_before = config
        .cache
        .map(|cache| procs::group_ticks(cache.proc.pid()));
    let plane_before = plane_ticks(cx.cluster);
    let url = format!("{}{}", config.base, cx.path);
    let report = wrk::run(cx.wrk, hook, cx.dir, tag, settings, &url, headers)?;
    let ticks = procs::clock_ticks_per_second();
    let cache_cpu = config.cache.zip(cache_before).map(|(cache, before)| {
        procs::group_ticks(cache.proc.pid()).saturating_sub(before) as f64 / ticks
    });
    let plane_cpu = plane_ticks(cx.cluster).saturating_sub(plane_before) as f64 / ticks;
    let other = load.percent();
    let served = config
        .cache
        .and_then(|cache| cache.served().ok())
        .zip(served_before)
        .map(|((hits, all), (hits0, all0))| (hits.saturating_sub(hits0), all.saturating_sub(all0)));
    let reviews = cx
        .rt
        .block_on(cx.cluster.access_reviews(cx.client))
        .ok()
        .zip(reviews_before)
        .map(|(after, before)| after.saturating_sub(before));
    Ok(Sample {
        report,
        reviews,
        served,
        cache_cpu,
        plane_cpu,
        other,
    })
}

fn plane_ticks(cluster: &Cluster) -> u64 {
    cluster
        .plane_groups
        .iter()
        .map(|&group| procs::group_ticks(group))
        .sum()
}

fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}
