//! `rootlayer export`: dockerTools' exportImage, on the host.

use super::stop::{check_out, Stop};
use super::verdict::Summary;
use super::{cache_dir, JobError, Workdir, VERIFIED_DIR};
use crate::image::{BaseImage, OutputFormat, Selector};
use crate::layer::changeset::{self, Changeset, Visit};
use crate::layer::{write_atomically, ConvertOptions};
use std::path::Path;
use std::time::Instant;

/// `rootlayer export`: flatten `image` to one root-filesystem tar at `out`
/// (dockerTools' exportImage), on the host, with no guest: the same
/// flattening as the base disk, written by the layers' deterministic writer.
pub fn export(image: &Path, selector: &Selector, out: &Path) -> Result<Summary, JobError> {
    let start = Instant::now();
    check_out(out)?;
    let workdir = Workdir::new()?;
    let base = BaseImage::open_remembering(image, selector, Some(&cache_dir().join(VERIFIED_DIR)))?;
    if let Some(m) = base.selected().message() {
        eprintln!("rootlayer: {m}");
    }
    let stop = Stop::interrupts_only();
    let (tree, staged) = stop.judge(crate::job::base::flatten(Some(&base), workdir.path()).map_err(Into::into))?;
    let flattened = start.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut changes = Changeset::default();
    changes.add_tree(&tree, |_, _| Visit::Entry)?;
    let mut layers = crate::job::base::open_staged(&staged)?;
    // The layers' writer, straight to `out` (no whiteouts in a merged tree).
    let write = |out: &mut dyn std::io::Write| changeset::write(changes, &mut layers, out, &ConvertOptions::default());
    let info = stop.judge(write_atomically(out, &|| stop.now(), write).map_err(Into::into))?;
    Ok(Summary {
        diff_id: info.diff_id.to_string(),
        size: info.size,
        out: out.to_path_buf(),
        format: OutputFormat::Layer,
        phases: vec![
            ("flatten".into(), flattened),
            ("write".into(), t.elapsed().as_secs_f64()),
            ("total".into(), start.elapsed().as_secs_f64()),
        ],
        script_status: 0,
        boot: None,
    })
}
