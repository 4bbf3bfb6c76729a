"""A new key's check on its own source: a key that does not pass on the model it was made from is not written.

``self_check(oracle, key)`` verifies a freshly made key on the oracle of the model it was made from (the
watermarked model for an embedding method, the reference environment for a telltale key) and raises
ArgumentError, naming the verdict and the settings to change, when it does not pass.
"""

from __future__ import annotations

from nnmark.errors import ArgumentError
from nnmark.keys import KeyFile
from nnmark.marks import verify
from nnmark.marks.verdict import Verdict
from nnmark.oracles import Oracle

_NOISE = "its queries lie so close to the boundary that the model's own numerical noise moves them"
_UNSTABLE = "the model does not answer the same images the same way twice; run it deterministically"
REMEDIES: dict[str, str] = {
    "dbi": f"{_NOISE}; use fewer iterations (--itr) or a smaller step (--eps)",
    "aid": f"{_NOISE}; use fewer iterations (--itr) or a smaller step (--lr)",
    "natural": _UNSTABLE,
    "random": _UNSTABLE,
    "pairs": f"{_NOISE}; raise --margin so that each pair straddles the boundary by more than that noise",
    "ipguard": "raise the logit margin (--k) or --iterations",
    "metafinger": "ask for more queries (--n, --candidates), train them longer (--epochs) or use more shadow "
                  "models (--negatives, --val-negatives)",
    "coupled": "train the watermark longer (--epochs) or repeat its triggers more often (--wm-repeat)",
    "zhang": "train the watermark longer (--epochs)",
    "adi": "train the watermark longer (--epochs)",
    "frontier": "train the watermark longer (--epochs) or move the adversaries further (--eps)",
    "innformant": "start from more images (--n) or choose environments that differ more (--envs)",
    "license": "fine-tune the copy longer (--epochs) or ask more triggers per family (--per-family)",
    "dawn": "check that --secret-file is the one the API served the record with",
    "sac": "calibrate on more independent models (--negatives, --val-negatives) or use SAC-m (--variant m)",
}
"""Per method: what to change when a new key does not pass on its own source (CLI option names)."""


def self_check(oracle: Oracle, key: KeyFile, *, secret: bytes | None = None) -> Verdict:
    """Verify the new ``key`` on ``oracle``, the model (or environment) it was made from; return the verdict.

    ArgumentError when it does not pass, with the decision, its statistic and what to change
    (``REMEDIES``). ``secret``: the owner's secret, for keyed methods (pairs).
    """
    verdict = verify(oracle, key, secret=secret)
    if not verdict.passed:
        remedy = REMEDIES.get(key.method, "check the method's settings")
        raise ArgumentError(f"the new {key.method} key does not pass on the model it was made from ({verdict.decision}, "
                            f"{verdict.statistic_name} {verdict.statistic:.3g}), so it is not written: {remedy}")
    return verdict
