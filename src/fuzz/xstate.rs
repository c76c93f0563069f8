//! The VMM's keeper of guest tasks' extended register state
//! (`vmm::xstate`), driven by the port writes a hostile guest can make:
//! each step is one byte choosing the port, one of two vCPUs (and, at
//! times, a change of the live registers as guest user code would make it)
//! and a 32-bit value.
//! The keeper must stay within its bounds, account for every byte it holds,
//! never touch the legacy area or a component it does not keep, and hand a
//! task back exactly what it last left in the registers.

use super::{take_u32, take_u8};
use crate::vmm::xstate::{Keeper, Layout, XstateError, PORT_BASE, XSAVE_BYTES};
use kvm_bindings::kvm_cpuid_entry2;
use std::collections::HashMap;

fn layout() -> Layout {
    let leaf = |index, eax, ebx| kvm_cpuid_entry2 { function: 0xd, index, eax, ebx, ..Default::default() };
    // AVX, AVX-512 (opmask, ZMM_Hi256, Hi16_ZMM) as an AVX-512 host reports them.
    let entries = [leaf(0, 0xe7, 2688), leaf(2, 256, 576), leaf(5, 64, 1088), leaf(6, 512, 1152), leaf(7, 1024, 1664)];
    Layout::from_supported_cpuid(&entries, XSAVE_BYTES, false)
}

pub fn xstate(mut data: &[u8]) {
    // Two vCPUs: bit 6 of a step's byte picks the one whose port it is.
    let mut keeper = Keeper::new(layout(), 2);
    let mut init = vec![0u8; XSAVE_BYTES];
    init[..512].fill(0xa5);
    init[512] = 0x3;
    let mut regs = [init.clone(), init];
    // What each task last left in the kept components (the model), for the
    // switches without signals in between, and whose state each vCPU holds.
    let mut model: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut owners: [Option<u32>; 2] = [None, None];
    let mut signals = false;
    while let (Some(op), Some(value)) = (take_u8(&mut data), take_u32(&mut data)) {
        let cpu = usize::from(op & 0x40 != 0);
        if op & 0x80 != 0 {
            // Guest user code writes its AVX registers.
            regs[cpu][576..576 + 256].fill(op);
            regs[cpu][512] |= 0x4;
        }
        let port = PORT_BASE + u16::from(op % 6) * 4;
        let before = regs[cpu].clone();
        let action = keeper.write(cpu, port, &value.to_le_bytes());
        match keeper.apply(cpu, action, &mut regs[cpu]) {
            Ok(_) => {}
            Err(XstateError::OwnedElsewhere { id, cpu: at, owner }) => {
                // Refused only for what the other vCPU holds, and untouched.
                assert_eq!((id, at), (value, cpu));
                assert_eq!(owners[owner], Some(value), "refused a context the other vCPU does not hold");
                assert_ne!(owner, cpu);
                assert_eq!(regs[cpu], before, "a refused ACTIVATE changed the registers");
                return;
            }
            Err(_) => return,
        }
        let regs = &regs[cpu];
        assert_eq!(regs[..512], before[..512], "legacy area changed");
        assert_eq!(regs[520..576], before[520..576], "header past XSTATE_BV changed");
        assert_eq!(regs[2688..], before[2688..], "a component not kept changed");
        keeper.check_invariants();
        match op % 6 {
            0 => {
                assert_ne!(owners[1 - cpu], Some(value), "a context live on the other vCPU was handed out");
                if let Some(o) = owners[cpu] {
                    model.insert(o, before[576..2688].to_vec());
                }
                if !signals {
                    if let Some(want) = model.get(&value) {
                        if owners[cpu] != Some(value) {
                            assert_eq!(&regs[576..2688], &want[..], "task {value} got back another state");
                        }
                    }
                }
                owners[cpu] = Some(value);
            }
            2 => {
                model.remove(&value);
                for o in owners.iter_mut().filter(|o| **o == Some(value)) {
                    *o = None;
                }
            }
            1 => {
                // Without an owner nothing is live: the child starts at init.
                let state = if owners[cpu].is_some() { before[576..2688].to_vec() } else { vec![0; 2688 - 576] };
                model.insert(value, state);
            }
            3 | 4 => signals = true,
            // RELEASE: the owner's live state is kept; no owner after.
            5 if owners[cpu] == Some(value) => {
                model.insert(value, before[576..2688].to_vec());
                owners[cpu] = None;
            }
            _ => {}
        }
    }
}
