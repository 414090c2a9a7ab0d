//! Models of Baton's primitives, one key each, kept small enough to read at a
//! glance: they are the definition of "correct" that histories are held to.
//!
//! - [`VersionedRegister`]: versioned state with compare-and-set.
//! - [`BoundedCounter`]: add within bounds.
//! - [`Lock`]: an exclusive lock with fencing tokens guarding one resource.
//!
//! Versions and fencing tokens are Baton log sequence numbers: never 0, never
//! reused, and each one issued on a key is greater than every one before it.
//! The models check exactly that ("greater than the last one"), not that they
//! are consecutive.

mod counter;
mod lock;
mod register;

pub use counter::{BoundedCounter, CounterInput, CounterOutput, CounterState};
pub use lock::{Lock, LockInput, LockOutput, LockState};
pub use register::{RegisterInput, RegisterOutput, RegisterState, VersionedRegister};

/// What the checker knows about the last sequence number (version or fencing
/// token) the server issued on a key.
///
/// An operation whose reply was lost may have been given a number nobody saw.
/// The model then keeps only a lower bound, and a later reply that shows the
/// number pins it down again. Facts of the form "it is not n" are not kept:
/// that may let a violation involving an unseen number go unreported, but
/// never makes a correct history fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Issued {
    /// Nothing issued yet.
    Nothing,
    /// The last number issued is exactly this.
    Exact(u64),
    /// The last number issued was not seen; it is at least this.
    AtLeast(u64),
}

impl Issued {
    /// The smallest number the server may issue next.
    pub fn next_floor(self) -> u64 {
        match self {
            Issued::Nothing => 1,
            Issued::Exact(n) | Issued::AtLeast(n) => n.saturating_add(1),
        }
    }

    /// Could the last number issued be `n`?
    pub fn could_be(self, n: u64) -> bool {
        match self {
            Issued::Nothing => false,
            Issued::Exact(last) => last == n,
            Issued::AtLeast(floor) => n >= floor,
        }
    }

    /// After the server issued one more number that nobody saw.
    pub fn issue_unseen(self) -> Issued {
        Issued::AtLeast(self.next_floor())
    }
}
