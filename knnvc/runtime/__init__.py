"""How the networks run: devices and precision, out-of-memory recovery, windows for long audio, interrupts."""
