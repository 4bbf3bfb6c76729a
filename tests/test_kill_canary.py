"""The canary preflight's rule (``marks.canary`` module docstring) on hand-made keys and answers (fast: no training,
mutation-tested)."""

import pytest
import torch
from test_kill_consistency import Replica

from nnmark.errors import EndpointMismatch, KeyFileError
from nnmark.keys import KeyFile
from nnmark.marks import canary
from nnmark.oracles import LabelsOracle, TorchOracle

N, K, SHAPE = 8, 10, (1, 2, 2)
LABELS = torch.arange(N) % K
KEYED = "preflight: 8 of 8 canaries answered as the keyed model does"
DIFFERS = "preflight: the canaries fit no known reading of the keyed model"
UNKNOWN_FORMAT = "; an endpoint format nnmark does not know would look the same"


def _rows(labels, top=0.991):
    """Probability rows with ``top`` on ``labels`` and the rest spread evenly."""
    rows = torch.full((len(labels), K), (1 - top) / (K - 1), dtype=torch.float64)
    rows[torch.arange(len(labels)), labels] = top
    return rows


KEYED_ROWS = _rows(LABELS)
RELABELLED = _rows((LABELS + 1) % K)
"""A misreading's rows: every canary relabelled (told by labels and by probabilities)."""


class Table(torch.nn.Module):
    """Answers the i-th canary (pixel value i / 16) with the i-th of ``rows`` (as logits whose softmax they are);
    a key query (pixel value 0.5 + i / 64) with ``queries`` row i."""

    def __init__(self, rows, queries=None):
        super().__init__()
        self.rows, self.queries = rows, queries

    def forward(self, x):
        v = x[:, 0, 0, 0].double()
        canaries = self.rows[(v * 16).round().long().clamp(0, len(self.rows) - 1)]
        if self.queries is None:
            return canaries.log().float()
        asked = self.queries[((v - 0.5) * 64).round().long().clamp(0, len(self.queries) - 1)]
        return torch.where((v >= 0.5)[:, None], asked, canaries).log().float()


def _oracle(rows, queries=None, labels_only=False):
    oracle = TorchOracle(Table(rows, queries), SHAPE)
    return LabelsOracle(oracle) if labels_only else oracle


def _key(readings=None, **config):
    """A key of 8 canaries (and 16 queries): ``readings`` the stored misread rows by id, None for none."""
    q = torch.arange(N).double().div(16).view(N, 1, 1, 1).expand(N, *SHAPE).float().contiguous()
    queries = (0.5 + torch.arange(16).double() / 64).view(16, 1, 1, 1).expand(16, *SHAPE).float().contiguous()
    extras = {canary.QUERIES: q, canary.LABELS: LABELS.clone(), canary.PROBABILITIES: KEYED_ROWS.float()}
    if readings is not None:
        extras[canary.READINGS] = torch.stack(list(readings.values()), dim=1).float()
        config = {"canary_readings": list(readings), **config}
    return KeyFile("dbi", config, queries, torch.zeros(16, dtype=torch.int64), extras=extras)


def _with(key, **extras):
    return KeyFile(key.method, key.config, key.queries, key.expected, extras={**key.extras, **extras})


def _relabel(k):
    """The keyed rows with the first ``k`` canaries' top class moved to the next class."""
    return _rows(torch.where(torch.arange(N) < k, (LABELS + 1) % K, LABELS))


def test_the_keyed_model_passes_with_a_note():
    key = _key({"scaled_up_255": RELABELLED})
    assert canary.preflight(_oracle(KEYED_ROWS), key, endpoint=True) == KEYED
    assert canary.preflight(_oracle(KEYED_ROWS), key) == KEYED  # a local model (endpoint from the oracle)


def test_up_to_a_quarter_of_the_canaries_may_differ():
    key = _key({"scaled_up_255": RELABELLED})
    assert canary.preflight(_oracle(_relabel(2)), key, endpoint=True).startswith("preflight: 6 of 8 canaries")
    note = canary.preflight(_oracle(_relabel(3)), key, endpoint=True)
    assert note == f"{DIFFERS} (answers 3 of 8 canaries differently, mean |change of log p| 0.52): the model " \
                   f"differs{UNKNOWN_FORMAT}"


