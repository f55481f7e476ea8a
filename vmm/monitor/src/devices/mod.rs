//! Legacy platform devices every VM has.

pub mod acpi_pm;
pub mod cmos;
pub mod i8042;
pub mod serial;
