//! Which Nix store paths a layer references, found as Nix finds a build
//! output's references, and their closure: what dockerTools' buildImage
//! adds to the layer (`writeReferencesToFile layer`, the closure of what
//! the layer's own bytes name).
//!
//! - [`ReferenceGraph`]: the candidates and their references, read from
//!   Nix's `exportReferencesGraph` files (for each path: the path, its
//!   deriver line, the number of references, the references), as
//!   `closureInfo` and nix/default.nix have Nix write them.
//! - [`Scanner`]: Nix's reference scan (`RefScanSink` in libstore): a
//!   candidate is referenced when the 32-character nix-base32 hash part of
//!   its name occurs anywhere in the bytes. It is fed in pieces
//!   ([`Scanner::scan`]) as the bytes pass by, a hash split across two
//!   pieces included, and a name on its own ([`Scanner::scan_name`]);
//!   [`scan_changeset`] feeds it what a layer's changeset holds, as a NAR
//!   would (each path, symlink target and xattr value as a name, each
//!   file's bytes as one stream).
//! - [`ReferenceGraph::closure`]: the referenced paths and everything they
//!   reference, as the store paths to add.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;

use super::changeset::{Changeset, Kind, Source};
use super::{show, LayerError};

/// Length of a store path's hash part (160 bits in nix-base32).
pub const HASH_LEN: usize = 32;

/// Nix's base-32 alphabet (no `e`, `o`, `u`, `t`).
const BASE32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

const fn base32_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < BASE32.len() {
        t[BASE32[i] as usize] = true;
        i += 1;
    }
    t
}
static IS_BASE32: [bool; 256] = base32_table();

/// Each base-32 byte's digit value (0 for the others).
const fn digit_table() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i: u8 = 0;
    while (i as usize) < BASE32.len() {
        t[BASE32[i as usize] as usize] = i;
        i += 1;
    }
    t
}
static DIGIT: [u8; 256] = digit_table();

/// The first three digits of a hash (15 bits): the scan's prefilter index.
fn prefix15(hash: &[u8]) -> usize {
    (usize::from(DIGIT[usize::from(hash[0])]) << 10)
        | (usize::from(DIGIT[usize::from(hash[1])]) << 5)
        | usize::from(DIGIT[usize::from(hash[2])])
}

/// Bounds on a graph file: far beyond any real closure.
const MAX_PATHS: usize = 1 << 20;
const MAX_PATH_LEN: usize = 4096;

/// Why a references graph cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReferencesError {
    #[error("line {line}: {reason}")]
    Malformed { line: usize, reason: String },
    #[error("line {line}: {path:?} is not a store path (/STORE/HASH-NAME, a 32-character nix-base32 hash)")]
    NotAStorePath { line: usize, path: String },
    #[error("more than {MAX_PATHS} store paths")]
    TooMany,
}

/// The hash part of a store path `/store/dir/HASH-name`, if it is one.
pub fn hash_part(path: &[u8]) -> Option<&[u8]> {
    if !path.starts_with(b"/") {
        return None;
    }
    let slash = path.iter().rposition(|&b| b == b'/')?;
    let name = &path[slash + 1..];
    let hash = name.get(..HASH_LEN)?;
    (slash > 0 && name.get(HASH_LEN) == Some(&b'-') && hash.iter().all(|&b| IS_BASE32[usize::from(b)])).then_some(hash)
}

/// The candidate store paths and what each references.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReferenceGraph {
    refs: BTreeMap<Vec<u8>, Vec<Vec<u8>>>,
}

