//! The command line, as clap reads it.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "rootlayer", version, about = "Run privileged image build steps in a throwaway microVM, without root")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Boot the guest kernel and agent, wait for the agent's ready line and
    /// the guest's clean exit (a smoke test of KVM, kernel and agent).
    Boot(BootArgs),
    /// dockerTools' runAsRoot: run SCRIPT as root in a chroot of the base
    /// image with an overlay on top, and write the changes as a new layer.
    RunAsRoot(Box<RunAsRootArgs>),
    /// dockerTools' exportImage: flatten an image into one root-filesystem tar.
    Export(ExportArgs),
    /// nixpkgs' closureInfo: registration, store-paths and total-nar-size
    /// of the paths in Nix exportReferencesGraph files, in a new directory
    /// (nix/default.nix's buildImageWithNixDb loads the registration).
    ClosureInfo(ClosureInfoArgs),
    /// Device throughput inside the guest (scripts/bench-devices).
    #[command(hide = true)]
    BenchIo(BenchIoArgs),
}

#[derive(clap::Args, Debug)]
pub(crate) struct BenchIoArgs {
    /// A file inside one of the --store directories, read sequentially.
    #[arg(long)]
    pub(crate) read_file: PathBuf,
    /// MiB written sequentially (and fsynced) to the scratch disk.
    #[arg(long, default_value_t = 64)]
    pub(crate) write_mib: u64,
    #[command(flatten)]
    pub(crate) guest: GuestArgs,
}

