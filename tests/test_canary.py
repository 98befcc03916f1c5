from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.canary import BackendChooser, WeightTable
from gateway.config import Route
from gateway.errors import BadRequest
from gateway.routing import CompiledRoute
from tests.context_factory import make_ctx


def route(**extra: object) -> CompiledRoute:
    return CompiledRoute.compile(
        Route.model_validate(
            {
                "name": "chat",
                "match": {"path": "/v1"},
                "backends": [
                    {"name": "v1", "url": "http://a", "stable": True, "weight": 90},
                    {"name": "v2", "url": "http://b", "weight": 10},
                    {"name": "v3", "url": "http://c", "weight": 0},
                ],
                **extra,
            }
        )
    )


def test_weighted_split_follows_the_weights() -> None:
    r = route()
    chooser = BackendChooser(r, {"v1": 90, "v2": 10, "v3": 0}, random.Random(1))
    picks = Counter(chooser.choose(make_ctx()).name for _ in range(10_000))
    assert picks["v3"] == 0
    assert 850 <= picks["v2"] <= 1150


def test_all_weights_zero_falls_to_stable() -> None:
    chooser = BackendChooser(route(), {"v1": 0, "v2": 0, "v3": 0}, random.Random(1))
    assert chooser.choose(make_ctx()).name == "v1"


def test_sticky_keys_move_only_to_the_grown_backend() -> None:
    r = route(sticky={"header": "X-User"})
    chooser = BackendChooser(r, {"v1": 90, "v2": 10, "v3": 0}, random.Random(1))
    keys = [f"user-{i}".encode() for i in range(5000)]
    before = {k: chooser.choose(make_ctx(headers=[(b"x-user", k)])).name for k in keys}
    assert before == {k: chooser.choose(make_ctx(headers=[(b"x-user", k)])).name for k in keys}
    chooser.update({"v1": 80, "v2": 20, "v3": 0})
    after = {k: chooser.choose(make_ctx(headers=[(b"x-user", k)])).name for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == "v1" and after[k] == "v2" for k in moved)
    assert 0.08 * len(keys) <= len(moved) <= 0.12 * len(keys)  # about the 10% that must move


def test_override_needs_allow_override_and_a_known_backend() -> None:
    pinned = make_ctx(headers=[(b"x-gateway-backend", b"v3")])
    assert BackendChooser(route(allow_override=True), {"v1": 1}, random.Random()).choose(pinned).name == "v3"
    assert BackendChooser(route(), {"v1": 1}, random.Random()).choose(pinned).name == "v1"
    with pytest.raises(BadRequest):
        BackendChooser(route(allow_override=True), {"v1": 1}, random.Random()).choose(
            make_ctx(headers=[(b"x-gateway-backend", b"nope")])
        )


def test_weight_table_keeps_live_weights_until_the_file_changes_them() -> None:
    table = WeightTable()
    config = route().config
    assert table.sync([config]) == []
    assert table.weights("chat") == {"v1": 90, "v2": 10, "v3": 0}
    table.set("chat", {"v1": 0, "v2": 100, "v3": 0})
    assert table.sync([config]) == []  # same file weights: live weights stay
    assert table.weights("chat")["v2"] == 100
    changed = config.model_copy(update={"backends": [b.model_copy(update={"weight": 50}) for b in config.backends]})
    assert table.sync([changed]) == ["chat"]
    assert table.weights("chat") == {"v1": 50, "v2": 50, "v3": 50}
    assert repr(table) == "<WeightTable routes=1 live=[]>"
