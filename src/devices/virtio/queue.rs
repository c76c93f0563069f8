//! Draining a virtqueue (virtio 1.2, 2.7.13 and 2.7.14): the loop every
//! device runs on its worker thread when the driver notifies a queue.

use super::Interrupt;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

/// Serve every chain the driver made available on `queue`, then interrupt
/// the driver once if any chain was returned and it wants to know.
///
/// `serve` handles one chain and returns its used length (the bytes it wrote
/// into the chain's device-writable buffers); the chain then goes on the used
/// ring. A chain whose head index is past the queue size has no used slot to
/// go to: it is passed over and the next one served.
///
/// While draining, the driver is told it need not notify (without
/// `VIRTIO_F_EVENT_IDX`, which no device here offers, `VRING_USED_F_NO_NOTIFY`;
/// with it, `avail_event` left behind); once the ring looks empty,
/// notifications are turned back on and the ring looked at again, so a chain
/// made available meanwhile is served in the same call rather than waiting
/// for a notification the driver did not send.
///
/// Fails when the available index is more than a ring ahead of what was
/// served: the driver is broken, and nothing more is served from the queue
/// until it resets the device (what was returned before is still
/// interrupted for).
pub fn drain(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &Interrupt,
    mut serve: impl FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> Result<(), virtio_queue::Error> {
    let mut completed = false;
    let result = loop {
        // Fails only for a ring address outside guest memory, which the
        // transport refused at activation.
        let _ = queue.disable_notification(mem);
        let chains: Vec<_> = match queue.iter(mem) {
            Ok(iter) => iter.collect(),
            Err(e) => break Err(e),
        };
        for chain in chains {
            let head = chain.head_index();
            let used_len = serve(chain);
            // Fails only for a head index past the queue size.
            if queue.add_used(mem, head, used_len).is_ok() {
                completed = true;
            }
        }
        match queue.enable_notification(mem) {
            // More chains arrived while notifications were off.
            Ok(true) => continue,
            _ => break Ok(()),
        }
    };
    if completed && queue.needs_notification(mem).unwrap_or(true) {
        // Failing to signal an eventfd means the VMM is going away.
        let _ = interrupt.signal_used_queue();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::VRING_USED_F_NO_NOTIFY;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    const QSIZE: u16 = 16;

    fn setup() -> (GuestMemoryMmap, Interrupt) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        (mem, Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()))
    }

    /// Make a one-descriptor chain at descriptor index `at` available.
    fn add(vq: &MockSplitQueue<'_, GuestMemoryMmap>, at: u16) {
        let d = RawDescriptor::from(Descriptor::new(0x8_0000 + u64::from(at) * 0x100, 0x100, 0, 0));
        vq.add_desc_chains(&[d], at).unwrap();
    }

    fn used(vq: &MockSplitQueue<'_, GuestMemoryMmap>) -> Vec<(u32, u32)> {
        let n = vq.used().idx().load();
        (0..usize::from(n)).map(|i| vq.used().ring().ref_at(i).unwrap().load()).map(|e| (e.id(), e.len())).collect()
    }

    /// Whether the used ring asks the driver not to notify.
    fn no_notify(mem: &GuestMemoryMmap, vq: &MockSplitQueue<'_, GuestMemoryMmap>) -> bool {
        let flags: u16 = mem.read_obj(vq.used_addr()).unwrap();
        u32::from(flags) & VRING_USED_F_NO_NOTIFY != 0
    }

    fn interrupts(irq: &Interrupt) -> u64 {
        irq.eventfd().read().unwrap_or(0)
    }

    #[test]
    fn every_available_chain_is_served_and_returned_with_one_interrupt() {
        let (mem, irq) = setup();
        let vq = MockSplitQueue::new(&mem, QSIZE);
        let mut q: Queue = vq.create_queue().unwrap();
        for at in [0, 1, 2] {
            add(&vq, at);
        }
        drain(&mut q, &mem, &irq, |chain| u32::from(chain.head_index()) + 10).unwrap();
        assert_eq!(used(&vq), [(0, 10), (1, 11), (2, 12)]);
        assert_eq!(interrupts(&irq), 1);
        assert!(!no_notify(&mem, &vq), "notifications are back on");

        drain(&mut q, &mem, &irq, |_| panic!("nothing is available")).unwrap();
        assert_eq!(interrupts(&irq), 0, "no interrupt without a returned chain");
    }

    #[test]
    fn chains_made_available_while_draining_are_served_in_the_same_call() {
        let (mem, irq) = setup();
        let vq = MockSplitQueue::new(&mem, QSIZE);
        let mut q: Queue = vq.create_queue().unwrap();
        add(&vq, 0);
        let mut served = Vec::new();
        drain(&mut q, &mem, &irq, |chain| {
            assert!(no_notify(&mem, &vq), "no notifications needed while draining");
            if chain.head_index() == 0 {
                add(&vq, 1);
            }
            served.push(chain.head_index());
            0
        })
        .unwrap();
        assert_eq!(served, [0, 1]);
        assert_eq!(interrupts(&irq), 1);
    }

    #[test]
    fn a_head_index_past_the_queue_size_is_passed_over() {
        let (mem, irq) = setup();
        let vq = MockSplitQueue::new(&mem, QSIZE);
        let mut q: Queue = vq.create_queue().unwrap();
        add(&vq, 0);
        add(&vq, 1);
        // The second available entry names descriptor 200 of 16.
        let avail = vq.avail_addr();
        mem.write_obj(200u16, avail.unchecked_add(4 + 2)).unwrap();
        let mut served = 0;
        drain(&mut q, &mem, &irq, |_| {
            served += 1;
            0
        })
        .unwrap();
        assert_eq!(served, 2);
        assert_eq!(used(&vq), [(0, 0)]);
        assert_eq!(interrupts(&irq), 1);
    }

    #[test]
    fn an_available_index_more_than_a_ring_ahead_is_an_error_and_serves_nothing() {
        let (mem, irq) = setup();
        let vq = MockSplitQueue::new(&mem, QSIZE);
        let mut q: Queue = vq.create_queue().unwrap();
        vq.avail().idx().store(QSIZE + 1);
        let r = drain(&mut q, &mem, &irq, |_| panic!("nothing is served from a broken ring"));
        assert!(matches!(r, Err(virtio_queue::Error::InvalidAvailRingIndex)), "{r:?}");
        assert_eq!(interrupts(&irq), 0);
    }
}