impl ReferenceGraph {
    /// Add the paths of one `exportReferencesGraph` file: for each path, the
    /// path, the deriver (a line, empty when unknown), the number of
    /// references and that many references.
    pub fn add_export(&mut self, text: &[u8]) -> Result<(), ReferencesError> {
        // The file's final newline ends the last record; no empty line follows.
        let end = text.iter().rposition(|&b| b != b'\n').map_or(0, |p| p + 1);
        let mut lines = text[..end].split(|&b| b == b'\n').enumerate().map(|(i, l)| (i + 1, l));
        if end == 0 {
            return Ok(());
        }
        let malformed = |line, reason: &str| ReferencesError::Malformed { line, reason: reason.to_string() };
        let store_path = |line: usize, p: &[u8]| -> Result<Vec<u8>, ReferencesError> {
            if p.len() > MAX_PATH_LEN || hash_part(p).is_none() || p.contains(&0) {
                return Err(ReferencesError::NotAStorePath { line, path: crate::layer::show(p) });
            }
            Ok(p.to_vec())
        };
        while let Some((line, path)) = lines.next() {
            let path = store_path(line, path)?;
            lines.next().ok_or_else(|| malformed(line, "the path has no deriver line"))?;
            let (n_line, count) = lines.next().ok_or_else(|| malformed(line, "the path has no reference count"))?;
            let count: usize = std::str::from_utf8(count)
                .ok()
                .and_then(|c| c.trim_end_matches('\r').parse().ok())
                .ok_or_else(|| malformed(n_line, "the reference count is not a number"))?;
            if count > MAX_PATHS {
                return Err(ReferencesError::TooMany);
            }
            let mut refs = Vec::with_capacity(count.min(1024));
            for _ in 0..count {
                let (l, r) = lines.next().ok_or_else(|| malformed(n_line, "fewer references than counted"))?;
                refs.push(store_path(l, r)?);
            }
            refs.sort();
            refs.dedup();
            self.refs.insert(path, refs);
            if self.refs.len() > MAX_PATHS {
                return Err(ReferencesError::TooMany);
            }
        }
        Ok(())
    }

    /// No candidates at all.
    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    /// Every candidate path, in order.
    pub fn paths(&self) -> impl Iterator<Item = &[u8]> {
        self.refs.keys().map(Vec::as_slice)
    }

    /// What `path` references (nothing when the graph does not list it).
    pub fn references(&self, path: &[u8]) -> &[Vec<u8>] {
        self.refs.get(path).map_or(&[], Vec::as_slice)
    }

    /// A scanner for the candidates' hash parts.
    pub fn scanner(&self) -> Scanner {
        let mut candidates = HashMap::with_capacity(self.refs.len());
        for path in self.paths().chain(self.refs.values().flatten().map(Vec::as_slice)) {
            if let Some(h) = hash_part(path) {
                let mut key = [0u8; HASH_LEN];
                key.copy_from_slice(h);
                candidates.entry(key).or_insert_with(|| path.to_vec());
            }
        }
        let mut prefixes = vec![0u64; (1 << 15) / 64];
        for key in candidates.keys() {
            let p = prefix15(key);
            prefixes[p / 64] |= 1 << (p % 64);
        }
        Scanner { candidates, prefixes, found: BTreeSet::new(), carry: Vec::with_capacity(HASH_LEN) }
    }

    /// `roots` and everything they reference, directly or not, in order. A
    /// root or reference the graph does not list is kept, without its own
    /// references (Nix lists every path of a closure, so none is missing).
    pub fn closure<'a>(&self, roots: impl IntoIterator<Item = &'a [u8]>) -> BTreeSet<Vec<u8>> {
        let mut seen: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut todo: Vec<Vec<u8>> = roots.into_iter().map(<[u8]>::to_vec).collect();
        while let Some(p) = todo.pop() {
            if let Some(refs) = self.refs.get(&p) {
                todo.extend(refs.iter().filter(|r| !seen.contains(*r)).cloned());
            }
            seen.insert(p);
        }
        seen
    }
}

/// Nix's reference scan over bytes fed in any pieces: which candidates'
/// hash parts occur in them.
#[derive(Debug, Clone)]
pub struct Scanner {
    /// Hash part -> the candidate's path.
    candidates: HashMap<[u8; HASH_LEN], Vec<u8>>,
    /// One bit per 3-digit prefix some candidate has: most windows in a
    /// long base-32 run are turned away here without a lookup.
    prefixes: Vec<u64>,
    found: BTreeSet<Vec<u8>>,
    /// The trailing run of base-32 characters of what was fed (at most
    /// HASH_LEN - 1 bytes): the start of a hash the next piece may finish.
    carry: Vec<u8>,
}

impl Scanner {
    /// Scan the next piece of a stream of bytes.
    pub fn scan(&mut self, data: &[u8]) {
        if self.candidates.is_empty() || data.is_empty() {
            return;
        }
        if !self.carry.is_empty() {
            // A hash that starts in the carry ends within the first
            // HASH_LEN - 1 bytes of `data`.
            let mut joined = std::mem::take(&mut self.carry);
            let carried = joined.len();
            joined.extend_from_slice(&data[..data.len().min(HASH_LEN - 1)]);
            self.search(&joined);
            if data.len() < HASH_LEN - 1 {
                // All of `data` is in `joined`: the carry goes on from there.
                self.carry = trailing_run(&joined).to_vec();
                return;
            }
            debug_assert!(carried < HASH_LEN);
        }
        self.search(data);
        self.carry = trailing_run(data).to_vec();
    }

