//! The `gpusiem` command.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gpusiem::config::Config;

#[derive(Parser)]
#[command(name = "gpusiem", version, about = "SIEM correlation and anomaly detection for GPU clusters on Kubernetes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (embedded defaults without --config: ./data, 127.0.0.1:8080).
    Run {
        /// Configuration file (gpusiem.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address; overrides server.listen.
        #[arg(long)]
        listen: Option<String>,
        /// Data directory; overrides server.data_dir.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Run the pipeline over recorded files, in event-time order across them.
    Replay {
        /// dcgm-exporter Prometheus text (optional millisecond sample timestamps).
        #[arg(long)]
        dcgm: Option<PathBuf>,
        /// Falco JSON alerts (one object, JSON lines or an array).
        #[arg(long)]
        falco: Option<PathBuf>,
        /// Kubernetes audit events (Event/EventList, JSON lines, AKS/GKE envelopes).
        #[arg(long)]
        audit: Option<PathBuf>,
        /// Configuration (inventory matchers, detectors, sinks and notifiers).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Write findings as JSON lines here instead of stdout.
        #[arg(long)]
        findings: Option<PathBuf>,
        /// Write quarantined records to DIR/quarantine.jsonl instead of logging them.
        #[arg(long, value_name = "DIR")]
        quarantine: Option<PathBuf>,
    },
    /// Validate a configuration file; prints every error with its path.
    CheckConfig {
        /// The file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .json()
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Config::load(p).map_err(|e| anyhow::anyhow!("{}: {}", p.display(), e)),
        None => Ok(Config::default()),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config, listen, data } => {
            let mut config = load_config(config.as_ref())?;
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            if let Some(data) = data {
                config.server.data_dir = data;
            }
            runtime()?.block_on(async {
                let running = gpusiem::service::start(config).await?;
                // The bound address on stdout lets scripts (and tests) use port 0.
                println!("{{\"listening\":\"{}\"}}", running.addr);
                std::io::stdout().flush().ok();
                let stop = running.shutdown.clone();
                tokio::select! {
                    () = gpusiem::service::signal() => stop.cancel(),
                    () = stop.cancelled() => {}
                }
                running.done.await.context("service task")??;
                Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
            })
        }
        Command::Replay { dcgm, falco, audit, config, findings, quarantine } => {
            let config = load_config(config.as_ref())?;
            let problems = config.validate();
            if !problems.is_empty() {
                return Err(gpusiem::Error::Config(problems).into());
            }
            let input = gpusiem::replay::ReplayInput { dcgm, falco, audit, quarantine_dir: quarantine };
            let out = runtime()?.block_on(gpusiem::replay::replay(&input, &config))?;
            let mut sink: Box<dyn Write> = match &findings {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            for f in &out.findings {
                writeln!(sink, "{}", f.to_json()).context("writing findings")?;
            }
            sink.flush().context("writing findings")?;
            eprintln!("{}", serde_json::to_string(&out.summary).context("summary")?);
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => {
            let config = match Config::load(&file) {
                Ok(c) => c,
                Err(e) => {
                    println!("{}: {}", file.display(), e);
                    return Ok(ExitCode::FAILURE);
                }
            };
            let problems = config.validate();
            for p in &problems {
                println!("{}: {}", file.display(), p);
            }
            if problems.is_empty() {
                println!("{}: ok", file.display());
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::FAILURE)
            }
        }
    }
}
