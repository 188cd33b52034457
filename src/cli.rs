//! The `tollgate` binary's command line: every flag, with the environment
//! variable envoyproxy/ratelimit reads for the same setting, and how the
//! listen addresses follow from them. Parsing only; `main.rs` acts on it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser, Subcommand, ValueEnum};
use tollgate::envoy;

/// A gRPC rate-limit decision service that enforces SaaS API plans.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
pub(crate) struct Serve {
    /// Configuration file; the built-in examples/saas.yaml when absent.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Address to serve gRPC on; port 0 picks a free one (the log says which).
    /// [default: 127.0.0.1:8081, or GRPC_HOST:GRPC_PORT from the environment]
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
    /// The host of --listen, as envoyproxy/ratelimit reads it.
    #[arg(long, env = "GRPC_HOST", hide = true)]
    pub(crate) grpc_host: Option<String>,
    /// The port of --listen, as envoyproxy/ratelimit reads it.
    #[arg(long, env = "GRPC_PORT", hide = true)]
    pub(crate) grpc_port: Option<u16>,
    /// Also serve HTTP on ADDR: envoyproxy/ratelimit's /json and
    /// /healthcheck; tollgate.v1 as JSON (POST /v1/check, /v1/consume,
    /// /v1/record, admin under /v1/admin/…); GET /v1/watch (Server-Sent
    /// Events); /v1/forward-auth for gateways; and /metrics unless
    /// --metrics-listen is given. [default: off, or HOST:PORT from the
    /// environment when either is set (HOST 0.0.0.0, PORT 8080 by default)]
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub(crate) http_listen: Option<SocketAddr>,
    /// The host of --http-listen, as envoyproxy/ratelimit reads it.
    #[arg(long, env = "HOST", hide = true)]
    pub(crate) http_host: Option<String>,
    /// The port of --http-listen, as envoyproxy/ratelimit reads it.
    #[arg(long, env = "PORT", hide = true)]
    pub(crate) http_port: Option<u16>,
    /// Most counters held in memory (at least 1024); expired ones go first,
    /// then the least recently used live ones (counted and logged).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 4_000_000,
        value_parser = parse_max_counters,
        conflicts_with = "max_memory"
    )]
    pub(crate) max_counters: usize,
    /// Memory cap for counters, instead of --max-counters: bytes, or with a
    /// unit (512MiB, 2GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) max_memory: Option<usize>,
    /// Log format; RUST_LOG sets the level and filters (e.g. debug,
    /// tollgate=trace).
    #[arg(long, env = "LOG_FORMAT", value_enum, ignore_case = true, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    /// The state file: runtime plan assignments and overrides, and the
    /// counters across a graceful restart. Unused with --store (Redis keeps
    /// them).
    #[arg(long, value_name = "PATH", default_value = "tollgate-state.redb")]
    pub(crate) state: PathBuf,
    /// A file holding the admin API's bearer token (instead of the
    /// TOLLGATE_ADMIN_TOKEN environment variable). Without either, the admin
    /// API refuses every call.
    #[arg(long, value_name = "FILE")]
    pub(crate) admin_token_file: Option<PathBuf>,
    /// Coalescing interval of WatchQuota consumption updates (e.g. 100ms, 1s).
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub(crate) watch_interval: Duration,
    /// The most WatchQuota streams open at once; more are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "N", default_value_t = tollgate::watch::DEFAULT_MAX_WATCHERS)]
    pub(crate) max_watchers: usize,
    /// Counters per slice of the top limited subjects (Admin.TopSubjects):
    /// 1024 hold 12.7 MB; 0 turns the list off.
    #[arg(long, value_name = "N", default_value_t = tollgate::insight::top::DEFAULT_CAPACITY)]
    pub(crate) top_subjects: usize,
    /// How long hourly usage rollups are kept (Admin.ExportUsage). With
    /// --usage-daily-retention 0 too, no usage is kept at all.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub(crate) usage_hourly_retention: Duration,
    /// How long daily usage rollups are kept, hence months.
    #[arg(long, value_name = "DURATION", default_value = "400d", value_parser = humantime::parse_duration)]
    pub(crate) usage_daily_retention: Duration,
    /// Export a span per decision, over OTLP/gRPC, to this collector (e.g.
    /// http://otel-collector:4317). OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
    /// OTEL_EXPORTER_OTLP_ENDPOINT set it too; OTEL_TRACES_SAMPLER_ARG is the
    /// ratio of requests without a sampled traceparent that are traced
    /// (default 1). Unset: no traces, and nothing spent on them.
    #[arg(long, value_name = "URL")]
    pub(crate) otlp_endpoint: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (`:9090` means every
    /// interface).
    #[arg(long, env = "PROMETHEUS_ADDR", value_name = "ADDR", value_parser = parse_addr)]
    pub(crate) metrics_listen: Option<SocketAddr>,
    /// How often counters that changed are written to the state file's
    /// journal: what a crash (kill -9, OOM) can lose at most. 0 writes them
    /// only at a graceful stop. With --store (Redis keeps counters), how
    /// often usage rollups are added to Redis.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub(crate) journal_interval: Duration,
    /// The longest a graceful shutdown waits for in-flight calls.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) drain_timeout: Duration,
    /// Serve gRPC over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_client_ca: Option<PathBuf>,
    /// Count in Redis, shared by every replica started with the same URL:
    /// redis://[user:password@]host:port[/db], rediss://… (TLS),
    /// redis+cluster://host:port[,host:port…] or rediss+cluster://… (Redis
    /// Cluster); a bare host:port means redis://host:port. Plan assignments
    /// and overrides live there too. Default: in memory.
    #[arg(long, env = "REDIS_URL", value_name = "URL", value_parser = parse_store)]
    pub(crate) store: Option<String>,
    /// The longest a decision's script call may take in Redis, from sent to
    /// answered (time queued in tollgate is not counted); a caller's own
    /// grpc-timeout bounds the whole decision too.
    #[arg(long, env = "REDIS_TIMEOUT", value_name = "DURATION", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub(crate) store_timeout: Duration,
    /// When Redis does not answer in time: `closed` answers UNAVAILABLE (the
    /// gateway's own failure policy decides), `open` admits the request.
    #[arg(long, value_enum, default_value_t = StoreFailure::Closed)]
    pub(crate) store_failure: StoreFailure,
    /// The most connections open at once on each listener (gRPC, HTTP,
    /// metrics); one more is accepted and closed at once. Keep it under the
    /// process's open-file limit (`ulimit -n`).
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_connections: u32,
    /// The most concurrent calls (HTTP/2 streams) per gRPC connection; a
    /// client past it waits for a call to end (its HTTP/2 library queues).
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_concurrent_streams: u32,
    /// How long an HTTP client has to send a request's head (request line
    /// and headers); then the connection is closed.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) header_read_timeout: Duration,
    /// How long an HTTP client has to send a request's body once its head is
    /// in; then it is answered 408 and the connection closed.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) body_read_timeout: Duration,
    /// How long a gRPC client has to send the HTTP/2 connection preface (the
    /// TLS handshake included, with TLS); then the connection is closed. A
    /// duration, as the other timeouts.
    // TIME, not DURATION: the longest flag sets the help's layout, and one
    // this long would push every description onto its own line.
    #[arg(long, value_name = "TIME", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) http2_preface_timeout: Duration,
    #[command(flatten)]
    pub(crate) envoy: EnvoyArgs,
}

