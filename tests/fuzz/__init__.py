"""Fuzzing harnesses for every decoder that faces the outside world (``make fuzz``)."""
