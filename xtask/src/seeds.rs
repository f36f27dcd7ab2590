//! The parallel seed runner of `cargo xtask sim` (the RawNode simulator) and
//! `cargo xtask sim --driver`.
//!
//! Worker threads pull seeds from a shared counter and add each run's report to the totals; a
//! failing seed is printed to stderr as it fails (`FAIL ...`) and remembered. Meanwhile a
//! progress line on stderr gives the seeds done, the failures, seeds/s and the time left:
//! rewritten in place on a terminal, printed as a new line every few seconds otherwise (a CI
//! log). The progress thread waits on a condition variable that the last worker to finish
//! signals, with a timeout that paces the refreshes: it does not poll.

use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How often the progress line is rewritten on a terminal.
const PROGRESS_EVERY_TERMINAL: Duration = Duration::from_millis(500);
/// How often a progress line is printed when stderr is not a terminal (a CI log).
const PROGRESS_EVERY_LOG: Duration = Duration::from_secs(5);
/// Failing seeds listed at the end of a run.
const FAILURES_SHOWN_MAX: usize = 50;

/// Which seeds to run, on how many threads.
#[derive(Clone, Copy, Debug)]
pub struct SeedRange {
    /// The first seed.
    pub start: u64,
    /// How many seeds.
    pub count: u64,
    /// Worker threads.
    pub threads: usize,
}

impl SeedRange {
    /// One past the last seed.
    pub fn end(&self) -> u64 {
        self.start + self.count
    }
}

/// What a run of many seeds came to.
pub struct Outcome<T> {
    /// The reports of the seeds that passed, added up.
    pub totals: T,
    /// The failing seeds, in increasing order.
    pub failures: Vec<u64>,
    /// How long the run took.
    pub elapsed: Duration,
}

impl<T> Outcome<T> {
    /// Lists the failing seeds (the first [`FAILURES_SHOWN_MAX`]) and how to replay the first
    /// one: `replay` is the command without its seed (`cargo xtask sim --seed`).
    pub fn print_failures(&self, replay: &str) {
        let Some(first) = self.failures.first() else {
            return;
        };
        let shown = &self.failures[..self.failures.len().min(FAILURES_SHOWN_MAX)];
        println!(
            "failing seeds ({} in all, first {FAILURES_SHOWN_MAX}): {shown:?}",
            self.failures.len()
        );
        println!("replay one with: {replay} {first} --verbose");
    }
}

/// The counts the workers update and the progress line reads.
struct Tally<T> {
    done: u64,
    failures: Vec<u64>,
    totals: T,
    /// Workers still running; the progress line ends when none is.
    workers: usize,
}

/// Locks `m`, also after a worker panicked while holding it (the counts stay usable).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `run_seed` for every seed of `range` on `range.threads` threads, adding the report of
/// each seed that passes to the totals with `add`, and prints a progress line until done.
pub fn run<T, R, E>(
    range: SeedRange,
    run_seed: impl Fn(u64) -> Result<R, E> + Sync,
    add: impl Fn(&mut T, &R) + Sync,
) -> Outcome<T>
where
    T: Default + Send,
    E: Display,
{
    let threads = range.threads.max(1);
    let next = AtomicU64::new(range.start);
    let tally = Mutex::new(Tally {
        done: 0,
        failures: Vec::new(),
        totals: T::default(),
        workers: threads,
    });
    let workers_done = Condvar::new();
    let line = ProgressLine::for_stderr();
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                // Counted out however the worker ends, a panic included, so that the
                // progress line never waits for a worker that is gone.
                let _exit = WorkerExit {
                    tally: &tally,
                    workers_done: &workers_done,
                };
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= range.end() {
                        break;
                    }
                    let result = run_seed(seed);
                    let mut t = lock(&tally);
                    match result {
                        Ok(report) => add(&mut t.totals, &report),
                        Err(failure) => {
                            line.print_failure(&failure);
                            t.failures.push(seed);
                        }
                    }
                    t.done += 1;
                }
            });
        }
        s.spawn(|| show_progress(&tally, &workers_done, range.count, started, &line));
    });
    let mut tally = tally.into_inner().unwrap_or_else(PoisonError::into_inner);
    tally.failures.sort_unstable();
    Outcome {
        totals: tally.totals,
        failures: tally.failures,
        elapsed: started.elapsed(),
    }
}

