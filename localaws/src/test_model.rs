//! The generated test model (owned by the engine track).
