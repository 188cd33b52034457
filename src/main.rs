//! The `tollgate` binary: parse the command line, validate the configuration,
//! bind, serve.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tollgate::config;
use tollgate::engine::SystemClock;
use tollgate::envoy::{RuleSet, RuleSource};
use tollgate::insight::usage::Retention;
use tollgate::limiter::Limiter;
use tollgate::otel::Traces;
use tollgate::persist::Persistence;
use tollgate::plans::SlotRegistry;
use tollgate::server::{Options, Tls};
use tollgate::state::RuntimeState;
use tollgate::storage::Counters;
use tollgate::storage::memory::MemoryStore;
use tollgate::storage::redis::{Failure, RedisStore, SharedCounters};

use cli::{Cli, Command, LogFormat, Serve, StoreFailure, set_vars};

mod cli;

/// mimalloc: a decision allocates a dozen small strings and frees them when
/// its answer is sent, on whichever worker; glibc's malloc spent about 8% of
/// a Consume call in `malloc`/`free`/`malloc_consolidate` (perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            file,
            envoy_merge_domains,
        } if file.is_dir() => {
            match RuleSet::load_dir(&file, envoy_merge_domains, &SlotRegistry::default()) {
                Ok(rules) => {
                    let _ = writeln!(
                        std::io::stdout(),
                        "{}: ok ({})",
                        file.display(),
                        count(rules.domains(), "envoy domain")
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    let _ = writeln!(std::io::stderr(), "{e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Check { file, .. } => match config::load(&file, &SlotRegistry::default()) {
            Ok(catalog) => {
                let mut out = std::io::stdout();
                let _ = writeln!(
                    out,
                    "{}: ok ({}, {})",
                    file.display(),
                    count(catalog.plans.len(), "plan"),
                    count(catalog.class_names.len(), "class")
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "{e}");
                ExitCode::from(1)
            }
        },
        Command::Serve(serve) => {
            init_tracing(serve.log_format);
            match run(*serve) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let _ = writeln!(std::io::stderr(), "tollgate: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn run(serve: Serve) -> anyhow::Result<()> {
    let slots = Arc::new(SlotRegistry::default());
    let catalog = match &serve.config {
        Some(path) => config::load(path, &slots)?,
        None => config::parse(config::DEFAULT_NAME, config::DEFAULT, &slots)?,
    };
    let rules = RuleSource::load(
        serve.envoy.dir(),
        serve.envoy.envoy_merge_domains,
        slots.clone(),
    )?;
    let options = options(&serve, rules)?;
    let traced = tollgate::otel::Settings::from_env(serve.otlp_endpoint.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        // Everything is validated and opened before any port is bound.
        let mut limiter = limiter(&serve, catalog, slots).await?;
        let (listener, mut options) = bind(&serve, options).await?;
        // Started last (nothing can fail after it but serving): the
        // exporter's connection lives on this runtime, and its provider
        // blocks when dropped.
        let traces = traced.map(Traces::start).transpose()?.map(Arc::new);
        if let Some(traces) = &traces {
            let settings = traces.settings();
            tracing::info!(endpoint = %settings.endpoint, ratio = settings.ratio, "exporting a span per decision over OTLP");
            options.consumers.push(traces.clone());
            limiter = limiter.timing_the_store();
        }
        let served = tollgate::server::run(
            listener,
            Arc::new(limiter),
            options,
            tollgate::server::signal::shutdown(),
        )
        .await;
        if let Some(traces) = traces {
            // The last batch, while the runtime still runs its connection.
            tokio::task::spawn_blocking(move || traces.shutdown()).await?;
        }
        served?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// The server's options from the command line, files read.
fn options(serve: &Serve, rules: RuleSource) -> anyhow::Result<Options> {
    let admin_token = match &serve.admin_token_file {
        Some(file) => {
            let token = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the admin token file {}", file.display()))?
                .trim()
                .to_owned();
            // An empty file is a mistake, not a wish to disable admin: that
            // is what leaving out the flag does.
            anyhow::ensure!(
                !token.is_empty(),
                "the admin token file {} is empty; put the token in it, or leave out --admin-token-file to disable the admin API",
                file.display()
            );
            Some(token)
        }
        None => std::env::var("TOLLGATE_ADMIN_TOKEN").ok(),
    }
    .filter(|t| !t.is_empty());
    if admin_token.is_none() {
        tracing::info!(
            "admin API disabled: set TOLLGATE_ADMIN_TOKEN or --admin-token-file to enable it"
        );
    }
    let read =
        |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let tls = match (&serve.tls_cert, &serve.tls_key) {
        (Some(cert), Some(key)) => Some(Tls {
            cert: read(cert)?,
            key: read(key)?,
            client_ca: serve.tls_client_ca.as_ref().map(read).transpose()?,
        }),
        _ => None,
    };
    Ok(Options {
        persist: serve
            .store
            .is_none()
            .then(|| Persistence::beside(&serve.state, Some(serve.journal_interval))),
        tls,
        metrics: None,
        http: None,
        config_path: serve.config.clone(),
        admin_token,
        watch_interval: serve.watch_interval,
        max_watchers: serve.max_watchers,
        top_subjects: serve.top_subjects,
        drain: serve.drain_timeout,
        envoy_rules: Some(Arc::new(rules)),
        envoy: serve.envoy.options(),
        limits: serve.limits(),
        consumers: Vec::new(),
        usage_flush: serve.journal_interval,
        usage_retention: match (serve.usage_hourly_retention, serve.usage_daily_retention) {
            (std::time::Duration::ZERO, std::time::Duration::ZERO) => None,
            (hourly, daily) => Some(Retention { hourly, daily }),
        },
    })
}

/// The limiter: counters in memory (restored by the server, see
/// `tollgate::persist`) or in Redis, and the state its admin changes are
/// kept in.
async fn limiter(
    serve: &Serve,
    catalog: tollgate::plans::Catalog,
    slots: Arc<SlotRegistry>,
) -> anyhow::Result<Limiter> {
    let clock = Arc::new(SystemClock);
    let (counters, state): (Counters, RuntimeState) = match &serve.store {
        Some(url) => {
            let redis = RedisStore::connect(url, serve.store_timeout).await?;
            tracing::info!(store = %redis.url(), timeout = ?serve.store_timeout, failure = ?serve.store_failure, "counting in redis");
            for name in tollgate::storage::redis::imprecise_limits(&catalog) {
                tracing::warn!(limit = %name, "amount × window in ms passes 2^53: Redis counts it with rounding");
            }
            let failure = match serve.store_failure {
                StoreFailure::Open => Failure::Open,
                StoreFailure::Closed => Failure::Closed,
            };
            let shared = SharedCounters::new(redis.clone(), failure);
            // Assignments and overrides live in Redis too; no state file.
            let state = RuntimeState::shared(redis, shared.replica.clone());
            (shared.into(), state)
        }
        None => {
            let store = match serve.max_memory {
                Some(bytes) => {
                    use tollgate::storage::memory::{BYTES_PER_COUNTER, MIN_COUNTERS};
                    anyhow::ensure!(
                        bytes / BYTES_PER_COUNTER >= MIN_COUNTERS,
                        "--max-memory: at least {} bytes ({MIN_COUNTERS} counters of about {BYTES_PER_COUNTER} bytes), got {bytes}",
                        MIN_COUNTERS * BYTES_PER_COUNTER
                    );
                    MemoryStore::with_memory(bytes)
                }
                None => MemoryStore::new(serve.max_counters),
            };
            let state = RuntimeState::open(&serve.state)?;
            (store.into(), state)
        }
    };
    Ok(Limiter::with_state(
        counters,
        catalog,
        slots,
        clock,
        Arc::new(state),
    ))
}

/// Binds the gRPC listener (and the metrics one, if asked for).
async fn bind(serve: &Serve, mut options: Options) -> anyhow::Result<(TcpListener, Options)> {
    let listen = serve.listen()?;
    if serve.listen.is_none() && (serve.grpc_host.is_some() || serve.grpc_port.is_some()) {
        tracing::info!(
            "gRPC listens on {listen} because the environment sets {}",
            set_vars(&[
                ("GRPC_HOST", serve.grpc_host.as_deref()),
                (
                    "GRPC_PORT",
                    serve.grpc_port.map(|p| p.to_string()).as_deref()
                ),
            ])
        );
    }
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    if let Some(metrics_addr) = serve.metrics_listen {
        let metrics = TcpListener::bind(metrics_addr)
            .await
            .with_context(|| format!("cannot listen on {metrics_addr} for metrics"))?;
        tracing::info!("metrics on http://{}/metrics", metrics.local_addr()?);
        options.metrics = Some(metrics);
    }
    if let Some(http_addr) = serve.http_listen()? {
        let http = TcpListener::bind(http_addr)
            .await
            .with_context(|| format!("cannot listen on {http_addr} for http"))?;
        tracing::info!("http on http://{}", http.local_addr()?);
        if let Some(why) = serve.http_from_environment() {
            tracing::warn!(
                "the HTTP listener (admin routes included) is open on {http_addr} because {why}; \
                 pass --http-listen to choose its address, or unset HOST and PORT"
            );
        }
        options.http = Some(http);
    }
    Ok((listener, options))
}

/// `1 plan`, `2 plans`, `1 class`, `3 classes`.
fn count(n: usize, noun: &str) -> String {
    match (n, noun.ends_with('s')) {
        (1, _) => format!("1 {noun}"),
        (_, true) => format!("{n} {noun}es"),
        (_, false) => format!("{n} {noun}s"),
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
