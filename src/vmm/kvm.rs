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
