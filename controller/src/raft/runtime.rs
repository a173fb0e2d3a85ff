//! [`GantryRuntime`]: the controller's openraft `AsyncRuntime`. It is openraft's
//! `TokioRuntime` in every respect (tasks, sleeps, timeouts, instants, oneshots are tokio's)
//! except one: the generator openraft draws election timeouts from. In production that is
//! the thread's OS-seeded generator, as with `TokioRuntime`; a simulation seeds it for the
//! thread that drives its (current-thread) tokio runtime with [`seed_thread_rng`], so that
//! every election timeout of every member in that run follows from the seed.

use openraft::async_runtime::TokioOneShotSender;
use openraft::{AsyncRuntime, OptionalSend, TokioInstant, TokioRuntime};
use rand::rngs::StdRng;
use rand::{RngCore as _, SeedableRng};
use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

thread_local! {
    /// Some: this thread runs a simulation and draws from this seeded generator.
    static SEEDED: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// Seed (Some) or unseed (None: back to the OS-seeded thread generator) the generator
/// openraft uses on this thread. Only a simulation calls this.
pub fn seed_thread_rng(seed: Option<u64>) {
    SEEDED.with(|s| *s.borrow_mut() = seed.map(StdRng::seed_from_u64));
}

/// openraft's per-thread generator (rand 0.8's `Rng`, through rand_core 0.6's `RngCore`):
/// the seeded one when [`seed_thread_rng`] set one on this thread, else `rand::rng()`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RaftRng;

impl RaftRng {
    fn next(&mut self) -> u64 {
        SEEDED.with(|s| match s.borrow_mut().as_mut() {
            Some(r) => r.next_u64(),
            None => rand::rng().next_u64(),
        })
    }
}

impl rand_core_06::RngCore for RaftRng {
    fn next_u32(&mut self) -> u32 {
        self.next() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.next()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let n = chunk.len();
            chunk.copy_from_slice(&self.next().to_le_bytes()[..n]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core_06::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// openraft's `TokioRuntime` with a seedable [`RaftRng`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GantryRuntime;

impl AsyncRuntime for GantryRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = RaftRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiverError = <TokioRuntime as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        RaftRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        TokioRuntime::oneshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Election timeouts as openraft draws them.
    fn draws() -> Vec<u64> {
        let config = super::super::RaftTimings::default().config("test");
        (0..20)
            .map(|_| config.new_rand_election_timeout::<GantryRuntime>())
            .collect()
    }

    #[test]
    fn a_seeded_thread_draws_the_same_election_timeouts_and_unseeded_does_not() {
        seed_thread_rng(Some(7));
        let a = draws();
        seed_thread_rng(Some(7));
        assert_eq!(a, draws(), "same seed, same draws");
        seed_thread_rng(Some(8));
        assert_ne!(a, draws(), "another seed, other draws");
        seed_thread_rng(None);
        let (x, y) = (draws(), draws());
        assert_ne!(x, y, "unseeded: the OS-seeded generator");
        assert!(a.iter().chain(&x).all(|t| (150..300).contains(t)));
    }
}