impl Serve {
    /// Every listener's caps and timeouts.
    pub(crate) fn limits(&self) -> tollgate::listen::Limits {
        tollgate::listen::Limits {
            max_connections: self.max_connections as usize,
            header_read_timeout: self.header_read_timeout,
            body_read_timeout: self.body_read_timeout,
            http2_preface_timeout: self.http2_preface_timeout,
            max_concurrent_streams: self.max_concurrent_streams,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum StoreFailure {
    Open,
    Closed,
}

/// Envoy's rate limit service. Each flag also reads the environment variable
/// envoyproxy/ratelimit uses for the same setting.
#[derive(Debug, clap::Args)]
pub(crate) struct EnvoyArgs {
    /// A directory of envoyproxy/ratelimit rule files (*.yaml), served to
    /// Envoy and reloaded when they change. [default: none, or
    /// RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/RUNTIME_APPDIRECTORY from the
    /// environment]
    #[arg(long, value_name = "DIR")]
    pub(crate) envoy_config: Option<PathBuf>,
    /// The root of --envoy-config, as envoyproxy/ratelimit reads it.
    #[arg(long, env = "RUNTIME_ROOT", hide = true)]
    pub(crate) runtime_root: Option<PathBuf>,
    /// Under RUNTIME_ROOT, as envoyproxy/ratelimit reads it.
    #[arg(long, env = "RUNTIME_SUBDIRECTORY", hide = true)]
    pub(crate) runtime_subdirectory: Option<PathBuf>,
    /// Under RUNTIME_SUBDIRECTORY, as envoyproxy/ratelimit reads it.
    #[arg(
        long,
        env = "RUNTIME_APPDIRECTORY",
        hide = true,
        default_value = "config"
    )]
    pub(crate) runtime_appdirectory: PathBuf,
    /// Let several rule files add to one domain.
    #[arg(long, env = "MERGE_DOMAIN_CONFIG", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub(crate) envoy_merge_domains: bool,
    /// Add RateLimit-Limit/-Remaining/-Reset to Envoy's response.
    #[arg(long, env = "LIMIT_RESPONSE_HEADERS_ENABLED", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub(crate) envoy_response_headers: bool,
    /// The name of the limit header.
    #[arg(
        long,
        env = "LIMIT_LIMIT_HEADER",
        value_name = "NAME",
        default_value = "RateLimit-Limit"
    )]
    pub(crate) envoy_limit_header: String,
    /// The name of the remaining header.
    #[arg(
        long,
        env = "LIMIT_REMAINING_HEADER",
        value_name = "NAME",
        default_value = "RateLimit-Remaining"
    )]
    pub(crate) envoy_remaining_header: String,
    /// The name of the reset header.
    #[arg(
        long,
        env = "LIMIT_RESET_HEADER",
        value_name = "NAME",
        default_value = "RateLimit-Reset"
    )]
    pub(crate) envoy_reset_header: String,
    /// Count and report, but never answer OVER_LIMIT to Envoy.
    #[arg(long, env = "SHADOW_MODE", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub(crate) envoy_shadow_mode: bool,
    /// Treat every descriptor as in quota mode.
    #[arg(long, env = "QUOTA_MODE", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub(crate) envoy_quota_mode: bool,
    /// Return dynamic metadata (the request, and the passed descriptors' metadata).
    #[arg(long, env = "RESPONSE_DYNAMIC_METADATA", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub(crate) envoy_dynamic_metadata: bool,
    /// The most descriptors one ShouldRateLimit request may carry; more is
    /// INVALID_ARGUMENT (envoyproxy/ratelimit has no cap).
    #[arg(long, value_name = "N", default_value_t = envoy::DEFAULT_MAX_DESCRIPTORS)]
    pub(crate) envoy_max_descriptors: usize,
    /// The most entries one descriptor may carry; more is INVALID_ARGUMENT.
    #[arg(long, value_name = "N", default_value_t = envoy::DEFAULT_MAX_ENTRIES)]
    pub(crate) envoy_max_entries: usize,
}

