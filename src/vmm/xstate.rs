//! Extended register state kept by the VMM for the guest kernel's tasks.
//!
//! On a software-emulated KVM, guest user code runs natively with the host's
//! XCR0 (AVX, AVX-512 reachable whatever the guest's CPUID says), while the
//! guest kernel runs `noxsave` (the emulator cannot execute XSAVE/XRSTOR in
//! kernel mode) and saves only the x87/SSE part of a task's registers. So
//! without help one guest process's YMM/ZMM upper halves and opmask
//! registers leak into, and are clobbered by, another's.
//!
//! The guest kernel (patch 0004, `kernel/fpu/pv_xstate.c`) tells the VMM
//! through I/O ports whenever the FPU registers change hands, and the VMM
//! swaps the *extended* part of the vCPU's XSAVE state (every component
//! above SSE) with `KVM_GET_XSAVE`/`KVM_SET_XSAVE`, leaving the legacy part
//! as the kernel just loaded it:
//!
//! | port            | access    | meaning                                           |
//! |-----------------|-----------|---------------------------------------------------|
//! | `PORT_BASE + 0` | read 32   | [`MAGIC`]                                         |
//! | `PORT_BASE + 4` | read 32   | the XCR0 features the VMM keeps ([`Layout::mask`])|
//! | `PORT_BASE + 0` | write 32  | ACTIVATE(id): the registers become `id`'s         |
//! | `PORT_BASE + 4` | write 32  | COPY(id): fork; the owner's state becomes `id`'s  |
//! | `PORT_BASE + 8` | write 32  | DROP(id): exit or exec; forget `id`               |
//! | `PORT_BASE + 12`| write 32  | SIGPUSH(f): signal frame f written for the owner  |
//! | `PORT_BASE + 16`| write 32  | SIGPOP(f): the owner returns from frame f         |
//! | `PORT_BASE + 20`| write 32  | RELEASE(id): `id` leaves this vCPU (SMP)          |
//!
//! Each vCPU has its own owner (the context whose extended state is in
//! that vCPU's registers); the saved states are the whole guest's. With
//! more than one vCPU online the kernel releases a task at every switch
//! away from it, so a task that comes back on another vCPU finds its state
//! saved; an ACTIVATE of a context another vCPU still owns would hand out
//! a stale state, and stops the guest instead ([`XstateError::OwnedElsewhere`]).
//!
//! A signal frame holds only what the guest kernel saves (FXSAVE), so the
//! VMM keeps the interrupted code's extended state per frame (keyed by the
//! low 32 bits of the frame's user address) and starts the handler from the
//! init state, as an XSAVE frame would; sigreturn puts it back. Frames
//! whose handlers left by longjmp are forgotten when an older frame
//! returns, and at most [`MAX_FRAMES`] are kept per task.
//!
//! [`Keeper`] is the pure bookkeeping (unit-tested here); the vCPU loop
//! (`vcpu.rs`) does the two ioctls around it. The guest is untrusted: ids
//! are arbitrary numbers to the keeper, and the memory it holds for them is
//! bounded ([`MAX_CONTEXTS`], [`MAX_BYTES`]).

use kvm_bindings::kvm_cpuid_entry2;
use std::collections::HashMap;

/// First of the three 32-bit ports (away from every legacy ISA device).
pub const PORT_BASE: u16 = 0x7e00;
pub const PORT_LEN: u16 = 24;
/// "RLXS", read at `PORT_BASE`; the kernel enables itself only on it.
pub const MAGIC: u32 = 0x5358_4c52;
const REG_ACTIVATE: u16 = 0;
const REG_COPY: u16 = 4;
const REG_DROP: u16 = 8;
const REG_SIGPUSH: u16 = 12;
const REG_SIGPOP: u16 = 16;
const REG_RELEASE: u16 = 20;
const REG_MASK: u16 = 4;

/// Size of `struct kvm_xsave` (the legacy, non-XSAVE2 ioctls); larger
/// areas (AMX tile data) come through KVM_GET_XSAVE2.
pub const XSAVE_BYTES: usize = 4096;
/// The XSAVE header: XSTATE_BV at 512, XCOMP_BV at 520.
const XSTATE_BV_OFFSET: usize = 512;
const XSAVE_EXT_START: usize = 576;
/// XTILECFG and XTILEDATA.
const AMX_BITS: [u32; 2] = [17, 18];
/// x87 and SSE: the legacy area the guest kernel saves itself.
pub const XFEATURE_MASK_FPSSE: u64 = 0b11;

/// Contexts the keeper holds at most (the guest's live tasks that used
/// extended state); a guest past it is stopped.
pub const MAX_CONTEXTS: usize = 32 * 1024;
/// Bytes of saved state the keeper holds at most (64 MiB).
pub const MAX_BYTES: usize = 64 << 20;
/// Signal frames kept per task (nested handlers; the oldest go first).
pub const MAX_FRAMES: usize = 64;

/// One XSAVE component in the standard (non-compacted) format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Component {
    pub bit: u32,
    pub offset: usize,
    pub size: usize,
}

/// Which components the VMM keeps and where they lie in `kvm_xsave`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    components: Vec<Component>,
}

