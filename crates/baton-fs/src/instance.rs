//! Per-agent state paths: `--instance-id ID` (or `BATON_INSTANCE_ID`) moves
//! `<dir>/<name>` to `<dir>/instances/<ID>/<name>`, so agents running the same
//! tool in parallel each get their own copy of its state file.

use std::path::{Path, PathBuf};

use baton_core::Error;

/// Longest instance id accepted.
pub const MAX_INSTANCE_ID_LEN: usize = 128;

/// The folder, next to the original file, that holds every instance's copy.
pub const INSTANCES_DIR: &str = "instances";

/// Maps `<dir>/<name>` to `<dir>/instances/<instance_id>/<name>`.
///
/// The id is 1 to [`MAX_INSTANCE_ID_LEN`] characters from `A-Z a-z 0-9 . _ -`
/// and not `.` or `..`, so it can never leave the `instances` folder. Only
/// the path is computed; writes create the folder (see
/// [`Options::create_dirs`](crate::Options::create_dirs)).
///
/// ```
/// use std::path::Path;
/// let path = baton_fs::instance_path(Path::new("/home/me/.tool/state.json"), "agent-7")?;
/// assert_eq!(path, Path::new("/home/me/.tool/instances/agent-7/state.json"));
/// # Ok::<(), baton_core::Error>(())
/// ```
pub fn instance_path(path: &Path, instance_id: &str) -> Result<PathBuf, Error> {
    let valid_chars = instance_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if instance_id.is_empty()
        || instance_id.len() > MAX_INSTANCE_ID_LEN
        || !valid_chars
        || instance_id == "."
        || instance_id == ".."
    {
        return Err(Error::invalid(
            "instance_id",
            format!(
                "{instance_id:?} is not a valid instance id: use 1 to {MAX_INSTANCE_ID_LEN} characters from A-Z a-z 0-9 . _ -"
            ),
        ));
    }
    let Some(name) = path.file_name() else {
        return Err(Error::invalid(
            "path",
            format!("{} does not name a file", path.display()),
        ));
    };
    let dir = path.parent().unwrap_or(Path::new(""));
    Ok(dir.join(INSTANCES_DIR).join(instance_id).join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_into_the_instances_folder() {
        assert_eq!(
            instance_path(Path::new("state.json"), "a1").unwrap(),
            Path::new("instances/a1/state.json")
        );
        assert_eq!(
            instance_path(Path::new("/x/y/c.toml"), "A_b-c.9").unwrap(),
            Path::new("/x/y/instances/A_b-c.9/c.toml")
        );
    }

    #[test]
    fn refuses_ids_that_could_escape() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "é",
            &"x".repeat(MAX_INSTANCE_ID_LEN + 1),
        ] {
            assert!(instance_path(Path::new("s.json"), bad).is_err(), "{bad:?}");
        }
        assert!(instance_path(Path::new("/"), "a").is_err());
    }
}