impl EnvoyArgs {
    /// The rule directory: --envoy-config, else the reference's
    /// RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/RUNTIME_APPDIRECTORY.
    pub(crate) fn dir(&self) -> Option<PathBuf> {
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

    pub(crate) fn options(&self) -> envoy::Options {
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
pub(crate) enum LogFormat {
    Text,
    Json,
}

impl Serve {
    /// --listen, else GRPC_HOST:GRPC_PORT (each defaulting to
    /// 127.0.0.1:8081's part), as envoyproxy/ratelimit reads them.
    pub(crate) fn listen(&self) -> anyhow::Result<SocketAddr> {
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
    pub(crate) fn http_listen(&self) -> anyhow::Result<Option<SocketAddr>> {
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
    pub(crate) fn http_from_environment(&self) -> Option<String> {
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
pub(crate) fn set_vars(vars: &[(&str, Option<&str>)]) -> String {
    vars.iter()
        .filter_map(|(name, value)| value.map(|v| format!("{name}={v}")))
        .collect::<Vec<_>>()
        .join(" and ")
}

/// --max-counters: a count no smaller than the store's minimum.
pub(crate) fn parse_max_counters(s: &str) -> Result<usize, String> {
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
pub(crate) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
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
pub(crate) fn parse_store(s: &str) -> Result<String, String> {
    Ok(if s.contains("://") {
        s.to_owned()
    } else {
        format!("redis://{s}")
    })
}

/// `1048576`, `512MiB`, `2GiB`, `100MB`.
pub(crate) fn parse_size(s: &str) -> Result<usize, String> {
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
