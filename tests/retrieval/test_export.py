"""``shopgraph recommend`` and ``shopgraph score``: offline exports of a run's answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from shopgraph.graph.run import RunDir
from shopgraph.retrieval.export import REASON_SEP, read_user_ids, write_table
from shopgraph.retrieval.service import FraudScore
from shopgraph.ui.cli import main
from tests.retrieval.test_service import load_service, shared_run, with_held_out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def service(run: Path):
    return load_service(run, catalogue_follow=False)


def test_recommendations_of_every_user_are_the_services_answers(run, service, tmp_path, capsys):
    out = tmp_path / "recs.csv"
    assert main(["recommend", "--run", str(run), "--out", str(out)]) == 0
    assert f"for {len(service.user_ids)} users (k=10) to {out}" in capsys.readouterr().out
    table = pd.read_csv(out, dtype={"user_id": str, "item_id": str}, keep_default_na=False)
    assert list(table.columns) == ["user_id", "rank", "item_id", "title", "score", "reason"]
    assert table["user_id"].unique().tolist() == service.user_ids  # every user, in the run's order
    for user, rows in table.groupby("user_id", sort=False):
        rec = service.recommend(user, 10)
        assert rows["item_id"].tolist() == rec.item_ids and rows["rank"].tolist() == list(range(1, len(rec.item_ids) + 1))
        assert rows["score"].tolist() == rec.scores and rows["reason"].tolist() == rec.reasons  # exact round trip
        assert rows["title"].tolist() == rec.titles


def test_recommendations_are_asked_for_in_batches_the_service_takes(service, monkeypatch):
    """A large k cuts the users into smaller batches (ids x k within the service's cap), the same rows."""
    from shopgraph.retrieval import export
    from shopgraph.retrieval import service as service_module
    from shopgraph.retrieval.export import recommendations_table

    whole = recommendations_table(service, service.user_ids, k=7)
    monkeypatch.setattr(export, "MAX_BATCH_RESULTS", 7 * 4)  # 4 users a batch at k=7
    monkeypatch.setattr(service_module, "MAX_BATCH_RESULTS", 7 * 4)
    asked = []
    real = type(service).recommend_batch
    monkeypatch.setattr(type(service), "recommend_batch",
                        lambda self, ids, *a, **kw: asked.append(len(ids)) or real(self, ids, *a, **kw))
    pd.testing.assert_frame_equal(recommendations_table(service, service.user_ids, k=7), whole)
    assert max(asked) == 4 and sum(asked) == len(service.user_ids)
    with pytest.raises(ValueError, match=r"k: 5 user_ids × k=7 asks for 35 results, over the 28 one batch answers"):
        real(service, service.user_ids[:5], 7)


@pytest.mark.parametrize("users_file", ["users.txt", "users.csv", "users.parquet"])
def test_recommendations_of_listed_users_with_options(run, service, tmp_path, users_file):
    users = ["u007", "u001", "u030"]
    path = tmp_path / users_file
    if users_file.endswith(".txt"):
        path.write_text("\n".join(users) + "\n")
    elif users_file.endswith(".csv"):
        pd.DataFrame({"user_id": users, "note": ["a", "b", "c"]}).to_csv(path, index=False)
    else:
        pd.DataFrame({"user_id": users}).to_parquet(path)
    out = tmp_path / "recs.parquet"
    assert main(["recommend", "--run", str(run), "--out", str(out), "--users", str(path), "--k", "3",
                 "--include-seen", "--category", "books"]) == 0
    table = pd.read_parquet(out)
    assert table["user_id"].unique().tolist() == users
    for user in users:
        rec = service.recommend(user, 3, exclude_seen=False, category="books")
        assert table.loc[table["user_id"] == user, "item_id"].tolist() == rec.item_ids


def test_fraud_scores_of_every_account_and_the_flagged_ones(run, service, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    assert main(["score", "--run", str(run), "--out", str(out)]) == 0
    table = pd.read_csv(out, dtype={"user_id": str}, keep_default_na=False)
    assert list(table.columns) == ["user_id", "probability", "threshold", "flagged", "probability_is", "scorer",
                                   "label", "label_in_training", "held_out_probability", "held_out_flagged",
                                   "ring_id", "reasons", "held_out_reasons"]
    assert set(table["held_out_probability"]) == set(table["held_out_flagged"]) == set(table["held_out_reasons"]) == {
        ""}  # a run without held-out scores
    expected = service.score_users(service.user_ids)
    assert table["user_id"].tolist() == service.user_ids
    assert table["probability"].tolist() == [s.probability for s in expected]
    assert table["flagged"].tolist() == [s.flagged for s in expected]
    assert [str(v) for v in table["label"]] == [{None: "", True: "True", False: "False"}[s.label] for s in expected]
    assert table["label_in_training"].tolist() == [s.label_in_training for s in expected]
    assert table["probability_is"].tolist() == ["fitted to its label" if s.label_in_training else "prediction"
                                                for s in expected]
    assert table["reasons"].tolist() == [REASON_SEP.join(s.reasons) for s in expected]
    assert set(table["scorer"]) == {"gnn"}
    n_flagged = sum(s.flagged for s in expected)
    assert f"{len(expected)} accounts ({n_flagged} flagged)" in capsys.readouterr().out

    flagged = tmp_path / "flagged.parquet"
    assert main(["score", "--run", str(run), "--out", str(flagged), "--flagged-only", "--no-reasons"]) == 0
    table = pd.read_parquet(flagged)
    queue = sorted((s for s in expected if s.flagged), key=lambda s: -s.probability)  # a work queue: highest first
    assert table["user_id"].tolist() == [s.user_id for s in queue] and table["flagged"].all()
    assert table["label"].tolist() == [pd.NA if s.label is None else s.label for s in queue]
    assert (table["reasons"] == "").all()
    said = capsys.readouterr().out
    fitted = sum(s.label_in_training for s in queue)
    assert f"the {n_flagged} flagged of {len(expected)} accounts, highest first" in said
    assert fitted and f"({fitted} of them with a score fitted to the label the scorer was trained on" in said
    # ... as JSON, an array of rows: what a case-management tool reads
    as_json = tmp_path / "flagged.json"
    assert main(["score", "--run", str(run), "--out", str(as_json), "--flagged-only", "--no-reasons"]) == 0
    rows = json.loads(as_json.read_text(encoding="utf-8"))
    assert [r["user_id"] for r in rows] == [s.user_id for s in queue]
    # every digit, as the CSV and the API give it (pandas' to_json kept 10: 0.0523770452)
    assert [r["probability"] for r in rows] == [s.probability for s in queue] and rows[0]["held_out_probability"] is None
    assert {type(r["flagged"]) for r in rows} == {bool} and all(isinstance(r["threshold"], float) for r in rows)
    assert {r["label"] for r in rows} <= {True, False, None}
    assert all(r["reasons"] == [] and r["held_out_reasons"] == [] for r in rows)  # lists in JSON (none asked for)
    assert main(["score", "--run", str(run), "--out", str(as_json), "--flagged-only", "--overwrite"]) == 0
    rows = json.loads(as_json.read_text(encoding="utf-8"))
    assert rows[0]["reasons"] == service.score_user(rows[0]["user_id"]).reasons  # each reason whole, none split
    # a run with held-out scores: the trained-on accounts' are in the column, the others empty
    held = [0.125 * (k % 8) if s.label_in_training else float("nan") for k, s in enumerate(expected)]
    out = tmp_path / "held.csv"
    assert main(["score", "--run", str(with_held_out(run, tmp_path / "held", held)), "--out", str(out),
                 "--no-reasons"]) == 0
    table = pd.read_csv(out, dtype={"user_id": str})
    assert table["held_out_probability"].fillna(-1).tolist() == [-1 if h != h else h for h in held]
    t = expected[0].threshold
    assert table["held_out_flagged"].astype(object).where(table["held_out_flagged"].notna(), None).tolist() == [
        None if h != h else bool(h >= t) for h in held]


def test_label_audit_lists_the_labels_the_held_out_scores_contradict(run, service, tmp_path, capsys):
    scores = service.score_users(service.user_ids, reasons=False)
    trained = [s for s in scores if s.label_in_training]
    assert trained and any(s.label for s in trained) and any(s.label is False for s in trained)
    t = scores[0].threshold
    # held-out scores that contradict some labels: a labelled fraud far below the threshold, a
    # labelled legitimate account just above it, the rest agreeing
    far_fraud = next(s for s in trained if s.label)
    near_legit = next(s for s in trained if s.label is False)
    held = {s.user_id: (0.0 if s is far_fraud else min(1.0, t + 0.01) if s is near_legit else
                        (1.0 if s.label else 0.0)) for s in trained}
    folder = with_held_out(run, tmp_path / "held", [held.get(u, float("nan")) for u in service.user_ids])
    out = tmp_path / "audit.csv"
    assert main(["score", "--run", str(folder), "--out", str(out), "--label-audit", "--no-reasons"]) == 0
    table = pd.read_csv(out, dtype={"user_id": str})
    assert table["user_id"].tolist() == [far_fraud.user_id, near_legit.user_id]  # the most contradicted first
    assert table["label"].tolist() == [True, False] and table["label_in_training"].all()
    assert table["held_out_flagged"].tolist() == [False, True]  # the held-out verdicts that contradict the labels
    said = capsys.readouterr().out
    assert "the 2 accounts of 40 whose held-out score contradicts their label" in said
    assert "On the test accounts" not in said  # no metrics.json: no error rates to compare with
    # with the test error rates: how many contradictions the scorer's own errors would give with every label right
    from shopgraph.graph.run import RunDir

    RunDir(folder).write_json("metrics.json", {"fraud": {"gnn": {"recall": 0.75, "precision": 0.9},
                                                         "test": {"accounts": 1000, "fraud": 40}}})
    assert main(["score", "--run", str(folder), "--out", str(out), "--label-audit", "--no-reasons", "--overwrite"]) == 0
    false_flags = 0.75 * 40 * (1 - 0.9) / 0.9 / 960
    expected = sum(0.25 if s.label else false_flags for s in trained)
    assert (f"On the test accounts the scorer misses 25% of fraud and flags {false_flags:.1%} of legitimate accounts "
            f"(metrics.json): that alone would give about {expected:,.0f} such contradiction"
            f"{'' if round(expected) == 1 else 's'} among these "
            f"{len(trained)} trained-on accounts with every label right. Each is a wrong label or a scorer error: "
            "check it before changing the label.") in capsys.readouterr().out
    # the threshold those rates are at, beside the one that flags (they differ: another fit, its own validation)
    RunDir(folder).write_json("metrics.json", {"fraud": {"gnn": {"recall": 0.75, "precision": 0.9, "threshold": 0.1225},
                                                         "test": {"accounts": 1000, "fraud": 40}}})
    assert main(["score", "--run", str(folder), "--out", str(out), "--label-audit", "--no-reasons", "--overwrite"]) == 0
    served = load_service(folder).fraud["threshold"]
    assert (f"(metrics.json; `shopgraph evaluate` refits it at the test cut and thresholds it at 0.122, the best F1 of "
            f"its own validation scores, where the served scorer flags at {served:.3f}): that alone would give"
            ) in capsys.readouterr().out
    # a run without held-out scores has nothing to audit with: said, and nothing written
    out = tmp_path / "none.csv"
    assert main(["score", "--run", str(run), "--out", str(out), "--label-audit"]) == 1
    assert "--label-audit: this run has no held-out scores" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit):  # one filter or the other
        main(["score", "--run", str(run), "--out", str(out), "--label-audit", "--flagged-only"])


def test_leads_leave_the_known_frauds_out_and_rank_by_the_prediction(run, service, tmp_path, capsys):
    """--leads: the accounts not labelled fraud that the served score flags, or (trained on) their
    held-out score does; ranked by the held-out score where the served one is fitted to a label."""
    scores = service.score_users(service.user_ids, reasons=False)
    t = scores[0].threshold
    trained_legit = [s for s in scores if s.label_in_training and s.label is False and not s.flagged]
    trained_fraud = [s for s in scores if s.label_in_training and s.label]
    assert len(trained_legit) >= 2 and trained_fraud
    # two legitimate trained-on accounts the held-out scores flag, one far above; a labelled fraud
    # flagged too (known already: never a lead); every other held-out score far below
    held = {s.user_id: 0.0 for s in scores if s.label_in_training}
    held[trained_legit[0].user_id], held[trained_legit[1].user_id] = min(1.0, t + 0.01), 0.999
    held[trained_fraud[0].user_id] = 0.999
    folder = with_held_out(run, tmp_path / "held", [held.get(u, float("nan")) for u in service.user_ids])
    out = tmp_path / "leads.csv"
    assert main(["score", "--run", str(folder), "--out", str(out), "--leads", "--no-reasons"]) == 0
    table = pd.read_csv(out, dtype={"user_id": str})

    def prediction(s: FraudScore) -> float:
        return held[s.user_id] if s.label_in_training else s.probability

    expected = sorted((s for s in scores if s.label is not True
                       and (s.flagged or (s.label_in_training and held[s.user_id] >= t))), key=lambda s: -prediction(s))
    assert table["user_id"].tolist() == [s.user_id for s in expected]
    assert trained_legit[1].user_id == table["user_id"].iloc[0] and trained_legit[0].user_id in set(table["user_id"])
    assert trained_fraud[0].user_id not in set(table["user_id"]) and not table["label"].fillna(False).any()
    # which verdict made each a lead, and the reasons of that one (the served reasons may argue against it)
    assert table.columns[:3].tolist() == ["user_id", "lead_by", "lead_reasons"]
    assert table["lead_by"].tolist() == ["served score" if s.flagged else "held-out score" for s in expected]
    assert table["lead_reasons"].fillna("").tolist() == [
        (r if f else h) for r, h, f in zip(table["reasons"].fillna(""), table["held_out_reasons"].fillna(""),
                                          table["flagged"])]
    held_only = sum(1 for s in expected if not s.flagged)
    assert held_only >= 2
    said = capsys.readouterr().out
    assert f"the {len(expected)} leads of {len(scores)} accounts" in said
    assert f"({held_only} flagged only with the label held out)" in said
    # the work queue of served flags says that it holds none of these, and where they are
    queue = tmp_path / "queue.csv"
    assert main(["score", "--run", str(folder), "--out", str(queue), "--flagged-only", "--no-reasons"]) == 0
    assert not set(pd.read_csv(queue, dtype={"user_id": str})["user_id"]) & {s.user_id for s in expected if not s.flagged}
    said = capsys.readouterr().out
    assert said.splitlines()[-1] == (f"Not in this file: {held_only} more accounts not labelled fraud that only the "
                                     "held-out score flags (the served score, fitted to a legitimate label, does not); "
                                     "`--leads` lists them.")
    assert f"to {queue} in " in said.splitlines()[-3]  # the line saying what was written ends with where
    assert said.splitlines()[-2].startswith("ring_id is empty: this run has no current fraud rings")
    with pytest.raises(SystemExit):  # one filter at a time
        main(["score", "--run", str(run), "--out", str(out), "--leads", "--flagged-only"])


def test_messages_count_one_in_the_singular(run, tmp_path, capsys) -> None:
    users = tmp_path / "one.txt"
    users.write_text("u002\n")
    assert main(["score", "--run", str(run), "--out", str(tmp_path / "s.csv"), "--users", str(users),
                 "--no-reasons"]) == 0
    assert "wrote the fraud scores of 1 account (" in capsys.readouterr().out
    assert main(["recommend", "--run", str(run), "--out", str(tmp_path / "r.csv"), "--users", str(users),
                 "--k", "1"]) == 0
    assert "wrote 1 recommendation for 1 user (k=1)" in capsys.readouterr().out
    users.write_text("nobody\n")
    assert main(["score", "--run", str(run), "--out", str(tmp_path / "x.csv"), "--users", str(users)]) == 1
    assert "--users: 1 of the 1 id is not a user of this run" in capsys.readouterr().err


def test_label_audit_orders_by_log_odds_not_probability() -> None:
    from shopgraph.retrieval.export import contradiction

    # threshold 0.2: a labelled fraud at 0.003 is 0.197 below it, a legitimate account at 0.7 is 0.5
    # above it; in log-odds (the reasons' scale) the fraud's is the larger contradiction
    assert contradiction(0.003, 0.2) > contradiction(0.7, 0.2) > contradiction(0.3, 0.2) > 0
    assert contradiction(0.2, 0.2) == 0 and math.isfinite(contradiction(0.0, 0.2)) and math.isfinite(contradiction(1.0, 0.2))


def _folder(path: Path) -> str:
    path.mkdir()
    return str(path)


def _in_a_file(path: Path) -> str:
    path.write_text("#!/bin/sh\n")
    return str(path / "x.csv")


def _bad_users(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("command, extra, message", [
    ("recommend", lambda t: ["--out", str(t / "recs.txt")], "--out: expected a file ending in .csv, .parquet or .json"),
    ("score", lambda t: ["--out", _folder(t / "scores.csv")], "scores.csv is a folder; give a file path"),
    ("score", lambda t: ["--out", _in_a_file(t / "v.sh")], "v.sh is a file, so "),
    ("recommend", lambda t: ["--users", str(t / "missing.txt")], "missing.txt is not a file"),
    ("score", lambda t: ["--users", _bad_users(t, "u.txt", "")], "holds no user ids"),
    ("score", lambda t: ["--users", _bad_users(t, "u.txt", "\n  \n")], "holds no user ids"),
    ("score", lambda t: ["--users", _bad_users(t, "u.txt", "user_id\nu001\n")],
     "u.txt, line 1: 'user_id' is a column header, not an id; name the file .csv to read it as a table"),
    ("score", lambda t: ["--users", _bad_users(t, "u.txt", "u001\nghost\nu002\nnobody\n")],
     "--users: 2 of the 4 ids are not users of this run (nothing was written): 'ghost', 'nobody'"),
    ("score", lambda t: ["--users", _bad_users(t, "u.txt", "u001\nU002\n")],
     "--users: 1 of the 2 ids is not a user of this run (nothing was written): 'U002'; did you mean 'u002' for "
     "'U002'? ids are case-sensitive"),
    ("recommend", lambda t: ["--users", _bad_users(t, "u.csv", "id,name\nu001,a\n")],
     "u.csv has no user_id column (columns: id, name)"),
    ("recommend", lambda t: ["--users", _bad_users(t, "u.csv", "user_id,name\nu001,a\n,b\n")],
     "u.csv, line 3: empty user id"),
    ("score", lambda t: ["--users", _bad_users(t, "u.parquet", "not parquet")], "u.parquet is not a readable parquet"),
    ("recommend", lambda t: ["--category", "toys"], "category: unknown category 'toys'"),
])
def test_bad_inputs_end_in_one_line_and_write_nothing(run, tmp_path, capsys, command, extra, message):
    args = extra(tmp_path)
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out.csv")]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([command, "--run", str(run), *args]) == 1
    err = capsys.readouterr().err
    assert f"shopgraph {command}: error: " in err and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temp file


def test_an_existing_output_is_kept_unless_overwrite_is_given(run, tmp_path, capsys):
    out = tmp_path / "recs.csv"
    out.write_text("yesterday's export\n")
    assert main(["recommend", "--run", str(run), "--out", str(out)]) == 1
    assert f"--out: {out} exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert out.read_text() == "yesterday's export\n"
    assert main(["recommend", "--run", str(run), "--out", str(out), "--overwrite", "--k", "2"]) == 0
    assert pd.read_csv(out)["rank"].max() == 2


def test_an_export_into_a_new_folder_says_it_made_it(run, tmp_path, capsys):
    """A typo in a folder name is seen: the folder is made, and the message says so."""
    out = tmp_path / "reprots" / "s.csv"
    assert main(["score", "--run", str(run), "--out", str(out), "--no-reasons"]) == 0
    assert out.is_file() and f"(created the folder {out.parent})" in capsys.readouterr().out
    assert main(["score", "--run", str(run), "--out", str(tmp_path / "t.csv"), "--no-reasons"]) == 0
    assert "created the folder" not in capsys.readouterr().out


def test_an_export_never_replaces_its_own_users_file(run, tmp_path, capsys):
    """Not even with --overwrite: the list of ids the export is made from would be lost."""
    users = tmp_path / "users.csv"
    users.write_text("user_id\nu001\nu002\n")
    for command in ("score", "recommend"):
        assert main([command, "--run", str(run), "--users", str(users), "--out", str(users), "--overwrite"]) == 1
        assert f"--out: {users} is the --users file; write the export to another file" in capsys.readouterr().err
    assert users.read_text() == "user_id\nu001\nu002\n"


def test_an_export_never_writes_into_the_run(run, capsys):
    """Not even with --overwrite: the run's own tables stay as they were (and keep their checksums)."""
    events = run / "tables" / "events.parquet"
    before = events.read_bytes()
    for out in (events, run / "recs.csv"):
        assert main(["recommend", "--run", str(run), "--out", str(out), "--overwrite"]) == 1
        assert f"--out: {out} is inside the run folder {run}" in capsys.readouterr().err
    assert events.read_bytes() == before and not (run / "recs.csv").exists()
    RunDir(run).verify()


def test_a_run_that_is_not_one_is_named(tmp_path, capsys):
    assert main(["score", "--run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s.csv")]) == 1
    assert "shopgraph score: error: " in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()
    # --run given an output folder by mistake: the run is named, not "--out is inside the run folder"
    (tmp_path / "out").mkdir()
    assert main(["score", "--run", str(tmp_path / "out"), "--out", str(tmp_path / "out" / "x.csv")]) == 1
    err = capsys.readouterr().err
    assert f"run folder {tmp_path / 'out'}: no manifest.json" in err and "inside the run folder" not in err
    for k in ("0", "1001", "ten"):  # refused by the parser, before anything is loaded
        with pytest.raises(SystemExit) as exit_:
            main(["recommend", "--run", str(tmp_path), "--out", str(tmp_path / "r.csv"), "--k", k])
        assert exit_.value.code == 2 and "argument --k: expected " in capsys.readouterr().err


def test_a_failed_write_leaves_neither_the_file_nor_a_part_of_it(tmp_path, monkeypatch):
    table = pd.DataFrame({"user_id": ["u1", "u2"], "probability": [0.1, 0.9]})

    def half_then_full_disk(self, path, **kwargs):
        Path(path).write_text("user_id,probability\nu1,0.1\n")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_full_disk)
    with pytest.raises(OSError, match=r"--out: cannot write .*scores.csv \(No space left on device\); nothing"):
        write_table(table, tmp_path / "scores.csv")
    assert list(tmp_path.iterdir()) == []


