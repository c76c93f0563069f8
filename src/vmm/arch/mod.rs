//! x86_64 specifics: guest-physical layout, CPUID, boot register state,
//! kernel loading.

pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
