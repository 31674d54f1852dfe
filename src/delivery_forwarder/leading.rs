//! The forwarder's `run`: flags validated into parts, then either the
//! one-shot `--replay-dead-letters` or the forwarding itself, which with
//! `--leader-elect` happens only while this replica holds the Lease.
//!
//! Each time it becomes the leader it reads the cursors afresh (another
//! replica, or a replay, may have moved them), resolves the hooks (once;
//! creating one is a write) and starts a loop per hook. When the lease is
//! lost the loops are dropped at once, before anyone else may take over, so
//! two replicas never forward at once; a forward cut short is repeated by
//! the next leader, as after `kill -9`: at most the delivery in flight.

use std::{sync::Arc, time::Duration};

use prometheus::Registry as MetricsRegistry;
use tokio::sync::{Semaphore, watch};

use super::{
    Args,
    config::{self, Rule},
    cursor::DedupBounds,
    forward::{self, Sender},
    github::Api,
    metrics::ForwarderMetrics,
    poll::{HookJob, HookLoop, Settings, Shared},
    replay::{self, Report},
    retry::RetryPolicy,
    setup::{credentials, resolve, source_names, store},
};
use crate::{
    admin::{AdminState, Readiness, ReadinessCheck},
    flags::{as_usize, secret_from_file_or_env},
    leader::{LeaderConfig, LeaderMetrics, Leadership},
    shutdown::Shutdown,
    signature::SECRET_ENV,
    tls::trust_roots,
};

/// How long `--replay-dead-letters` holds the forwarders' Lease at most;
/// the replay stops in time to give it back before then.
const REPLAY_LEASE_HOLD: Duration = Duration::from_secs(15 * 60);

/// Flags that no longer exist, with what replaced them.
fn refuse_removed(args: &Args) -> anyhow::Result<()> {
    if args.max_attempts.is_some() {
        anyhow::bail!(
            "--max-attempts (CLUSTER_RELAY_MAX_ATTEMPTS) was removed: a delivery the target refuses for now is retried with backoff until --retry-max-age after the forge recorded it; remove the flag"
        );
    }
    if args.dedup_size.is_some() {
        anyhow::bail!(
            "--dedup-size (CLUSTER_RELAY_DEDUP_SIZE) was removed: forwarded GUIDs are remembered for --dedup-window, at most --dedup-max-entries; remove the flag"
        );
    }
    Ok(())
}

fn settings(args: &Args) -> anyhow::Result<Settings> {
    if args.dedup_max_entries == 0 || args.max_dead_letters == 0 || args.max_backlog == 0 {
        anyhow::bail!(
            "--dedup-max-entries, --max-dead-letters and --max-backlog must be at least 1"
        );
    }
    for (flag, value) in [
        ("--poll-interval", args.poll_interval),
        ("--retry-initial-backoff", args.retry_initial_backoff),
        ("--retry-max-age", args.retry_max_age),
        ("--dedup-window", args.dedup_window),
    ] {
        if value.is_zero() {
            anyhow::bail!("{flag} must be above 0");
        }
    }
    if args.retry_max_backoff < args.retry_initial_backoff {
        anyhow::bail!("--retry-max-backoff must be at least --retry-initial-backoff");
    }
    Ok(Settings {
        poll_interval: args.poll_interval,
        per_page: args.per_page,
        concurrency: usize::from(args.concurrency),
        retry: RetryPolicy {
            initial: args.retry_initial_backoff,
            max: args.retry_max_backoff,
            max_age: args.retry_max_age,
        },
        dedup: DedupBounds {
            window: args.dedup_window,
            max_entries: args.dedup_max_entries,
        },
        max_dead_letters: args.max_dead_letters,
        max_backlog: args.max_backlog,
        backfill: args.backfill,
    })
}

/// The Lease's namespace when --leader-election-namespace is not given:
/// the cursor ConfigMap's, else the Pod's.
fn lease_namespace(args: &Args) -> String {
    args.cursor_configmap
        .as_deref()
        .and_then(|name| name.split_once('/'))
        .map(|(namespace, _)| namespace.to_owned())
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_default()
}