    /// Scan a name on its own (a file name, a symlink target): not joined
    /// to what was fed before or after it.
    pub fn scan_name(&mut self, name: &[u8]) {
        if !self.candidates.is_empty() {
            self.search(name);
        }
    }

    /// End of one stream: what comes next does not continue it.
    pub fn break_stream(&mut self) {
        self.carry.clear();
    }

    /// The candidates found so far, by path.
    pub fn found(&self) -> &BTreeSet<Vec<u8>> {
        &self.found
    }

    /// Look for every whole hash in `buf`, as Nix's scanner does: test the
    /// window's last byte first and skip past any byte outside the
    /// alphabet; inside a run of base-32 bytes only the byte that enters
    /// the window is tested.
    fn search(&mut self, buf: &[u8]) {
        let mut i = 0;
        // Whether buf[i..i + HASH_LEN - 1] is known to be base-32.
        let mut known = false;
        while i + HASH_LEN <= buf.len() {
            if known {
                if !IS_BASE32[usize::from(buf[i + HASH_LEN - 1])] {
                    i += HASH_LEN;
                    known = false;
                    continue;
                }
            } else if let Some(j) = buf[i..i + HASH_LEN].iter().rposition(|&b| !IS_BASE32[usize::from(b)]) {
                i += j + 1;
                continue;
            }
            let window = &buf[i..i + HASH_LEN];
            let p = prefix15(window);
            if self.prefixes[p / 64] & (1 << (p % 64)) != 0 {
                if let Some(path) = self.candidates.get(window) {
                    if !self.found.contains(path) {
                        self.found.insert(path.clone());
                    }
                }
            }
            known = true;
            i += 1;
        }
    }
}

/// The trailing run of base-32 bytes of `data`, at most HASH_LEN - 1 long.
fn trailing_run(data: &[u8]) -> &[u8] {
    let tail = &data[data.len().saturating_sub(HASH_LEN - 1)..];
    let start = tail.iter().rposition(|&b| !IS_BASE32[usize::from(b)]).map_or(0, |p| p + 1);
    &tail[start..]
}

