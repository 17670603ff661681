"""The fine-tuning service behind OpenAI's files and fine-tuning API: uploaded files, a durable job queue in SQLite
under the serve folder, and the worker that runs jobs through the same lifecycle as `tunelab train`."""
