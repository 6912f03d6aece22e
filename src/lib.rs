//! Library side of the `idtrail` binary: the parts of the command line that are more than
//! wiring. The pipeline itself lives in the workspace crates (`idtrail-collector`, …).

pub mod workload;