/// Counts a worker out when dropped, and wakes the progress line when it was the last.
struct WorkerExit<'a, T> {
    tally: &'a Mutex<Tally<T>>,
    workers_done: &'a Condvar,
}

impl<T> Drop for WorkerExit<'_, T> {
    fn drop(&mut self) {
        let mut t = lock(self.tally);
        t.workers -= 1;
        if t.workers == 0 {
            self.workers_done.notify_all();
        }
    }
}

/// Shows the progress line every refresh period until the last worker is done.
fn show_progress<T>(
    tally: &Mutex<Tally<T>>,
    workers_done: &Condvar,
    count: u64,
    started: Instant,
    line: &ProgressLine,
) {
    let mut t = lock(tally);
    loop {
        let (guard, wait) = workers_done
            .wait_timeout_while(t, line.every, |t| t.workers > 0)
            .unwrap_or_else(PoisonError::into_inner);
        t = guard;
        if !wait.timed_out() {
            break;
        }
        line.show(&progress_text(t.done, count, t.failures.len(), started));
    }
    line.clear();
}

/// `progress: 120/1000 seeds, 0 failed, 41.5 seeds/s, ETA 21s`
fn progress_text(done: u64, count: u64, failed: usize, started: Instant) -> String {
    let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let eta = count.saturating_sub(done) as f64 / rate.max(1e-9);
    format!("progress: {done}/{count} seeds, {failed} failed, {rate:.1} seeds/s, ETA {eta:.0}s")
}

/// The progress line on stderr: in place on a terminal, a line at a time otherwise (shared by
/// every long xtask command).
pub(crate) struct ProgressLine {
    terminal: bool,
    /// How often to refresh it: often on a terminal, every few seconds in a log.
    pub(crate) every: Duration,
}

impl ProgressLine {
    /// The line for stderr, refreshed as its kind of output wants.
    pub(crate) fn for_stderr() -> ProgressLine {
        let terminal = std::io::stderr().is_terminal();
        let every = if terminal {
            PROGRESS_EVERY_TERMINAL
        } else {
            PROGRESS_EVERY_LOG
        };
        ProgressLine { terminal, every }
    }

    /// Shows `text` as the current progress.
    pub(crate) fn show(&self, text: &str) {
        let mut err = std::io::stderr().lock();
        // Back to the start of the line, the text, then erase what a longer line left.
        let _ = if self.terminal {
            write!(err, "\r{text}\x1b[K")
        } else {
            writeln!(err, "{text}")
        };
        let _ = err.flush();
    }

    /// Erases the line on a terminal, so that what comes next starts on a clean line.
    pub(crate) fn clear(&self) {
        if self.terminal {
            eprint!("\r\x1b[K");
        }
    }

    /// Prints a failure on a line of its own; the next refresh redraws the progress line.
    fn print_failure(&self, failure: &impl Display) {
        self.clear();
        eprintln!("FAIL {failure}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_runs_once_and_failures_come_back_sorted() {
        let range = SeedRange {
            start: 100,
            count: 50,
            threads: 3,
        };
        let outcome = run(
            range,
            |seed| match seed % 7 {
                0 => Err(format!("seed {seed} fails")),
                _ => Ok(seed),
            },
            |sum: &mut u64, seed: &u64| *sum += seed,
        );
        let failing: Vec<u64> = (100..150).filter(|s| s % 7 == 0).collect();
        assert_eq!(outcome.failures, failing);
        let passed: u64 = (100..150).filter(|s| s % 7 != 0).sum();
        assert_eq!(outcome.totals, passed);
    }

    #[test]
    fn no_seeds_and_more_threads_than_seeds_end() {
        for count in [0, 1] {
            let range = SeedRange {
                start: 0,
                count,
                threads: 4,
            };
            let outcome = run(range, Ok::<u64, String>, |n: &mut u64, _: &u64| *n += 1);
            assert_eq!(outcome.totals, count);
            assert!(outcome.failures.is_empty());
        }
    }
}
