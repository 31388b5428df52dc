"""Export (rankings, pairs, aggregation) and agreement statistics, on hand-computed examples."""

from __future__ import annotations

import json
import random

import pytest
from labeler_helpers import sample_items, write_candidates
from typer.testing import CliRunner

from data_tools.labeler import assign, store
from data_tools.labeler.aggregate import borda, borda_scores, pairwise_margins, ranked_pairs
from data_tools.labeler.candidates import load_candidates
from data_tools.labeler.cli import app as cli_app
from data_tools.labeler.export import export_rankings, pair_rows
from data_tools.labeler.stats import (
    compute_stats,
    format_stats,
    kendall_tau_b,
    krippendorff_alpha,
    pairwise_agreement,
)
from rlhf_stack.data import check_row, load_rankings
from rlhf_stack.errors import RlhfStackError

POLICY = assign.Policy(min_annotations=2, lease_seconds=60, flags=("hallucination",))


# ---- aggregation --------------------------------------------------------------------------------


def test_borda_with_ties():
    # annotator 1: [1,2,3] -> scores 2,1,0; annotator 2: [2,1,3] -> 1,2,0; annotator 3: [1,1,2] -> 1.5,1.5,0
    assert borda_scores([[1, 2, 3], [2, 1, 3], [1, 1, 2]]) == [4.5, 4.5, 0.0]
    assert borda([[1, 2, 3], [2, 1, 3], [1, 1, 2]]) == [1, 1, 2]
    assert borda([[1, 2, 3], [2, 1, 3], [1, 3, 2]]) == [1, 2, 3]  # scores 5, 3, 1


def test_ranked_pairs_breaks_a_condorcet_cycle():
    # 3 x (0>1>2), 2 x (1>2>0), 2 x (2>0>1): 0 beats 1 by 5:2, 1 beats 2 by 5:2, 2 beats 0 by 4:3.
    # Lock the margins-3 pairs 0>1 and 1>2; 2>0 (margin 1) would close the cycle and is skipped.
    rankings = [[1, 2, 3]] * 3 + [[3, 1, 2]] * 2 + [[2, 3, 1]] * 2
    margins = pairwise_margins(rankings)
    assert (margins[0][1], margins[1][2], margins[2][0]) == (3, 3, 1)
    assert ranked_pairs(rankings) == [1, 2, 3]


def test_ranked_pairs_differs_from_borda_and_keeps_ties():
    # 3 x (2>0>1), (0>1>2), (0>2>1): margins 0>1 by 5, 2>1 by 3, 2>0 by 1 -> 2 > 0 > 1.
    # Borda sums 7, 1, 7 and calls 0 and 2 a tie; ranked pairs follows the majority 2 > 0.
    rankings = [[2, 3, 1]] * 3 + [[1, 2, 3], [1, 3, 2]]
    assert ranked_pairs(rankings) == [2, 3, 1]
    assert borda(rankings) == [1, 2, 1]
    assert ranked_pairs([[1, 1, 1], [1, 1, 1]]) == [1, 1, 1]
    assert ranked_pairs([[1, 2, 2]]) == [1, 2, 2]  # no majority between 1 and 2: they tie


def test_pair_rows_drop_and_count_ties():
    rows = [{"id": "x", "prompt": "p", "completions": ["a", "b", "c"], "ranks": [2, 1, 2], "annotator": "u"}]
    pairs, ties = pair_rows(rows)
    assert ties == 1
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("b", "a"), ("b", "c")]
    assert all(check_row(p, "rankings")["ranks"] == [1, 2] for p in pairs)


# ---- agreement statistics ------------------------------------------------------------------------


def test_pairwise_agreement_by_hand():
    # pairs (0,1): > vs >, (0,2): > vs =, (1,2): > vs <  -> 1 of 3 agree
    assert pairwise_agreement([1, 2, 3], [1, 3, 1]) == (1, 3)


def test_kendall_tau_b_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats", reason="scipy cross-check")
    rng = random.Random(0)
    for _ in range(50):
        k = rng.randint(2, 7)
        a, b = [rng.randint(1, 4) for _ in range(k)], [rng.randint(1, 4) for _ in range(k)]
        ours, theirs = kendall_tau_b(a, b), scipy_stats.kendalltau(a, b).statistic
        if ours is None:
            assert theirs != theirs  # scipy says nan
        else:
            assert ours == pytest.approx(theirs)
    assert kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)  # C=5, D=1


