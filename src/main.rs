//! The `tollgate` binary: parse the command line, validate the configuration,
//! bind, serve.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser, Subcommand, ValueEnum};

use tokio::net::TcpListener;
use tollgate::config;
use tollgate::engine::{Clock, SystemClock};
use tollgate::envoy::{self, RuleSet, RuleSource};
use tollgate::limiter::Limiter;
use tollgate::plans::SlotRegistry;
use tollgate::server::{Options, Tls};
use tollgate::state::RuntimeState;
use tollgate::storage::Counters;
use tollgate::storage::memory::MemoryStore;
use tollgate::storage::redis::{Failure, RedisStore, SharedCounters};

/// A gRPC rate-limit decision service that enforces SaaS API plans.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gRPC API (and, with --http-listen, the HTTP front door).
    Serve(Box<Serve>),
    /// Validate a configuration file, or a directory of envoyproxy/ratelimit
    /// rule files, and exit (non-zero with `file:line: field: problem`).
    Check {
        /// The file (or rule directory) to check.
        file: PathBuf,
        /// With a rule directory: files may share a domain (MERGE_DOMAIN_CONFIG).
        #[arg(long, env = "MERGE_DOMAIN_CONFIG", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
        envoy_merge_domains: bool,
    },
}

#[derive(Debug, clap::Args)]
struct Serve {
    /// Configuration file; the built-in examples/saas.yaml when absent.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to serve gRPC on; port 0 picks a free one (the log says which).
    /// [default: 127.0.0.1:8081, or GRPC_HOST:GRPC_PORT from the environment]
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// The host of --listen, as envoyproxy/ratelimit reads it.
    #[arg(long, env = "GRPC_HOST", hide = true)]
    grpc_host: Option<String>,
    /// The port of --listen, as envoyproxy/ratelimit reads it.
    #[arg(long, env = "GRPC_PORT", hide = true)]
    grpc_port: Option<u16>,
    /// Also serve HTTP on ADDR: envoyproxy/ratelimit's /json and
    /// /healthcheck; tollgate.v1 as JSON (POST /v1/check, /v1/consume,
    /// /v1/record, admin under /v1/admin/…); GET /v1/watch (Server-Sent
    /// Events); /v1/forward-auth for gateways; and /metrics unless
    /// --metrics-listen is given. [default: off, or HOST:PORT from the
    /// environment when either is set (HOST 0.0.0.0, PORT 8080 by default)]
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    http_listen: Option<SocketAddr>,
    /// The host of --http-listen, as envoyproxy/ratelimit reads it.
    #[arg(long, env = "HOST", hide = true)]
    http_host: Option<String>,
    /// The port of --http-listen, as envoyproxy/ratelimit reads it.
    #[arg(long, env = "PORT", hide = true)]
    http_port: Option<u16>,
    /// Most counters held in memory (at least 1024); expired ones go first,
    /// then the least recently used live ones (counted and logged).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 4_000_000,
        value_parser = parse_max_counters,
        conflicts_with = "max_memory"
    )]
    max_counters: usize,
    /// Memory cap for counters, instead of --max-counters: bytes, or with a
    /// unit (512MiB, 2GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<usize>,
    /// Log format; RUST_LOG sets the level and filters (e.g. debug,
    /// tollgate=trace).
    #[arg(long, env = "LOG_FORMAT", value_enum, ignore_case = true, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// The state file: runtime plan assignments and overrides, and the
    /// counters across a graceful restart. Unused with --store (Redis keeps
    /// them).
    #[arg(long, value_name = "PATH", default_value = "tollgate-state.redb")]
    state: PathBuf,
    /// A file holding the admin API's bearer token (instead of the
    /// TOLLGATE_ADMIN_TOKEN environment variable). Without either, the admin
    /// API refuses every call.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Coalescing interval of WatchQuota consumption updates (e.g. 100ms, 1s).
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = humantime::parse_duration)]
    watch_interval: Duration,
    /// The most WatchQuota streams open at once; more are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "N", default_value_t = tollgate::watch::DEFAULT_MAX_WATCHERS)]
    max_watchers: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics (`:9090` means every
    /// interface).
    #[arg(long, env = "PROMETHEUS_ADDR", value_name = "ADDR", value_parser = parse_addr)]
    metrics_listen: Option<SocketAddr>,
    /// How often counters that changed are written to the state file's
    /// journal: what a crash (kill -9, OOM) can lose at most. 0 writes them
    /// only at a graceful stop. Unused with --store (Redis keeps them).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    journal_interval: Duration,
    /// The longest a graceful shutdown waits for in-flight calls.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Serve gRPC over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Count in Redis, shared by every replica started with the same URL:
    /// redis://[user:password@]host:port[/db], rediss://… (TLS),
    /// redis+cluster://host:port[,host:port…] or rediss+cluster://… (Redis
    /// Cluster); a bare host:port means redis://host:port. Plan assignments
    /// and overrides live there too. Default: in memory.
    #[arg(long, env = "REDIS_URL", value_name = "URL", value_parser = parse_store)]
    store: Option<String>,
    /// The longest a decision waits for Redis.
    #[arg(long, env = "REDIS_TIMEOUT", value_name = "DURATION", default_value = "10ms", value_parser = humantime::parse_duration)]
    store_timeout: Duration,
    /// When Redis does not answer in time: `closed` answers UNAVAILABLE (the
    /// gateway's own failure policy decides), `open` admits the request.
    #[arg(long, value_enum, default_value_t = StoreFailure::Closed)]
    store_failure: StoreFailure,
    #[command(flatten)]
    envoy: EnvoyArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StoreFailure {
    Open,
    Closed,
}

/// Envoy's rate limit service. Each flag also reads the environment variable
/// envoyproxy/ratelimit uses for the same setting.
#[derive(Debug, clap::Args)]
struct EnvoyArgs {
    /// A directory of envoyproxy/ratelimit rule files (*.yaml), served to
    /// Envoy and reloaded when they change. [default: none, or
    /// RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/RUNTIME_APPDIRECTORY from the
    /// environment]
    #[arg(long, value_name = "DIR")]
    envoy_config: Option<PathBuf>,
    /// The root of --envoy-config, as envoyproxy/ratelimit reads it.
    #[arg(long, env = "RUNTIME_ROOT", hide = true)]
    runtime_root: Option<PathBuf>,
    /// Under RUNTIME_ROOT, as envoyproxy/ratelimit reads it.
    #[arg(long, env = "RUNTIME_SUBDIRECTORY", hide = true)]
    runtime_subdirectory: Option<PathBuf>,
    /// Under RUNTIME_SUBDIRECTORY, as envoyproxy/ratelimit reads it.
    #[arg(
        long,
        env = "RUNTIME_APPDIRECTORY",
        hide = true,
        default_value = "config"
    )]
    runtime_appdirectory: PathBuf,
    /// Let several rule files add to one domain.
    #[arg(long, env = "MERGE_DOMAIN_CONFIG", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
    envoy_merge_domains: bool,
    /// Add RateLimit-Limit/-Remaining/-Reset to Envoy's response.
    #[arg(long, env = "LIMIT_RESPONSE_HEADERS_ENABLED", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
    envoy_response_headers: bool,
    /// The name of the limit header.
    #[arg(
        long,
        env = "LIMIT_LIMIT_HEADER",
        value_name = "NAME",
        default_value = "RateLimit-Limit"
    )]
    envoy_limit_header: String,
    /// The name of the remaining header.
    #[arg(
        long,
        env = "LIMIT_REMAINING_HEADER",
        value_name = "NAME",
        default_value = "RateLimit-Remaining"
    )]
    envoy_remaining_header: String,
    /// The name of the reset header.
    #[arg(
        long,
        env = "LIMIT_RESET_HEADER",
        value_name = "NAME",
        default_value = "RateLimit-Reset"
    )]
    envoy_reset_header: String,
    /// Count and report, but never answer OVER_LIMIT to Envoy.
    #[arg(long, env = "SHADOW_MODE", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
    envoy_shadow_mode: bool,
    /// Treat every descriptor as in quota mode.
    #[arg(long, env = "QUOTA_MODE", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
    envoy_quota_mode: bool,
    /// Return dynamic metadata (the request, and the passed descriptors' metadata).
    #[arg(long, env = "RESPONSE_DYNAMIC_METADATA", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
    envoy_dynamic_metadata: bool,
    /// The most descriptors one ShouldRateLimit request may carry; more is
    /// INVALID_ARGUMENT (envoyproxy/ratelimit has no cap).
    #[arg(long, value_name = "N", default_value_t = envoy::DEFAULT_MAX_DESCRIPTORS)]
    envoy_max_descriptors: usize,
    /// The most entries one descriptor may carry; more is INVALID_ARGUMENT.
    #[arg(long, value_name = "N", default_value_t = envoy::DEFAULT_MAX_ENTRIES)]
    envoy_max_entries: usize,
}

