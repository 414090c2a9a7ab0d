//! A file's version is a hash of its bytes, so any reader can compute it
//! (`sha256sum FILE`) and a version is only ever "the same" for the same
//! content. Going A → B → A gives A's version again: for a compare-and-set of
//! file content that is the right answer, since the edit applies to A.

use sha2::{Digest, Sha256};

/// The version of a file that does not exist. `--if-version absent` means
/// "create only".
pub const ABSENT_VERSION: &str = "absent";

/// `"sha256:<64 hex digits>"` of the bytes, or [`ABSENT_VERSION`] for `None`.
pub fn version_of(bytes: Option<&[u8]>) -> String {
    let Some(bytes) = bytes else {
        return ABSENT_VERSION.to_owned();
    };
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in digest.iter() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_sha256_of_the_bytes() {
        // Known answer: sha256("abc").
        assert_eq!(
            version_of(Some(b"abc")),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(version_of(None), ABSENT_VERSION);
        assert_ne!(version_of(Some(b"")), ABSENT_VERSION);
    }
}
