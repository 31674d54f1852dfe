//! Turning the flags into working parts: credentials for the forge, the
//! cursor store, and each rule's hooks resolved (or created) on its sources.

use secrecy::SecretString;

use super::{
    Args, TOKEN_ENV,
    auth::{App, Credentials},
    config::{HookRef, Rule},
    cursor::Store,
    github::Api,
    poll::HookJob,
};
use crate::flags::read_token;

pub(super) fn credentials(args: &Args) -> anyhow::Result<Credentials> {
    match (&args.app_id, &args.app_private_key_file, &args.token_file) {
        (Some(_), _, Some(_)) => anyhow::bail!("--app-id and --token-file exclude each other"),
        (Some(app_id), Some(key), None) => {
            let pem = std::fs::read(key).map_err(|err| {
                anyhow::anyhow!("--app-private-key-file {}: {err}", key.display())
            })?;
            let app = App::new(
                app_id.clone(),
                &pem,
                args.installation_id,
                args.token_refresh_before,
            )
            .map_err(|err| anyhow::anyhow!("--app-private-key-file {}: {err}", key.display()))?;
            Ok(Credentials::App(Box::new(app)))
        }
        (Some(_), None, _) => anyhow::bail!("--app-id needs --app-private-key-file"),
        (None, Some(_), _) => anyhow::bail!("--app-private-key-file needs --app-id"),
        (None, None, Some(path)) => Ok(Credentials::Token(read_token(path, "--token-file")?)),
        (None, None, None) => match std::env::var(TOKEN_ENV) {
            Ok(token) if !token.is_empty() => Ok(Credentials::Token(SecretString::from(token))),
            _ => anyhow::bail!(
                "credentials are required: --app-id with --app-private-key-file, --token-file, or {TOKEN_ENV}"
            ),
        },
    }
}

pub(super) async fn store(args: &Args) -> anyhow::Result<Store> {
    match (&args.cursor_configmap, &args.cursor_file) {
        (Some(_), Some(_)) => {
            anyhow::bail!("--cursor-configmap and --cursor-file exclude each other")
        }
        (None, None) => {
            anyhow::bail!("a cursor store is required: --cursor-configmap or --cursor-file")
        }
        (None, Some(path)) => Store::file(path.clone())
            .await
            .map_err(|err| anyhow::anyhow!("--cursor-file: {err}")),
        (Some(name), None) => {
            let (namespace, name) = name
                .split_once('/')
                .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
                .ok_or_else(|| {
                    anyhow::anyhow!("--cursor-configmap {name:?}: not NAMESPACE/NAME")
                })?;
            Store::config_map(args.kube.client().await?, namespace, name, args.api_timeout)
                .await
                .map_err(|err| anyhow::anyhow!("--cursor-configmap: {err}"))
        }
    }
}

/// Finds (or creates) each rule's hook on each of its sources.
pub(super) async fn resolve(api: &Api, rules: &[Rule]) -> anyhow::Result<Vec<HookJob>> {
    let mut jobs: Vec<HookJob> = Vec::new();
    for rule in rules {
        for source in &rule.sources {
            let hook_id = match &rule.hook {
                HookRef::Id(id) => {
                    api.hook(source, *id)
                        .await?
                        .ok_or_else(|| anyhow::anyhow!("{source}: no hook {id}"))?
                        .id
                }
                HookRef::Url {
                    url,
                    create,
                    events,
                } => {
                    let hooks = api.hooks(source).await?;
                    match hooks.iter().find(|h| h.config.url.as_deref() == Some(url)) {
                        Some(hook) => hook.id,
                        None if *create => {
                            let hook = api.create_hook(source, url, events).await?;
                            tracing::info!(%source, hook = hook.id, %url, "hook created");
                            hook.id
                        }
                        None => anyhow::bail!(
                            "{source}: no hook posts to {url} (set create: true to make one)"
                        ),
                    }
                }
            };
            if jobs
                .iter()
                .any(|j| j.source == *source && j.hook_id == hook_id)
            {
                anyhow::bail!(
                    "{source}: hook {hook_id} is named by two rules; one cursor cannot serve two targets"
                );
            }
            jobs.push(HookJob {
                source: source.clone(),
                hook_id,
                target: rule.target.clone(),
            });
        }
    }
    Ok(jobs)
}

pub(super) fn source_names(jobs: &[HookJob]) -> String {
    jobs.iter()
        .map(HookJob::label)
        .collect::<Vec<_>>()
        .join(", ")
}
