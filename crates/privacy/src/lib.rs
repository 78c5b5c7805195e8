//! The privacy boundary's vocabulary: what a string must parse as to cross.
//!
//! Pure functions only, no I/O: grammars for identifiers ([`grammar`]), closed catalogues of
//! names ([`catalogue`]), keyed pseudonyms for values no grammar can hold ([`pseudonym`]) and
//! operation-log templates ([`template`]). The privacy enforcer applies them field by field; the
//! collector uses the same grammars before anything leaves the lab.

pub mod adversarial;
pub mod catalogue;
pub mod grammar;
pub mod pseudonym;
pub mod template;