/// Runs the forwarder until shutdown, or the replay to its end.
pub async fn run(args: Args, shutdown: Shutdown) -> anyhow::Result<()> {
    refuse_removed(&args)?;
    let rules = config::read(&args.config).map_err(|err| anyhow::anyhow!("--config {err}"))?;
    let secret = secret_from_file_or_env(
        args.secret_file.as_ref(),
        "--secret-file",
        SECRET_ENV,
        "the signing secret",
    )?;
    let api_url: http::Uri = args
        .api_url
        .parse()
        .map_err(|err| anyhow::anyhow!("--api-url {:?}: {err}", args.api_url))?;
    if !matches!(api_url.scheme_str(), Some("http" | "https")) || api_url.host().is_none() {
        anyhow::bail!("--api-url {:?}: not an http(s) URL", args.api_url);
    }
    let settings = settings(&args)?;
    let lease = args
        .leader
        .config(&lease_namespace(&args))
        .map_err(|err| match err {
            crate::leader::LeaderConfigError::Empty("leader-election-namespace") => anyhow::anyhow!(
                "--leader-elect needs --leader-election-namespace (or --cursor-configmap, or POD_NAMESPACE)"
            ),
            err => anyhow::anyhow!("{err}"),
        })?;
    let credentials = credentials(&args)?;
    let store = store(&args).await?;
    let max_answer = as_usize(args.max_answer_bytes, "--max-answer-bytes")?;

    let registry = MetricsRegistry::new();
    let readiness = Readiness::default();
    let hooks_ready = readiness.check("hooks");
    let metrics = ForwarderMetrics::new(&registry).with_readiness(readiness.check("dead-letters"));
    let http = forward::http_client(
        trust_roots(&args.ca_files, "--ca-file")?,
        args.api_timeout.max(args.target_timeout),
        args.pool.limits()?,
    )?;
    let api = Api::new(
        &args.api_url,
        http.clone(),
        args.api_timeout,
        max_answer,
        credentials,
        metrics.clone(),
    )?;
    let shared = Arc::new(Shared {
        api,
        sender: Sender::new(http, args.target_timeout, secret),
        store,
        metrics,
        settings,
        permits: Semaphore::new(usize::from(args.concurrency)),
    });
    let client = match &lease {
        Some(_) => Some(args.kube.client().await?),
        None => None,
    };
    if args.replay_dead_letters {
        return replay_all(&shared, &rules, lease.zip(client)).await;
    }

    let leadership = match (lease, client) {
        (Some(lease), Some(client)) => {
            Leadership::elect(client, lease, LeaderMetrics::new(&registry))
        }
        _ => Leadership::always(),
    };
    let _admin = crate::admin::start(
        &args.admin,
        AdminState {
            registry,
            readiness,
            shutdown: shutdown.clone(),
        },
    )?;
    let mut leading = leadership.subscribe();
    let mut jobs = None;
    loop {
        if !*leading.borrow_and_update() {
            hooks_ready.ready("standby: another replica holds the lease");
            tokio::select! {
                changed = leading.wait_for(|leads| *leads) => if changed.is_err() { break },
                _ = shutdown.draining() => break,
            }
        }
        if lead(
            &shared,
            &rules,
            &mut jobs,
            &hooks_ready,
            &mut leading,
            &shutdown,
        )
        .await
        {
            break;
        }
        tracing::warn!("lost the lease: stopped forwarding; standing by");
    }
    // The loops have stopped: hand the lease over at once.
    leadership.release().await;
    Ok(())
}

