"""What committing a checkpoint costs (train/checkpoints.py: fsync every file, sha256 manifest written last), as a
ratio against writing the same checkpoint, both measured in this run on the built-in 135M model fully fine-tuned
(its weights plus AdamW's two moments: the largest checkpoint a CPU run writes), and what verifying it costs on
--resume.

    .venv/bin/python bench/checkpoint_commit.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from tunelab.models.load import resolve_model
    from tunelab.paths import tunelab_home
    from tunelab.train.checkpoints import commit, verify

    model = AutoModelForCausalLM.from_pretrained(str(resolve_model("smollm2-135m-instruct", tunelab_home()).path))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss.backward()
    optimizer.step()
    saves, commits, verifies = [], [], []
    for _ in range(options.repeats):
        folder = Path(tempfile.mkdtemp(prefix="tunelab-bench-")) / "checkpoint-1"
        started = time.perf_counter()
        model.save_pretrained(str(folder))
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")
        (folder / "trainer_state.json").write_text("{}")
        saves.append(time.perf_counter() - started)
        started = time.perf_counter()
        commit(folder)
        commits.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert verify(folder) is None
        verifies.append(time.perf_counter() - started)
        size = sum(path.stat().st_size for path in folder.iterdir())
        shutil.rmtree(folder.parent)
    save, committed, verified = (statistics.median(values) for values in (saves, commits, verifies))
    print(f"checkpoint of {size / 2**20:.0f} MiB, median of {options.repeats}")
    print(f"  write (save_pretrained + optimizer)  {save:6.2f} s  1.00x")
    print(f"  commit (fsync + sha256 manifest)     {committed:6.2f} s  {committed / save:.2f}x of the write")
    print(f"  verify on --resume (sha256)          {verified:6.2f} s  {verified / save:.2f}x of the write")


if __name__ == "__main__":
    main()
