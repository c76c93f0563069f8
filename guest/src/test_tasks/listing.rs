//! The merged tree as the guest sees it ([`rootlayer_protocol::listing`]).

use std::path::Path;

/// Write the listing of the tree under `root` to `out`.
pub fn write(root: &Path, out: &Path) -> anyhow::Result<()> {
    std::fs::write(out, rootlayer_protocol::listing::of_tree(root)?)?;
    Ok(())
}
