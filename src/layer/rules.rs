//! The rules both directions share: path normalization, whiteout names, which
//! xattrs a layer carries, and the canonical entry order.

use std::cmp::Ordering;

use super::{show, LayerError};

/// Prefix of an OCI whiteout file name (`layer.md`, "Whiteouts").
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the OCI opaque whiteout marker (`layer.md`, "Opaque Whiteout").
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// The xattr overlayfs reads on a lower directory to make it opaque.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// PAX record prefix for xattrs, as GNU tar and Go's archive/tar write them.
pub const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// Normalize an archive path to `a/b/c`: no leading `./`, no empty or `.`
/// components, no trailing slash. The root is the empty path. Absolute paths,
/// `..` components and NUL bytes are rejected: an entry names a place inside
/// the layer, never outside it.
pub fn normalize(raw: &[u8]) -> Result<Vec<u8>, LayerError> {
    let bad = |reason| LayerError::InvalidPath { path: show(raw), reason };
    if raw.first() == Some(&b'/') {
        return Err(bad("absolute"));
    }
    if raw.contains(&0) {
        return Err(bad("NUL byte"));
    }
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(bad("contains ..")),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

/// Split a normalized path into (parent, base name); the parent of a
/// top-level entry is the empty path (the root).
pub fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// `parent/name` for a normalized parent (the root is empty).
pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        out.extend_from_slice(parent);
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

/// What a base name means in an OCI layer.
#[derive(Debug, PartialEq, Eq)]
pub enum Name<'a> {
    /// An ordinary name.
    Plain,
    /// `.wh..wh..opq`: the containing directory is opaque.
    Opaque,
    /// `.wh.NAME`: NAME is removed from the layers below.
    Whiteout(&'a [u8]),
    /// `.wh..wh.*` other than the opaque marker: aufs bookkeeping (`.wh..wh.plnk`,
    /// `.wh..wh.aufs`), meaningless in an OCI layer.
    AufsMeta,
}

/// Classify a base name by the OCI whiteout rules.
pub fn classify_name(name: &[u8]) -> Name<'_> {
    if name == OPAQUE_MARKER {
        Name::Opaque
    } else if name.starts_with(b".wh..wh.") {
        Name::AufsMeta
    } else if let Some(rest) = name.strip_prefix(WHITEOUT_PREFIX) {
        Name::Whiteout(rest)
    } else {
        Name::Plain
    }
}

/// What a (normalized) entry path means in an OCI layer.
#[derive(Debug, PartialEq, Eq)]
pub enum EntryName<'a> {
    /// An entry to apply.
    Plain,
    /// aufs bookkeeping: nothing to do.
    Skip,
    /// The opaque marker: this directory is opaque.
    Opaque(&'a [u8]),
    /// A whiteout of this path.
    Whiteout(Vec<u8>),
}

/// Classify the entry at `path` (from `raw`, for messages) by its name: the
/// whiteout rules both the unpacker and the flattener apply. A whiteout
/// name as a parent, or a whiteout of nothing, `.` or `..`, is refused.
pub fn classify_entry<'a>(path: &'a [u8], raw: &[u8]) -> Result<EntryName<'a>, LayerError> {
    let (parent, name) = split(path);
    if parent.split(|&b| b == b'/').any(|c| c.starts_with(WHITEOUT_PREFIX)) {
        return Err(LayerError::BadWhiteout { path: show(raw) });
    }
    Ok(match classify_name(name) {
        Name::Plain => EntryName::Plain,
        Name::AufsMeta => EntryName::Skip,
        Name::Opaque => EntryName::Opaque(parent),
        Name::Whiteout(target) => {
            if target.is_empty() || target == b"." || target == b".." {
                return Err(LayerError::BadWhiteout { path: show(raw) });
            }
            EntryName::Whiteout(join(parent, target))
        }
    })
}

/// What to do with one xattr.
#[derive(Debug, PartialEq, Eq)]
pub enum Xattr<'a> {
    /// Carried in the layer: `security.capability` and other `security.*`
    /// except `security.selinux`, `user.*`, and POSIX ACLs
    /// (`system.posix_acl_access`, `system.posix_acl_default`, in the
    /// kernel's xattr form, as docker and podman write and restore them).
    Keep,
    /// Not carried: `security.selinux` (host policy labels), `trusted.*`,
    /// other `system.*` and anything else.
    Drop,
    /// `trusted.overlay.*`: overlayfs bookkeeping, with the part after
    /// `overlay.`. Only this form: the guest mounts its overlay with trusted
    /// xattrs, so a `user.overlay.*` xattr is one a script set, kept as any
    /// other `user.*` (reading it as a whiteout or opaque mark would hide
    /// what the script still saw).
    Overlay(&'a str),
}

/// The xattrs of POSIX ACLs.
pub const POSIX_ACLS: [&str; 2] = ["system.posix_acl_access", "system.posix_acl_default"];

/// Classify an xattr name.
pub fn classify_xattr(name: &str) -> Xattr<'_> {
    if let Some(rest) = name.strip_prefix("trusted.overlay.") {
        Xattr::Overlay(rest)
    } else if name == "security.selinux" {
        Xattr::Drop
    } else if name.starts_with("security.") || name.starts_with("user.") || POSIX_ACLS.contains(&name) {
        Xattr::Keep
    } else {
        Xattr::Drop
    }
}