def test_a_misread_endpoint_stops_naming_the_misreading_and_its_flag():
    key = _key({"scaled_up_255": RELABELLED, "normalised_05": _rows((LABELS + 2) % K)})
    with pytest.raises(EndpointMismatch) as e:
        canary.preflight(_oracle(RELABELLED), key, endpoint=True)
    misread = canary.described("scaled_up_255", 1)
    assert str(e.value) == f"endpoint answers as the keyed model does when {misread.words}: check {misread.flag}"
    with pytest.raises(EndpointMismatch, match="not expect: check --normalize$"):
        canary.preflight(_oracle(_rows((LABELS + 2) % K)), key, endpoint=True)


def test_an_endpoint_behind_wrappers_is_an_endpoint():
    assert canary.over_endpoint(LabelsOracle(Replica())) and canary.over_endpoint(Replica())
    assert not canary.over_endpoint(_oracle(KEYED_ROWS)) and not canary.over_endpoint(LabelsOracle(_oracle(KEYED_ROWS)))


def test_a_misread_local_model_keeps_its_verdict_with_a_note():
    note = canary.preflight(_oracle(RELABELLED), _key({"scaled_up_255": RELABELLED}))
    assert note == (f"preflight: the canaries are answered as the keyed model answers when "
                    f"{canary.described('scaled_up_255', 1).words}; a local model has no endpoint format to get "
                    "wrong, so its verdict stands")


def test_misreadings_that_fit_alike_are_named_together_best_first():
    key = _key({"scaled_up_255": RELABELLED, "normalised_05": RELABELLED.clone()})
    with pytest.raises(EndpointMismatch) as e:
        canary.preflight(_oracle(RELABELLED), key, endpoint=True)
    words = [canary.described(n, 1).words for n in ("scaled_up_255", "normalised_05")]
    assert str(e.value) == f"endpoint answers as the keyed model does when {words[0]}, or when {words[1]}: " \
                           "check --input-dtype / --normalize"


def test_a_misreading_the_canaries_cannot_tell_is_never_named():
    near = _relabel(4)  # relabels half the canaries: not more than twice the 2 allowed, and a small shift
    key = _key({"scaled_up_255": near})
    assert canary.preflight(_oracle(near), key, endpoint=True) == \
        f"{DIFFERS} (answers 4 of 8 canaries differently, mean |change of log p| 0.69): the model differs" \
        + UNKNOWN_FORMAT


def test_probabilities_read_as_logits_are_named_from_the_keyed_rows():
    twice = torch.softmax(KEYED_ROWS, dim=1)
    for key in (_key(), _key({"scaled_up_255": RELABELLED})):
        with pytest.raises(EndpointMismatch, match=r"read as logits \(a softmax applied twice\): check --output-kind"):
            canary.preflight(_oracle(twice), key, endpoint=True)


def test_a_model_that_fits_no_reading_gets_its_verdict_unless_an_old_key_cannot_tell():
    other = _rows((LABELS + 5) % K)
    key = _key({"scaled_up_255": RELABELLED})
    assert canary.preflight(_oracle(other), key, endpoint=True).endswith(UNKNOWN_FORMAT)
    local = canary.preflight(_oracle(other), key, endpoint=False)
    assert local.startswith(DIFFERS) and not local.endswith(UNKNOWN_FORMAT)
    with pytest.raises(EndpointMismatch, match="different model or wrong endpoint format"):
        canary.preflight(_oracle(other), _key(), endpoint=True)  # no misread rows: nothing tells which
    assert canary.preflight(_oracle(other), _key(), endpoint=False).startswith(DIFFERS)


def test_a_key_without_canaries_is_not_checked():
    key = KeyFile("dbi", {}, torch.rand(4, *SHAPE), torch.zeros(4, dtype=torch.int64))
    assert canary.preflight(_oracle(KEYED_ROWS), key, endpoint=True) == canary.NO_CANARIES


