"""Tuning methods behind one small interface (base.Method); registry.METHODS maps names to them."""
