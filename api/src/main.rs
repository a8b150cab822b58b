//! The `gpusiem` command.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gpusiem::config::Config;

#[derive(Parser)]
#[command(
    name = "gpusiem",
    version,
    about = "SIEM correlation and anomaly detection for GPU clusters on Kubernetes"
)]
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
    /// Work with Sigma rule directories.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Read-only SQL over the stored tables (every table and namespace: whoever can read the
    /// data directory can read its files anyway). Safe while `gpusiem run` writes to it.
    Query {
        /// Data directory; default: server.data_dir of --config, else ./data.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Configuration file (its [query] limits and server.data_dir).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = QueryFormat::Table)]
        format: QueryFormat,
        /// One SQL query.
        sql: String,
    },
    /// Benchmarks that print their figures.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Parse and lint every rule under DIR (with the built-in pack, so correlations may refer
    /// to it); prints every problem as file:line: message.
    Check {
        /// Rule directory.
        dir: PathBuf,
    },
    /// Run every `<rule>.test.yml` under DIR (and the built-in pack's own tests): fixture events
    /// in, expected matches and findings out.
    Test {
        /// Rule directory.
        dir: PathBuf,
    },
}

/// `gpusiem query --format`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum QueryFormat {
    /// An ASCII table.
    Table,
    /// A JSON array of objects.
    Json,
    /// CSV with a header line.
    Csv,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The SIEM query suite over N findings stored as Parquet, against DuckDB on the same
    /// files (api/benches/duckdb_suite.py makes its own venv); prints a table of timings.
    Query(bench_query::Args),
    /// Run the streaming anomaly scorer over the Numenta Anomaly Benchmark corpus, writing
    /// OUT/<category>/gpusiem_<file>.csv (timestamp,value,anomaly_score).
    Nab {
        /// NAB's data directory (the folder holding realKnownCause/, artificialWithAnomaly/, …).
        #[arg(long)]
        data: PathBuf,
        /// Where the result CSVs go.
        #[arg(long)]
        out: PathBuf,
        /// Also score the results the NAB way and print the three profile scores.
        #[arg(long)]
        score: bool,
        /// NAB's combined_windows.json (default: DATA/../labels/combined_windows.json).
        #[arg(long)]
        labels: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
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

fn rules(command: RulesCommand) -> anyhow::Result<ExitCode> {
    use gpusiem_detect::rules::{RuleSet, RulesConfig, testing};
    let dir = match &command {
        RulesCommand::Check { dir } | RulesCommand::Test { dir } => dir.clone(),
    };
    let config = RulesConfig {
        dirs: vec![dir.clone()],
        ..RulesConfig::default()
    };
    let set = match RuleSet::load(&config) {
        Ok(set) => set,
        Err(errors) => {
            for e in errors {
                println!("{e}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    if let RulesCommand::Check { .. } = command {
        let own = set
            .rules()
            .iter()
            .filter(|r| !r.origin.0.starts_with("builtin:"))
            .count();
        println!(
            "{}: {own} rules ok ({} with the built-in pack)",
            dir.display(),
            set.rules().len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut tests: Vec<(String, String)> = gpusiem_detect::rules::pack::FILES
        .iter()
        .map(|(name, _, test)| (format!("builtin:{name}.test.yml"), test.to_string()))
        .collect();
    let mut files = Vec::new();
    collect_tests(&dir, &mut files)?;
    files.sort();
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        tests.push((f.display().to_string(), text));
    }
    let (mut passed, mut failed) = (0, 0);
    for (file, text) in &tests {
        let failures = match testing::parse(file, text) {
            Ok(t) => testing::run(&t, &set, &config).failures,
            Err(e) => vec![e],
        };
        if failures.is_empty() {
            passed += 1;
        } else {
            failed += 1;
            for f in failures {
                println!("FAIL {f}");
            }
        }
    }
    println!("{passed} rule tests passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn collect_tests(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_tests(&path, out)?;
        } else if path.file_name().is_some_and(|n| {
            n.to_string_lossy().ends_with(".test.yml")
                || n.to_string_lossy().ends_with(".test.yaml")
        }) {
            out.push(path);
        }
    }
    Ok(())
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Config::load(p).map_err(|e| anyhow::anyhow!("{}: {}", p.display(), e)),
        None => Ok(Config::default()),
    }
}

#[path = "bench/query.rs"]
mod bench_query;

/// `gpusiem query`: exit 0 with the rows on stdout, 2 when the query is refused or fails.
fn query(
    data: Option<PathBuf>,
    config: Option<&PathBuf>,
    format: QueryFormat,
    sql: &str,
) -> anyhow::Result<ExitCode> {
    use gpusiem::query::{NamespaceScope, OutputFormat, QueryEngine};
    let config = load_config(config)?;
    let data = data.unwrap_or_else(|| config.server.data_dir.clone());
    let format = match format {
        QueryFormat::Table => OutputFormat::Table,
        QueryFormat::Json => OutputFormat::Json,
        QueryFormat::Csv => OutputFormat::Csv,
    };
    runtime()?.block_on(async {
        let store = gpusiem::store::Store::open_read_only(&data).await?;
        let engine = QueryEngine::new(store, config.query.clone());
        match engine.sql_as_admin(sql, &NamespaceScope::all()).await {
            Ok(out) => {
                let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
                out.write(format, &mut stdout)?;
                stdout.flush().context("writing the result")?;
                if out.truncated {
                    eprintln!("result truncated at {} rows / {} bytes ([query] max_rows, max_result_bytes)", out.rows, out.bytes);
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("error: {e}");
                Ok(ExitCode::from(2))
            }
        }
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run {
            config,
            listen,
            data,
        } => {
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
        Command::Replay {
            dcgm,
            falco,
            audit,
            config,
            findings,
            quarantine,
        } => {
            let config = load_config(config.as_ref())?;
            let problems = config.validate();
            if !problems.is_empty() {
                return Err(gpusiem::Error::Config(problems).into());
            }
            let input = gpusiem::replay::ReplayInput {
                dcgm,
                falco,
                audit,
                quarantine_dir: quarantine,
            };
            let out = runtime()?.block_on(gpusiem::replay::replay(&input, &config))?;
            let mut sink: Box<dyn Write> = match &findings {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p)
                        .with_context(|| format!("creating {}", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            for f in &out.findings {
                writeln!(sink, "{}", f.to_json()).context("writing findings")?;
            }
            sink.flush().context("writing findings")?;
            eprintln!(
                "{}",
                serde_json::to_string(&out.summary).context("summary")?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Query {
            data,
            config,
            format,
            sql,
        } => query(data, config.as_ref(), format, &sql),
        Command::Bench {
            command: BenchCommand::Query(args),
        } => runtime()?.block_on(bench_query::run(args)),
        Command::Rules { command } => rules(command),
        Command::Bench {
            command:
                BenchCommand::Nab {
                    data,
                    out,
                    score,
                    labels,
                },
        } => {
            use gpusiem_detect::nab;
            let config = gpusiem_detect::score::ScorerConfig::default();
            let started = std::time::Instant::now();
            let results = nab::run_corpus(&data, Some(&out), &config)?;
            let rows: usize = results.iter().map(|r| r.scores.len()).sum();
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{} files, {rows} rows scored in {secs:.2} s ({:.0} rows/s); results under {}",
                results.len(),
                rows as f64 / secs,
                out.display()
            );
            if score {
                let labels_path =
                    labels.unwrap_or_else(|| data.join("../labels/combined_windows.json"));
                let labels = nab::read_labels(&labels_path)?;
                let scores = nab::score_corpus(&results, &labels)?;
                println!(
                    "{:<20} {:>10} {:>10} {:>10} {:>9} {:>9}",
                    "profile", "score", "raw", "threshold", "windows", "FP rows"
                );
                for (name, p) in [
                    ("standard", &scores.standard),
                    ("reward_low_FP_rate", &scores.reward_low_fp),
                    ("reward_low_FN_rate", &scores.reward_low_fn),
                ] {
                    println!(
                        "{name:<20} {:>10.2} {:>10.3} {:>10.4} {:>4}/{:<4} {:>9}",
                        p.normalized,
                        p.raw,
                        p.threshold,
                        p.detected_windows,
                        p.windows,
                        p.false_positive_rows
                    );
                }
            }
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
