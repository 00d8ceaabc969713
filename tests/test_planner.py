"""The planner: decisive items for the exact sign test, in people's terms, through a judge and with k annotators."""
import pytest

from sciexplain import planner
from sciexplain.stats import sign_test_power


def test_items_needed_match_the_exact_test_and_stay_powered():
    n60, n70 = planner.items_needed(0.6), planner.items_needed(0.7)
    assert (n60, n70) == (210, 54)  # issue 22's planning figures (alpha 0.05, 80% power)
    for n, w in ((n60, 0.6), (n70, 0.7)):
        assert all(sign_test_power(m, w, 0.05) >= 0.8 for m in range(n, n + 50))
        assert sign_test_power(n - 1, w, 0.05) < 0.8  # the first n of the run
    assert planner.items_needed(0.4) == n60  # two-sided: a loss as large is as detectable
    assert planner.items_needed(0.6, tests=4) > n60  # Holm over four comparisons, planned at its strictest step
    assert planner.items_needed(0.5) is None
    with pytest.raises(ValueError):
        planner.items_needed(1.5)


def test_a_judge_dilutes_what_people_prefer_and_annotators_sharpen_it():
    assert planner.seen_through_judge(0.7, 1.0) == pytest.approx(0.7)
    assert planner.seen_through_judge(0.7, 0.5) == pytest.approx(0.5)  # a coin sees nothing
    assert planner.seen_through_judge(0.7, 0.643) == pytest.approx(0.5572)
    assert planner.majority_win_rate(0.6, 1) == pytest.approx(0.6)
    assert planner.majority_win_rate(0.6, 3) == pytest.approx(0.648)  # 0.6^3 + 3 * 0.6^2 * 0.4
    with pytest.raises(ValueError, match="odd"):
        planner.majority_win_rate(0.6, 2)
    rows = planner.plan([0.7], annotators=(1, 3), judge_agreement=0.643)
    by = {r["by"]: r for r in rows}
    assert by["1 annotator"]["items"] == 54 and by["3 annotators"]["items"] < 54
    assert by["3 annotators"]["annotations"] == 3 * by["3 annotators"]["items"]
    assert by["judge at 0.643"]["items"] > 10 * by["1 annotator"]["items"]


def test_the_command_prints_the_table(capsys):
    assert planner.main(["--win-rate", "0.7", "--annotators", "1"]) == 0
    out = capsys.readouterr().out
    assert "alpha 0.05 / 1 test(s)" in out and " 54 " in out
    assert planner.main(["--annotators", "2"]) == 1 and "odd" in capsys.readouterr().err
