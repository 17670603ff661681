"""Monitoring a served model: the request log the server writes and `tunelab monitor` reads."""
