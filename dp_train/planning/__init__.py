"""Planning a run before it starts: memory and time of a training step, traced without computing it."""