impl Layout {
    /// The user-state components KVM supports (CPUID leaf 0xd) that fit an
    /// XSAVE area of `area_max` bytes (4096, or what KVM_CAP_XSAVE2 says):
    /// AVX, the AVX-512 opmask and ZMM parts, PKRU, and AMX tile state
    /// where the process holds the permission for it (KVM reports AMX only
    /// then). Supervisor components are left out, and those the host guards
    /// with XFD unless `xfd_allowed`: the agent then refuses to run where
    /// user code can reach them.
    pub fn from_supported_cpuid(entries: &[kvm_cpuid_entry2], area_max: usize, xfd_allowed: bool) -> Layout {
        let leaf0 = entries.iter().find(|e| e.function == 0xd && e.index == 0);
        let supported = leaf0.map_or(0, |e| u64::from(e.eax) | (u64::from(e.edx) << 32));
        let mut components = Vec::new();
        for bit in 2..64u32 {
            if supported & (1 << bit) == 0 {
                continue;
            }
            let Some(e) = entries.iter().find(|e| e.function == 0xd && e.index == bit) else { continue };
            let (size, offset) = (e.eax as usize, e.ebx as usize);
            let supervisor = e.ecx & 1 != 0;
            let xfd = e.ecx & (1 << 2) != 0;
            let fits = offset >= XSAVE_EXT_START && size > 0 && offset + size <= area_max;
            if !supervisor && (xfd_allowed || !xfd) && fits && offset % 4 == 0 && size % 4 == 0 {
                components.push(Component { bit, offset, size });
            }
        }
        // XTILECFG and XTILEDATA only make sense together (and only
        // XTILEDATA carries the XFD flag): both or neither.
        let amx: Vec<u32> = components.iter().map(|c| c.bit).filter(|b| AMX_BITS.contains(b)).collect();
        if amx.len() != AMX_BITS.len() {
            components.retain(|c| !AMX_BITS.contains(&c.bit));
        }
        Layout { components }
    }

    /// The XCR0 bits kept (above FP and SSE).
    pub fn mask(&self) -> u64 {
        self.components.iter().fold(0, |m, c| m | (1 << c.bit))
    }

    /// End of the last kept component (the XSAVE area size for the kept
    /// features, at least the legacy area and header).
    pub fn area_size(&self) -> usize {
        self.components.iter().map(|c| c.offset + c.size).max().unwrap_or(XSAVE_EXT_START)
    }

    pub fn components(&self) -> &[Component] {
        &self.components
    }
}

/// One context's extended state: the XSTATE_BV bits of the kept components
/// that are not in their init state, and those components' bytes in bit
/// order. A context that never used AVX costs a few bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Saved {
    bv: u64,
    #[serde(with = "crate::persist::hex")]
    data: Vec<u8>,
}

/// What the vCPU loop must do after a port write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing touches the vCPU.
    None,
    /// Read the vCPU's XSAVE state, call [`Keeper::switch`], write it back.
    Switch(u32),
    /// Read the vCPU's XSAVE state and call [`Keeper::copy`].
    Copy(u32),
    /// Read the vCPU's XSAVE state, keep it for signal frame `f`, start the
    /// handler from init; write it back.
    SigPush(u32),
    /// Read the vCPU's XSAVE state, put back what frame `f` kept; write it
    /// back.
    SigPop(u32),
    /// Read the vCPU's XSAVE state and keep it as the owner's, which
    /// leaves the vCPU.
    Release(u32),
}

/// Why the keeper stopped the guest.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum XstateError {
    #[error("the guest kept extended register state for more than {MAX_CONTEXTS} tasks")]
    TooManyContexts,
    #[error("the guest's saved extended register state passed {MAX_BYTES} bytes")]
    TooManyBytes,
    #[error("a snapshot's extended register state does not fit this host's layout")]
    BadState,
    #[error("the guest activated task context {id} on vCPU {cpu} while vCPU {owner} still holds its registers")]
    OwnedElsewhere { id: u32, cpu: usize, owner: usize },
    #[error("vCPU {cpu} is not one of the guest's {cpus}")]
    NoSuchVcpu { cpu: usize, cpus: usize },
}

/// A keeper's bookkeeping as a snapshot holds it (in id order, so that the
/// same guest gives the same bytes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeeperState {
    /// Per vCPU, the context in its registers.
    owners: Vec<Option<u32>>,
    saved: Vec<(u32, Saved)>,
    frames: Vec<(u32, Vec<(u32, Saved)>)>,
    switches: u64,
}

/// Per-task extended state for the guest's vCPUs.
#[derive(Debug)]
pub struct Keeper {
    layout: Layout,
    /// Per vCPU, the context whose extended state is in its registers.
    owners: Vec<Option<u32>>,
    saved: HashMap<u32, Saved>,
    /// Per context, the extended state of each signal frame, oldest first.
    frames: HashMap<u32, Vec<(u32, Saved)>>,
    bytes: usize,
    /// Port operations that reached the vCPU (for the closing figures).
    pub switches: u64,
}

impl Keeper {
    /// A keeper for `cpus` vCPUs (at least one).
    pub fn new(layout: Layout, cpus: usize) -> Keeper {
        let owners = vec![None; cpus.max(1)];
        Keeper { layout, owners, saved: HashMap::new(), frames: HashMap::new(), bytes: 0, switches: 0 }
    }

