"""Fine-tune and then chat through OpenAI's API, on a `tunelab serve --jobs` server: only the official openai
client, as code written for OpenAI's fine-tuning would do it.

    tunelab data prepare recipes/quickstart.yaml          # writes runs/quickstart/data/{train,validation,test}.jsonl
    tunelab serve --jobs --fine-tune-key sk-local &       # the built-in model, a worker for the jobs
    python examples/openai_fine_tune.py runs/quickstart/data/train.jsonl
"""

from __future__ import annotations

import argparse
import os
import time

from openai import OpenAI

FINISHED = ("succeeded", "failed", "cancelled")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("training_file", help="JSONL in OpenAI's chat format (messages)")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=40, help="tunelab's extra: optimizer steps (train.max_steps)")
    parser.add_argument("--prompt", default="Turn this order note into JSON with the keys customer, item, color, "
                        "quantity, city, day, urgent. Use the singular item name.\n\nNote: Dana Berg (Oslo) wants 2 "
                        "blue mugs on Friday, urgent.")
    options = parser.parse_args()
    client = OpenAI(base_url=options.base_url, api_key=os.environ.get("OPENAI_API_KEY", "sk-local"))

    with open(options.training_file, "rb") as handle:
        uploaded = client.files.create(file=handle, purpose="fine-tune")
    print(f"uploaded {uploaded.filename}: {uploaded.id}, {uploaded.bytes} bytes")

    job = client.fine_tuning.jobs.create(
        model=options.model, training_file=uploaded.id, suffix="notes", seed=42,
        method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 8}}},
        # OpenAI has no field for these: tunelab reads its recipe sections from `tunelab`
        extra_body={"tunelab": {"train": {"max_steps": options.steps, "lr": 5e-4, "log_every": 10},
                                "eval": {"max_rows": 40, "max_new_tokens": 128}}})
    print(f"job {job.id}: {job.status}")

    seen: set[str] = set()
    started = time.monotonic()
    while True:
        events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
        for event in reversed(events):
            if event.id not in seen:
                seen.add(event.id)
                print(f"  [{time.monotonic() - started:6.0f} s] {event.message}")
        job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status in FINISHED:
            break
        time.sleep(2)
    print(f"job {job.id}: {job.status}; model {job.fine_tuned_model}; trained tokens {job.trained_tokens}")
    if job.status != "succeeded":
        raise SystemExit(f"the job did not succeed: {job.error}")

    for checkpoint in client.fine_tuning.jobs.checkpoints.list(job.id):
        print(f"checkpoint at step {checkpoint.step_number}: {checkpoint.metrics.train_loss}")
    for model in (options.model, job.fine_tuned_model):
        answer = client.chat.completions.create(model=model, max_tokens=80, temperature=0,
                                                messages=[{"role": "system",
                                                           "content": "You convert order notes to JSON."},
                                                          {"role": "user", "content": options.prompt}])
        print(f"{model}:\n  {answer.choices[0].message.content!r}")


if __name__ == "__main__":
    main()
