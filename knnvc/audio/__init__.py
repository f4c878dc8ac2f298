"""Where audio comes in and goes out: decode any file to 16 kHz mono, write outputs atomically, loudness, VAD."""