def test_blank_lines_are_skipped_and_repeated_ids_written_once(run, service, tmp_path, capsys):
    """A plain list's blank lines (an editor's last empty line) hold no id; an id listed twice is
    one account: one row (score) or one list (recommend), and the message says so."""
    users = tmp_path / "u.txt"
    users.write_text("u002\n\nu001\nu002\n\n")
    out = tmp_path / "s.csv"
    assert main(["score", "--run", str(run), "--users", str(users), "--out", str(out), "--no-reasons"]) == 0
    assert "1 id listed more than once in --users, written once" in capsys.readouterr().out
    assert pd.read_csv(out, dtype={"user_id": str})["user_id"].tolist() == ["u002", "u001"]
    recs = tmp_path / "r.csv"
    assert main(["recommend", "--run", str(run), "--users", str(users), "--out", str(recs), "--k", "2"]) == 0
    assert "for 2 users (k=2)" in capsys.readouterr().out
    assert pd.read_csv(recs, dtype={"user_id": str})["user_id"].tolist() == ["u002", "u002", "u001", "u001"]


def test_a_run_without_a_fraud_scorer_is_named_and_nothing_written(run, tmp_path, capsys):
    """A run whose training found no usable fraud labels has no scores to write: an empty score
    column for every account would read as a success."""
    import shutil

    shutil.copytree(run, tmp_path / "run")
    RunDir(tmp_path / "run").write_json("fraud.json", {"kind": "none", "threshold": None})
    out = tmp_path / "s.csv"
    assert main(["score", "--run", str(tmp_path / "run"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"--run: {tmp_path / 'run'} has no fraud scorer, nothing was written: its training found no usable" in err
    assert not out.exists()


def test_user_id_files_give_ids_as_stored(tmp_path):
    path = tmp_path / "u.txt"
    path.write_text("u001\r\n u002 \r\nu003")  # Windows line ends; spaces around an id, as the tables strip them
    assert read_user_ids(path) == ["u001", "u002", "u003"]
    path.write_text("\ufeffu001\nu002\n")  # a byte-order mark (Windows Notepad) is not part of the first id
    assert read_user_ids(path) == ["u001", "u002"]
    table = tmp_path / "u.csv"
    table.write_text("\ufeffuser_id\nu001\n")
    assert read_user_ids(table) == ["u001"]
    path.write_bytes(b"u001\n\xff\xfe\n")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        read_user_ids(path)


@pytest.mark.parametrize("k", ["0", "1001", "-3", "ten", "2.5"])
def test_a_k_out_of_range_is_one_message_whatever_the_value(run, tmp_path, capsys, k):
    with pytest.raises(SystemExit):
        main(["recommend", "--run", str(run), "--out", str(tmp_path / "r.csv"), "--k", k])
    assert f"argument --k: expected an integer from 1 to 1000 (got '{k}')" in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()


def test_fraud_scores_name_each_accounts_ring(run, tmp_path, capsys):
    """From "why is this account flagged" to "which ring is it in" without the demo: each row names the
    best-ranked ring the account is a member of, as `shopgraph rings` stored them."""
    import shutil

    from shopgraph.graph.rings import RingDetector, load_rings, rings_run

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    rings_run(copy, top=3, detector=RingDetector(hub_threshold=10, min_size=2))  # the small shop's rings: pairs too
    rings = load_rings(copy)
    assert rings, "the shared run has no ring to name"
    out = tmp_path / "scores.csv"
    capsys.readouterr()
    assert main(["score", "--run", str(copy), "--out", str(out), "--no-reasons"]) == 0
    table = pd.read_csv(out, dtype={"user_id": str, "ring_id": str}, keep_default_na=False)
    best: dict[str, str] = {}
    for ring in rings:  # ranked: an account's first ring is its best-ranked one
        for user in ring.members:
            best.setdefault(user, ring.ring_id)
    assert table["ring_id"].tolist() == [best.get(u, "") for u in table["user_id"]]
    assert (table["ring_id"] != "").sum() == len(best) > 0
    said = capsys.readouterr().out
    assert f"ring_id: {len(best)} accounts of the {len(table)} written are in a fraud ring" in said