impl EnvoyArgs {
    /// The rule directory: --envoy-config, else the reference's
    /// RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/RUNTIME_APPDIRECTORY.
    fn dir(&self) -> Option<PathBuf> {
        self.envoy_config.clone().or_else(|| {
            let root = self.runtime_root.as_ref()?;
            Some(
                root.join(
                    self.runtime_subdirectory
                        .as_deref()
                        .unwrap_or(Path::new("")),
                )
                .join(&self.runtime_appdirectory),
            )
        })
    }

    fn options(&self) -> envoy::Options {
        envoy::Options {
            response_headers: self.envoy_response_headers.then(|| envoy::HeaderNames {
                limit: self.envoy_limit_header.clone(),
                remaining: self.envoy_remaining_header.clone(),
                reset: self.envoy_reset_header.clone(),
            }),
            shadow_mode: self.envoy_shadow_mode,
            quota_mode: self.envoy_quota_mode,
            dynamic_metadata: self.envoy_dynamic_metadata,
            max_descriptors: self.envoy_max_descriptors,
            max_entries: self.envoy_max_entries,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        // Everything is validated and opened before any port is bound.
        let limiter = Arc::new(limiter(&serve, catalog, slots).await?);
        let (listener, options) = bind(&serve, options, &limiter).await?;
        tollgate::server::run(
            listener,
            limiter,
            options,
            tollgate::server::signal::shutdown(),
        )
        .await?;
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
        journal_every: Some(serve.journal_interval),
        tls,
        metrics: None,
        http: None,
        config_path: serve.config.clone(),
        admin_token,
        watch_interval: serve.watch_interval,
        max_watchers: serve.max_watchers,
        drain: serve.drain_timeout,
        envoy_rules: Some(Arc::new(rules)),
        envoy: serve.envoy.options(),
    })
}

