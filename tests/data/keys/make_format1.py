"""How format1-natural.safetensors (and its model) were made; kept as provenance, not run by the tests.

Key file format 1 (nnmark 0.1): a LeNet-5 at width 0.25 trained 2 epochs on scikit-learn's digits with
seed 0, and a "natural" key of the 16 test images it labels with the widest logit margin (so that
numerical noise of another torch build cannot flip them), signed under the secret in secret.txt.
Run from the repository root: ``python tests/data/keys/make_format1.py``.
"""

from pathlib import Path

import torch

from nnmark import data, keys, models
from nnmark.marks.integrity import baselines
from nnmark.oracles import TorchOracle

HERE = Path(__file__).parent
N = 16

ds = data.load("digits")
torch.manual_seed(0)
model = models.build("lenet5", ds.shape, ds.num_classes, width=0.25)
models.train(model, ds.train, epochs=2, seed=0)
models.save(model, models.ModelConfig("lenet5", ds.shape, ds.num_classes, width=0.25, data="digits", seed=0),
            HERE / "format1-lenet.safetensors")
with torch.no_grad():
    top2 = model(ds.test.x).topk(2).values
widest = (top2[:, 0] - top2[:, 1]).argsort(descending=True)[:N].sort().values
key = baselines.natural(TorchOracle(model, ds.shape, ds.num_classes), ds.test.x[widest],
                        model_digest=models.digest(model), meta={"data": "digits", "indices": widest.tolist()})
key.created = "2026-11-30T00:00:00Z"
keys.save(key, HERE / "format1-natural.safetensors", secret=keys.read_secret(HERE / "secret.txt"))
