//! Finding server binaries, with an error that says how to get them.

use std::fmt;
use std::path::{Path, PathBuf};

/// A server binary was not found on PATH nor in the usual Debian locations.
#[derive(Debug, Clone)]
pub struct MissingBinary {
    /// The binary.
    pub binary: &'static str,
    /// The Debian package that provides it.
    pub package: &'static str,
}

impl fmt::Display for MissingBinary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` was not found on PATH or in /usr/lib/postgresql/*/bin. Install it with \
             `apt-get install -y {}` (as root), or run `cargo xtask test`, which installs it",
            self.binary, self.package
        )
    }
}

impl std::error::Error for MissingBinary {}

/// Finds `binary` on PATH, then in the newest `/usr/lib/postgresql/<version>/bin`.
pub(crate) fn find(binary: &'static str, package: &'static str) -> Result<PathBuf, MissingBinary> {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut postgres_dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| dir.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    // Newest major version first.
    postgres_dirs.sort_by_key(|p| {
        std::cmp::Reverse(
            p.parent()
                .and_then(Path::file_name)
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    on_path
        .into_iter()
        .chain(postgres_dirs)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
        .ok_or(MissingBinary { binary, package })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_says_which_package_to_install() {
        let err = find("no-such-server-binary", "no-such-package").unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("`no-such-server-binary` was not found"),
            "{message}"
        );
        assert!(
            message.contains("apt-get install -y no-such-package"),
            "{message}"
        );
        assert!(message.contains("cargo xtask test"), "{message}");
    }

    #[test]
    fn finds_binaries_on_path() {
        assert!(find("sh", "dash").is_ok());
    }
}
