//! Parsers of bytes from outside that need neither FFmpeg nor I/O, in a crate of their own
//! so fuzz targets and property tests build in seconds.

pub mod flv;