def test_labels_only_answers_are_judged_on_labels_and_say_what_they_tell():
    key = _key({"scaled_up_255": RELABELLED}, canaries_tell=["scaled_up_255"])
    assert canary.preflight(_oracle(KEYED_ROWS, labels_only=True), key, endpoint=True) == \
        f"{KEYED} (labels only: they tell 1 common misreadings)"
    assert canary.preflight(_oracle(KEYED_ROWS, labels_only=True), _key(), endpoint=True) == \
        f"{KEYED} (labels only: a mis-described endpoint may still pass them)"
    with pytest.raises(EndpointMismatch, match="0-255 pixels"):
        canary.preflight(_oracle(RELABELLED, labels_only=True), key, endpoint=True)
    note = canary.preflight(_oracle(_relabel(3), labels_only=True), key, endpoint=True)
    assert note == f"{DIFFERS} (answers 3 of 8 canaries differently): the model differs{UNKNOWN_FORMAT}"


def _probe_key(moved=4, kept=4, untold="normalised_05"):
    """A key whose queries 0..moved-1 the misreading ``untold`` relabels (to 1) and moved..moved+kept-1 it keeps."""
    index = torch.arange(moved + kept)
    misread = torch.where(index < moved, 1, 0)[None]
    return _with(_key({"scaled_up_255": RELABELLED}, canaries_untold=[untold]),
                 **{canary.PROBE_INDEX: index, canary.PROBE_LABELS: misread})


def _probe_answers(labels):
    """Rows for the key's 16 queries with top classes ``labels`` (zeros after them)."""
    return _rows(torch.cat([labels, torch.zeros(16 - len(labels), dtype=torch.int64)]))


@pytest.mark.parametrize("moved, kept, hits_moved, hits_kept, named", [
    (4, 4, 4, 4, True),  # every probe answered as misread
    (4, 4, 3, 4, True),  # 3 of 4 relabelled probes: 0.75 is enough
    (4, 4, 4, 3, True),  # 3 of 4 kept probes, likewise
    (4, 4, 2, 4, False),  # 2 of 4: not misread
    (4, 4, 4, 2, False),  # relabels the kept ones too: a change that flips everything
    (3, 4, 3, 4, False),  # fewer than MIN_PROBES relabelled probes tell nothing
    (4, 0, 4, 0, True),  # no kept probe (a key of an earlier release)
])
def test_a_label_only_endpoint_is_misread_when_it_answers_the_probes_as_the_misread_model(moved, kept, hits_moved,
                                                                                          hits_kept, named):
    key = _probe_key(moved, kept)
    answers = torch.cat([torch.where(torch.arange(moved) < hits_moved, 1, 2),
                         torch.where(torch.arange(kept) < hits_kept, 0, 3)])
    oracle = _oracle(KEYED_ROWS, _probe_answers(answers), labels_only=True)
    if named:
        with pytest.raises(EndpointMismatch, match=canary.described("normalised_05", 1).words):
            canary.preflight(oracle, key, endpoint=True)
        assert canary.preflight(oracle, key, endpoint=False).endswith("so its verdict stands")
    else:
        assert canary.preflight(oracle, key, endpoint=True).startswith(KEYED)


def test_probes_are_asked_only_of_a_label_only_model_that_fits_the_canaries():
    key = _probe_key()
    misread = _probe_answers(torch.tensor([1, 1, 1, 1, 0, 0, 0, 0]))
    assert canary.preflight(_oracle(KEYED_ROWS, misread), key, endpoint=True) == KEYED  # probabilities: rows decide
    assert canary.preflight(_oracle(_relabel(3), misread, labels_only=True), key, endpoint=True).startswith(DIFFERS)


@pytest.mark.parametrize("extras", [
    {canary.LABELS: LABELS.float()}, {canary.LABELS: LABELS[:4]}, {canary.PROBABILITIES: KEYED_ROWS[:4].float()},
    {canary.PROBABILITIES: KEYED_ROWS[0].float()}, {canary.QUERIES: torch.rand(N, 4)},
    {canary.QUERIES: torch.rand(3, *SHAPE), canary.LABELS: LABELS[:3], canary.PROBABILITIES: KEYED_ROWS[:3].float()},
])
def test_malformed_canaries_are_refused(extras):
    with pytest.raises(KeyFileError, match="^the key.s canaries are incomplete or malformed$"):
        canary.preflight(_oracle(KEYED_ROWS), _with(_key(), **extras), endpoint=True)


