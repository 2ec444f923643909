//! The control endpoint (`sgw-control`).
