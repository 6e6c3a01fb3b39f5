//! Buses: the one task that owns each port or socket, and the codecs it uses.

pub mod codec;
