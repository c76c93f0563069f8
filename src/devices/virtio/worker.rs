//! The thread that serves a device's queues: waits on the queue
//! notification eventfds (bound to the guest's QueueNotify writes with
//! ioeventfd) and on a stop eventfd, and calls the device's handler with the
//! index of each queue that was notified.

use std::io;
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// A running worker; dropping it stops the thread and waits for it.
#[derive(Debug)]
pub struct Worker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Start a thread named `name` that calls `handle(queue_index)` each time
    /// one of `queue_evts` is signalled. The handler returns false to stop.
    pub fn spawn<F>(name: &str, queue_evts: Vec<EventFd>, mut handle: F) -> io::Result<Self>
    where
        F: FnMut(usize) -> bool + Send + 'static,
    {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let stop_token = queue_evts.len() as u64;
        let epoll = Epoll::new()?;
        for (i, evt) in queue_evts.iter().enumerate() {
            epoll.ctl(ControlOperation::Add, evt.as_raw_fd(), EpollEvent::new(EventSet::IN, i as u64))?;
        }
        epoll.ctl(ControlOperation::Add, stop.as_raw_fd(), EpollEvent::new(EventSet::IN, stop_token))?;
        let thread_stop = stop.try_clone()?;
        let thread = std::thread::Builder::new().name(name.to_string()).spawn(move || {
            let _keep = thread_stop;
            let mut events = vec![EpollEvent::default(); queue_evts.len() + 1];
            loop {
                let n = match epoll.wait(-1, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                for ev in &events[..n] {
                    let token = ev.data();
                    if token == stop_token {
                        return;
                    }
                    let index = usize::try_from(token).expect("queue index");
                    // Drain the counter; several notifications are one pass.
                    let _ = queue_evts[index].read();
                    if !handle(index) {
                        return;
                    }
                }
            }
        })?;
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn calls_the_handler_with_the_notified_queue_and_stops_on_drop() {
        let evts: Vec<EventFd> = (0..2).map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap()).collect();
        let kick: Vec<EventFd> = evts.iter().map(|e| e.try_clone().unwrap()).collect();
        let (tx, rx) = mpsc::channel();
        let worker = Worker::spawn("test-worker", evts, move |q| tx.send(q).is_ok()).unwrap();
        kick[1].write(1).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        kick[0].write(3).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 0);
        drop(worker);
        kick[0].write(1).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "no calls after stop");
    }
}
