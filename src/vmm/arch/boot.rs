//! Loading the guest kernel, initramfs and command line, and writing the boot
//! information the entry protocol expects (PVH `hvm_start_info` or the zero
//! page with its e820 map).

use super::layout::*;
use super::regs::EntryMode;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{bzimage::BzImage, load_cmdline, Cmdline, KernelLoader};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
/// The 64-bit entry point of a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Errors loading what the guest boots.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {path}")]
    OpenKernel { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a kernel this VMM can boot (neither an x86_64 ELF vmlinux nor a bzImage)")]
    NotAKernel { path: PathBuf },
    #[error("loading kernel {path}: {source}")]
    LoadKernel { path: PathBuf, source: linux_loader::loader::Error },
    #[error("cannot read initramfs {path}")]
    ReadInitrd { path: PathBuf, source: std::io::Error },
    #[error("initramfs {path} ({size} bytes) does not fit in guest memory above the kernel")]
    InitrdTooBig { path: PathBuf, size: u64 },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("writing boot information to guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

/// What the vCPU needs to start the loaded kernel.
#[derive(Debug, Clone, Copy)]
pub struct EntryPoint {
    pub mode: EntryMode,
    pub addr: GuestAddress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KernelFormat {
    Elf,
    BzImage,
}

fn sniff(file: &mut File, path: &Path) -> Result<KernelFormat, BootError> {
    let mut head = [0u8; 0x208];
    let n = read_up_to(file, &mut head).map_err(|source| BootError::OpenKernel { path: path.into(), source })?;
    file.seek(SeekFrom::Start(0)).map_err(|source| BootError::OpenKernel { path: path.into(), source })?;
    if n >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(KernelFormat::Elf);
    }
    if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(BootError::NotAKernel { path: path.into() })
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Load `kernel`, `initrd` and `cmdline` into `mem` and write the boot
/// information for the protocol the kernel supports (PVH for an ELF vmlinux
/// with a PVH note, the 64-bit boot protocol otherwise).
pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<EntryPoint, BootError> {
    let mut file = File::open(kernel).map_err(|source| BootError::OpenKernel { path: kernel.into(), source })?;
    let format = sniff(&mut file, kernel)?;
    let high = Some(GuestAddress(HIMEM_START));
    let load_err = |source| BootError::LoadKernel { path: kernel.into(), source };
    let (entry, setup_header, kernel_end) = match format {
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, &mut file, high).map_err(load_err)?;
            let entry = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => EntryPoint { mode: EntryMode::Pvh, addr },
                _ => EntryPoint { mode: EntryMode::Long, addr: r.kernel_load },
            };
            (entry, None, r.kernel_end)
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut file, high).map_err(load_err)?;
            let addr = r.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET);
            (EntryPoint { mode: EntryMode::Long, addr }, r.setup_header, r.kernel_end)
        }
    };

    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    cl.insert_str(cmdline).map_err(|e| BootError::Cmdline(format!("{e} (at most {} bytes)", CMDLINE_MAX_SIZE - 1)))?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cl).map_err(|e| BootError::Cmdline(e.to_string()))?;
    let cmdline_size = u32::try_from(cmdline.len() + 1).expect("bounded by CMDLINE_MAX_SIZE");

    let ramdisk = match initrd {
        Some(path) => Some(load_initrd(mem, path, kernel_end)?),
        None => None,
    };
    let mem_end = mem.last_addr().raw_value() + 1;

    match entry.mode {
        EntryMode::Pvh => write_pvh_info(mem, mem_end, ramdisk)?,
        EntryMode::Long => write_zero_page(mem, mem_end, setup_header, cmdline_size, ramdisk)?,
    }
    Ok(entry)
}

/// Place the initramfs at the top of RAM (page aligned, below what the boot
/// protocol can address) and return (address, size).
fn load_initrd(mem: &GuestMemoryMmap, path: &Path, kernel_end: u64) -> Result<(u64, u64), BootError> {
    let mut f = File::open(path).map_err(|source| BootError::ReadInitrd { path: path.into(), source })?;
    let size = f.metadata().map_err(|source| BootError::ReadInitrd { path: path.into(), source })?.len();
    let top = (mem.last_addr().raw_value() + 1).min(INITRD_ADDR_MAX + 1);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end.max(HIMEM_START))
        .ok_or(BootError::InitrdTooBig { path: path.into(), size })?;
    let len = usize::try_from(size).map_err(|_| BootError::InitrdTooBig { path: path.into(), size })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, len).map_err(BootError::Memory)?;
    Ok((addr, size))
}

