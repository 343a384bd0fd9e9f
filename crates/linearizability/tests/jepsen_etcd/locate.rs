//! Finds the Jepsen etcd logs shipped inside the `todc-utils` package, which
//! this crate lists as a dev-dependency only so that cargo downloads it. The
//! logs are not copied into this repository.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Set this to a directory holding `etcd_NNN.log` files to bypass the lookup.
const OVERRIDE: &str = "EKMAT_JEPSEN_ETCD_LOGS";
const PACKAGE: &str = "todc-utils";
const LOGS_IN_PACKAGE: &str = "tests/linearizability/etcd";
/// The file in the package that records each log's published verdict.
const VERDICTS_IN_PACKAGE: &str = "tests/linearizability/etcd.rs";

/// Where the logs and their verdicts were found.
pub struct Location {
    pub logs: PathBuf,
    /// `todc-utils`' own test table, when the logs came from that package.
    pub verdicts: Option<PathBuf>,
}

/// Finds the logs (once per test binary), or panics naming everything that
/// was tried.
pub fn etcd_logs() -> &'static Location {
    static LOCATION: OnceLock<Location> = OnceLock::new();
    LOCATION.get_or_init(find)
}

fn find() -> Location {
    if let Some(dir) = std::env::var_os(OVERRIDE) {
        let logs = PathBuf::from(dir);
        assert!(
            logs.join("etcd_000.log").is_file(),
            "{OVERRIDE}={} holds no etcd_000.log",
            logs.display()
        );
        return Location {
            logs,
            verdicts: None,
        };
    }
    let from_metadata = package_root_from_metadata();
    let package = match &from_metadata {
        Ok(root) => Some(root.clone()),
        Err(_) => package_root_from_registry(),
    };
    let location = package.map(|root| Location {
        logs: root.join(LOGS_IN_PACKAGE),
        verdicts: Some(root.join(VERDICTS_IN_PACKAGE)).filter(|p| p.is_file()),
    });
    match location {
        Some(location) if location.logs.join("etcd_000.log").is_file() => location,
        _ => panic!(
            "cannot find the Jepsen etcd logs of the {PACKAGE} 0.1.1 package \
             (a dev-dependency of this crate). `cargo metadata` said: {from_metadata:?}; \
             the cargo registry under $CARGO_HOME or ~/.cargo was also searched. \
             Run `cargo fetch`, or point {OVERRIDE} at a directory of etcd_NNN.log files."
        ),
    }
}

/// Asks cargo (the one running this test) where the package's manifest is.
fn package_root_from_metadata() -> Result<PathBuf, String> {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("unreadable cargo metadata: {e}"))?;
    let manifest = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == PACKAGE)
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or_else(|| format!("no package {PACKAGE} in cargo metadata"))?;
    Path::new(manifest)
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("odd manifest path {manifest}"))
}

/// Looks for the unpacked package in the local cargo registry directly, for
/// when `cargo metadata` cannot run (e.g. another crate of the workspace is
/// mid-edit and does not resolve).
fn package_root_from_registry() -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))?;
    let mut roots: Vec<PathBuf> = std::fs::read_dir(cargo_home.join("registry/src"))
        .ok()?
        .flatten()
        .map(|index| index.path().join(format!("{PACKAGE}-0.1.1")))
        .filter(|root| root.is_dir())
        .collect();
    roots.sort();
    roots.into_iter().next()
}
