"""The networks' maths: the WavLM encoder wrapper and the matching methods (pure tensor functions)."""
