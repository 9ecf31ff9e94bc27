"""Small-cell suppression: one limit, applied to counts, group rows and the rule's wording."""

import pandas as pd
import pytest

from healthfusion.evaluation.disclosure import (
    MIN_CELL,
    RULE,
    SUPPRESSED,
    comparable,
    count_cell,
    group_label,
    is_small,
    small_groups,
    suppress_groups,
)


@pytest.mark.parametrize(("n", "events", "small"), [
    (9, None, True), (10, None, False), (200, 9, True), (200, 10, False), (200, 191, False), (10, 0, True),
])
def test_is_small_counts_stays_and_events(n, events, small):
    assert is_small(n, events) is small


def test_comparable_groups_need_both_outcomes():
    assert comparable(200, 10) and comparable(200, 190)
    assert not comparable(200, 191) and not comparable(200, 1) and not comparable(9, 0)


def test_counts_and_labels_hide_values_under_the_limit():
    assert MIN_CELL == 10 and SUPPRESSED == "<10" and "10" in RULE
    assert [count_cell(v) for v in (0, 3, 9, 10, 11.0)] == ["<10", "<10", "<10", 10, 11]
    assert group_label("18-44", 6) == "18-44 (n<10)" and group_label("80+", 42) == "80+ (n=42)"


def test_suppress_groups_blanks_every_cell_of_a_small_group_but_its_name():
    frame = pd.DataFrame({"attribute": ["age"] * 3, "group": ["18-44", "45-64", "65+"], "n": [6, 120, 80],
                          "n_positive": [1, 30, 4], "auroc": [0.24, 0.81, 0.7]})
    out = suppress_groups(frame, keep=("attribute", "group"))
    assert small_groups(frame).tolist() == [True, False, True]
    assert out.loc[0].tolist() == ["age", "18-44", SUPPRESSED, SUPPRESSED, SUPPRESSED]
    assert out.loc[2].tolist() == ["age", "65+", 80, SUPPRESSED, SUPPRESSED]  # 80 stays: not a small count
    assert out.loc[1].tolist() == ["age", "45-64", 120, 30, 0.81]
    assert "0.24" not in out.to_csv()


def test_suppress_groups_names_a_missing_column():
    with pytest.raises(ValueError, match=r"\['n_positive'\] not in the table"):
        suppress_groups(pd.DataFrame({"n": [3]}))


def test_suppress_small_rows_judges_each_results_row_by_its_test_stays_and_events():
    from healthfusion.evaluation.disclosure import suppress_small_rows

    results = pd.DataFrame({"seed": [0, 1], "strategy": ["dann", "dann"], "n_test": [400, 400],
                            "n_test_positive": [60, 6], "auroc": [0.81, 0.93]})
    shared = suppress_small_rows(results, keep=("seed",))
    assert shared["auroc"].tolist() == [0.81, "<10"] and shared["n_test_positive"].tolist() == [60, "<10"]
    assert shared["seed"].tolist() == [0, 1] and shared["strategy"].tolist() == ["dann", "dann"]
    # events from the prevalence when a table has no events column; a task without outcome classes by its n only
    tasks = pd.DataFrame({"task": ["death", "los", "sepsis"], "n": [200, 200, 9], "prevalence": [0.02, None, 0.5],
                          "multitask": [0.7, 2.5, 0.6]})
    shared = suppress_small_rows(tasks)
    assert shared["multitask"].tolist() == ["<10", 2.5, "<10"] and shared["n"].tolist() == [200, 200, "<10"]
    untouched = pd.DataFrame({"feature": ["a"], "importance": [0.3]})
    assert suppress_small_rows(untouched).equals(untouched)


def test_a_shift_row_is_suppressed_when_either_side_has_fewer_than_ten_stays():
    from healthfusion.evaluation.disclosure import suppress_small_rows

    shift = pd.DataFrame({"variable": ["HR", "Lactate"], "smd": [0.1, 0.9], "mean_target": [80.0, 4.2],
                          "n_source": [300, 250], "n_target": [120, 4]})
    shared = suppress_small_rows(shift)
    assert shared["mean_target"].tolist() == [80.0, "<10"] and shared["n_target"].tolist() == [120, "<10"]
    assert shared["n_source"].tolist() == [300, 250] and shared["variable"].tolist() == ["HR", "Lactate"]
