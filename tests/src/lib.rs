//! gpusiem-tests: end-to-end tests of gpusiem and the fake downstream servers they run against.
//!
//! ```text
//!  tests/tests/integration ──► gpusiem (library: Delivery, pipeline …)  ──► fakes (Loki, Elasticsearch,
//!                         └──► gpusiem_bin() (the `gpusiem` binary) ──────►        Slack, PagerDuty on 127.0.0.1)
//! ```
//!
//! * [`fakes`]: contract fakes of the receivers, reproducing their documented answers.
//! * [`gpusiem_bin`]: builds the `gpusiem` binary once and returns its path, for tests that run
//!   the real process (kill -9, replay).
//!
//! Adding a fake: a file in `src/fakes/` with a `start(addr)` constructor, a [`fakes::Script`]
//! of answers and the recorded requests; cite the documented behaviour it reproduces.

pub mod fakes;

use std::path::PathBuf;
use std::sync::OnceLock;

/// The `gpusiem` binary.
///
/// `cargo test --workspace` builds it beside this test executable (`target/<profile>/`), with
/// the features of that build: that one is used. Only when it is not there (`cargo test -p
/// gpusiem-tests` on a fresh target directory) is it built here, once per test process, with
/// the `cargo` that runs the tests.
pub fn gpusiem_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let name = if cfg!(windows) {
            "gpusiem.exe"
        } else {
            "gpusiem"
        };
        // target/<profile>/deps/<test executable> → target/<profile>/gpusiem
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join(name)));
        if let Some(bin) = beside.filter(|b| b.is_file()) {
            return bin;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let root = workspace_root();
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "gpusiem", "--bin", "gpusiem"])
            .current_dir(&root)
            .status()
            .expect("running cargo build for the gpusiem binary");
        assert!(
            status.success(),
            "cargo build -p gpusiem --bin gpusiem failed"
        );
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let bin = target.join("debug").join(name);
        assert!(bin.exists(), "{} not found after the build", bin.display());
        bin
    })
    .clone()
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// A fixture file under `tests/fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

pub mod delivery;