def test_krippendorff_alpha_on_krippendorffs_own_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability": 4 coders x 12 units, with gaps.
    coders = [[1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
              [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
              [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
              [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]
    units = [[c[u] for c in coders if c[u] is not None] for u in range(12)]
    assert krippendorff_alpha(units, "nominal") == pytest.approx(0.743, abs=1e-3)
    assert krippendorff_alpha(units, "ordinal") == pytest.approx(0.815, abs=1e-3)
    assert krippendorff_alpha(units, "interval") == pytest.approx(0.849, abs=1e-3)
    assert krippendorff_alpha([[1, 1], [2, 2], [3, 3]]) == pytest.approx(1.0)
    assert krippendorff_alpha([[1], [2]]) is None


# ---- through the database -----------------------------------------------------------------------


@pytest.fixture
def labelled_db(tmp_path):
    """Two annotators on 3 items: both rank item-0 (alice edits hers), bob skips item-1 and calls
    item-2 not rankable, alice ranks item-1 with a tie."""
    db = tmp_path / "labels.sqlite"
    conn = store.connect(db)
    store.import_items(conn, load_candidates(write_candidates(tmp_path / "c.jsonl", sample_items(3))))
    alice, bob = (store.annotator_by_token(conn, store.add_annotator(conn, n))["id"] for n in ("alice", "bob"))

    def submit(who, client_id, item_id, **body):
        assign.next_item(conn, who, POLICY)
        return assign.submit(conn, who, {"client_id": client_id, "item_id": item_id, **body}, POLICY)

    submit(alice, "alice-0-v1", "item-0", kind="ranked", ranks=[3, 2, 1])
    assign.open_item(conn, alice, "item-0", POLICY)
    assign.submit(conn, alice, {"client_id": "alice-0-v2", "item_id": "item-0", "kind": "ranked", "ranks": [1, 2, 3],
                                "ratings": [6, 4, None], "flags": [[], [], ["hallucination"]], "note": "v2"}, POLICY)
    submit(bob, "bob-0-v1", "item-0", kind="ranked", ranks=[1, 3, 2])
    submit(alice, "alice-1-v1", "item-1", kind="ranked", ranks=[1, 1, 2])
    submit(bob, "bob-1-v1", "item-1", kind="skip", reason="unsure")
    submit(bob, "bob-2-v1", "item-2", kind="not_rankable", reason="all three are the same")
    conn.close()
    return db


def test_export_rows_per_annotator(labelled_db, tmp_path):
    out, pairs = tmp_path / "rankings.jsonl", tmp_path / "pairs.jsonl"
    summary = export_rankings(labelled_db, out, pairs=pairs)
    assert summary == {"rows": 3, "items": 2, "not_rankable": 1, "skipped": 1, "pairs": 3 + 3 + 2, "ties_dropped": 1}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["annotator"], r["ranks"]) for r in rows] == [
        ("item-0", "alice", [1, 2, 3]), ("item-0", "bob", [1, 3, 2]), ("item-1", "alice", [1, 1, 2])]
    alice = rows[0]
    assert alice["version"] == 2 and alice["ratings"] == [6, 4, None] and alice["note"] == "v2"
    assert alice["flags"] == [[], [], ["hallucination"]] and sorted(alice["shown_order"]) == [0, 1, 2]
    assert alice["submitted_at"].endswith("Z") and alice["started_at"] <= alice["submitted_at"]
    rankings = load_rankings(out)  # stage 2's loader takes the export as is
    assert [r.ranks for r in rankings] == [[1, 2, 3], [1, 3, 2], [1, 1, 2]] and rankings[0].extra["version"] == 2
    assert len(load_rankings(pairs)) == 8


def test_export_aggregated(labelled_db, tmp_path):
    out = tmp_path / "agg.jsonl"
    assert export_rankings(labelled_db, out, aggregate="borda")["rows"] == 2
    first = load_rankings(out)[0]
    # alice [1,2,3] -> 2,1,0; bob [1,3,2] -> 2,0,1: scores 4,1,1 -> [1,2,2]
    assert first.ranks == [1, 2, 2] and first.extra["annotators"] == ["alice", "bob"]
    export_rankings(labelled_db, out, aggregate="ranked_pairs")
    assert load_rankings(out)[0].ranks == [1, 2, 2]
    with pytest.raises(RlhfStackError, match="--aggregate"):
        export_rankings(labelled_db, out, aggregate="mean")


def test_export_with_nothing_ranked_fails_without_writing(tmp_path):
    db = tmp_path / "empty.sqlite"
    store.connect(db).close()
    with pytest.raises(RlhfStackError, match="no ranked submissions"):
        export_rankings(db, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()
    with pytest.raises(RlhfStackError, match="no such database"):
        export_rankings(tmp_path / "missing.sqlite", tmp_path / "out.jsonl")


def test_stats(labelled_db):
    stats = compute_stats(labelled_db)
    assert stats["items"] == 3 and stats["submissions"] == 6  # alice's v1 counts as a stored version
    by_name = {a["annotator"]: a for a in stats["annotators"]}
    assert by_name["alice"]["ranked"] == 2 and by_name["bob"]["skip"] == 1 and by_name["bob"]["not_rankable"] == 1
    # item-0: alice [1,2,3] vs bob [1,3,2]: pairs (0,1) agree, (0,2) agree, (1,2) disagree
    assert stats["items_multiply_ranked"] == 1 and stats["pairwise_agreement"] == pytest.approx(2 / 3)
    assert stats["kendall_tau"] == pytest.approx(1 / 3)
    assert "alice" in format_stats(stats) and "Krippendorff" in format_stats(stats)


def test_cli_export_stats_and_annotators(labelled_db, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli_app, ["export", "--db", str(labelled_db), "--out", str(tmp_path / "r.jsonl"),
                                     "--pairs", str(tmp_path / "p.jsonl")])
    assert result.exit_code == 0, result.output
    assert "3 rankings of 2 items" in result.output and "1 tied pairs dropped" in result.output
    result = runner.invoke(cli_app, ["stats", "--db", str(labelled_db), "--json"])
    assert json.loads(result.output)["pairwise_agreement"] == pytest.approx(2 / 3)
    result = runner.invoke(cli_app, ["annotators", "add", "carol", "--db", str(labelled_db)])
    token = result.stdout.strip().splitlines()[0]
    assert result.exit_code == 0 and len(token) >= 30
    listing = runner.invoke(cli_app, ["annotators", "list", "--db", str(labelled_db)]).output
    assert "carol" in listing and "alice" in listing
    assert runner.invoke(cli_app, ["annotators", "remove", "carol", "--db", str(labelled_db)]).exit_code == 0
    assert "removed" in runner.invoke(cli_app, ["annotators", "list", "--db", str(labelled_db)]).output
    result = runner.invoke(cli_app, ["annotators", "remove", "nobody", "--db", str(labelled_db)])
    assert isinstance(result.exception, RlhfStackError)