    /// The vCPUs it keeps state for.
    pub fn cpus(&self) -> usize {
        self.owners.len()
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Whether `port` is one of ours.
    pub fn claims(port: u16) -> bool {
        (PORT_BASE..PORT_BASE + PORT_LEN).contains(&port)
    }

    /// A port read: the magic, the mask, or all ones.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        let value = match (port.wrapping_sub(PORT_BASE), data.len()) {
            (0, 4) => MAGIC,
            (REG_MASK, 4) => u32::try_from(self.layout.mask() & 0xffff_ffff).expect("masked"),
            _ => u32::MAX,
        };
        for (d, v) in data.iter_mut().zip(value.to_le_bytes().iter().cycle()) {
            *d = *v;
        }
    }

    /// A port write from vCPU `cpu`: DROP is done here; the others need
    /// the vCPU's state (the returned [`Action`]). Writes of another width,
    /// to an unknown register or from a vCPU the keeper does not have are
    /// ignored.
    pub fn write(&mut self, cpu: usize, port: u16, data: &[u8]) -> Action {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else { return Action::None };
        let Some(&owner) = self.owners.get(cpu) else { return Action::None };
        let id = u32::from_le_bytes(bytes);
        match port.wrapping_sub(PORT_BASE) {
            REG_ACTIVATE if owner == Some(id) => Action::None,
            REG_ACTIVATE => Action::Switch(id),
            REG_COPY => Action::Copy(id),
            REG_SIGPUSH => Action::SigPush(id),
            REG_SIGPOP => Action::SigPop(id),
            // A release of what this vCPU does not hold keeps nothing.
            REG_RELEASE if owner == Some(id) => Action::Release(id),
            REG_DROP => {
                self.forget(id);
                self.forget_frames(id);
                // Wherever it was live: a task that exits on another vCPU
                // than the one it last ran user code on.
                for o in self.owners.iter_mut().filter(|o| **o == Some(id)) {
                    *o = None;
                }
                Action::None
            }
            _ => Action::None,
        }
    }

    /// The owner of vCPU `cpu`'s registers.
    fn owner(&self, cpu: usize) -> Result<Option<u32>, XstateError> {
        self.owners.get(cpu).copied().ok_or(XstateError::NoSuchVcpu { cpu, cpus: self.owners.len() })
    }

    /// ACTIVATE(id) on vCPU `cpu`'s XSAVE area: keep the extended part as
    /// its owner's, put `id`'s in its place (init for an unknown id). A
    /// context another vCPU holds is refused: its saved state is stale.
    ///
    /// `xsave` is the vCPU's whole area, at least [`Layout::area_size`]
    /// bytes (the caller sizes it from the same CPUID).
    pub fn switch(&mut self, cpu: usize, id: u32, xsave: &mut [u8]) -> Result<(), XstateError> {
        self.switches += 1;
        let owner = self.owner(cpu)?;
        if owner == Some(id) {
            return Ok(());
        }
        if let Some(other) = self.owners.iter().position(|o| *o == Some(id)) {
            return Err(XstateError::OwnedElsewhere { id, cpu, owner: other });
        }
        if let Some(owner) = owner {
            let state = self.extract(xsave);
            self.store(owner, state)?;
        }
        let incoming = self.forget(id).unwrap_or_default();
        self.insert(&incoming, xsave);
        self.owners[cpu] = Some(id);
        Ok(())
    }

    /// RELEASE(id) on vCPU `cpu`: the owner `id` leaves it; its live state
    /// (in `xsave`) is kept, and the vCPU has no owner.
    pub fn release(&mut self, cpu: usize, id: u32, xsave: &[u8]) -> Result<(), XstateError> {
        self.switches += 1;
        if self.owner(cpu)? != Some(id) {
            return Ok(());
        }
        let state = self.extract(xsave);
        self.store(id, state)?;
        self.owners[cpu] = None;
        Ok(())
    }

    /// Carry out `action` on vCPU `cpu`'s XSAVE area; true if the area
    /// changed and must be written back.
    pub fn apply(&mut self, cpu: usize, action: Action, xsave: &mut [u8]) -> Result<bool, XstateError> {
        match action {
            Action::None => Ok(false),
            Action::Switch(id) => self.switch(cpu, id, xsave).map(|()| true),
            Action::Copy(id) => self.copy(cpu, id, xsave).map(|()| false),
            Action::SigPush(frame) => self.sig_push(cpu, frame, xsave).map(|()| true),
            Action::SigPop(frame) => self.sig_pop(cpu, frame, xsave),
            Action::Release(id) => self.release(cpu, id, xsave).map(|()| false),
        }
    }

    /// SIGPUSH(frame): keep the owner's live extended state for `frame` and
    /// put the init state in its place. Without an owner nothing is live
    /// to keep.
    pub fn sig_push(&mut self, cpu: usize, frame: u32, xsave: &mut [u8]) -> Result<(), XstateError> {
        self.switches += 1;
        let Some(owner) = self.owner(cpu)? else { return Ok(()) };
        let state = self.extract(xsave);
        if self.bytes + state.data.len() > MAX_BYTES {
            return Err(XstateError::TooManyBytes);
        }
        let stack = self.frames.entry(owner).or_default();
        if stack.len() >= MAX_FRAMES {
            let (_, oldest) = stack.remove(0);
            self.bytes -= oldest.data.len();
        }
        self.bytes += state.data.len();
        stack.push((frame, state));
        self.insert(&Saved::default(), xsave);
        Ok(())
    }

    /// SIGPOP(frame): put back what `frame` kept (true: `xsave` changed),
    /// forgetting the frames pushed after it. A frame the keeper does not
    /// know (pushed before the oldest kept one, or never) leaves the state
    /// as the handler left it.
    pub fn sig_pop(&mut self, cpu: usize, frame: u32, xsave: &mut [u8]) -> Result<bool, XstateError> {
        self.switches += 1;
        let Some(owner) = self.owner(cpu)? else { return Ok(false) };
        let Some(stack) = self.frames.get_mut(&owner) else { return Ok(false) };
        let Some(at) = stack.iter().rposition(|(f, _)| *f == frame) else { return Ok(false) };
        let mut popped: Vec<(u32, Saved)> = stack.drain(at..).collect();
        self.bytes -= popped.iter().map(|(_, s)| s.data.len()).sum::<usize>();
        let (_, state) = popped.swap_remove(0);
        self.insert(&state, xsave);
        Ok(true)
    }

    /// COPY(id): the owner's live extended state (in `xsave`) becomes `id`'s.
    /// Without an owner the child starts from the init state.
    /// The signal frames the owner is inside are the child's too (a fork
    /// in a handler returns through the same frames).
    pub fn copy(&mut self, cpu: usize, id: u32, xsave: &[u8]) -> Result<(), XstateError> {
        self.switches += 1;
        let owner = self.owner(cpu)?;
        let state = if owner.is_some() { self.extract(xsave) } else { Saved::default() };
        self.store(id, state)?;
        self.forget_frames(id);
        let frames = owner.and_then(|o| self.frames.get(&o)).cloned().unwrap_or_default();
        let bytes: usize = frames.iter().map(|(_, s)| s.data.len()).sum();
        if self.bytes + bytes > MAX_BYTES {
            return Err(XstateError::TooManyBytes);
        }
        if !frames.is_empty() {
            self.bytes += bytes;
            self.frames.insert(id, frames);
        }
        Ok(())
    }

    /// What a snapshot keeps of this keeper.
    pub fn state(&self) -> KeeperState {
        let mut saved: Vec<_> = self.saved.iter().map(|(id, s)| (*id, s.clone())).collect();
        saved.sort_by_key(|(id, _)| *id);
        let mut frames: Vec<_> = self.frames.iter().map(|(id, f)| (*id, f.clone())).collect();
        frames.sort_by_key(|(id, _)| *id);
        KeeperState { owners: self.owners.clone(), saved, frames, switches: self.switches }
    }

    /// A keeper as a snapshot left it, checked against `layout` (this
    /// host's), the bounds a live keeper keeps and `cpus` (this guest's).
    pub fn from_state(layout: Layout, state: KeeperState, cpus: usize) -> Result<Keeper, XstateError> {
        let live: Vec<u32> = state.owners.iter().flatten().copied().collect();
        let distinct = live.iter().collect::<std::collections::HashSet<_>>().len() == live.len();
        if state.owners.len() != cpus || !distinct {
            return Err(XstateError::BadState);
        }
        let fits = |s: &Saved| {
            let known = layout.mask();
            let want: usize = layout.components.iter().filter(|c| s.bv & (1 << c.bit) != 0).map(|c| c.size).sum();
            s.bv & !known == 0 && s.data.len() == want
        };
        let all =
            state.saved.iter().map(|(_, s)| s).chain(state.frames.iter().flat_map(|(_, f)| f.iter().map(|(_, s)| s)));
        let mut bytes = 0usize;
        for s in all {
            if !fits(s) {
                return Err(XstateError::BadState);
            }
            bytes += s.data.len();
        }
        if bytes > MAX_BYTES {
            return Err(XstateError::TooManyBytes);
        }
        if state.saved.len() > MAX_CONTEXTS || state.frames.iter().any(|(_, f)| f.len() > MAX_FRAMES) {
            return Err(XstateError::TooManyContexts);
        }
        let saved: HashMap<u32, Saved> = state.saved.into_iter().collect();
        let frames: HashMap<u32, Vec<(u32, Saved)>> = state.frames.into_iter().collect();
        Ok(Keeper { layout, owners: state.owners, saved, frames, bytes, switches: state.switches })
    }

    /// Contexts held (not counting the owner's live state).
    pub fn contexts(&self) -> usize {
        self.saved.len()
    }

    /// Panics unless the byte count matches what is held and stays in
    /// bounds (for the fuzz target and the tests).
    #[cfg(any(test, feature = "fuzz"))]
    pub fn check_invariants(&self) {
        let saved: usize = self.saved.values().map(|s| s.data.len()).sum();
        let frames: usize = self.frames.values().flatten().map(|(_, s)| s.data.len()).sum();
        assert_eq!(self.bytes, saved + frames, "byte count");
        assert!(self.bytes <= MAX_BYTES && self.saved.len() <= MAX_CONTEXTS);
        assert!(self.frames.values().all(|f| f.len() <= MAX_FRAMES));
        let live: Vec<u32> = self.owners.iter().flatten().copied().collect();
        let distinct: std::collections::HashSet<_> = live.iter().collect();
        assert_eq!(distinct.len(), live.len(), "a context live on two vCPUs");
        for s in self.saved.values().chain(self.frames.values().flatten().map(|(_, s)| s)) {
            let want: usize = self.layout.components.iter().filter(|c| s.bv & (1 << c.bit) != 0).map(|c| c.size).sum();
            assert_eq!(s.data.len(), want, "saved bytes match their XSTATE_BV");
        }
    }

    fn forget(&mut self, id: u32) -> Option<Saved> {
        let old = self.saved.remove(&id)?;
        self.bytes -= old.data.len();
        Some(old)
    }

    fn forget_frames(&mut self, id: u32) {
        if let Some(stack) = self.frames.remove(&id) {
            self.bytes -= stack.iter().map(|(_, s)| s.data.len()).sum::<usize>();
        }
    }

    fn store(&mut self, id: u32, state: Saved) -> Result<(), XstateError> {
        self.forget(id);
        if self.saved.len() >= MAX_CONTEXTS {
            return Err(XstateError::TooManyContexts);
        }
        if self.bytes + state.data.len() > MAX_BYTES {
            return Err(XstateError::TooManyBytes);
        }
        self.bytes += state.data.len();
        self.saved.insert(id, state);
        Ok(())
    }

    fn extract(&self, xsave: &[u8]) -> Saved {
        let bv = xstate_bv(xsave) & self.layout.mask();
        let mut data = Vec::new();
        for c in &self.layout.components {
            if bv & (1 << c.bit) != 0 {
                data.extend_from_slice(&xsave[c.offset..c.offset + c.size]);
            }
        }
        Saved { bv, data }
    }

    /// Write `state`'s components into `xsave`, zero the kept ones it does
    /// not have and set their XSTATE_BV bits accordingly (clear: the init
    /// state). The legacy area and any component not kept stay as they are.
    fn insert(&self, state: &Saved, xsave: &mut [u8]) {
        let mut at = 0;
        for c in &self.layout.components {
            let area = &mut xsave[c.offset..c.offset + c.size];
            if state.bv & (1 << c.bit) != 0 {
                area.copy_from_slice(&state.data[at..at + c.size]);
                at += c.size;
            } else {
                area.fill(0);
            }
        }
        let bv = (xstate_bv(xsave) & !self.layout.mask()) | state.bv;
        xsave[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8].copy_from_slice(&bv.to_le_bytes());
    }
}