def test_missing_canary_parts_are_refused():
    key = _key()
    for name in (canary.LABELS, canary.PROBABILITIES):
        extras = {k: v for k, v in key.extras.items() if k != name}
        with pytest.raises(KeyFileError, match="canaries are incomplete"):
            canary.preflight(_oracle(KEYED_ROWS), KeyFile("dbi", {}, key.queries, key.expected, extras=extras))


@pytest.mark.parametrize("config, readings", [
    ({"canary_readings": ["a", "b"]}, RELABELLED[:, None]),
    ({"canary_readings": "scaled_up_255"}, RELABELLED[:, None]),
    ({"canary_readings": [1]}, RELABELLED[:, None]),
    ({"canary_readings": ["a"]}, RELABELLED[:4, None]),
    ({"canary_readings": ["a"]}, RELABELLED[:, None, :5]),
    ({"canary_readings": ["a"]}, torch.ones(N, 1, K, dtype=torch.int64)),
])
def test_malformed_readings_are_refused(config, readings):
    key = _key()
    bad = KeyFile("dbi", config, key.queries, key.expected, extras={**key.extras, canary.READINGS: readings.float()
                                                                     if readings.is_floating_point() else readings})
    with pytest.raises(KeyFileError, match="^the key.s canary readings are malformed$"):
        canary.preflight(_oracle(KEYED_ROWS), bad, endpoint=True)


@pytest.mark.parametrize("index, labels", [
    (torch.arange(8)[None], torch.zeros(1, 8, dtype=torch.int64)), (torch.arange(8), torch.zeros(2, 8)),
    (torch.arange(8), torch.zeros(1, 7)), (torch.arange(0), torch.zeros(1, 0)),
    (torch.arange(9, 17), torch.zeros(1, 8)), (torch.arange(-1, 7), torch.zeros(1, 8)),
])
def test_malformed_probes_are_refused(index, labels):
    key = _with(_probe_key(), **{canary.PROBE_INDEX: index, canary.PROBE_LABELS: labels.long()})
    with pytest.raises(KeyFileError, match="^the key.s canary probes are malformed$"):
        canary.preflight(_oracle(KEYED_ROWS, labels_only=True), key, endpoint=True)


def test_a_probe_at_the_last_query_is_allowed():
    key = _with(_probe_key(), **{canary.PROBE_INDEX: torch.arange(8, 16),
                                 canary.PROBE_LABELS: torch.zeros(1, 8, dtype=torch.int64)})
    assert canary.preflight(_oracle(KEYED_ROWS, labels_only=True), key, endpoint=True).startswith(KEYED)


def test_an_unknown_misreading_is_described_by_its_name_and_the_flags_to_check():
    unknown = canary.described("rotated", 1)
    assert unknown.words == "its inputs are rotated" and unknown.flag == canary.HINT.removeprefix("check ")
    assert canary.described("nhwc_as_nchw", 3).flag == "--layout"


def test_misreadings_are_described_for_the_canaries_channels():
    key = _key({"normalised_mnist": RELABELLED})
    with pytest.raises(EndpointMismatch, match="with MNIST statistics it does not expect: check --normalize$"):
        canary.preflight(_oracle(RELABELLED), key, endpoint=True)
    probes = _probe_key(untold="unnormalised_mnist")
    oracle = _oracle(KEYED_ROWS, _probe_answers(torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])), labels_only=True)
    with pytest.raises(EndpointMismatch, match="not normalised with the MNIST statistics it expects"):
        canary.preflight(oracle, probes, endpoint=True)