/// The guest's RAM map: low memory below the EBDA, the EBDA and legacy
/// hole reserved, RAM from 1 MiB to the end.
fn e820_map(mem_end: u64) -> [(u64, u64, u32); 3] {
    [
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
        (HIMEM_START, mem_end - HIMEM_START, E820_RAM),
    ]
}

fn write_pvh_info(mem: &GuestMemoryMmap, mem_end: u64, ramdisk: Option<(u64, u64)>) -> Result<(), BootError> {
    let map = e820_map(mem_end);
    for (i, (addr, size, type_)) in map.iter().enumerate() {
        let e = hvm_memmap_table_entry { addr: *addr, size: *size, type_: *type_, reserved: 0 };
        let at = PVH_MEMMAP_START + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(e, GuestAddress(at)).map_err(BootError::Memory)?;
    }
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: u32::try_from(map.len()).expect("3 entries"),
        ..Default::default()
    };
    if let Some((paddr, size)) = ramdisk {
        let module = hvm_modlist_entry { paddr, size, ..Default::default() };
        mem.write_obj(module, GuestAddress(PVH_MODLIST_START)).map_err(BootError::Memory)?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_START)).map_err(BootError::Memory)
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    mem_end: u64,
    setup_header: Option<linux_loader::loader::bootparam::setup_header>,
    cmdline_size: u32,
    ramdisk: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = u32::try_from(CMDLINE_START).expect("below 4 GiB");
    params.hdr.cmdline_size = cmdline_size;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    if let Some((addr, size)) = ramdisk {
        // Both below 2 GiB (INITRD_ADDR_MAX), so they fit the 32-bit fields.
        params.hdr.ramdisk_image = u32::try_from(addr).expect("below INITRD_ADDR_MAX");
        params.hdr.ramdisk_size = u32::try_from(size).expect("below INITRD_ADDR_MAX");
    }
    for (i, (addr, size, type_)) in e820_map(mem_end).iter().enumerate() {
        params.e820_table[i] = boot_e820_entry { addr: *addr, size: *size, type_: *type_ };
        params.e820_entries = u8::try_from(i + 1).expect("3 entries");
    }
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START)).map_err(BootError::Memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(mib: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mib << 20)]).unwrap()
    }

    #[test]
    fn rejects_files_that_are_not_kernels() {
        let dir = std::env::temp_dir().join(format!("rootlayer-boot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("notakernel");
        std::fs::write(&p, b"#!/bin/sh\necho hi\n").unwrap();
        let err = load(&mem(64), &p, None, "console=ttyS0").unwrap_err();
        assert!(matches!(err, BootError::NotAKernel { .. }), "{err}");
        let missing = dir.join("missing");
        assert!(matches!(load(&mem(64), &missing, None, "").unwrap_err(), BootError::OpenKernel { .. }));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn initrd_goes_page_aligned_to_the_top_of_ram() {
        let dir = std::env::temp_dir().join(format!("rootlayer-initrd-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("initrd");
        std::fs::write(&p, vec![0xabu8; 5000]).unwrap();
        let m = mem(64);
        let (addr, size) = load_initrd(&m, &p, 0x200_0000).unwrap();
        assert_eq!(size, 5000);
        assert_eq!(addr % 4096, 0);
        assert!(addr + size <= 64 << 20);
        assert!(addr + size > (64 << 20) - 8192);
        let b: u8 = m.read_obj(GuestAddress(addr + 4999)).unwrap();
        assert_eq!(b, 0xab);
        // Overlapping the kernel is refused.
        assert!(matches!(load_initrd(&m, &p, 64 << 20).unwrap_err(), BootError::InitrdTooBig { .. }));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn e820_reserves_the_legacy_hole() {
        let map = e820_map(512 << 20);
        assert_eq!(map[0], (0, EBDA_START, E820_RAM));
        assert_eq!(map[1].2, E820_RESERVED);
        assert_eq!(map[2].0 + map[2].1, 512 << 20);
    }
}
