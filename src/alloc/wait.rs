//! The first-come-first-served wait queue of `--wait`: tickets in the state dir, head-only allocation, the live progress line; it must not plan or touch the GPU.
//!
//! A waiter takes a ticket (`queue/<n>.json`, numbered under the allocation lock) that holds back
//! one GPU for it (`policy::plan::reservation`: where it is closest to fitting), so a small request that
//! arrives later cannot starve a large one that waits for a whole GPU. Requests that fit on GPUs no
//! earlier waiter holds go ahead: fairness must not become a denial of service. A ticket holds
//! nothing once its process died (pid gone, or reused with another start time), is stopped, or is
//! past its deadline; a dead one is removed by whoever next holds the lock.

use super::AllocRequest;
use crate::lease::{LeaseError, Registry, Ticket};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the head of the queue looks for a release, and the others at the queue.
const HEAD_POLL: Duration = Duration::from_millis(100);
const OTHER_POLL: Duration = Duration::from_millis(150);
/// The head re-plans at once after a release (the registry's generation moved), and at least this
/// often anyway, to notice what happens outside migrun's records (a holder dies, a job on a draining
/// instance ends, an admin destroys an instance).
const REPLAN_EVERY: Duration = Duration::from_secs(1);

/// `m:ss` (or `h:mm:ss`) for the progress line and messages.
pub(crate) fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// One request's place in the queue; its ticket is removed when it is served, gives up or errors.
pub(super) struct Queue<'a> {
    reg: &'a Registry,
    req: &'a AllocRequest,
    ticket: Option<Ticket>,
    /// Some when stderr is a terminal: the last line shown and when.
    shown: Option<(String, Instant)>,
    /// The registry generation and time of the last plan this request made.
    planned: Option<(u64, Instant)>,
    tty: bool,
}

impl<'a> Queue<'a> {
    pub fn new(reg: &'a Registry, req: &'a AllocRequest) -> Queue<'a> {
        Queue {
            reg,
            req,
            ticket: None,
            shown: None,
            planned: None,
            tty: std::io::stderr().is_terminal(),
        }
    }

    pub fn waits(&self) -> bool {
        self.req.wait.is_some()
    }

    pub fn has_ticket(&self) -> bool {
        self.ticket.is_some()
    }

    /// The wait is over (always, without `--wait`).
    pub fn expired(&self, started: Instant) -> bool {
        match self.req.wait {
            None => true,
            Some(None) => false,
            Some(Some(limit)) => started.elapsed() >= limit,
        }
    }

    /// Tickets ahead of this request that still hold their place (all of them before it has a
    /// ticket), and the GPUs they hold back.
    fn held_ahead(&self, tickets: &[Ticket]) -> (Vec<u32>, usize) {
        let mine = self.ticket.as_ref().map(|t| t.ticket);
        let now = crate::lease::now();
        let ahead: Vec<&Ticket> = tickets
            .iter()
            .filter(|t| mine.is_none_or(|m| t.ticket < m) && t.holds(now))
            .collect();
        let mut gpus: Vec<u32> = ahead.iter().filter_map(|t| t.reserved_gpu).collect();
        gpus.sort_unstable();
        gpus.dedup();
        (gpus, ahead.len())
    }

    /// How many wait ahead of this request (for the progress line). Needs no lock.
    pub fn ahead(&self) -> Result<usize, LeaseError> {
        Ok(self.held_ahead(&self.reg.tickets()?).1)
    }

    /// The GPUs earlier waiters hold back and how many they are; removes dead tickets. The caller
    /// holds the lock.
    pub fn held_ahead_locked(&self) -> Result<(Vec<u32>, usize), LeaseError> {
        let tickets = self.reg.tickets()?;
        for t in &tickets {
            if !t.alive() {
                self.reg.remove_ticket(t.ticket)?;
            }
        }
        Ok(self.held_ahead(&tickets))
    }

    /// Is it worth planning again? Always the first time; then after a release or every [`REPLAN_EVERY`].
    pub fn due(&self) -> bool {
        match self.planned {
            None => true,
            Some((generation, at)) => {
                at.elapsed() >= REPLAN_EVERY
                    || self.reg.generation().map_or(true, |g| g != generation)
            }
        }
    }

    /// Note that a plan is being made now (call before reading the device, under the lock).
    pub fn planning(&mut self) {
        self.planned = Some((self.reg.generation().unwrap_or(0), Instant::now()));
    }

    /// Take a ticket holding back `gpu` if this request has none yet, or move its hold to `gpu`;
    /// the caller holds the lock.
    pub fn enqueue(&mut self, started: Instant, gpu: Option<u32>) -> Result<(), LeaseError> {
        match &mut self.ticket {
            None => {
                // The deadline is written down, so a waiter that hangs past it holds nothing.
                let deadline = match self.req.wait {
                    Some(Some(limit)) => Some(
                        crate::lease::now() + limit.saturating_sub(started.elapsed()).as_secs() + 1,
                    ),
                    _ => None,
                };
                self.ticket = Some(self.reg.take_ticket(
                    &self.req.want.to_string(),
                    self.req.uid,
                    deadline,
                    gpu,
                )?);
            }
            Some(t) if t.reserved_gpu != gpu => {
                t.reserved_gpu = gpu;
                self.reg.write_ticket(t)?;
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Leave the queue and clear the progress line.
    pub fn done(&mut self) {
        if let Some(t) = self.ticket.take() {
            // Our own file; no lock needed to remove it, and a leftover would only be skipped as dead.
            let _ = self.reg.remove_ticket(t.ticket);
        }
        if self.shown.take().is_some() {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }

    /// Show `waiting for 3g.40gb: 2 ahead, 0:42` on a terminal, then sleep until the next look.
    pub fn pause(&mut self, started: Instant, ahead: usize) {
        if self.tty {
            let line = format!(
                "waiting for {}: {ahead} ahead, {}",
                self.req.want,
                clock(started.elapsed())
            );
            let stale = self
                .shown
                .as_ref()
                .is_none_or(|(l, at)| *l != line && at.elapsed() >= Duration::from_millis(200));
            if stale {
                let mut err = std::io::stderr();
                let _ = write!(err, "\r\x1b[2K{line}");
                let _ = err.flush();
                self.shown = Some((line, Instant::now()));
            }
        }
        std::thread::sleep(if ahead == 0 { HEAD_POLL } else { OTHER_POLL });
    }
}

impl Drop for Queue<'_> {
    fn drop(&mut self) {
        self.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_format() {
        assert_eq!(clock(Duration::from_secs(42)), "0:42");
        assert_eq!(clock(Duration::from_secs(125)), "2:05");
        assert_eq!(clock(Duration::from_secs(3725)), "1:02:05");
    }
}
