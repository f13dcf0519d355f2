//! What a team of threads needs to run one computation in phases, each thread its share of every
//! phase (one short text's BERT forward split across cores, `oe::text::models::bert_cpu`): a
//! barrier that spins (a phase lasts microseconds to a fraction of a millisecond, less than a
//! sleeping thread takes to wake) and a buffer that the threads write at disjoint places between
//! barriers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A reusable barrier for `n` threads that spins while the wait is short, then yields the core.
/// A thread that panics while holding a [`Barrier::guard`] poisons it: the others then panic at
/// their next wait rather than wait forever.
#[derive(Debug)]
pub struct Barrier {
    n: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    poisoned: AtomicBool,
}

/// Poisons its [`Barrier`] when dropped by a panicking thread.
#[derive(Debug)]
pub struct Guard<'a>(&'a Barrier);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poisoned.store(true, Ordering::Release);
        }
    }
}

impl Barrier {
    /// Pause instructions before a waiting thread starts yielding its core (about 10–40 µs): a
    /// partner that was descheduled (the core taken by another thread) then gets it back.
    const SPINS: u32 = 256;

    /// A barrier for `n` threads (at least 1).
    pub fn new(n: usize) -> Self {
        Self {
            n: n.max(1),
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
        }
    }

    /// Hold it while taking part: should this thread panic, the others stop waiting.
    pub fn guard(&self) -> Guard<'_> {
        Guard(self)
    }

    /// Returns once all `n` threads have called it (this time round). Everything a thread wrote
    /// before its call is visible to every thread after theirs.
    ///
    /// # Panics
    /// When a thread panicked while holding a [`Barrier::guard`].
    pub fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            // The last to arrive: reset the count (before anyone can see the new generation and
            // arrive at the next barrier), then release the others.
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0;
        while self.generation.load(Ordering::Acquire) == generation {
            assert!(
                !self.poisoned.load(Ordering::Acquire),
                "another thread of the team panicked"
            );
            if spins < Self::SPINS {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// A float buffer that several threads read and write between [`Barrier`]s: in each phase every
/// element is either only read (by anyone) or written by one thread and not read by another.
/// The accessors are `unsafe` because that rule is the caller's to keep.
#[derive(Debug)]
pub struct SharedBuf<'a> {
    ptr: *mut f32,
    len: usize,
    _buf: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: a `SharedBuf` is a `&mut [f32]` whose accessors make the caller keep the access rule
// above (no element written by one thread while another reads or writes it).
unsafe impl Send for SharedBuf<'_> {}
// SAFETY: as above.
unsafe impl Sync for SharedBuf<'_> {}

impl<'a> SharedBuf<'a> {
    /// Shares `buf` (mutably borrowed for as long as the `SharedBuf` lives).
    pub fn new(buf: &'a mut [f32]) -> Self {
        Self {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            _buf: std::marker::PhantomData,
        }
    }

    /// Floats in the buffer.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no float.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole buffer, to read.
    ///
    /// # Safety
    /// No thread writes any of the buffer while the slice lives.
    pub unsafe fn read(&self) -> &[f32] {
        // SAFETY: `ptr` is valid for `len` floats while the borrow lives; no writer (the caller's).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Floats `range`, to write (and read).
    ///
    /// # Safety
    /// No other thread reads or writes any of `range` while the slice lives.
    ///
    /// # Panics
    /// When `range` goes past the buffer.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn write(&self, range: std::ops::Range<usize>) -> &mut [f32] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: within the buffer (checked); exclusive for the slice's life (the caller's).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) }
    }

    /// The first float's address, for kernels that write at strided places.
    pub fn as_mut_ptr(&self) -> *mut f32 {
        self.ptr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three threads, many phases: in each, thread `i` writes its third of the buffer with a
    /// value computed from the whole buffer as the previous phase left it; every thread must see
    /// every write of the previous phase (a barrier that let a thread through early, or a reset
    /// racing the next round, shows up as a wrong sum).
    #[test]
    fn every_thread_sees_the_previous_phase() {
        let (threads, len, phases) = (3, 30, 200);
        let mut buf = vec![1.0f32; len];
        let barrier = Barrier::new(threads);
        {
            let shared = SharedBuf::new(&mut buf);
            std::thread::scope(|s| {
                for i in 0..threads {
                    let (shared, barrier) = (&shared, &barrier);
                    s.spawn(move || {
                        for _ in 0..phases {
                            // SAFETY: no thread writes between these two barriers.
                            let sum: f32 = unsafe { shared.read() }.iter().sum();
                            barrier.wait();
                            let part = len / threads * i..len / threads * (i + 1);
                            // SAFETY: the thirds are disjoint, nobody reads until the barrier.
                            unsafe { shared.write(part) }.fill(sum / len as f32 + 1.0);
                            barrier.wait();
                        }
                    });
                }
            });
        }
        // Each phase: every element becomes mean + 1, so after `phases` of them 1 + phases.
        assert!(buf.iter().all(|&v| v == 1.0 + phases as f32), "{buf:?}");
    }

    /// A thread that panics with a guard held releases the others (they panic too) instead of
    /// leaving them waiting forever.
    #[test]
    fn a_panicking_member_poisons_the_barrier() {
        let barrier = Barrier::new(2);
        let results: Vec<bool> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|i| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        let _guard = barrier.guard();
                        assert!(i != 1, "member 1 fails");
                        barrier.wait();
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().is_err()).collect()
        });
        assert_eq!(results, vec![true, true]);
    }
}
