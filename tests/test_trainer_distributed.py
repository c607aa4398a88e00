"""Two CPU processes (torchrun, gloo) train to the same parameters as one process with the same global batch.

The test launches this file under ``torchrun --nproc_per_node 2``; each process trains with 2 rows per step
(global batch 4) and process 0 saves the trainable parameters, which must equal those of a single-process run
with 4 rows per step. Labels mask a different number of tokens per row, so the equality also checks that the
loss is normalized by the target count of the *global* batch (``num_items_in_batch`` gathered across processes).
Tolerance 1e-5: the all-reduce sums the two halves in a different order than one process does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

STEPS = 3


def train(model_dir: str, output_dir: str, per_device_batch: int) -> dict[str, torch.Tensor]:
    from test_trainer import LENGTH, make_trainer, tiny_dataset, trainable_state

    trainer = make_trainer(
        model_dir, output_dir, max_steps=STEPS, save_steps=100, per_device_train_batch_size=per_device_batch
    )
    dataset = tiny_dataset()
    labels = torch.tensor(dataset["labels"])
    labels[::3, : LENGTH // 2] = -100
    trainer.train_dataset = dataset.remove_columns("labels").add_column("labels", labels.tolist())
    trainer.train()
    return trainable_state(trainer)


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not installed")
@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    from test_trainer import tiny_model_dir

    model_dir = tiny_model_dir(tmp_path / "model")
    expected = train(model_dir, str(tmp_path / "single"), per_device_batch=4)
    result = tmp_path / "distributed.pt"
    command = ["torchrun", "--standalone", "--nproc_per_node", "2", __file__, model_dir, str(result)]
    # The workers import test_trainer and its helpers from tests/, as pytest's pythonpath setting does.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(os.path.abspath(__file__))}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    distributed = torch.load(result)
    assert distributed.keys() == expected.keys()
    for name, value in distributed.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6)


if __name__ == "__main__":  # one torchrun worker
    model_dir, result = sys.argv[1:3]
    state = train(model_dir, os.path.join(os.path.dirname(result), "distributed"), per_device_batch=2)
    if int(os.environ["RANK"]) == 0:
        torch.save(state, result)
