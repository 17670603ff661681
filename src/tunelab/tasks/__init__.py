"""Training tasks behind one interface (base.Task); registry.TASKS maps names to them."""
