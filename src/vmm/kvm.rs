//! Opening /dev/kvm with errors a user can act on, and the KVM capabilities
//! the VMM relies on.

use super::VmmError;
use kvm_ioctls::{Cap, Kvm};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const KVM_PATH: &str = "/dev/kvm";

/// Open /dev/kvm and check the capabilities we use.
pub fn open() -> Result<Kvm, VmmError> {
    let kvm = Kvm::new().map_err(|e| VmmError::KvmUnavailable(explain_open_error(Path::new(KVM_PATH), e.errno())))?;
    for (cap, name) in [
        (Cap::Irqchip, "in-kernel irqchip"),
        (Cap::Pit2, "in-kernel PIT"),
        (Cap::Irqfd, "irqfd"),
        (Cap::Ioeventfd, "ioeventfd"),
        (Cap::UserMemory, "user memory regions"),
        (Cap::ExtCpuid, "CPUID2"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmmError::KvmUnavailable(format!("{KVM_PATH} lacks a capability rootlayer needs: {name}")));
        }
    }
    Ok(kvm)
}

/// A one-line explanation of why /dev/kvm could not be opened.
pub fn explain_open_error(path: &Path, errno: i32) -> String {
    match errno {
        libc::ENOENT => format!(
            "{} does not exist: this machine has no KVM (enable virtualisation, or load the kvm module)",
            path.display()
        ),
        libc::EACCES | libc::EPERM => {
            let group =
                std::fs::metadata(path).ok().and_then(|m| group_name(m.gid()).or_else(|| Some(m.gid().to_string())));
            match group {
                Some(g) if g != "root" && g != "0" => format!(
                    "{} is not accessible to this user: join group '{g}' (e.g. `sudo usermod -aG {g} $USER`, then log in again)",
                    path.display()
                ),
                _ => format!("{} is not accessible to this user: give it a group (usually 'kvm', mode 0660) and join it", path.display()),
            }
        }
        e => format!("cannot open {}: {}", path.display(), std::io::Error::from_raw_os_error(e)),
    }
}

/// How guest kernel code runs under this host's KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// Hardware virtualisation (VMX or SVM): the guest kernel uses XSAVE
    /// and every instruction the CPU has.
    Hardware,
    /// A software KVM (e.g. PVM, `kvm_pvm`): guest user code runs natively
    /// with the host's XCR0, guest kernel code is emulated, and the
    /// emulator lacks XSAVE and other instructions (kernel-config/README.md).
    Emulated,
}

/// The kind of this host's KVM. Hardware only where the CPU has VMX or
/// SVM, a hardware KVM module is loaded and no software one is: a wrong
/// "emulated" costs only speed on hardware (the guest runs noxsave, its
/// user code cannot reach AVX state at all), a wrong "hardware" would stop
/// the guest at its first XSAVE.
pub fn kind() -> KvmKind {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let loaded: Vec<&str> =
        ["kvm_intel", "kvm_amd", "kvm_pvm"].into_iter().filter(|m| Path::new("/sys/module").join(m).exists()).collect();
    kind_from(&cpuinfo, &loaded)
}

/// [`kind`] from /proc/cpuinfo's text and the KVM modules loaded.
pub fn kind_from(cpuinfo: &str, loaded_modules: &[&str]) -> KvmKind {
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).and_then(|l| l.split_once(':')).map_or("", |(_, f)| f);
    let hw_cpu = flags.split_whitespace().any(|f| f == "vmx" || f == "svm");
    let hw_module = loaded_modules.iter().any(|m| *m == "kvm_intel" || *m == "kvm_amd");
    let software = loaded_modules.contains(&"kvm_pvm");
    if hw_cpu && hw_module && !software {
        KvmKind::Hardware
    } else {
        KvmKind::Emulated
    }
}

/// Group name from /etc/group (no NSS: a static lookup is all we need).
fn group_name(gid: u32) -> Option<String> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        (f.next()?.parse::<u32>().ok()? == gid).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_kind_is_hardware_only_with_vmx_or_svm_and_a_hardware_module() {
        let intel = "processor\t: 0\nflags\t\t: fpu vme vmx avx xsave\n";
        let amd = "flags\t\t: fpu svm avx2\n";
        let pvm_host = "flags\t\t: fpu avx xsave hypervisor cpuid_fault\n";
        assert_eq!(kind_from(intel, &["kvm_intel"]), KvmKind::Hardware);
        assert_eq!(kind_from(amd, &["kvm_amd"]), KvmKind::Hardware);
        assert_eq!(kind_from(pvm_host, &["kvm_pvm"]), KvmKind::Emulated);
        assert_eq!(kind_from(intel, &["kvm_intel", "kvm_pvm"]), KvmKind::Emulated, "PVM may serve /dev/kvm");
        assert_eq!(kind_from(intel, &[]), KvmKind::Emulated, "no hardware module: assume emulated");
        assert_eq!(kind_from("", &["kvm_amd"]), KvmKind::Emulated);
        assert_eq!(kind_from("flags: fpu vmxx\n", &["kvm_intel"]), KvmKind::Emulated, "whole flags only");
    }

    #[test]
    fn missing_device_says_there_is_no_kvm() {
        let m = explain_open_error(Path::new("/nonexistent/kvm"), libc::ENOENT);
        assert!(m.contains("does not exist"), "{m}");
    }

    #[test]
    fn permission_error_names_a_group_to_join() {
        // /etc/group's owner group is root; a made-up path falls back to the
        // generic advice. Both must tell the user what to do.
        let m = explain_open_error(Path::new("/nonexistent/kvm"), libc::EACCES);
        assert!(m.contains("not accessible") && m.contains("join"), "{m}");
    }
}