/// Scan what a changeset's nodes put in the layer, as Nix scans a NAR:
/// each path, symlink target and kept xattr value as a name of its own,
/// each file's bytes (read from `src`) as one stream. `stop` is asked
/// every megabyte.
pub fn scan_changeset(
    changes: &Changeset,
    src: &mut dyn Source,
    scanner: &mut Scanner,
    stop: &dyn Fn() -> bool,
) -> Result<(), LayerError> {
    let mut buf = vec![0u8; 1 << 20];
    for n in changes.nodes() {
        scanner.scan_name(&n.path);
        for (_, v) in &n.xattrs {
            scanner.scan_name(v);
        }
        let data = match &n.kind {
            Kind::Symlink(t) => {
                scanner.scan_name(t);
                continue;
            }
            Kind::File(d) => d,
            _ => continue,
        };
        let err = |source| LayerError::Entry { path: show(&n.path), source };
        let mut r = src.open(data).map_err(err)?.take(data.len());
        scanner.break_stream();
        loop {
            if stop() {
                return Err(LayerError::Read(super::stopped()));
            }
            let got = r.read(&mut buf).map_err(err)?;
            if got == 0 {
                break;
            }
            scanner.scan(&buf[..got]);
        }
        scanner.break_stream();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "/nix/store/0c0bgmfxpw3g6fsm3vfhdqfxcaqwaxhl-a";
    const B: &str = "/nix/store/1zbg2ly3gpcbxmyh2p8ncysd8w6fi4jj-b";
    const C: &str = "/nix/store/2b4kqx4ral9hhmd3zzc0q3czdrxhw1bq-c";
    const D: &str = "/nix/store/3vcqxmg9irpz3nl7ap4lj5p6g1yk9d0s-d";

    /// A's closure is A, B, C (B references C, C itself); D stands alone.
    fn graph() -> ReferenceGraph {
        let text = format!("{A}\n\n2\n{A}\n{B}\n{B}\n/nix/store/x.drv\n1\n{C}\n{C}\n\n1\n{C}\n{D}\n\n0\n");
        let mut g = ReferenceGraph::default();
        g.add_export(text.as_bytes()).unwrap();
        g
    }

    fn found(s: &Scanner) -> Vec<String> {
        s.found().iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect()
    }

    #[test]
    fn export_references_graph_files_are_read() {
        let g = graph();
        assert_eq!(g.paths().count(), 4);
        let c: Vec<_> = g.closure([A.as_bytes()]).into_iter().map(String::from_utf8).collect::<Result<_, _>>().unwrap();
        assert_eq!(c, [A, B, C]);
        assert_eq!(g.closure([D.as_bytes()]).len(), 1);
        assert!(g.closure([]).is_empty());
        for bad in [
            format!("{A}\n\n"),
            format!("{A}\n\nx\n"),
            format!("{A}\n\n2\n{B}\n"),
            "/nix/store/short-a\n\n0\n".into(),
            "nix/store/0c0bgmfxpw3g6fsm3vfhdqfxcaqwaxhl-a\n\n0\n".into(),
            "/nix/store/0c0bgmfxpw3g6fsm3vfhdqfxcaqwaxhe-a\n\n0\n".into(),
        ] {
            assert!(ReferenceGraph::default().add_export(bad.as_bytes()).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_hash_anywhere_in_the_bytes_is_a_reference() {
        let g = graph();
        let mut s = g.scanner();
        s.scan(b"#!/bin/sh\nexec /nix/store/1zbg2ly3gpcbxmyh2p8ncysd8w6fi4jj-b/bin/x\n");
        assert_eq!(found(&s), [B]);
        // The hash alone counts, as it does for Nix (no store dir, no name).
        let mut s = g.scanner();
        s.scan(b"\x00\x01 3vcqxmg9irpz3nl7ap4lj5p6g1yk9d0s\xff");
        assert_eq!(found(&s), [D]);
        // A hash not in the graph and text near a hash are nothing.
        let mut s = g.scanner();
        s.scan(b"/nix/store/9vcqxmg9irpz3nl7ap4lj5p6g1yk9d0s-zz 3vcqxmg9irpz3nl7ap4lj5p6g1yk9d0 vcqxmg9irpz3nl7ap4lj5p6g1yk9d0sE");
        assert!(s.found().is_empty(), "{:?}", found(&s));
        // A hash inside a longer base-32 run is still found.
        let mut s = g.scanner();
        s.scan(b"zzzz0c0bgmfxpw3g6fsm3vfhdqfxcaqwaxhlzzzz");
        assert_eq!(found(&s), [A]);
    }

    #[test]
    fn a_hash_split_across_writes_is_found() {
        let g = graph();
        let text = format!("prefix {C} middle {A}");
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let mut s = g.scanner();
            s.scan(&bytes[..cut]);
            s.scan(&bytes[cut..]);
            assert_eq!(found(&s), [A, C], "cut at {cut}");
        }
        // One byte at a time.
        let mut s = g.scanner();
        for b in bytes {
            s.scan(std::slice::from_ref(b));
        }
        assert_eq!(found(&s), [A, C]);
        // Three pieces with a short middle one.
        let at = text.find("bgmf").unwrap();
        let mut s = g.scanner();
        s.scan(&bytes[..at]);
        s.scan(&bytes[at..at + 3]);
        s.scan(&bytes[at + 3..]);
        assert_eq!(found(&s), [A, C]);
    }

    #[test]
    fn hashes_inside_long_base32_runs_are_found_among_many_candidates() {
        // 300 candidates; a run of base-32 bytes with two of them inside, one
        // across the boundary of two writes, and near misses (a candidate
        // with one digit changed) that must not count.
        // Pseudo-random digits (splitmix64), distinct per seed.
        let digits = |seed: u64, n: usize| -> String {
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            (0..n)
                .map(|_| {
                    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let mut z = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    char::from(BASE32[usize::try_from((z ^ (z >> 31)) % 32).unwrap()])
                })
                .collect()
        };
        let hash = |i: usize| digits(i as u64 + 1, HASH_LEN);
        let mut text = String::new();
        for i in 0..300 {
            text.push_str(&format!("/nix/store/{}-p{i}\n\n0\n", hash(i)));
        }
        let mut g = ReferenceGraph::default();
        g.add_export(text.as_bytes()).unwrap();
        let filler = digits(1_000_000, 5000);
        let mut miss = hash(5).into_bytes();
        miss[HASH_LEN - 1] = if miss[HASH_LEN - 1] == b'0' { b'1' } else { b'0' };
        let run = format!("{filler}{}{filler}{}{filler}{}", hash(17), String::from_utf8(miss).unwrap(), hash(299));
        let cut = run.len() - 10;
        let mut s = g.scanner();
        s.scan(&run.as_bytes()[..cut]);
        s.scan(&run.as_bytes()[cut..]);
        let mut want = [format!("/nix/store/{}-p17", hash(17)), format!("/nix/store/{}-p299", hash(299))];
        want.sort();
        assert_eq!(found(&s), want);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// The scan of any stream cut into any pieces finds exactly what a
        /// plain search of every 32-byte window of the whole finds. The
        /// bytes are mostly base-32 with candidates' hashes spliced in, so
        /// that runs, near misses and hashes across cuts are common.
        #[test]
        fn any_pieces_find_what_a_plain_search_of_the_whole_finds(
            parts in proptest::collection::vec((0usize..6, proptest::collection::vec(0u8..40, 0..50)), 0..12),
            cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let g = graph();
            let hashes: Vec<&[u8]> = [A, B, C, D].iter().map(|p| hash_part(p.as_bytes()).unwrap()).collect();
            let mut bytes = Vec::new();
            for (pick, noise) in &parts {
                if let Some(h) = hashes.get(*pick) {
                    bytes.extend_from_slice(h);
                }
                // 0..32: base-32 digits; 32..40: '-', '/', 'e' and others.
                let other = b"-/e\0Z.t ";
                bytes.extend(noise.iter().map(|&n| {
                    let n = usize::from(n);
                    BASE32.get(n).copied().unwrap_or_else(|| other[n - 32])
                }));
            }
            let mut want = BTreeSet::new();
            for w in bytes.windows(HASH_LEN) {
                for p in [A, B, C, D] {
                    if hash_part(p.as_bytes()) == Some(w) {
                        want.insert(p.as_bytes().to_vec());
                    }
                }
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort();
            let mut s = g.scanner();
            let mut at = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                s.scan(&bytes[at..c]);
                at = c;
            }
            proptest::prop_assert_eq!(s.found(), &want);
        }
    }

    #[test]
    fn names_and_stream_breaks_do_not_join_pieces() {
        let g = graph();
        let (head, tail) = "2b4kqx4ral9hhmd3zzc0q3czdrxhw1bq".split_at(10);
        let mut s = g.scanner();
        s.scan(head.as_bytes());
        s.break_stream();
        s.scan(tail.as_bytes());
        assert!(s.found().is_empty());
        s.scan_name(format!("share/{C}").as_bytes());
        assert_eq!(found(&s), [C]);
    }

    #[test]
    fn a_changeset_is_scanned_by_name_target_xattr_and_file_data() {
        use crate::layer::changeset::{Changeset, Data, HostFiles, Node};
        let g = graph();
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("f");
        let text = format!("#!{D}/bin/sh\n");
        std::fs::write(&file, &text).unwrap();
        let mut files = HostFiles::default();
        let f = files.push(file);
        let mut cs = Changeset::default();
        let node = |path: &str, kind| Node::new(path.as_bytes().to_vec(), kind, 0o644, 0, 0, 0);
        cs.push(node("bin", Kind::File(Data::Host { file: f, len: text.len() as u64 })), b"bin").unwrap();
        cs.push(node("link", Kind::Symlink(format!("{A}/x").into_bytes())), b"link").unwrap();
        let mut named = node(&format!("share/{}", &C[11..]), Kind::Dir);
        named.xattrs.push(("user.ref".into(), B.as_bytes().to_vec()));
        cs.push(named, b"share").unwrap();
        let mut s = g.scanner();
        scan_changeset(&cs, &mut files, &mut s, &|| false).unwrap();
        assert_eq!(found(&s), [A, B, C, D]);
        assert!(scan_changeset(&cs, &mut files, &mut g.scanner(), &|| true).is_err(), "stopped");
    }

    #[test]
    fn hash_parts_are_taken_from_store_path_names() {
        assert_eq!(hash_part(A.as_bytes()), Some(&b"0c0bgmfxpw3g6fsm3vfhdqfxcaqwaxhl"[..]));
        assert_eq!(hash_part(b"/0c0bgmfxpw3g6fsm3vfhdqfxcaqwaxhl-a"), None);
        assert_eq!(hash_part(b"/nix/store/0c0bgmfxpw3g6fsm3vfhdqfxcaqwaxhl"), None);
        assert_eq!(hash_part(b"/nix/store/0c0bgmfxpw3g6fsm3vfhdqfxcaqwaxhL-a"), None);
    }
}
