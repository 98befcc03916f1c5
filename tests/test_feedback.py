from __future__ import annotations

import pytest

from gateway.config import Monitor
from gateway.feedback import FeedbackStore, LabelMismatch, UnknownPrediction
from tests.fakes import FakeClock

CATEGORICAL = Monitor.model_validate(
    {
        "prediction": {"pointer": "/predictions/*/label", "kind": "categorical"},
        "confidence": {"pointer": "/predictions/*/score"},
        "feedback_ttl_s": 60,
        "feedback_max_entries": 3,
    }
)
NUMERIC = Monitor.model_validate({"prediction": {"pointer": "/predictions/*", "kind": "numeric"}})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def store(clock: FakeClock) -> FeedbackStore:
    store = FeedbackStore(clock=clock, window_s=600)
    store.configure("credit", CATEGORICAL)
    store.configure("price", NUMERIC)
    return store


def test_join_a_single_prediction(store: FeedbackStore) -> None:
    assert store.remember("r1", "credit", "v1", ["approve"], [0.8])
    result = store.label("r1", "approve")
    assert (result.route, result.backend, result.rows, result.correct, result.duplicate) == (
        "credit",
        "v1",
        1,
        1,
        False,
    )
    assert store.label("r1", ["approve"]).duplicate  # a one-item list is the same label
    assert store.accuracy("credit", "v1") == 1.0


def test_unknown_expired_and_unmonitored_ids(store: FeedbackStore, clock: FakeClock) -> None:
    with pytest.raises(UnknownPrediction) as caught:
        store.label("never-seen", "x")
    assert isinstance(caught.value, KeyError) and "never-seen" in str(caught.value)
    store.remember("r1", "credit", "v1", ["approve"])
    clock.advance(61)  # feedback_ttl_s is 60
    with pytest.raises(UnknownPrediction):
        store.label("r1", "approve")
    assert not store.remember("r2", "no-monitor", "v1", ["approve"])
    assert not store.remember("r3", "credit", "v1", [None])  # nothing to judge later
    with pytest.raises(UnknownPrediction):
        store.label("r3", "approve")
    store.remember("r4", "credit", "v1", ["approve"])
    with pytest.raises(UnknownPrediction):
        store.label("r4", "approve", route="price")  # a route hint narrows the search


def test_bounded_by_max_entries(store: FeedbackStore) -> None:
    for i in range(4):  # feedback_max_entries is 3: the oldest goes
        store.remember(f"r{i}", "credit", "v1", ["approve"])
    assert len(store) == 3
    with pytest.raises(UnknownPrediction):
        store.label("r0", "approve")
    assert store.label("r3", "approve").rows == 1


def test_multi_row_labels_are_lists(store: FeedbackStore) -> None:
    store.remember("batch", "credit", "v1", ["approve", "deny", "approve", None], [0.9, 0.6, 0.7, 0.5])
    with pytest.raises(LabelMismatch, match="send a list of 4 labels"):
        store.label("batch", "approve")
    with pytest.raises(LabelMismatch, match="3 labels for 4 predictions"):
        store.label("batch", ["approve", "deny", "deny"])
    with pytest.raises(LabelMismatch, match="label 1"):
        store.label("batch", ["approve", {"x": 1}, None, None])
    # Row 3 has no label (null) and row 4 had no prediction: two rows judged.
    result = store.label("batch", ["approve", "approve", None, "deny"])
    assert (result.rows, result.correct) == (2, 1)
    outcomes = store.outcomes("credit", "v1")
    assert outcomes is not None and (outcomes.rows, outcomes.correct, outcomes.calibrated) == (2, 1, 2)


def test_repeated_labels_count_once(store: FeedbackStore) -> None:
    store.remember("r1", "credit", "v1", ["approve"])
    first = store.label("r1", "deny")
    again = store.label("r1", "approve")  # a retry, or a late correction: neither counts
    assert again.duplicate and again.correct == first.correct == 0
    assert store.outcomes("credit", "v1").rows == 1  # type: ignore[union-attr]
    # A label with every row null judges nothing, so a real one can still follow.
    store.remember("r2", "credit", "v1", ["approve"])
    assert store.label("r2", None).rows == 0
    assert store.label("r2", "approve").correct == 1


def test_labels_match_as_category_strings(store: FeedbackStore) -> None:
    store.remember("r1", "credit", "v1", [1])
    assert store.label("r1", "1").correct == 1
    store.remember("r2", "credit", "v1", [True])
    assert store.label("r2", "true").correct == 1
    store.remember("r3", "credit", "v1", [2.0])
    assert store.label("r3", 2).correct == 1


