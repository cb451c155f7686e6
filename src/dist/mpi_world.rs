//! The MPI process group (cargo feature `mpi`): rsmpi over the system's MPI (Open MPI here).
//!
//! Every collective is started non-blocking (`MPI_Iallreduce`, `MPI_Ibcast`, `MPI_Ibarrier`) and
//! polled with `MPI_Test` until it completes or the configured timeout passes. On timeout this
//! rank prints which collective it was waiting in and for how long, then calls `MPI_Abort`,
//! which ends every rank of the job: a dead or hung rank never leaves the others waiting
//! forever. (A rank that *exits* is usually noticed by `mpirun` itself, which then kills the job
//! before any timeout.)

use anyhow::{bail, Result};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::request::{Request, Scope};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use mpi::Threading;
use std::time::{Duration, Instant};

/// Exit status of a job aborted because a collective timed out.
pub const TIMEOUT_EXIT_CODE: i32 = 124;

pub struct MpiWorld {
    world: SimpleCommunicator,
    timeout: Duration,
    // Dropped last: finalizes MPI.
    _universe: Universe,
}

impl MpiWorld {
    /// `MPI_Init_thread` (funneled: only the main thread calls MPI; candle's worker threads don't).
    pub fn init(timeout: Duration) -> Result<MpiWorld> {
        let Some((universe, _level)) = mpi::initialize_with_threading(Threading::Funneled) else {
            bail!("MPI was already initialised in this process");
        };
        let world = universe.world();
        Ok(MpiWorld { world, timeout, _universe: universe })
    }

    pub fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    pub fn world(&self) -> usize {
        self.world.size() as usize
    }

    /// `train.collective_timeout_s`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn all_reduce_f32(&self, what: &str, buf: &mut [f32]) -> Result<()> {
        let send = buf.to_vec();
        mpi::request::scope(|scope| {
            let req = self
                .world
                .immediate_all_reduce_into(scope, &send[..], buf, SystemOperation::sum());
            self.wait(&format!("all-reduce (sum) of {what}, {} floats", send.len()), req);
        });
        Ok(())
    }

    pub fn all_reduce_sum_f64(&self, what: &str, buf: &mut [f64]) -> Result<()> {
        self.all_reduce_f64(what, buf, SystemOperation::sum(), "sum")
    }

    pub fn all_reduce_max_f64(&self, what: &str, buf: &mut [f64]) -> Result<()> {
        self.all_reduce_f64(what, buf, SystemOperation::max(), "max")
    }

    fn all_reduce_f64(&self, what: &str, buf: &mut [f64], mpi_op: SystemOperation, name: &str) -> Result<()> {
        let send = buf.to_vec();
        mpi::request::scope(|scope| {
            let req = self.world.immediate_all_reduce_into(scope, &send[..], buf, mpi_op);
            self.wait(&format!("all-reduce ({name}) of {what}"), req);
        });
        Ok(())
    }

    pub fn broadcast_from_root(&self, what: &str, bytes: &mut Vec<u8>) -> Result<()> {
        let root = self.world.process_at_rank(0);
        let mut len = [bytes.len() as u64];
        mpi::request::scope(|scope| {
            let req = root.immediate_broadcast_into(scope, &mut len[..]);
            self.wait(&format!("broadcast of the length of {what}"), req);
        });
        bytes.resize(len[0] as usize, 0);
        mpi::request::scope(|scope| {
            let req = root.immediate_broadcast_into(scope, &mut bytes[..]);
            self.wait(&format!("broadcast of {what}"), req);
        });
        Ok(())
    }

    pub fn barrier(&self, what: &str) -> Result<()> {
        self.wait(&format!("barrier ({what})"), self.world.immediate_barrier());
        Ok(())
    }

    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    /// Poll `req` until it completes; past the deadline, report and abort the job.
    fn wait<'a, D: ?Sized, S: Scope<'a>>(&self, what: &str, mut req: Request<'a, D, S>) {
        let start = Instant::now();
        let mut nap = Duration::from_micros(5);
        loop {
            match req.test() {
                Ok(_) => return,
                Err(pending) => req = pending,
            }
            if start.elapsed() > self.timeout {
                self.timed_out(what)
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(2));
        }
    }

    fn timed_out(&self, what: &str) -> ! {
        eprintln!(
            "error: rank {} of {}: collective timed out: {what} did not complete within \
             train.collective_timeout_s = {} s. Another rank has died, hangs, or is much slower \
             (a long checkpoint write, a far larger batch?). Aborting all ranks (MPI_Abort). If the \
             ranks are merely slow, raise train.collective_timeout_s.",
            self.rank(),
            self.world(),
            self.timeout.as_secs_f64()
        );
        self.world.abort(TIMEOUT_EXIT_CODE)
    }
}
