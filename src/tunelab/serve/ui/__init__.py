"""The dashboard `tunelab serve` answers at /ui: runs, fine-tuning jobs, models in service and their versions, and
monitoring, as server-rendered HTML with inline SVG plots (no build step, no network, a few lines of script)."""