fn xstate_bv(xsave: &[u8]) -> u64 {
    u64::from_le_bytes(xsave[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8].try_into().expect("8 bytes"))
}

/// An XSAVE area's 32-bit words (`kvm_xsave` and its XSAVE2 extension) as
/// bytes and back (little-endian).
pub fn words_to_bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

pub fn bytes_to_words(bytes: &[u8], words: &mut [u32]) {
    for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(4)) {
        *word = u32::from_le_bytes(chunk.try_into().expect("4 bytes"));
    }
}

/// The per-task state a snapshot keeps; a restore is checked against this
/// keeper's layout (this host's) and the bounds a live keeper keeps.
impl crate::persist::Persist for Keeper {
    type State = KeeperState;
    type Error = XstateError;
    fn save(&mut self) -> Result<KeeperState, XstateError> {
        Ok(self.state())
    }
    fn restore(&mut self, state: &KeeperState) -> Result<(), XstateError> {
        *self = Keeper::from_state(self.layout().clone(), state.clone(), self.cpus())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 { function: 0xd, index, eax, ebx, ecx, edx, ..Default::default() }
    }

    /// Leaf 0xd as KVM reports it on an AVX-512 + AMX host.
    fn avx512_amx_host() -> Vec<kvm_cpuid_entry2> {
        vec![
            leaf(0, 0x6_02e7, 0x2b00, 0x2b00, 0),
            leaf(1, 0xf, 0, 0, 0),
            leaf(2, 256, 576, 0, 0),
            leaf(5, 64, 1088, 0, 0),
            leaf(6, 512, 1152, 0, 0),
            leaf(7, 1024, 1664, 0, 0),
            leaf(9, 8, 2688, 0, 0),
            leaf(17, 64, 2752, 2, 0),
            leaf(18, 8192, 2816, 6, 0),
        ]
    }

