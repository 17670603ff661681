"""One thin router per endpoint; the work is in service.Service (app.state.service)."""
