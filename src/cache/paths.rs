//! Object key -> relative path inside the share, refusing anything that could escape it.
//!
//! The mapping is purely textual (no file-system access): the result is always a relative
//! path made only of `Normal` components, so joining it to the share root stays under the
//! root. Symlinks already on disk are the publisher's concern (see [`super::publish`]).

use std::fmt;
use std::path::PathBuf;

/// The share-relative directory the agent keeps for itself (staging). No key may map into it.
pub const RESERVED_TOP_LEVEL: &str = ".sgw";

/// Longest file-name component most Linux file systems accept (bytes, not characters).
pub const MAX_SEGMENT_BYTES: usize = 255;

/// Linux `PATH_MAX`: longer relative paths cannot be opened in one call.
pub const MAX_PATH_BYTES: usize = 4096;

/// Where a key lands in the share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPath {
    /// A regular object: a file at this relative path.
    File(PathBuf),
    /// A folder marker (key ending in `/`, or the prefix itself, which maps to `""`).
    Dir(PathBuf),
}

/// Why a key cannot be mapped into the share. Each variant names the rule it breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnsafeKey {
    /// The key does not start with the share's prefix.
    OutsidePrefix,
    /// The key is empty, or nothing names a file after the prefix.
    Empty,
    /// The part after the prefix starts with `/` (would be absolute).
    Absolute,
    /// A `.` or `..` segment.
    DotSegment,
    /// Two slashes in a row (`a//b`).
    EmptySegment,
    /// NUL or another control character (U+0000–U+001F, U+007F).
    ControlChar,
    /// A backslash, which SMB clients treat as a path separator.
    Backslash,
    /// One segment is longer than [`MAX_SEGMENT_BYTES`].
    SegmentTooLong { bytes: usize },
    /// The whole relative path is longer than [`MAX_PATH_BYTES`].
    PathTooLong { bytes: usize },
    /// The first segment is the agent's own [`RESERVED_TOP_LEVEL`] directory.
    Reserved,
}

impl fmt::Display for UnsafeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnsafeKey::OutsidePrefix => write!(f, "key does not start with the share prefix"),
            UnsafeKey::Empty => write!(f, "key names no file after the share prefix"),
            UnsafeKey::Absolute => write!(f, "key after the prefix starts with '/' (absolute)"),
            UnsafeKey::DotSegment => write!(f, "key has a '.' or '..' segment"),
            UnsafeKey::EmptySegment => write!(f, "key has an empty segment ('//')"),
            UnsafeKey::ControlChar => write!(f, "key has a NUL or control character"),
            UnsafeKey::Backslash => write!(f, "key has a backslash (a separator for SMB clients)"),
            UnsafeKey::SegmentTooLong { bytes } => write!(
                f,
                "key has a segment of {bytes} bytes (limit {MAX_SEGMENT_BYTES})"
            ),
            UnsafeKey::PathTooLong { bytes } => {
                write!(f, "key path is {bytes} bytes (limit {MAX_PATH_BYTES})")
            }
            UnsafeKey::Reserved => {
                write!(
                    f,
                    "key maps into the agent's reserved '{RESERVED_TOP_LEVEL}' directory"
                )
            }
        }
    }
}

impl std::error::Error for UnsafeKey {}

