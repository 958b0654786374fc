//! The one calling contract shared by every PeerLink state machine.

use std::time::Instant;

/// A deterministic, I/O-free state machine.
///
/// A machine never reads a clock, never touches a socket or a file and never
/// draws unseeded randomness: the driver that owns it passes time in and
/// carries outputs out. Given the same seed and the same sequence of calls, a
/// machine produces the same outputs.
///
/// # Contract
///
/// - **Inputs.** Call [`handle`](Machine::handle) for every input, and
///   [`handle_timeout`](Machine::handle_timeout) once the instant returned by
///   [`poll_timeout`](Machine::poll_timeout) has been reached. Both may queue
///   outputs. Faulty input from a remote party (a malformed frame, a stale or
///   duplicate request) is an ordinary input: it is answered or dropped, never
///   a panic.
/// - **Outputs.** After every `handle*` call, drain
///   [`poll_output`](Machine::poll_output) until it returns `None` and carry
///   out each output in order, then ask `poll_timeout` again: any input may
///   move the next deadline.
/// - **Time.** `now` must never go backwards between calls.
pub trait Machine {
    /// What the machine reacts to.
    type Input;
    /// What the machine asks its driver to do.
    type Output;

    /// Feeds one input to the machine at time `now`.
    fn handle(&mut self, now: Instant, input: Self::Input);

    /// Lets the machine act on the timers that are due at `now`.
    fn handle_timeout(&mut self, now: Instant);

    /// Takes the oldest queued output, if any.
    fn poll_output(&mut self) -> Option<Self::Output>;

    /// The next instant at which `handle_timeout` must be called, if any.
    fn poll_timeout(&self) -> Option<Instant>;
}