/// Forwards while this replica leads: reads the cursors, resolves the
/// hooks (retried with backoff: the forge may be unreachable for a while)
/// and runs a loop per hook. True once shutdown has drained (or aborted)
/// the loops; false when the lease was lost and they were dropped.
async fn lead(
    shared: &Arc<Shared>,
    rules: &[Rule],
    jobs: &mut Option<Vec<HookJob>>,
    hooks_ready: &ReadinessCheck,
    leading: &mut watch::Receiver<bool>,
    shutdown: &Shutdown,
) -> bool {
    let lost = |leading: &mut watch::Receiver<bool>| {
        let mut leading = leading.clone();
        async move {
            // An error means the elector is gone: as good as lost.
            let _ = leading.wait_for(|leads| !*leads).await;
        }
    };
    let mut backoff = Duration::from_secs(1);
    let loops = loop {
        let attempt = async {
            shared
                .store
                .reload()
                .await
                .map_err(|err| anyhow::anyhow!("reading the cursors: {err}"))?;
            if jobs.is_none() {
                *jobs = Some(resolve(&shared.api, rules).await?);
            }
            let mut loops = Vec::new();
            for job in jobs.iter().flatten() {
                loops.push(
                    HookLoop::start(job.clone(), shared.clone())
                        .await
                        .map_err(|err| anyhow::anyhow!("{}: {err:#}", job.label()))?,
                );
            }
            anyhow::Ok(loops)
        };
        let attempt = tokio::select! {
            result = attempt => result,
            () = lost(leading) => return false,
            _ = shutdown.draining() => return true,
        };
        match attempt {
            Ok(loops) => break loops,
            Err(err) => {
                hooks_ready.not_ready(format!("{err:#}"));
                tracing::warn!(error = %format!("{err:#}"), retry_in = ?backoff, "cannot start forwarding");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    () = lost(leading) => return false,
                    _ = shutdown.draining() => return true,
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    };
    let names = source_names(jobs.as_deref().unwrap_or_default());
    hooks_ready.ready(names.clone());
    tracing::info!(hooks = %names, "forwarding");

    let mut tasks = tokio::task::JoinSet::new();
    for hook in loops {
        tasks.spawn(hook.run(shutdown.clone()));
    }
    // Each loop returns once draining starts and its in-flight forward
    // (and cursor write) is done; an abort, or losing the lease, cuts that
    // short (dropping the set aborts the loops).
    tokio::select! {
        _ = async { while tasks.join_next().await.is_some() {} } => {
            tracing::info!("drained; cursors stored");
            true
        }
        _ = shutdown.aborted() => {
            tracing::warn!("aborted with forwards in flight; at most those are sent again");
            true
        }
        () = lost(leading) => false,
    }
}

/// `--replay-dead-letters`: with a Lease, seize it first and wait out the
/// renew deadline (after which no forwarder writes), read the cursors
/// afresh, replay, and give the Lease back.
async fn replay_all(
    shared: &Shared,
    rules: &[Rule],
    lease: Option<(LeaderConfig, kube::Client)>,
) -> anyhow::Result<()> {
    let budget = match &lease {
        Some((config, client)) => {
            crate::leader::seize(client.clone(), config, REPLAY_LEASE_HOLD)
                .await
                .map_err(|err| {
                    anyhow::anyhow!(
                        "taking the Lease {}/{}: {err}",
                        config.namespace,
                        config.lease_name
                    )
                })?;
            let wait = config.timings.renew_deadline();
            tracing::info!(lease = %config.lease_name, wait = %humantime::format_duration(wait), "holding the forwarders' Lease; waiting out their renew deadline");
            // The lease protocol's fence: a leader that has not renewed
            // within its renew deadline has stopped writing.
            tokio::time::sleep(wait).await;
            REPLAY_LEASE_HOLD.saturating_sub(wait * 3)
        }
        None => REPLAY_LEASE_HOLD,
    };
    let work = async {
        shared
            .store
            .reload()
            .await
            .map_err(|err| anyhow::anyhow!("reading the cursors: {err}"))?;
        let mut total = Report::default();
        for job in resolve(&shared.api, rules).await? {
            let report = replay::replay_hook(shared, &job)
                .await
                .map_err(|err| anyhow::anyhow!("{}: {err:#}", job.label()))?;
            tracing::info!(hook = %job.label(), %report, "dead letters replayed");
            total += report;
        }
        anyhow::Ok(total)
    };
    let result = tokio::time::timeout(budget, work)
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "the replay took longer than {}; run it again for the rest",
                humantime::format_duration(budget)
            ))
        });
    if let Some((config, client)) = &lease {
        match crate::leader::unseize(client.clone(), config).await {
            Ok(_) => tracing::info!(lease = %config.lease_name, "gave the Lease back"),
            Err(err) => {
                tracing::warn!(error = %err, "cannot give the Lease back; the forwarders take over when it lapses")
            }
        }
    }
    let total = result?;
    println!("{total}");
    if total.left > 0 {
        anyhow::bail!(
            "{} dead letters are left (see the log for why); run --replay-dead-letters again once the target takes them",
            total.left
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(flags: &[&str]) -> Args {
        Cli::try_parse_from(["agent", "--config", "r.yaml"].iter().chain(flags))
            .expect("the flags parse")
            .args
    }

    #[test]
    fn the_forwarder_has_its_own_lease_in_its_cursors_namespace() {
        let args = parse(&["--leader-elect", "--cursor-configmap", "relay/cursors"]);
        let config = args
            .leader
            .config(&lease_namespace(&args))
            .expect("valid")
            .expect("on");
        assert_eq!(config.lease_name, "cluster-relay-delivery-forwarder");
        assert_eq!(config.namespace, "relay");
    }

    #[test]
    fn the_defaults_retry_for_a_day_and_remember_for_three() {
        let settings = settings(&parse(&[])).expect("the defaults are valid");
        assert_eq!(settings.retry.max_age, Duration::from_secs(24 * 3600));
        assert_eq!(settings.dedup.window, Duration::from_secs(72 * 3600));
        assert!(settings.retry.initial < settings.retry.max);
    }

    #[test]
    fn bad_settings_and_removed_flags_name_the_flag() {
        for (flags, says) in [
            (&["--retry-max-age", "0s"][..], "--retry-max-age"),
            (&["--dedup-window", "0s"], "--dedup-window"),
            (&["--dedup-max-entries", "0"], "--dedup-max-entries"),
            (
                &["--retry-initial-backoff", "2m", "--retry-max-backoff", "1m"],
                "--retry-max-backoff",
            ),
        ] {
            let err = settings(&parse(flags)).expect_err("refused").to_string();
            assert!(err.contains(says), "{flags:?}: {err}");
        }
        let err = refuse_removed(&parse(&["--max-attempts", "3"]))
            .expect_err("removed")
            .to_string();
        assert!(err.contains("--retry-max-age"), "{err}");
        assert!(refuse_removed(&parse(&[])).is_ok());
    }
}