/// The guest: kernel, initramfs, memory, time.
#[derive(clap::Args, Debug)]
pub(crate) struct GuestArgs {
    /// Guest kernel (vmlinux or bzImage). Default: the installed one (../share/rootlayer/vmlinux, vmlinux-smp for --cpus 2 and more), else the one scripts/build-kernel cached.
    #[arg(long, env = "ROOTLAYER_KERNEL")]
    pub(crate) kernel: Option<PathBuf>,
    /// Initramfs holding the agent. Default: the installed one (../share/rootlayer/initramfs.cpio), else the one scripts/build-initramfs cached.
    #[arg(long, env = "ROOTLAYER_INITRD")]
    pub(crate) initrd: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    pub(crate) mem_size: u64,
    /// Scratch disk in MiB (holds the overlay upper dir: the new layer).
    #[arg(long, default_value_t = 1024)]
    pub(crate) disk_size: u64,
    /// Virtual CPUs, 1 to the host's cores (at most 32): the script's
    /// processes run in parallel on them.
    #[arg(long, default_value_t = 1)]
    pub(crate) cpus: u32,
    /// Wall-clock limit for the whole job, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub(crate) timeout: u64,
    /// Most the guest may write back to the host (the new layer, before
    /// conversion), in MiB; beyond it the job fails with exit code 7.
    #[arg(long, default_value_t = 4096)]
    pub(crate) max_output: u64,
    /// Most guest output echoed on stderr, in KiB/s after a 16 s burst
    /// (lines beyond it are dropped and counted); 0 for no limit.
    #[arg(long, default_value_t = 64)]
    pub(crate) max_log_rate: u64,
    /// Share this directory read-only at the same path in the guest
    /// (repeatable; e.g. /nix/store).
    #[arg(long = "store")]
    pub(crate) stores: Vec<PathBuf>,
    /// Do not echo the guest console (the script's output) on stderr.
    #[arg(long)]
    pub(crate) quiet: bool,
    /// Extra kernel command-line parameters.
    #[arg(long, default_value = "")]
    pub(crate) cmdline: String,
    /// Do not filter the VMM's vCPU and device threads with seccomp (debugging).
    #[arg(long)]
    pub(crate) no_seccomp: bool,
    /// Boot the guest cold: neither restore it from the snapshot of the
    /// booted guest ($ROOTLAYER_CACHE/snapshots) nor take one.
    #[arg(long, env = "ROOTLAYER_NO_SNAPSHOT", value_parser = clap::builder::FalseyValueParser::new())]
    pub(crate) no_snapshot: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct RunAsRootArgs {
    /// The script to run as root (a #! line picks its interpreter inside the image or a store).
    #[arg(long)]
    pub(crate) script: PathBuf,
    /// Base image: docker-archive (.tar, .tar.gz) or OCI layout (directory or tar).
    #[arg(long)]
    pub(crate) from_image: Option<PathBuf>,
    #[arg(long)]
    pub(crate) from_image_name: Option<String>,
    #[arg(long)]
    pub(crate) from_image_tag: Option<String>,
    /// Copy this directory's contents into the layer as root:root first (repeatable).
    #[arg(long)]
    pub(crate) contents: Vec<PathBuf>,
    /// Keep symlinks to directories in --contents as links (rsync -K) instead of following them.
    #[arg(long)]
    pub(crate) keep_contents_dirlinks: bool,
    /// Run this (with a #! line) in the new layer's directory after the script, not chrooted.
    #[arg(long)]
    pub(crate) extra_commands: Option<PathBuf>,
    /// A file listing host paths (one per line: a Nix closure, as
    /// writeReferencesToFile writes it) to add to the layer whole, owned by
    /// root, leaving out those the base image already has (as dockerTools does).
    #[arg(long)]
    pub(crate) store_paths: Option<PathBuf>,
    /// A Nix exportReferencesGraph file (repeatable): the store paths the
    /// layer may reference. Those whose hash occurs in the layer's files,
    /// names or symlink targets are added with their closure, as
    /// dockerTools adds the layer's references (leaving out what the base
    /// image already has).
    #[arg(long)]
    pub(crate) references_graph: Vec<PathBuf>,
    /// mkRootLayer's baseJson: the JSON object `--format layer` writes as
    /// `json` (with the layer checksum added), and the config of an image
    /// without --from-image.
    #[arg(long)]
    pub(crate) base_json: Option<PathBuf>,
    /// Creation time for the image config and history: RFC 3339, or "now" (as dockerTools allows).
    #[arg(long, default_value = "1970-01-01T00:00:01Z")]
    pub(crate) created: String,
    /// Clamp every mtime in the layer to this (seconds since the epoch).
    #[arg(long, env = "SOURCE_DATE_EPOCH")]
    pub(crate) source_date_epoch: Option<u64>,
    /// Output form: layer (mkRootLayer's directory), docker-archive or oci.
    #[arg(long, default_value = "layer")]
    pub(crate) format: String,
    /// Name and tag of the output image (docker-archive, oci).
    #[arg(long, default_value = "rootlayer")]
    pub(crate) name: String,
    #[arg(long, default_value = "latest")]
    pub(crate) tag: String,
    /// Print a JSON result on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// Where to write the result (must not exist).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Write a listing of the image's tree with the new layer applied here
    /// (one sorted line per path: type, mode, owner, size, link target or
    /// device, FNV-1a of the contents), made on the host from the base
    /// image and the layer's changes.
    #[arg(long, value_name = "FILE")]
    pub(crate) merged_listing: Option<PathBuf>,
    /// Write the test agent's listing of the merged tree it saw after the
    /// script here (for tests: needs the test initramfs).
    #[arg(long, hide = true, value_name = "FILE")]
    pub(crate) guest_merged_listing: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) guest: GuestArgs,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ExportArgs {
    #[arg(long)]
    pub(crate) from_image: PathBuf,
    #[arg(long)]
    pub(crate) from_image_name: Option<String>,
    #[arg(long)]
    pub(crate) from_image_tag: Option<String>,
    /// The root-filesystem tar to write (must not exist).
    #[arg(long)]
    pub(crate) out: PathBuf,
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ClosureInfoArgs {
    /// The directory to write (must not exist).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// exportReferencesGraph files.
    pub(crate) graphs: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct BootArgs {
    /// Guest kernel: vmlinux (PVH) or bzImage. Default: the installed one
    /// (../share/rootlayer/vmlinux, vmlinux-smp for --cpus 2 and more), else
    /// the one scripts/build-kernel cached.
    #[arg(long, env = "ROOTLAYER_KERNEL")]
    pub(crate) kernel: Option<PathBuf>,
    /// Initramfs (uncompressed cpio) holding the agent as /init. Default:
    /// the installed one (../share/rootlayer/initramfs.cpio), else the one
    /// scripts/build-initramfs cached.
    #[arg(long, env = "ROOTLAYER_INITRD")]
    pub(crate) initrd: Option<PathBuf>,
    /// Extra kernel command-line parameters, appended to the built-in ones.
    #[arg(long, default_value = "")]
    pub(crate) cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    pub(crate) mem_size: u64,
    /// Virtual CPUs, 1 to the host's cores (at most 32).
    #[arg(long, default_value_t = 1)]
    pub(crate) cpus: u32,
    /// Wall-clock limit in seconds.
    #[arg(long, default_value_t = 120)]
    pub(crate) timeout: u64,
    /// Do not echo the guest console on stderr.
    #[arg(long)]
    pub(crate) quiet: bool,
    /// Do not filter the VMM's vCPU thread with seccomp (debugging).
    #[arg(long)]
    pub(crate) no_seccomp: bool,
    /// Print the full kernel command line and exit (for booting the same
    /// guest elsewhere, e.g. under QEMU in scripts/bench-boot).
    #[arg(long)]
    pub(crate) print_cmdline: bool,
    /// Boot cold: neither restore from the snapshot of this guest nor take one.
    #[arg(long, env = "ROOTLAYER_NO_SNAPSHOT", value_parser = clap::builder::FalseyValueParser::new())]
    pub(crate) no_snapshot: bool,
}