/// The limiter: counters in memory (restored from the state file) or in
/// Redis, and the state its admin changes are kept in.
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
            if !serve.journal_interval.is_zero() {
                store.track_changes();
            }
            if let Some(saved) = state.take_counters()? {
                let restored = store.import(&saved, clock.now(), &slots);
                tracing::info!(restored, state.path = %serve.state.display(), "counters restored");
            }
            // After a crash, the journal has what changed since the last flush
            // but one; after a graceful stop it is empty.
            let restored = store.import(&state.journal()?, clock.now(), &slots);
            if restored > 0 {
                tracing::info!(restored, state.path = %serve.state.display(), "counters restored from the journal");
            }
            if !serve.journal_interval.is_zero() {
                // The new journal starts with every live counter, restored
                // ones included; later flushes append what changes.
                state.start_journal(&store.live_rows(clock.now(), &slots))?;
                let _ = store.take_changes(clock.now(), &slots);
            }
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
async fn bind(
    serve: &Serve,
    mut options: Options,
    limiter: &Limiter,
) -> anyhow::Result<(TcpListener, Options)> {
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
    let addr = listener.local_addr()?;
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
    tracing::info!(
        listen = %addr,
        config = %serve.config.as_ref().map_or(config::DEFAULT_NAME.into(), |p| p.display().to_string()),
        plans = limiter.catalog().plans.len(),
        counters.capacity = limiter.counters().memory().map_or(0, MemoryStore::capacity),
        envoy.config = %serve.envoy.dir().as_ref().map_or("none".into(), |p| p.display().to_string()),
        "tollgate listening on {addr}"
    );
    Ok((listener, options))
}