/// Sort rank of a base name among its siblings: the opaque marker first, then
/// whiteouts, then everything else (`layer.md`: "Implementations SHOULD
/// generate layers such that the whiteout files appear before sibling
/// directory entries").
fn rank(name: &[u8]) -> u8 {
    match classify_name(name) {
        Name::Opaque => 0,
        Name::Whiteout(_) | Name::AufsMeta => 1,
        Name::Plain => 2,
    }
}

/// The canonical entry order of a layer: component by component (so a
/// directory's subtree follows it directly and parents precede children),
/// siblings by (rank, name bytes).
pub fn cmp_paths(a: &[u8], b: &[u8]) -> Ordering {
    let mut ia = a.split(|&c| c == b'/');
    let mut ib = b.split(|&c| c == b'/');
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let o = rank(x).cmp(&rank(y)).then_with(|| x.cmp(y));
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

/// Collected per-entry PAX records we interpret ourselves (the `tar` crate
/// already applies path, linkpath, size, uid and gid).
#[derive(Debug, Default)]
pub struct PaxInfo {
    /// `SCHILY.xattr.*` records, in archive order.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Whole seconds of a PAX `mtime`, negative clamped to 0.
    pub mtime: Option<u64>,
    /// The entry uses PAX (GNU 1.0) sparse records.
    pub sparse: bool,
}

/// Read the PAX records of an entry.
pub fn pax_info<R: std::io::Read>(entry: &mut tar::Entry<'_, R>, path: &[u8]) -> Result<PaxInfo, LayerError> {
    let mut info = PaxInfo::default();
    let exts = match entry.pax_extensions() {
        Ok(Some(exts)) => exts,
        Ok(None) => return Ok(info),
        Err(source) => return Err(LayerError::Entry { path: show(path), source }),
    };
    for ext in exts {
        let ext = ext.map_err(|source| LayerError::Entry { path: show(path), source })?;
        let key = ext.key_bytes();
        if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX.as_bytes()) {
            let name = std::str::from_utf8(name)
                .ok()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| LayerError::BadXattr { path: show(path), key: show(key) })?;
            info.xattrs.push((name.to_owned(), ext.value_bytes().to_vec()));
        } else if key == b"mtime" {
            let v = ext.value_bytes();
            let secs = v.split(|&b| b == b'.').next().unwrap_or_default();
            let secs = std::str::from_utf8(secs).ok().and_then(|s| s.parse::<i64>().ok()).ok_or_else(|| {
                LayerError::Entry {
                    path: show(path),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, "bad PAX mtime"),
                }
            })?;
            info.mtime = Some(u64::try_from(secs).unwrap_or(0));
        } else if key.starts_with(b"GNU.sparse.") {
            info.sparse = true;
        }
    }
    Ok(info)
}

/// One PAX record: "<len> <key>=<value>\n", len counting itself.
pub fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_strips_dot_slash_and_trailing_slash() {
        assert_eq!(normalize(b"./a//b/./c/").unwrap(), b"a/b/c");
        assert_eq!(normalize(b"./").unwrap(), b"");
        assert_eq!(normalize(b".").unwrap(), b"");
    }

    #[test]
    fn normalize_rejects_dotdot_absolute_and_nul() {
        for p in [&b"../x"[..], b"/abs", b"a/../../x", b"a/..", b"a\0b"] {
            assert!(matches!(normalize(p), Err(LayerError::InvalidPath { .. })), "{}", show(p));
        }
    }

    #[test]
    fn order_puts_opaque_marker_then_whiteouts_before_siblings() {
        let mut v: Vec<&[u8]> =
            vec![b"a/-dash", b"a/.wh.zz", b"a/.wh..wh..opq", b"a", b"a.txt", b"a/b/c", b"a/b", b"+"];
        v.sort_by(|x, y| cmp_paths(x, y));
        let want: Vec<&[u8]> = vec![b"+", b"a", b"a/.wh..wh..opq", b"a/.wh.zz", b"a/-dash", b"a/b", b"a/b/c", b"a.txt"];
        assert_eq!(v, want);
    }

    #[test]
    fn xattr_classes() {
        assert_eq!(classify_xattr("security.capability"), Xattr::Keep);
        assert_eq!(classify_xattr("security.ima"), Xattr::Keep);
        assert_eq!(classify_xattr("user.mime"), Xattr::Keep);
        assert_eq!(classify_xattr("security.selinux"), Xattr::Drop);
        assert_eq!(classify_xattr("trusted.foo"), Xattr::Drop);
        assert_eq!(classify_xattr("system.posix_acl_access"), Xattr::Keep);
        assert_eq!(classify_xattr("system.posix_acl_default"), Xattr::Keep);
        assert_eq!(classify_xattr("system.nfs4_acl"), Xattr::Drop);
        assert_eq!(classify_xattr("trusted.overlay.opaque"), Xattr::Overlay("opaque"));
        assert_eq!(classify_xattr("user.overlay.redirect"), Xattr::Keep, "a script's own xattr");
        assert_eq!(classify_xattr("user.overlay.opaque"), Xattr::Keep, "a script's own xattr");
    }

    #[test]
    fn names_classified() {
        assert_eq!(classify_name(b".wh..wh..opq"), Name::Opaque);
        assert_eq!(classify_name(b".wh.foo"), Name::Whiteout(b"foo"));
        assert_eq!(classify_name(b".wh..wh.plnk"), Name::AufsMeta);
        assert_eq!(classify_name(b"foo.wh."), Name::Plain);
    }
}
