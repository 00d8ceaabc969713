"""Regenerate tests/data/bad/annotations/ (the setup sheet and every case file): run from the repo root with
``python tests/data/bad/make_annotation_cases.py`` after a change to the sheet or hash format."""
import csv
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from sciexplain.annotation_store import write_annotations  # noqa: E402
from sciexplain.annotations import JUDGE, Annotation
from sciexplain.sheets import build_sheet, sheet_hashes
from sciexplain.records import write_jsonl  # noqa: E402

OUT = ROOT / "tests" / "data" / "bad" / "annotations"
DROP = object()


def main():
    setup = OUT / "setup"
    qs = ["Why is the sky blue?", "Why does ice float?", "What is a star?"]
    pairs = [{"item_id": f"q{i + 1}", "question": q, "answer_1": f"A short base answer {i + 1}.",
              "answer_2": f"A clear sft explanation {i + 1}.", "model_1": "base", "model_2": "sft"} for i, q in enumerate(qs)]
    sheet, key = build_sheet(pairs, seed=0)
    write_jsonl(setup / "data/compare/base_vs_sft/sheet.jsonl", sheet)
    write_jsonl(setup / "data/compare/base_vs_sft/key.jsonl", key)
    h = sheet_hashes(sheet)
    a_model = {k["item_id"]: k["a_model"] for k in key}
    sft = {i: "A" if a_model[i] == "sft" else "B" for i in h}
    write_annotations(setup / "data/judgments/base_vs_sft/judge-rubric.jsonl",
                      {i: Annotation(sft[i], "Better", "") for i in h}, h, JUDGE)

    def row(i, **kw):
        r = {"item_id": i, "item_hash": h[i], "choice": sft[i], "strength": "Better", **kw}
        return {k: v for k, v in r.items() if v is not DROP}

    def jl(name, rows, bom=False):
        text = rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows)
        (OUT / name).write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))

    def cs(name, header, rows, enc="utf-8"):
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow(header)
        w.writerows(rows)
        (OUT / name).write_bytes(buf.getvalue().encode(enc))

    good = [row("q1"), row("q2"), row("q3")]
    jl("bad_json_line.jsonl", json.dumps(good[0]) + "\n" + '{"item_id": "q2", "choice": "A" "strength": "Better"}\n'
       + json.dumps(good[2]) + "\n")
    jl("missing_strength.jsonl", [row("q1"), row("q2", strength=DROP), row("q3")])
    jl("unknown_choice.jsonl", [row("q1"), row("q2"), row("q3", choice="C")])
    jl("unknown_item_id.jsonl", [row("q1"), {**row("q2"), "item_id": "q9"}])
    jl("hash_missing.jsonl", [row("q1"), row("q2", item_hash=DROP), row("q3")])
    jl("wrong_type.jsonl", [row("q1", strength=2)])
    jl("hash_wrong_type.jsonl", [row("q1"), row("q2", item_hash=12345)])
    jl("annotator_type_unknown.jsonl", [row("q1", annotator_type="robot")])
    jl("annotator_type_mixed.jsonl", [row("q1"), row("q2", annotator_type="judge")])
    jl("not_an_object.jsonl", [row("q1"), ["q2", "A", "Better"]])
    text = "".join(json.dumps(x) + "\n" for x in good)
    jl("torn_last_line.jsonl", text[: len(text) - 25])
    header = ["item_id", "choice", "strength", "comment", "item_hash"]
    cs("wrong_strength.csv", header, [["q1", sft["q1"], "Better", "", h["q1"]], ["q2", sft["q2"], "Much better", "", h["q2"]]])
    cs("duplicate_item.csv", header, [["q1", sft["q1"], "Better", "", h["q1"]], ["q2", sft["q2"], "Better", "", h["q2"]],
                                      ["q1", "B", "Better", "", h["q1"]]])
    cs("hash_column_missing.csv", header[:4], [["q1", sft["q1"], "Better", ""], ["q2", sft["q2"], "Better", ""]])
    cs("not_utf8.csv", header, [["q1", sft["q1"], "Better", "très clair", h["q1"]]], enc="latin-1")
    jl("bom.jsonl", good, bom=True)
    jl("stale_row.jsonl", [row("q1"), row("q2", item_hash="aaaaaaaaaaaaaaaa"), row("q3")])
    jl("upper_suffix.JSONL", good)
    (OUT / "workbook.xlsx").write_bytes(b"PK\x03\x04 not really a workbook")
    print(h)


if __name__ == "__main__":
    main()
