from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.baseline import (
    FORMAT,
    TOP_K,
    Baseline,
    BaselineError,
    BaselineInputError,
    baseline_problems,
    build_baseline,
    build_baseline_from_jsonl,
    load_baseline,
    quantile_edges,
    write_baseline,
)
from gateway.config import Monitor, Route
from gateway.monitoring.bins import FIRST_BIN, MISSING_BIN, NULL_BIN, OTHER_BIN

MONITOR = Monitor.model_validate(
    {
        "features": [
            {"name": "age", "pointer": "/instances/*/age", "kind": "numeric", "bins": 4},
            {"name": "country", "pointer": "/instances/*/country", "kind": "categorical"},
        ],
        "prediction": {"pointer": "/predictions/*", "kind": "categorical"},
    }
)
CREATED = "2024-06-01T00:00:00Z"


def docs() -> list[dict[str, Any]]:
    # Ages 1..8 twice over (16 entries), plus one null and one row without an age; countries US x3, DE x2, FR x1.
    rows: list[dict[str, Any]] = [{"age": float(a)} for _ in range(2) for a in range(1, 9)]
    rows += [{"age": None}, {}]
    countries = ["US", "US", "US", "DE", "DE", "FR"]
    for row, country in zip(rows, countries, strict=False):
        row["country"] = country
    return [{"instances": rows[i : i + 3]} for i in range(0, len(rows), 3)]


def test_quantile_edges_are_data_values_deduplicated() -> None:
    assert quantile_edges([1, 2, 3, 4, 5, 6, 7, 8, 9], 4) == (1, 3, 5, 7, 9)
    # Ties collapse edges: 90% zeros.
    assert quantile_edges([0] * 9 + [5], 4) == (0, 5)
    assert quantile_edges([3, 3, 3], 10) == (3, 3)  # a constant feature: one closed bin [3, 3]
    with pytest.raises(ValueError):
        quantile_edges([], 4)


def test_build_by_hand() -> None:
    data = build_baseline(MONITOR, docs(), route="credit", created=CREATED)
    assert data["format"] == FORMAT and data["version"] == 1 and data["route"] == "credit"
    assert data["documents"] == 6 and data["created"] == CREATED and data["prediction"] is None
    age = data["features"]["age"]
    # 18 entries: 16 numbers, 1 null, 1 missing. Sorted numbers 1,1,2,2,...,8,8 (n = 16, last index 15);
    # quartile edges at indices round(0), round(3.75)=4, round(7.5)=8, round(11.25)=11, 15 -> 1, 3, 5, 6, 8.
    assert age["edges"] == [1.0, 3.0, 5.0, 6.0, 8.0]
    # Bins: <1 | [1,3): 1,1,2,2 | [3,5): 3,3,4,4 | [5,6): 5,5 | [6,8]: 6,6,7,7,8,8 | >8
    assert age["counts"] == {"entries": 18, "missing": 1, "null": 1, "invalid": 0, "bins": [0, 4, 4, 2, 6, 0]}
    assert age["expected"] == pytest.approx([0, 4 / 18, 4 / 18, 2 / 18, 6 / 18, 0])
    assert (age["missing"], age["null"], age["invalid"]) == pytest.approx((1 / 18, 1 / 18, 0))
    country = data["features"]["country"]
    # 18 entries: US 3, DE 2, FR 1, 12 rows without a country.
    assert country["categories"] == ["US", "DE", "FR"]
    assert country["counts"]["bins"] == [3, 2, 1, 0] and country["counts"]["missing"] == 12
    assert country["expected"] == pytest.approx([3 / 18, 2 / 18, 1 / 18, 0])


def test_categorical_top_k_and_other() -> None:
    rng = random.Random(5)
    names = [f"c{i:02d}" for i in range(30)]
    values = [name for i, name in enumerate(names) for _ in range(30 - i)]  # c00 most frequent
    rng.shuffle(values)
    monitor = Monitor.model_validate({"features": [{"name": "c", "pointer": "/c", "kind": "categorical"}]})
    data = build_baseline(monitor, [{"c": v} for v in values] + [{"c": 3}, {"c": {"x": 1}}], route="r")
    feature = data["features"]["c"]
    assert len(feature["categories"]) == TOP_K and feature["categories"][:3] == ["c00", "c01", "c02"]
    tail = sum(30 - i for i in range(TOP_K, 30))
    assert feature["counts"]["bins"][-1] == tail + 1  # the rest, and the number 3 (category "3"), are "other"
    assert feature["counts"]["invalid"] == 1  # an object cannot be a category