def test_accuracy_and_ece_by_hand(store: FeedbackStore) -> None:
    # Five predictions with their confidences and whether the label agreed:
    #   0.95 right, 0.95 right, 0.95 wrong  -> bin (0.9, 1.0]: accuracy 2/3, mean confidence 0.95, gap 0.28333
    #   0.55 right, 0.55 wrong              -> bin (0.5, 0.6]: accuracy 1/2, mean confidence 0.55, gap 0.05
    # ECE = 3/5 x 0.28333 + 2/5 x 0.05 = 0.17 + 0.02 = 0.19; accuracy = 3/5 = 0.6.
    rows = [(0.95, True), (0.95, True), (0.95, False), (0.55, True), (0.55, False)]
    for i, (confidence, right) in enumerate(rows):
        store.remember(f"r{i}", "credit", "v1", ["approve"], [confidence])
        store.label(f"r{i}", "approve" if right else "deny")
    outcomes = store.outcomes("credit", "v1")
    assert outcomes is not None
    assert outcomes.accuracy == pytest.approx(0.6)
    assert outcomes.ece == pytest.approx(0.19)
    assert outcomes.calibrated == 5 and outcomes.mae is None


def test_ece_bin_edges() -> None:
    # Guo et al.'s bins are ((m-1)/M, m/M]: 0.1 belongs to the first bin, 0.10001 to the second, 0 to the first.
    clock = FakeClock(1000.0)
    store = FeedbackStore(clock=clock)
    store.configure("credit", CATEGORICAL.model_copy(update={"feedback_max_entries": 100}))
    for i, confidence in enumerate([0.0, 0.1]):
        store.remember(f"a{i}", "credit", "v1", ["x"], [confidence])
        store.label(f"a{i}", "x")
    # One bin: accuracy 1, mean confidence 0.05: ECE 0.95.
    assert store.outcomes("credit", "v1").ece == pytest.approx(0.95)  # type: ignore[union-attr]
    store.remember("b", "credit", "v1", ["x"], [0.10001])
    store.label("b", "y")
    # Bins: {0, 0.1} gap |2 - 0.1| = 1.9; {0.10001} gap |0 - 0.10001| = 0.10001: (1.9 + 0.10001) / 3
    assert store.outcomes("credit", "v1").ece == pytest.approx((1.9 + 0.10001) / 3)  # type: ignore[union-attr]


def test_confidences_that_do_not_line_up_are_ignored(store: FeedbackStore) -> None:
    store.remember("r1", "credit", "v1", ["approve", "deny"], [0.9])  # one score for two rows
    store.remember("r2", "credit", "v1", ["approve"], [1.5])  # outside [0, 1]
    store.label("r1", ["approve", "deny"])
    store.label("r2", "approve")
    outcomes = store.outcomes("credit", "v1")
    assert outcomes is not None and outcomes.rows == 3 and outcomes.calibrated == 0 and outcomes.ece is None


def test_numeric_predictions_report_mean_absolute_error(store: FeedbackStore) -> None:
    store.remember("p1", "price", "v1", [10.0, 20.0])
    result = store.label("p1", [12, 17.5])
    # |10 - 12| + |20 - 17.5| = 4.5 over 2 rows
    assert result.abs_error == pytest.approx(2.25) and result.correct is None
    store.remember("p2", "price", "v1", [1.0])
    with pytest.raises(LabelMismatch, match="must be a number"):
        store.label("p2", "cheap")
    outcomes = store.outcomes("price", "v1")
    assert outcomes is not None and outcomes.mae == pytest.approx(2.25) and outcomes.accuracy is None
    assert store.accuracy("price", "v1") is None


def test_window_counts_by_label_time(store: FeedbackStore, clock: FakeClock) -> None:
    store.remember("r1", "credit", "v1", ["approve"])
    store.label("r1", "approve")
    clock.advance(300)
    store.remember("r2", "credit", "v2", ["approve"])
    store.label("r2", "deny")
    assert store.accuracy("credit", "v1", window_s=60) is None
    assert store.accuracy("credit", "v1") == 1.0
    assert store.accuracy("credit", "v2") == 0.0
    clock.advance(600)
    assert store.outcomes("credit", "v1") is None
    assert store.snapshot("credit") == {"waiting": 0, "backends": {}}


def test_snapshot_and_reconfigure(store: FeedbackStore) -> None:
    store.remember("r1", "credit", "v1", ["approve"], [0.7])
    store.remember("r2", "credit", "v1", ["approve"])
    store.label("r1", "approve")
    snapshot = store.snapshot("credit")
    assert snapshot["waiting"] == 2
    assert snapshot["backends"]["v1"] == {
        "labelled_rows": 1,
        "accuracy": 1.0,
        "ece": pytest.approx(0.3),
        "calibrated_rows": 1,
        "mae": None,
    }
    store.configure("credit", CATEGORICAL)  # unchanged: waiting predictions survive a reload
    assert store.label("r2", "approve").rows == 1
    store.configure("credit", NUMERIC)  # the prediction kind changed: start over
    with pytest.raises(UnknownPrediction):
        store.label("r1", "approve")
    store.retain(["price"])
    assert "credit" not in repr(store)
    store.configure("price", None)
    assert len(store) == 0
