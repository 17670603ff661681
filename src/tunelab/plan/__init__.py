"""`tunelab plan`: what a run will cost before it runs (parameters, data, memory per device, time)."""