def test_prediction_from_responses_and_route_config() -> None:
    route = Route.model_validate(
        {"name": "credit", "match": {"path": "/v2"}, "backends": [{"name": "a", "url": "http://x"}], "monitor": MONITOR}
    )
    answers = [{"predictions": ["yes", "no"]}, {"predictions": ["yes"]}]
    data = build_baseline(route, docs(), responses=answers, created=CREATED)
    assert data["route"] == "credit" and data["responses"] == 2
    assert data["prediction"]["categories"] == ["yes", "no"]
    assert data["prediction"]["expected"] == pytest.approx([2 / 3, 1 / 3, 0])


def test_build_errors_are_clear() -> None:
    with pytest.raises(ValueError, match=r"features.age: no numbers found at /instances/\*/age"):
        build_baseline(MONITOR, [{"instances": [{"age": "old", "country": "US"}]}], route="r")
    with pytest.raises(ValueError, match="no request documents"):
        build_baseline(MONITOR, [], route="r")
    with pytest.raises(ValueError, match="no `monitor` section"):
        build_baseline(
            Route.model_validate({"name": "r", "match": {"path": "/"}, "backends": [{"name": "a", "url": "http://x"}]}),
            [],
        )
    with pytest.raises(ValueError, match="lists no features"):
        build_baseline(Monitor(), [{}])


def test_round_trip_through_a_file(tmp_path: Path) -> None:
    data = build_baseline(MONITOR, docs(), responses=[{"predictions": ["yes"]}], route="credit", created=CREATED)
    path = tmp_path / "baselines" / "credit.json"
    write_baseline(path, data)
    assert not list(path.parent.glob(".*.tmp"))
    loaded = load_baseline(path)
    assert loaded.to_dict() == data
    assert loaded.source == str(path)
    assert loaded.route == "credit" and set(loaded.features) == {"age", "country"}
    write_baseline(path, loaded)  # a Baseline writes too
    assert load_baseline(path) == loaded
    # The live binning lines up with the expected shares.
    age = loaded.features["age"]
    shares = age.shares()
    assert shares[MISSING_BIN] == pytest.approx(1 / 18) and shares[NULL_BIN] == pytest.approx(1 / 18)
    assert age.binning().index(2.0) == FIRST_BIN + 1 and shares[FIRST_BIN + 1] == pytest.approx(4 / 18)
    country = loaded.features["country"]
    assert country.binning().index("US") == OTHER_BIN + 1 and country.shares()[OTHER_BIN + 1] == pytest.approx(3 / 18)
    assert "credit" in repr(loaded)


def test_from_jsonl_skips_blank_lines_and_names_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    lines = [orjson.dumps(d).decode() for d in docs()]
    path.write_text("\n".join(lines[:2]) + "\n\n   \n" + "\n".join(lines[2:]) + "\n")
    data = build_baseline_from_jsonl(MONITOR, path, route="credit", created=CREATED)
    assert data == build_baseline(MONITOR, docs(), route="credit", created=CREATED)
    path.write_text(lines[0] + "\n\n" + '{"instances": [\n' + lines[1] + "\n")
    with pytest.raises(BaselineInputError, match=r"requests.jsonl line 3: not JSON") as caught:
        build_baseline_from_jsonl(MONITOR, path, route="credit")
    assert caught.value.line == 3 and isinstance(caught.value, ValueError)
    with pytest.raises(BaselineInputError, match="cannot read"):
        build_baseline_from_jsonl(MONITOR, tmp_path / "absent.jsonl")
    answers = tmp_path / "responses.jsonl"
    answers.write_text('{"predictions": ["yes"]}\n')
    path.write_text("\n".join(lines) + "\n")
    data = build_baseline_from_jsonl(MONITOR, path, responses_path=answers, route="credit", created=CREATED)
    assert data["prediction"]["categories"] == ["yes"]


