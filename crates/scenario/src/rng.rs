//! The seeded random generator and distributions shared by the simulator and the testbed.