// === impl Serve ===

impl Serve {
    /// --listen, else GRPC_HOST:GRPC_PORT (each defaulting to
    /// 127.0.0.1:8081's part), as envoyproxy/ratelimit reads them.
    fn listen(&self) -> anyhow::Result<SocketAddr> {
        if let Some(addr) = self.listen {
            return Ok(addr);
        }
        let host = self.grpc_host.as_deref().unwrap_or("127.0.0.1");
        let port = self.grpc_port.unwrap_or(8081);
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        addr.parse()
            .with_context(|| format!("GRPC_HOST: expected an IP address, got {host:?}"))
    }
}

impl Serve {
    /// --http-listen, else HOST:PORT when either is set (HOST defaulting to
    /// 0.0.0.0 and PORT to 8080, as envoyproxy/ratelimit's), else none.
    fn http_listen(&self) -> anyhow::Result<Option<SocketAddr>> {
        if let Some(addr) = self.http_listen {
            return Ok(Some(addr));
        }
        if self.http_host.is_none() && self.http_port.is_none() {
            return Ok(None);
        }
        let host = self.http_host.as_deref().unwrap_or("0.0.0.0");
        let port = self.http_port.unwrap_or(8080);
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        addr.parse()
            .map(Some)
            .with_context(|| format!("HOST: expected an IP address, got {host:?}"))
    }

    /// Why the environment opened the HTTP listener, in words, when it did.
    fn http_from_environment(&self) -> Option<String> {
        if self.http_listen.is_some() || (self.http_host.is_none() && self.http_port.is_none()) {
            return None;
        }
        let set = set_vars(&[
            ("HOST", self.http_host.as_deref()),
            ("PORT", self.http_port.map(|p| p.to_string()).as_deref()),
        ]);
        let defaulted = match (&self.http_host, &self.http_port) {
            (None, _) => " (HOST unset: every interface, as envoyproxy/ratelimit)",
            (_, None) => " (PORT unset: 8080, as envoyproxy/ratelimit)",
            _ => "",
        };
        Some(format!("the environment sets {set}{defaulted}"))
    }
}

/// `HOST=0.0.0.0 and PORT=8080`: the variables of `vars` that are set.
fn set_vars(vars: &[(&str, Option<&str>)]) -> String {
    vars.iter()
        .filter_map(|(name, value)| value.map(|v| format!("{name}={v}")))
        .collect::<Vec<_>>()
        .join(" and ")
}

/// `1 plan`, `2 plans`, `1 class`, `3 classes`.
fn count(n: usize, noun: &str) -> String {
    match (n, noun.ends_with('s')) {
        (1, _) => format!("1 {noun}"),
        (_, true) => format!("{n} {noun}es"),
        (_, false) => format!("{n} {noun}s"),
    }
}

/// --max-counters: a count no smaller than the store's minimum.
fn parse_max_counters(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a number of counters, got {s:?}"))?;
    if n < tollgate::storage::memory::MIN_COUNTERS {
        return Err(format!(
            "at least {} (the smallest store tollgate makes), got {n}",
            tollgate::storage::memory::MIN_COUNTERS
        ));
    }
    Ok(n)
}

/// An address, where `:9090` (envoyproxy/ratelimit's PROMETHEUS_ADDR form)
/// means every interface.
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_owned()
    };
    full.parse()
        .map_err(|_| format!("expected HOST:PORT (e.g. 127.0.0.1:9090 or :9090), got {s:?}"))
}

/// --store: a URL, or envoyproxy/ratelimit's REDIS_URL form (a bare
/// `host:port`), which means `redis://host:port`.
fn parse_store(s: &str) -> Result<String, String> {
    Ok(if s.contains("://") {
        s.to_owned()
    } else {
        format!("redis://{s}")
    })
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

/// `1048576`, `512MiB`, `2GiB`, `100MB`.
fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("expected a size such as 512MiB, got {s:?}"))?;
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "KiB" | "K" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" | "M" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" | "G" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?}; use B, KiB, MiB or GiB"
            ));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("size {s:?} is too large"))
}
