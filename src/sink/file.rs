use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Sink, SinkError};
use crate::report::{ReportKind, SlowRequestReport};

/// Writes each report as a `.txt` and a `.json` file into a directory, like dogslow's
/// `DOGSLOW_OUTPUT`.
///
/// Files are named `slow-<request id>-<n>.txt` (the n-th capture) and `slow-<request id>-done.txt`
/// (the completion record), each with a `.json` twin, written after the `.txt`. Each file is
/// written under a temporary name and renamed, so a reader never sees half a report.
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// let sink = tower_vigil::sink::FileSink::new("/var/log/slow-requests")?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FileSink {
    dir: PathBuf,
}

impl FileSink {
    /// Uses `dir`, creating it if needed.
    ///
    /// # Errors
    ///
    /// Fails when the directory cannot be created or a file cannot be written in it, so a bad
    /// path is found when the application starts, not when the first slow request comes.
    pub fn new(dir: impl AsRef<Path>) -> std::io::Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| annotate(e, "cannot create", &dir))?;
        let probe = dir.join(format!(".vigil-probe-{}", std::process::id()));
        fs::write(&probe, b"").map_err(|e| annotate(e, "cannot write into", &dir))?;
        let _ = fs::remove_file(&probe);
        Ok(Self { dir })
    }

    /// A file sink as the `[sinks.file]` section describes it.
    ///
    /// # Errors
    ///
    /// When the directory cannot be created or written, naming `sinks.file.dir`.
    pub fn from_config(config: &crate::config::FileSinkConfig) -> Result<Self, crate::ConfigError> {
        Self::new(&config.dir)
            .map_err(|error| crate::ConfigError::other("sinks.file.dir", error.to_string()))
    }

    /// The directory reports go to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file stem of a report: `slow-<request id>-<capture>` or `slow-<request id>-done`.
    pub(crate) fn file_stem(report: &SlowRequestReport) -> String {
        match report.kind {
            ReportKind::Completed => format!("slow-{}-done", report.request_id),
            _ => format!("slow-{}-{}", report.request_id, report.capture),
        }
    }

    fn write_atomically(&self, name: &str, contents: &[u8]) -> std::io::Result<()> {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let written = (|| {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(contents)?;
            file.sync_data()?;
            fs::rename(&tmp, self.dir.join(name))
        })();
        if written.is_err() {
            // A half-written temp file of a full disk would keep holding the space.
            let _ = fs::remove_file(&tmp);
        }
        written
    }
}

fn annotate(error: std::io::Error, what: &str, dir: &Path) -> std::io::Error {
    std::io::Error::new(
        error.kind(),
        format!("FileSink: {what} {}: {error}", dir.display()),
    )
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        "file"
    }

    fn deliver(&self, report: &SlowRequestReport) -> Result<(), SinkError> {
        let stem = Self::file_stem(report);
        let json = crate::report::json::to_json(report).map_err(SinkError::new)?;
        // The .json last: a reader that sees it finds the .txt too.
        self.write_atomically(&format!("{stem}.txt"), report.to_text().as_bytes())?;
        self.write_atomically(&format!("{stem}.json"), &json)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tower-vigil-file-sink-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn temp_files(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn a_failed_rename_leaves_no_temp_file() {
        let dir = scratch_dir("rename");
        let sink = FileSink::new(&dir).unwrap();
        // A directory where the report should go makes the rename fail.
        fs::create_dir(dir.join("slow-42-1.json")).unwrap();
        let error = sink.write_atomically("slow-42-1.json", b"{}").unwrap_err();
        assert_eq!(temp_files(&dir), Vec::<String>::new(), "{error}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_no_temp_file() {
        let dir = scratch_dir("write");
        let sink = FileSink::new(&dir).unwrap();
        // The temp file's name leads to /dev/full, where every write fails as on a full disk.
        std::os::unix::fs::symlink("/dev/full", dir.join(".slow-42-1.txt.tmp")).unwrap();
        let error = sink
            .write_atomically("slow-42-1.txt", b"a report")
            .unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::StorageFull, "{error}");
        assert_eq!(temp_files(&dir), Vec::<String>::new());
        assert!(!dir.join("slow-42-1.txt").exists());
        assert!(Path::new("/dev/full").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_successful_write_leaves_only_the_report() {
        let dir = scratch_dir("ok");
        let sink = FileSink::new(&dir).unwrap();
        sink.write_atomically("slow-42-1.txt", b"a report").unwrap();
        assert_eq!(fs::read(dir.join("slow-42-1.txt")).unwrap(), b"a report");
        assert_eq!(temp_files(&dir), Vec::<String>::new());
        fs::remove_dir_all(&dir).unwrap();
    }
}