/// Map an object key to a path relative to the share root.
///
/// `prefix` is used exactly as given (`photos/` and `photos` differ: with the latter, the key
/// `photos/a` leaves `/a`, which is refused as absolute).
pub fn key_to_relpath(key: &str, prefix: &str) -> Result<KeyPath, UnsafeKey> {
    if key.is_empty() {
        return Err(UnsafeKey::Empty);
    }
    let rest = key.strip_prefix(prefix).ok_or(UnsafeKey::OutsidePrefix)?;
    if rest.is_empty() {
        return Ok(KeyPath::Dir(PathBuf::new()));
    }
    if rest.len() > MAX_PATH_BYTES {
        return Err(UnsafeKey::PathTooLong { bytes: rest.len() });
    }
    if rest.starts_with('/') {
        return Err(UnsafeKey::Absolute);
    }
    if rest.chars().any(|c| c.is_ascii_control()) {
        return Err(UnsafeKey::ControlChar);
    }
    if rest.contains('\\') {
        return Err(UnsafeKey::Backslash);
    }
    let (body, is_dir) = match rest.strip_suffix('/') {
        Some(body) => (body, true),
        None => (rest, false),
    };
    let mut path = PathBuf::new();
    for (index, segment) in body.split('/').enumerate() {
        match segment {
            "" => return Err(UnsafeKey::EmptySegment),
            "." | ".." => return Err(UnsafeKey::DotSegment),
            _ => {}
        }
        if segment.len() > MAX_SEGMENT_BYTES {
            return Err(UnsafeKey::SegmentTooLong {
                bytes: segment.len(),
            });
        }
        // Case-insensitive: SMB clients and some file systems fold case.
        if index == 0 && segment.eq_ignore_ascii_case(RESERVED_TOP_LEVEL) {
            return Err(UnsafeKey::Reserved);
        }
        path.push(segment);
    }
    Ok(if is_dir {
        KeyPath::Dir(path)
    } else {
        KeyPath::File(path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::{Component, Path};

    fn file(p: &str) -> Result<KeyPath, UnsafeKey> {
        Ok(KeyPath::File(PathBuf::from(p)))
    }
    fn dir(p: &str) -> Result<KeyPath, UnsafeKey> {
        Ok(KeyPath::Dir(PathBuf::from(p)))
    }

    #[test]
    fn ordinary_keys_map_below_the_prefix() {
        assert_eq!(key_to_relpath("photos/a.jpg", "photos/"), file("a.jpg"));
        assert_eq!(
            key_to_relpath("photos/2024/b c.jpg", "photos/"),
            file("2024/b c.jpg")
        );
        assert_eq!(key_to_relpath("x/y", ""), file("x/y"));
        assert_eq!(
            key_to_relpath("données/été.txt", ""),
            file("données/été.txt")
        );
        // Dots inside names are fine; only whole `.`/`..` segments are not.
        assert_eq!(key_to_relpath("a/..b/c..", ""), file("a/..b/c.."));
        assert_eq!(key_to_relpath(".sgwx/a", ""), file(".sgwx/a"));
        assert_eq!(key_to_relpath("a/.sgw", ""), file("a/.sgw"));
    }

    #[test]
    fn folder_markers_and_the_prefix_itself_are_dirs() {
        assert_eq!(key_to_relpath("photos/", "photos/"), dir(""));
        assert_eq!(key_to_relpath("photos/2024/", "photos/"), dir("2024"));
        assert_eq!(key_to_relpath("a/b/", ""), dir("a/b"));
    }

    #[test]
    fn each_rule_is_named() {
        let cases: &[(&str, &str, UnsafeKey)] = &[
            ("other/a", "photos/", UnsafeKey::OutsidePrefix),
            ("", "", UnsafeKey::Empty),
            ("/etc/passwd", "", UnsafeKey::Absolute),
            ("photos//etc", "photos/", UnsafeKey::Absolute),
            ("photos/a", "photos", UnsafeKey::Absolute),
            ("/", "", UnsafeKey::Absolute),
            ("../x", "", UnsafeKey::DotSegment),
            ("a/../../x", "", UnsafeKey::DotSegment),
            ("a/./b", "", UnsafeKey::DotSegment),
            ("a/..", "", UnsafeKey::DotSegment),
            ("./", "", UnsafeKey::DotSegment),
            ("a//b", "", UnsafeKey::EmptySegment),
            ("a//", "", UnsafeKey::EmptySegment),
            ("a\0b", "", UnsafeKey::ControlChar),
            ("a\nb", "", UnsafeKey::ControlChar),
            ("a\u{1f}", "", UnsafeKey::ControlChar),
            ("a\u{7f}", "", UnsafeKey::ControlChar),
            ("a\\..\\b", "", UnsafeKey::Backslash),
            ("..\\x", "", UnsafeKey::Backslash),
            (".sgw/staging/x", "", UnsafeKey::Reserved),
            (".SGW/x", "", UnsafeKey::Reserved),
            ("p/.sgw/", "p/", UnsafeKey::Reserved),
        ];
        for (key, prefix, want) in cases {
            let got = key_to_relpath(key, prefix);
            assert_eq!(got.as_ref(), Err(want), "key {key:?} prefix {prefix:?}");
            // The message is what an operator reads in the log: never empty.
            assert!(!want.to_string().is_empty());
        }
    }

    #[test]
    fn length_limits_count_bytes_not_chars() {
        let ok = "é".repeat(127); // 254 bytes
        assert_eq!(key_to_relpath(&ok, ""), file(&ok));
        let long = "é".repeat(128); // 256 bytes, 128 chars
        assert_eq!(
            key_to_relpath(&long, ""),
            Err(UnsafeKey::SegmentTooLong { bytes: 256 })
        );
        let max_seg = "a".repeat(255);
        assert_eq!(key_to_relpath(&max_seg, ""), file(&max_seg));

        // 16 segments of 255 + 15 slashes = 4095 bytes: accepted; one more byte is not.
        let parts = vec!["b".repeat(255); 16];
        let fits = parts.join("/");
        assert_eq!(fits.len(), 4095);
        assert!(key_to_relpath(&fits, "").is_ok());
        let too_long = format!("{fits}/c");
        assert_eq!(
            key_to_relpath(&too_long, ""),
            Err(UnsafeKey::PathTooLong { bytes: 4097 })
        );
        // The prefix does not count against the share-relative length.
        assert!(key_to_relpath(&format!("pre/{fits}"), "pre/").is_ok());
        // Oversized hostile input is refused without trouble.
        let huge = "a/".repeat(1 << 20);
        assert!(matches!(
            key_to_relpath(&huge, ""),
            Err(UnsafeKey::PathTooLong { .. })
        ));
    }

    fn assert_confined(rel: &Path) {
        assert!(rel.is_relative(), "{rel:?} is not relative");
        for c in rel.components() {
            assert!(matches!(c, Component::Normal(_)), "{rel:?} has {c:?}");
        }
        let root = Path::new("/srv/share");
        assert!(root.join(rel).starts_with(root));
        assert!(!rel.starts_with(RESERVED_TOP_LEVEL));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn ok_paths_never_escape_any_string(key in any::<String>(), prefix in "(|p/|p)") {
            if let Ok(KeyPath::File(p) | KeyPath::Dir(p)) = key_to_relpath(&key, &prefix) {
                assert_confined(&p);
            }
        }

        #[test]
        fn ok_paths_never_escape_separator_heavy_keys(
            key in "[./\\\\a\\x00é]{0,24}",
            prefix in "(|a/|\\.)",
        ) {
            match key_to_relpath(&key, &prefix) {
                Ok(KeyPath::File(p)) => {
                    assert_confined(&p);
                    prop_assert!(!p.as_os_str().is_empty());
                }
                Ok(KeyPath::Dir(p)) => assert_confined(&p),
                Err(_) => {}
            }
        }
    }
}