    fn layout() -> Layout {
        Layout::from_supported_cpuid(&avx512_amx_host(), XSAVE_BYTES, false)
    }

    fn area(fill: u8, bv: u64) -> Vec<u8> {
        let mut a = vec![fill; XSAVE_BYTES];
        a[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8].copy_from_slice(&bv.to_le_bytes());
        a
    }

    #[test]
    fn layout_keeps_user_components_that_fit_and_drops_amx() {
        let l = layout();
        assert_eq!(l.mask(), (1 << 2) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 9));
        assert_eq!(l.area_size(), 2696);
        assert_eq!(Layout::from_supported_cpuid(&[], XSAVE_BYTES, true).mask(), 0, "no leaf 0xd: nothing kept");
    }

    #[test]
    fn layout_keeps_amx_with_an_xsave2_area_and_the_permission() {
        let l = Layout::from_supported_cpuid(&avx512_amx_host(), 11008, true);
        assert_eq!(l.mask(), 0x6_02e4);
        assert_eq!(l.area_size(), 11008);
        assert_eq!(Layout::from_supported_cpuid(&avx512_amx_host(), 11008, false).mask(), 0x2e4, "no permission");
        assert_eq!(
            Layout::from_supported_cpuid(&avx512_amx_host(), XSAVE_BYTES, true).mask(),
            0x2e4,
            "no room for tile data: no AMX at all"
        );
    }

    #[test]
    fn amx_tile_data_is_kept_like_any_other_component() {
        let l = Layout::from_supported_cpuid(&avx512_amx_host(), 11008, true);
        let mut k = Keeper::new(l, 1);
        let mut regs = vec![0u8; 11008];
        regs[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8].copy_from_slice(&0x3u64.to_le_bytes());
        k.switch(0, 1, &mut regs).unwrap();
        regs[2816..11008].fill(0x99);
        regs[2752..2816].fill(0x01);
        regs[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8].copy_from_slice(&0x6_0003u64.to_le_bytes());
        k.switch(0, 2, &mut regs).unwrap();
        assert!(regs[2752..11008].iter().all(|b| *b == 0) && xstate_bv(&regs) == 0x3);
        k.switch(0, 1, &mut regs).unwrap();
        assert!(regs[2816..11008].iter().all(|b| *b == 0x99) && xstate_bv(&regs) == 0x6_0003);
    }

    #[test]
    fn layout_skips_supervisor_and_oversized_components() {
        let l = Layout::from_supported_cpuid(
            &[leaf(0, 0x7 | (1 << 8), 0, 0, 0), leaf(2, 256, 576, 0, 0), leaf(8, 16, 0, 1, 0)],
            XSAVE_BYTES,
            true,
        );
        assert_eq!(l.mask(), 1 << 2);
        let l = Layout::from_supported_cpuid(&[leaf(0, 0x7, 0, 0, 0), leaf(2, 256, 4000, 0, 0)], XSAVE_BYTES, true);
        assert_eq!(l.mask(), 0, "a component past the 4 KiB area is not kept");
    }

    #[test]
    fn ports_answer_magic_and_mask() {
        let k = Keeper::new(layout(), 1);
        let mut d = [0u8; 4];
        k.read(PORT_BASE, &mut d);
        assert_eq!(u32::from_le_bytes(d), MAGIC);
        k.read(PORT_BASE + 4, &mut d);
        assert_eq!(u64::from(u32::from_le_bytes(d)), layout().mask());
        let mut b = [0u8; 1];
        k.read(PORT_BASE, &mut b);
        assert_eq!(b, [0xff], "a byte read is not the magic");
        assert!(Keeper::claims(PORT_BASE + 23) && !Keeper::claims(PORT_BASE + 24) && !Keeper::claims(PORT_BASE - 1));
    }

    #[test]
    fn two_tasks_keep_their_own_extended_state_and_the_legacy_area_is_untouched() {
        let mut k = Keeper::new(layout(), 1);
        let all = 0x2e7;
        // Task 1 runs and fills its registers with 0x11.
        assert_eq!(k.write(0, PORT_BASE, &1u32.to_le_bytes()), Action::Switch(1));
        let mut regs = area(0, 0x3);
        k.switch(0, 1, &mut regs).unwrap();
        regs = area(0x11, all);
        // Task 2: starts from the init state; its legacy area is what the
        // kernel loaded.
        regs[..512].fill(0x22);
        k.switch(0, 2, &mut regs).unwrap();
        assert!(regs[..512].iter().all(|b| *b == 0x22), "legacy area changed");
        assert_eq!(xstate_bv(&regs), 0x3, "task 2's extended state is init");
        for c in layout().components() {
            assert!(regs[c.offset..c.offset + c.size].iter().all(|b| *b == 0), "component {} not init", c.bit);
        }
        // Task 2 uses AVX only; back to task 1, whose state returns whole.
        regs[576..576 + 256].fill(0x33);
        regs[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8].copy_from_slice(&0x7u64.to_le_bytes());
        k.switch(0, 1, &mut regs).unwrap();
        assert_eq!(xstate_bv(&regs), all);
        for c in layout().components() {
            assert!(regs[c.offset..c.offset + c.size].iter().all(|b| *b == 0x11), "component {}", c.bit);
        }
        k.switch(0, 2, &mut regs).unwrap();
        assert_eq!(xstate_bv(&regs), 0x7);
        assert!(regs[576..576 + 256].iter().all(|b| *b == 0x33));
        assert!(regs[1088..2696].iter().all(|b| *b == 0), "task 2 never had AVX-512 state");
    }

    #[test]
    fn a_keeper_restored_from_its_state_goes_on_where_it_was() {
        let mut k = Keeper::new(layout(), 1);
        let mut regs = area(0, 0x3);
        k.switch(0, 1, &mut regs).unwrap();
        regs = area(0x11, 0x2e7);
        k.switch(0, 2, &mut regs).unwrap();
        regs[576..576 + 256].fill(0x22);
        regs[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8].copy_from_slice(&0x7u64.to_le_bytes());
        k.sig_push(0, 0x1000, &mut regs).unwrap();
        let state = k.state();
        let json = serde_json::to_string(&state).unwrap();
        let mut back = Keeper::from_state(layout(), serde_json::from_str(&json).unwrap(), 1).unwrap();
        back.check_invariants();
        assert_eq!(back.state(), state, "the same bookkeeping");
        // The handler returns and task 1 is switched back in, as they would
        // have in the guest the snapshot was taken of.
        assert!(back.sig_pop(0, 0x1000, &mut regs).unwrap());
        assert!(regs[576..576 + 256].iter().all(|b| *b == 0x22), "frame kept across the snapshot");
        back.switch(0, 1, &mut regs).unwrap();
        assert_eq!(xstate_bv(&regs), 0x2e7);
        assert!(regs[1088..2696].iter().all(|b| *b == 0x11), "task 1's AVX-512 state kept across the snapshot");
    }

    #[test]
    fn a_snapshot_state_that_does_not_fit_this_host_is_refused() {
        let mut k = Keeper::new(layout(), 1);
        let mut regs = area(0, 0x3);
        k.switch(0, 1, &mut regs).unwrap();
        regs = area(0x11, 0x2e7);
        k.switch(0, 2, &mut regs).unwrap();
        let state = k.state();
        // A host that keeps only AVX: task 1's AVX-512 bytes have no place.
        let avx_only =
            Layout::from_supported_cpuid(&[leaf(0, 0x7, 0, 0, 0), leaf(2, 256, 576, 0, 0)], XSAVE_BYTES, false);
        assert_eq!(Keeper::from_state(avx_only, state.clone(), 1).unwrap_err(), XstateError::BadState);
        let mut json: serde_json::Value = serde_json::to_value(&state).unwrap();
        json["saved"][0][1]["data"] = serde_json::Value::String("00".into());
        let cut: KeeperState = serde_json::from_value(json).unwrap();
        assert_eq!(Keeper::from_state(layout(), cut, 1).unwrap_err(), XstateError::BadState, "bytes short of their bv");
    }

    #[test]
    fn components_not_kept_are_left_alone() {
        let mut k = Keeper::new(layout(), 1);
        let mut regs = area(0x44, 0x3 | (1 << 17));
        k.switch(0, 1, &mut regs).unwrap();
        k.switch(0, 2, &mut regs).unwrap();
        assert_eq!(xstate_bv(&regs) & (1 << 17), 1 << 17, "AMX bit is not ours to change");
        assert!(regs[2752..2816].iter().all(|b| *b == 0x44));
    }

    #[test]
    fn activate_of_the_owner_needs_no_vcpu_access() {
        let mut k = Keeper::new(layout(), 1);
        let mut regs = area(0, 0x3);
        k.switch(0, 5, &mut regs).unwrap();
        assert_eq!(k.write(0, PORT_BASE, &5u32.to_le_bytes()), Action::None);
        assert_eq!(k.write(0, PORT_BASE, &[5, 0]), Action::None, "a 16-bit write is ignored");
    }

    #[test]
    fn fork_copies_the_owners_state_and_exec_or_exit_forgets() {
        let mut k = Keeper::new(layout(), 1);
        let mut regs = area(0, 0x3);
        k.switch(0, 1, &mut regs).unwrap();
        regs[576..576 + 256].fill(0x55);
        regs[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8].copy_from_slice(&0x7u64.to_le_bytes());
        assert_eq!(k.write(0, PORT_BASE + 4, &2u32.to_le_bytes()), Action::Copy(2));
        k.copy(0, 2, &regs).unwrap();
        // The parent goes on and changes its registers; the child gets the
        // state of the fork.
        regs[576..576 + 256].fill(0x66);
        k.switch(0, 2, &mut regs).unwrap();
        assert!(regs[576..576 + 256].iter().all(|b| *b == 0x55));
        // The child execs: dropped while owner, it restarts from init.
        assert_eq!(k.write(0, PORT_BASE + 8, &2u32.to_le_bytes()), Action::None);
        assert_eq!(k.write(0, PORT_BASE, &3u32.to_le_bytes()), Action::Switch(3));
        k.switch(0, 3, &mut regs).unwrap();
        assert_eq!(xstate_bv(&regs), 0x3);
        // The parent exits while not the owner: its saved state goes.
        assert_eq!(k.contexts(), 1);
        k.write(0, PORT_BASE + 8, &1u32.to_le_bytes());
        assert_eq!(k.contexts(), 0);
        assert_eq!(k.bytes, 0);
    }

    fn set_ymm(regs: &mut [u8], fill: u8) {
        regs[576..576 + 256].fill(fill);
        let bv = xstate_bv(regs) | 0x4;
        regs[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8].copy_from_slice(&bv.to_le_bytes());
    }

    fn ymm_is(regs: &[u8], fill: u8) -> bool {
        regs[576..576 + 256].iter().all(|b| *b == fill) && (xstate_bv(regs) & 0x4 != 0) == (fill != 0)
    }

    #[test]
    fn a_signal_handler_starts_from_init_and_sigreturn_restores_the_interrupted_state() {
        let mut k = Keeper::new(layout(), 1);
        let mut regs = area(0, 0x3);
        k.switch(0, 1, &mut regs).unwrap();
        set_ymm(&mut regs, 0x11);
        assert_eq!(k.write(0, PORT_BASE + 12, &0x1000u32.to_le_bytes()), Action::SigPush(0x1000));
        assert!(k.apply(0, Action::SigPush(0x1000), &mut regs).unwrap());
        assert!(ymm_is(&regs, 0), "the handler starts from init");
        // The handler uses AVX, is preempted by task 2, comes back.
        set_ymm(&mut regs, 0x22);
        k.switch(0, 2, &mut regs).unwrap();
        set_ymm(&mut regs, 0x33);
        k.switch(0, 1, &mut regs).unwrap();
        assert!(ymm_is(&regs, 0x22));
        // A nested signal, left by longjmp; then the outer frame returns.
        k.sig_push(0, 0x800, &mut regs).unwrap();
        set_ymm(&mut regs, 0x44);
        assert_eq!(k.write(0, PORT_BASE + 16, &0x1000u32.to_le_bytes()), Action::SigPop(0x1000));
        assert!(k.apply(0, Action::SigPop(0x1000), &mut regs).unwrap());
        assert!(ymm_is(&regs, 0x11), "sigreturn restores what the signal interrupted");
        assert!(!k.sig_pop(0, 0x800, &mut regs).unwrap(), "the abandoned inner frame went with the outer one");
        assert!(ymm_is(&regs, 0x11));
        assert!(!k.sig_pop(0, 0x1234, &mut regs).unwrap(), "an unknown frame changes nothing");
    }

    #[test]
    fn fork_in_a_handler_gives_the_child_the_frames_and_exit_frees_them() {
        let mut k = Keeper::new(layout(), 1);
        let mut regs = area(0, 0x3);
        k.switch(0, 1, &mut regs).unwrap();
        set_ymm(&mut regs, 0x55);
        k.sig_push(0, 0x2000, &mut regs).unwrap();
        k.copy(0, 2, &regs).unwrap();
        k.switch(0, 2, &mut regs).unwrap();
        assert!(k.sig_pop(0, 0x2000, &mut regs).unwrap());
        assert!(ymm_is(&regs, 0x55), "the child returns through the parent's frame");
        k.write(0, PORT_BASE + 8, &2u32.to_le_bytes());
        k.write(0, PORT_BASE + 8, &1u32.to_le_bytes());
        assert_eq!((k.contexts(), k.bytes), (0, 0));
        assert!(k.frames.is_empty());
    }

    #[test]
    fn frames_per_task_are_bounded() {
        let mut k = Keeper::new(layout(), 1);
        let mut regs = area(0, 0x3);
        k.switch(0, 1, &mut regs).unwrap();
        let max = u32::try_from(MAX_FRAMES).expect("small");
        for f in 0..max * 2 {
            set_ymm(&mut regs, 0x66);
            k.sig_push(0, f, &mut regs).unwrap();
        }
        assert_eq!(k.frames[&1].len(), MAX_FRAMES);
        assert!(!k.sig_pop(0, 0, &mut regs).unwrap(), "the oldest frames were dropped");
        assert!(k.sig_pop(0, max, &mut regs).unwrap());
        assert_eq!(k.bytes, 0);
    }

    #[test]
    fn a_guest_cannot_make_the_keeper_grow_without_bound() {
        let mut k = Keeper::new(layout(), 1);
        let mut regs = area(0x77, 0x2e7);
        k.switch(0, 1, &mut regs).unwrap();
        let mut result = Ok(());
        for id in 2..=u32::try_from(MAX_CONTEXTS + 2).expect("small") {
            result = k.copy(0, id, &regs);
            if result.is_err() {
                break;
            }
        }
        let err = result.unwrap_err();
        assert!(matches!(err, XstateError::TooManyBytes | XstateError::TooManyContexts), "{err}");
        assert!(k.bytes <= MAX_BYTES && k.contexts() <= MAX_CONTEXTS);
    }

    #[test]
    fn a_task_released_on_one_vcpu_finds_its_state_on_another() {
        let mut k = Keeper::new(layout(), 2);
        let (mut cpu0, mut cpu1) = (area(0, 0x3), area(0, 0x3));
        k.switch(0, 1, &mut cpu0).unwrap();
        set_ymm(&mut cpu0, 0x11);
        k.switch(1, 2, &mut cpu1).unwrap();
        set_ymm(&mut cpu1, 0x22);
        // Task 1 leaves vCPU 0 (the kernel releases it at the switch) and
        // comes back on vCPU 1, whose task 2 is kept first.
        assert_eq!(k.write(0, PORT_BASE + 20, &1u32.to_le_bytes()), Action::Release(1));
        assert!(!k.apply(0, Action::Release(1), &mut cpu0).unwrap(), "a release writes nothing back");
        assert_eq!(k.write(1, PORT_BASE, &1u32.to_le_bytes()), Action::Switch(1));
        k.switch(1, 1, &mut cpu1).unwrap();
        assert!(ymm_is(&cpu1, 0x11), "task 1's registers followed it");
        // Task 2 goes to vCPU 0, which holds no one's state any more.
        k.switch(0, 2, &mut cpu0).unwrap();
        assert!(ymm_is(&cpu0, 0x22));
        k.check_invariants();
        assert_eq!(k.state().owners, vec![Some(2), Some(1)]);
    }

    #[test]
    fn a_context_another_vcpu_holds_is_never_handed_out_stale() {
        let mut k = Keeper::new(layout(), 2);
        let (mut cpu0, mut cpu1) = (area(0, 0x3), area(0, 0x3));
        k.switch(0, 7, &mut cpu0).unwrap();
        set_ymm(&mut cpu0, 0x77);
        // No release: vCPU 0's registers still hold task 7's live state.
        let before = cpu1.clone();
        let err = k.switch(1, 7, &mut cpu1).unwrap_err();
        assert_eq!(err, XstateError::OwnedElsewhere { id: 7, cpu: 1, owner: 0 });
        assert_eq!(cpu1, before, "the refusing vCPU's registers are untouched");
        // A release by a vCPU that does not hold the context keeps nothing.
        assert_eq!(k.write(1, PORT_BASE + 20, &7u32.to_le_bytes()), Action::None);
        k.release(1, 7, &cpu1).unwrap();
        assert_eq!(k.contexts(), 0);
        // Exit on vCPU 1 of a task last live on vCPU 0 frees it there.
        k.write(1, PORT_BASE + 8, &7u32.to_le_bytes());
        assert_eq!(k.state().owners, vec![None, None]);
        k.switch(1, 7, &mut cpu1).unwrap();
        assert!(ymm_is(&cpu1, 0), "a dropped context starts from init");
        // A vCPU the keeper does not have is refused, never indexed.
        assert_eq!(k.write(5, PORT_BASE, &1u32.to_le_bytes()), Action::None);
        assert_eq!(k.switch(5, 1, &mut cpu1).unwrap_err(), XstateError::NoSuchVcpu { cpu: 5, cpus: 2 });
    }

    #[test]
    fn a_snapshot_of_two_vcpus_is_restored_only_into_two() {
        let mut k = Keeper::new(layout(), 2);
        let (mut cpu0, mut cpu1) = (area(0, 0x3), area(0, 0x3));
        k.switch(0, 1, &mut cpu0).unwrap();
        k.switch(1, 2, &mut cpu1).unwrap();
        let state = k.state();
        assert_eq!(Keeper::from_state(layout(), state.clone(), 1).unwrap_err(), XstateError::BadState);
        assert_eq!(Keeper::from_state(layout(), state.clone(), 2).unwrap().state(), state);
        let mut json = serde_json::to_value(&state).unwrap();
        json["owners"] = serde_json::json!([1, 1]);
        let twice: KeeperState = serde_json::from_value(json).unwrap();
        assert_eq!(
            Keeper::from_state(layout(), twice, 2).unwrap_err(),
            XstateError::BadState,
            "one context live twice"
        );
    }

    #[test]
    fn words_round_trip() {
        let mut words = vec![0u32; 2752];
        words[128] = 0x7;
        words[2000] = 0xdead_beef;
        let bytes = words_to_bytes(&words);
        assert_eq!(xstate_bv(&bytes), 7);
        let mut back = vec![0u32; 2752];
        bytes_to_words(&bytes, &mut back);
        assert_eq!(back, words);
    }
}