GOOD = build_baseline(MONITOR, docs(), route="credit", created=CREATED)


def broken(change: Any) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    change(data)
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(version=2), "version: unsupported 2"),
        (lambda d: d.update(format="other"), "format: must be"),
        (lambda d: d.update(route=3), "route: must be a string"),
        (lambda d: d.update(documents=-1), "documents: must be a non-negative integer"),
        (lambda d: d.update(features=[]), "features: must be an object"),
        (lambda d: d.update(extra=1), "extra: unknown key"),
        (lambda d: d["features"]["age"].update(kind="text"), "features.age.kind"),
        (lambda d: d["features"]["age"].update(pointer="age"), "features.age.pointer"),
        (lambda d: d["features"]["age"].update(edges=[3, 1]), "features.age.edges: edges must be strictly increasing"),
        (lambda d: d["features"]["age"].update(edges=["a"]), "features.age.edges: must be a list of numbers"),
        (lambda d: d["features"]["age"].update(expected=[0.5]), "features.age.expected: must have 6 shares"),
        (lambda d: d["features"]["age"].update(expected=[0, 0, 0, 0, 0, 2]), "features.age.expected: must be a list"),
        (lambda d: d["features"]["age"].update(missing=0.5), "features.age.expected: with missing, null and invalid"),
        (lambda d: d["features"]["age"].update(null=True), "features.age.null: must be a share"),
        (lambda d: d["features"]["age"]["counts"].update(entries=17), "features.age.counts: bins, missing"),
        (lambda d: d["features"]["age"]["counts"].update(bins=[1]), "features.age.counts.bins: must have 6"),
        (lambda d: d["features"]["age"]["counts"].update(null=-1), "features.age.counts: null: must be"),
        (lambda d: d["features"]["country"].update(categories=["US", "US", "FR"]), "must not repeat a category"),
        (lambda d: d.update(prediction=[]), "prediction: must be an object"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, change: Any, message: str) -> None:
    path = tmp_path / "b.json"
    path.write_bytes(orjson.dumps(broken(change)))
    with pytest.raises(BaselineError) as caught:
        load_baseline(path)
    assert isinstance(caught.value, ValueError)
    assert str(caught.value).startswith(f"baseline {path}: ")
    assert message in str(caught.value), str(caught.value)


def test_unreadable_and_non_json_files(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match="cannot read"):
        load_baseline(tmp_path / "absent.json")
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(BaselineError, match="not JSON"):
        load_baseline(tmp_path / "b.json")
    (tmp_path / "b.json").write_text("[]")
    with pytest.raises(BaselineError, match="must be a JSON object"):
        load_baseline(tmp_path / "b.json")


def test_rounded_hand_edited_shares_load_renormalised() -> None:
    data = broken(lambda d: d["features"]["country"].update(expected=[0.1667, 0.1111, 0.0556, 0], missing=0.6667))
    del data["features"]["country"]["counts"]
    country = Baseline.from_dict(data).features["country"]
    total = sum(country.expected) + country.missing + country.null + country.invalid
    assert total == pytest.approx(1.0) and country.counts is None


def test_write_refuses_an_invalid_baseline(tmp_path: Path) -> None:
    with pytest.raises(BaselineError):
        write_baseline(tmp_path / "b.json", broken(lambda d: d.update(version=9)))
    assert not (tmp_path / "b.json").exists()


def test_baseline_problems_against_the_config() -> None:
    baseline = Baseline.from_dict(GOOD)
    assert baseline_problems(baseline, MONITOR, "credit") == []
    changed = Monitor.model_validate(
        {
            "features": [
                {"name": "age", "pointer": "/instances/*/years"},
                {"name": "country", "pointer": "/instances/*/country", "kind": "numeric"},
                {"name": "income", "pointer": "/instances/*/income"},
            ],
        }
    )
    problems = baseline_problems(baseline, changed, "other")
    assert problems[0] == "built for route 'credit', not 'other'"
    assert "reads /instances/*/years" in problems[1]
    assert "is numeric but categorical in the baseline" in problems[2]
    assert "'income') is not in the baseline" in problems[3]