def test_an_oracle_that_asks_an_endpoint_is_judged_as_an_endpoint_by_default():
    oracle = _oracle(RELABELLED)
    oracle.inner = Replica()  # as a wrapper keeps the endpoint oracle it asks
    with pytest.raises(EndpointMismatch):
        canary.preflight(oracle, _key({"scaled_up_255": RELABELLED}))
    assert canary.preflight(_oracle(RELABELLED), _key({"scaled_up_255": RELABELLED})).endswith("verdict stands")


def test_a_local_model_that_fits_no_reading_gets_a_note_without_the_endpoint_caveat():
    note = canary.preflight(_oracle(_relabel(3)), _key({"scaled_up_255": RELABELLED}), endpoint=False)
    assert note == f"{DIFFERS} (answers 3 of 8 canaries differently, mean |change of log p| 0.52): the model differs"


def test_a_misreading_told_by_its_probabilities_alone_is_not_named_on_labels():
    """Labels only: a misreading that relabels 2 canaries (not told by labels) is never named, however far its
    probabilities lie from the keyed ones."""
    soft = _rows(torch.where(torch.arange(N) < 2, (LABELS + 1) % K, LABELS), top=0.5)
    assert canary._told(soft, KEYED_ROWS, LABELS) and not canary._told(soft, None, LABELS)
    note = canary.preflight(_oracle(soft, labels_only=True), _key({"scaled_up_255": soft}), endpoint=True)
    assert note.startswith("preflight: 6 of 8 canaries answered as the keyed model does (labels only")


def test_a_misreading_that_fits_is_named_when_the_keyed_reading_does_not_fit_though_closer():
    """The keyed reading misses 3 labels by a hair (mean shift 0.26); a misreading that relabels 5 canaries fits
    (2 labels, shift 0.6): the endpoint is misread."""
    hair = KEYED_ROWS.clone()
    hair[:3] = 0.001
    hair[torch.arange(3), LABELS[:3]], hair[torch.arange(3), (LABELS[:3] + 1) % K] = 0.495, 0.497
    five = _relabel(5)
    with pytest.raises(EndpointMismatch, match="0-255 pixels"):
        canary.preflight(_oracle(hair), _key({"scaled_up_255": five}), endpoint=True)


def test_the_told_bound_on_probabilities_is_strict():
    """Rows exactly 2 * MAX_LOG_SHIFT apart (exp(-25) and exp(-23.5), exact in float64) are not told apart."""
    a = torch.full((N, K), torch.tensor(-25.0, dtype=torch.float64).exp().item(), dtype=torch.float64)
    b = torch.full((N, K), torch.tensor(-25.0 + 2 * canary.MAX_LOG_SHIFT, dtype=torch.float64).exp().item(),
                   dtype=torch.float64)
    assert canary._shift(b, a) == 2 * canary.MAX_LOG_SHIFT
    assert not canary._told(b, a, torch.zeros(N, dtype=torch.int64))
    assert canary._told(b * 1.001, a, torch.zeros(N, dtype=torch.int64))


def test_four_canaries_are_enough():
    key = _key()
    four = _with(key, **{canary.QUERIES: key.extras[canary.QUERIES][:4], canary.LABELS: LABELS[:4],
                         canary.PROBABILITIES: KEYED_ROWS[:4].float()})
    assert canary.preflight(_oracle(KEYED_ROWS), four, endpoint=True) == \
        "preflight: 4 of 4 canaries answered as the keyed model does"


def test_probes_without_the_misreadings_they_test_are_refused():
    key = _probe_key()
    bare = KeyFile(key.method, {"canary_readings": ["scaled_up_255"]}, key.queries, key.expected, extras=key.extras)
    with pytest.raises(KeyFileError, match="^the key's canary probes are malformed$"):
        canary.preflight(_oracle(KEYED_ROWS, labels_only=True), bare, endpoint=True)


def test_a_key_that_stores_no_misreading_names_none():
    key = _with(_key(), **{canary.READINGS: torch.zeros(N, 0, K)})
    assert canary.preflight(_oracle(KEYED_ROWS), key, endpoint=True) == KEYED
    with pytest.raises(EndpointMismatch, match="read as logits"):
        canary.preflight(_oracle(torch.softmax(KEYED_ROWS, dim=1)), key, endpoint=True)
